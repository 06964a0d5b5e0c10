"""ClusterIP and NodePort allocation, as the Service REST storage does.

Follows the upstream "Service" and "Virtual IPs and Service Proxies" docs: ClusterIPs come from
the service CIDR (10.96.0.0/16 here, kubeadm's default) and ``10.96.0.1`` is the ``kubernetes``
Service's; ``clusterIP: None`` makes a headless Service; a requested address must be in range
and free (else 422). NodePorts come from 30000-32767, for every port of a NodePort or
LoadBalancer Service, plus a ``healthCheckNodePort`` for a LoadBalancer with
``externalTrafficPolicy: Local``. A ClusterIP is immutable; changing the type to ClusterIP
releases the node ports.

Simplified: allocations are derived from the stored Services on each call rather than kept in
bitmaps, so there is no allocator state to persist or leak; addresses and ports are handed out
lowest first instead of at random.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/16")
KUBERNETES_SERVICE_IP = "10.96.0.1"
NODE_PORT_RANGE = range(30000, 32768)

Obj = dict[str, Any]


class AllocationError(ValueError):
    """The requested address or port is taken or out of range (a 422)."""


def used_ips(services: Iterable[Obj]) -> set[str]:
    out: set[str] = set()
    for svc in services:
        spec = svc.get("spec", {})
        for ip in spec.get("clusterIPs") or [spec.get("clusterIP")]:
            if ip and ip != "None":
                out.add(ip)
    return out


def allocate_ip(requested: str | None, used: set[str]) -> str:
    if requested:
        try:
            addr = ipaddress.ip_address(requested)
        except ValueError as exc:
            raise AllocationError(f"spec.clusterIP: Invalid value: {requested!r}") from exc
        if addr not in SERVICE_CIDR:
            raise AllocationError(
                f"spec.clusterIPs: Invalid value: {requested!r}: provided IP is not in the "
                f"valid range. The range of valid IPs is {SERVICE_CIDR}"
            )
        if requested in used:
            raise AllocationError(
                f"spec.clusterIPs: Invalid value: {requested!r}: provided IP is already allocated"
            )
        return requested
    for addr in SERVICE_CIDR.hosts():
        text = str(addr)
        if text != KUBERNETES_SERVICE_IP and text not in used:
            return text
    raise AllocationError("spec.clusterIPs: Internal error: range is full")


def used_node_ports(services: Iterable[Obj]) -> set[int]:
    out: set[int] = set()
    for svc in services:
        spec = svc.get("spec", {})
        for port in spec.get("ports") or []:
            if port.get("nodePort"):
                out.add(int(port["nodePort"]))
        if spec.get("healthCheckNodePort"):
            out.add(int(spec["healthCheckNodePort"]))
    return out


def allocate_port(requested: int | None, used: set[int], field: str) -> int:
    if requested:
        if requested not in NODE_PORT_RANGE:
            raise AllocationError(
                f"{field}: Invalid value: {requested}: provided port is not in the valid range. "
                f"The range of valid ports is 30000-32767"
            )
        if requested in used:
            raise AllocationError(
                f"{field}: Invalid value: {requested}: provided port is already allocated"
            )
        used.add(requested)
        return requested
    for port in NODE_PORT_RANGE:
        if port not in used:
            used.add(port)
            return port
    raise AllocationError(f"{field}: Internal error: range is full")


def assign(spec: Obj, old_spec: Obj | None, others: list[Obj]) -> None:
    """Fill in clusterIP(s), nodePorts and healthCheckNodePort on ``spec`` (in place)."""
    kind = spec.get("type", "ClusterIP")
    if kind == "ExternalName":
        for key in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
            spec.pop(key, None)
        return
    old_ip = (old_spec or {}).get("clusterIP")
    requested = spec.get("clusterIP") or (spec.get("clusterIPs") or [None])[0]
    if old_ip and old_ip != "None" and requested in (None, ""):
        requested = old_ip
    if old_ip and requested != old_ip:
        raise AllocationError("spec.clusterIPs[0]: Invalid value: field is immutable")
    if requested == "None":
        ip = "None"
    elif old_ip and requested == old_ip:
        ip = str(old_ip)
    else:
        ip = allocate_ip(requested, used_ips(others))
    spec["clusterIP"] = ip
    spec["clusterIPs"] = [ip]
    spec.setdefault("ipFamilies", ["IPv4"])
    spec.setdefault("ipFamilyPolicy", "SingleStack")
    ports = spec.get("ports") or []
    if kind not in ("NodePort", "LoadBalancer"):
        for port in ports:
            port.pop("nodePort", None)
        spec.pop("healthCheckNodePort", None)
        return
    used = used_node_ports(others)
    old_ports = {
        (p.get("port"), p.get("protocol", "TCP")): p.get("nodePort")
        for p in (old_spec or {}).get("ports") or []
    }
    for i, port in enumerate(ports):
        requested_port = port.get("nodePort") or old_ports.get(
            (port.get("port"), port.get("protocol"))
        )
        port["nodePort"] = allocate_port(requested_port, used, f"spec.ports[{i}].nodePort")
    if kind == "LoadBalancer" and spec.get("externalTrafficPolicy") == "Local":
        requested_hc = spec.get("healthCheckNodePort") or (old_spec or {}).get(
            "healthCheckNodePort"
        )
        spec["healthCheckNodePort"] = allocate_port(requested_hc, used, "spec.healthCheckNodePort")
    else:
        spec.pop("healthCheckNodePort", None)
