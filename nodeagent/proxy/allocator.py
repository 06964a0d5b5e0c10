"""Standalone mode's cluster IP and NodePort allocation, persisted across restarts.

Without an API server nobody assigns a Service its clusterIP or nodePorts, so the agent does,
from ``--service-cidr`` and ``--node-port-range``, and keeps the result in the state dir so a
restarted agent gives every Service the same addresses (clients and DNS entries elsewhere may
hold them).

``allocate`` is pure: (services, previous allocations, ranges) -> (allocations, errors).
Rules, in this order:

1. Services that held allocations before claim first (in key order), so an existing Service
   never loses its address to a newcomer; then the others, in key order.
2. An explicit clusterIP/nodePort is checked against the range and against what is taken.
   A taken or out-of-range value is an error for that Service, naming the field and the
   holder; the Service then gets nothing (no rules), and holds nothing either.
3. A Service without a clusterIP keeps the one it had if it is still free and in range,
   else gets the lowest free address. NodePorts likewise, per port, keyed by port name and
   protocol. One Service may use the same nodePort number for TCP and UDP, as Kubernetes
   allows; two Services never share one.
4. Headless and ExternalName Services get no clusterIP; only NodePort and LoadBalancer
   Services (unless ``allocateLoadBalancerNodePorts: false``) get nodePorts.
5. A LoadBalancer Service with ``externalTrafficPolicy: Local`` gets a health check node
   port from the same range and pool (kept under ``HEALTH_CHECK_KEY`` among its nodePorts),
   unless it names one.
6. The service CIDR is IPv4 only, so ``ipFamilyPolicy: RequireDualStack`` is an error (the
   API server refuses it on a single-stack cluster); PreferDualStack gets its IPv4 side.

In cluster mode the API server has allocated already: ``assigned`` reads a Service's
clusterIP and ports as they are, whatever ``--service-cidr`` says (k3s uses 10.43.0.0/16).

Allocations of Services that are gone are released. ``save`` writes JSON atomically.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nodeagent.fsutil import write_file_atomic
from nodeagent.model.service import IPFamilyPolicy, Service

FILE_VERSION = 1
HEALTH_CHECK_KEY = "healthCheckNodePort"  # never a ServicePort.key (those hold a "/")


@dataclass(frozen=True)
class Allocation:
    cluster_ip: str = ""  # "" for headless and ExternalName services
    # ServicePort.key -> port, and HEALTH_CHECK_KEY -> the health check node port
    node_ports: Mapping[str, int] = field(default_factory=dict)

    @property
    def health_check_node_port(self) -> int:
        return self.node_ports.get(HEALTH_CHECK_KEY, 0)


def assigned(service: Service) -> Allocation:
    """What the API server allocated to a cluster-mode Service, taken as it is."""
    spec = service.spec
    ports = {p.key: p.node_port for p in spec.ports if p.node_port}
    if spec.needs_health_check and spec.health_check_node_port:
        ports[HEALTH_CHECK_KEY] = spec.health_check_node_port
    return Allocation(cluster_ip="" if spec.headless else spec.cluster_ip, node_ports=ports)


@dataclass(frozen=True)
class AllocationError:
    service: str  # namespace/name
    field: str  # e.g. spec.clusterIP, spec.ports[1].nodePort
    message: str


@dataclass(frozen=True)
class Ranges:
    service_cidr: ipaddress.IPv4Network
    node_ports: tuple[int, int]  # inclusive

    def has_port(self, port: int) -> bool:
        return self.node_ports[0] <= port <= self.node_ports[1]

    def has_ip(self, ip: ipaddress.IPv4Address) -> bool:
        net = self.service_cidr
        if ip not in net:
            return False
        # The network and broadcast addresses are never handed out (but a /31 or /32 has none).
        return net.prefixlen >= 31 or ip not in (net.network_address, net.broadcast_address)


class _Pool:
    """What is taken in one allocation pass: address or port -> holding service."""

    def __init__(self) -> None:
        self.ips: dict[ipaddress.IPv4Address, str] = {}
        self.ports: dict[int, str] = {}


def allocate(
    services: Mapping[str, Service], previous: Mapping[str, Allocation], ranges: Ranges
) -> tuple[dict[str, Allocation], list[AllocationError]]:
    pool = _Pool()
    results: dict[str, Allocation] = {}
    errors: list[AllocationError] = []
    order = sorted(services, key=lambda key: (key not in previous, key))
    # First pass: explicit values and previous holdings. Second pass: fill in the rest, so
    # that dynamic picks never take a value someone asked for by name.
    claims: dict[str, _Claim] = {}
    for key in order:
        claim = _claim(services[key], previous.get(key), pool, ranges)
        if claim.errors:
            claim.release(pool)
            errors.extend(claim.errors)
        else:
            claims[key] = claim
    free_ips = _free_addresses(ranges.service_cidr, ranges, pool)
    free_ports = _free_ports(ranges, pool)
    for key in order:
        pending = claims.get(key)
        if pending is None:
            continue
        claim = pending
        problem = claim.fill(free_ips, free_ports, pool)
        if problem is not None:
            claim.release(pool)
            errors.append(problem)
            continue
        results[key] = Allocation(cluster_ip=claim.cluster_ip, node_ports=dict(claim.node_ports))
    return results, errors


@dataclass
class _Claim:
    service: Service
    cluster_ip: str = ""
    needs_ip: bool = False
    node_ports: dict[str, int] = field(default_factory=dict)
    needs_ports: list[str] = field(default_factory=list)  # port keys still without a port
    errors: list[AllocationError] = field(default_factory=list)

    def error(self, where: str, message: str) -> None:
        self.errors.append(AllocationError(self.service.key, where, message))

    def release(self, pool: _Pool) -> None:
        for ip, holder in list(pool.ips.items()):
            if holder == self.service.key:
                del pool.ips[ip]
        for port, holder in list(pool.ports.items()):
            if holder == self.service.key:
                del pool.ports[port]

    def fill(
        self, free_ips: Iterator[ipaddress.IPv4Address], free_ports: Iterator[int], pool: _Pool
    ) -> AllocationError | None:
        key = self.service.key
        if self.needs_ip:
            ip = next((a for a in free_ips if a not in pool.ips), None)
            if ip is None:
                return AllocationError(key, "spec.clusterIP", "the service CIDR is full")
            pool.ips[ip] = key
            self.cluster_ip = str(ip)
        for port_key in self.needs_ports:
            port = next((p for p in free_ports if p not in pool.ports), None)
            if port is None:
                return AllocationError(key, "spec.ports", "the node-port range is exhausted")
            pool.ports[port] = key
            self.node_ports[port_key] = port
        return None


def _claim(service: Service, before: Allocation | None, pool: _Pool, ranges: Ranges) -> _Claim:
    claim = _Claim(service)
    spec = service.spec
    if spec.ip_family_policy is IPFamilyPolicy.REQUIRE_DUAL_STACK:
        claim.error(
            "spec.ipFamilyPolicy",
            f"RequireDualStack needs an IPv6 service range, but the service CIDR "
            f"{ranges.service_cidr} is IPv4 only (use PreferDualStack or SingleStack)",
        )
        return claim
    if spec.proxied:
        _claim_ip(claim, before, pool, ranges)
    if spec.wants_node_ports or any(p.node_port for p in spec.ports):
        _claim_ports(claim, before, pool, ranges)
    if spec.needs_health_check:
        _claim_health_check(claim, before, pool, ranges)
    return claim


def _claim_health_check(
    claim: _Claim, before: Allocation | None, pool: _Pool, ranges: Ranges
) -> None:
    key = claim.service.key
    wanted = claim.service.spec.health_check_node_port
    where = "spec.healthCheckNodePort"
    if wanted:
        lo, hi = ranges.node_ports
        if not ranges.has_port(wanted):
            claim.error(where, f"{wanted} is not in the node-port range {lo}-{hi}")
            return
        holder = pool.ports.get(wanted)
        if holder is not None and holder != key:
            claim.error(where, f"{wanted} is already allocated to Service {holder}")
            return
        pool.ports[wanted] = key
        claim.node_ports[HEALTH_CHECK_KEY] = wanted
        return
    kept = before.health_check_node_port if before is not None else 0
    if kept and ranges.has_port(kept) and pool.ports.get(kept, key) == key:
        pool.ports[kept] = key
        claim.node_ports[HEALTH_CHECK_KEY] = kept
    else:
        claim.needs_ports.append(HEALTH_CHECK_KEY)


def _claim_ip(claim: _Claim, before: Allocation | None, pool: _Pool, ranges: Ranges) -> None:
    key = claim.service.key
    wanted = claim.service.spec.cluster_ip
    if wanted:
        ip = ipaddress.IPv4Address(wanted)  # validated as IPv4 by the model
        if not ranges.has_ip(ip):
            claim.error(
                "spec.clusterIP",
                f"{wanted} is not in the service CIDR {ranges.service_cidr} (or is its "
                "network or broadcast address)",
            )
            return
        holder = pool.ips.get(ip)
        if holder is not None and holder != key:
            claim.error("spec.clusterIP", f"{wanted} is already allocated to Service {holder}")
            return
        pool.ips[ip] = key
        claim.cluster_ip = wanted
        return
    if before is not None and before.cluster_ip:
        ip = ipaddress.IPv4Address(before.cluster_ip)
        if ranges.has_ip(ip) and ip not in pool.ips:
            pool.ips[ip] = key
            claim.cluster_ip = before.cluster_ip
            return
    claim.needs_ip = True


def _claim_ports(claim: _Claim, before: Allocation | None, pool: _Pool, ranges: Ranges) -> None:
    key = claim.service.key
    spec = claim.service.spec
    earlier = before.node_ports if before is not None else {}
    lo, hi = ranges.node_ports
    for i, port in enumerate(spec.ports):
        where = f"spec.ports[{i}].nodePort"
        if port.node_port:
            if not ranges.has_port(port.node_port):
                claim.error(where, f"{port.node_port} is not in the node-port range {lo}-{hi}")
                continue
            holder = pool.ports.get(port.node_port)
            if holder is not None and holder != key:
                claim.error(where, f"{port.node_port} is already allocated to Service {holder}")
                continue
            pool.ports[port.node_port] = key
            claim.node_ports[port.key] = port.node_port
        elif spec.wants_node_ports:
            kept = earlier.get(port.key, 0)
            if kept and ranges.has_port(kept) and pool.ports.get(kept, key) == key:
                pool.ports[kept] = key
                claim.node_ports[port.key] = kept
            else:
                claim.needs_ports.append(port.key)


def _free_addresses(
    net: ipaddress.IPv4Network, ranges: Ranges, pool: _Pool
) -> Iterator[ipaddress.IPv4Address]:
    """Candidate addresses, lowest first; callers skip those taken meanwhile."""
    first = int(net.network_address)
    for n in range(first, first + net.num_addresses):
        ip = ipaddress.IPv4Address(n)
        if ranges.has_ip(ip) and ip not in pool.ips:
            yield ip


def _free_ports(ranges: Ranges, pool: _Pool) -> Iterator[int]:
    lo, hi = ranges.node_ports
    for port in range(lo, hi + 1):
        if port not in pool.ports:
            yield port


# --- Persistence -------------------------------------------------------------------------


def to_json(allocations: Mapping[str, Allocation]) -> dict[str, object]:
    return {
        "version": FILE_VERSION,
        "services": {
            key: {"clusterIP": a.cluster_ip, "nodePorts": dict(sorted(a.node_ports.items()))}
            for key, a in sorted(allocations.items())
        },
    }


def from_json(doc: object) -> dict[str, Allocation]:
    """Parse what ``to_json`` wrote; entries that make no sense are dropped, not fatal."""
    if not isinstance(doc, dict) or doc.get("version") != FILE_VERSION:
        return {}
    services = doc.get("services")
    if not isinstance(services, dict):
        return {}
    found: dict[str, Allocation] = {}
    for key, entry in services.items():
        if not isinstance(key, str) or not isinstance(entry, dict):
            continue
        ip = entry.get("clusterIP", "")
        ports = entry.get("nodePorts", {})
        if not isinstance(ip, str) or not isinstance(ports, dict):
            continue
        with contextlib.suppress(ValueError):
            if ip:
                ipaddress.IPv4Address(ip)
            found[key] = Allocation(
                cluster_ip=ip,
                node_ports={
                    str(k): v
                    for k, v in ports.items()
                    if isinstance(v, int) and not isinstance(v, bool) and 0 < v < 65536
                },
            )
    return found


def load(path: Path) -> dict[str, Allocation]:
    """The saved allocations; none if the file is missing or unreadable."""
    try:
        return from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return {}


def save(path: Path, allocations: Mapping[str, Allocation]) -> None:
    """Write atomically: a crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomic(path, json.dumps(to_json(allocations), indent=2) + "\n")
