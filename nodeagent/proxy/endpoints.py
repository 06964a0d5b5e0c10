"""Standalone endpoints: Services (+ allocations) and local pods -> the proxy's state. Pure.

In cluster mode EndpointSlices come from the API server; standalone, this module plays the
endpoint-slice controller for the pods of this node:

- a pod backs a Service when its labels include every pair of the Service's selector (a
  Service without a selector, or with an empty one, has no endpoints), it has an IP, and it
  has not finished (phase Succeeded or Failed);
- conditions as in an EndpointSlice: ``serving`` is the pod's Ready condition, ``terminating``
  that its worker is terminating, ``ready`` = serving and not terminating. With
  ``publishNotReadyAddresses`` every endpoint counts as ready and serving;
- a named targetPort is resolved per pod, from its containers' ports with that name and the
  service port's protocol; a pod without such a port is no endpoint of that service port;
- every endpoint is local: all these pods run on this node.

Pods are described by ``PodView``, built from the kubelet's status snapshot (plain JSON, the
same document ``nodeagent status`` shows) plus the pod's ports. A terminating pod whose
manifest is already gone has no spec in the desired state any more, so ``PortMemory``
remembers the ports of each pod uid for as long as the pod is listed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nodeagent.model.pod import ContainerPort, Pod
from nodeagent.model.service import Service, ServiceType, SessionAffinity, TrafficPolicy
from nodeagent.proxy.allocator import Allocation
from nodeagent.proxy.state import Endpoint, ServicePortInfo, ServicePortName

FINISHED_PHASES = ("Succeeded", "Failed")


@dataclass(frozen=True)
class PodView:
    """What the proxy needs of one pod."""

    namespace: str
    name: str
    ip: str
    labels: Mapping[str, str] = field(default_factory=dict)
    ready: bool = False  # the Ready condition is True
    terminating: bool = False
    finished: bool = False  # phase Succeeded or Failed
    ports: tuple[ContainerPort, ...] = ()


def service_ports(
    service: Service, allocation: Allocation
) -> dict[ServicePortName, ServicePortInfo]:
    """The service ports of one allocated Service; none for headless or ExternalName, nor
    for a Service another proxy serves."""
    spec = service.spec
    if not service.proxied or not allocation.cluster_ip:
        return {}
    timeout = spec.affinity_timeout_s if spec.session_affinity is SessionAffinity.CLIENT_IP else 0
    ingress = tuple(i.ip for i in service.load_balancer_ingress if not i.proxied)
    found: dict[ServicePortName, ServicePortInfo] = {}
    for port in spec.ports:
        key = ServicePortName(service.namespace, service.name, port.name, port.protocol.value)
        found[key] = ServicePortInfo(
            name=key,
            cluster_ip=allocation.cluster_ip,
            port=port.port,
            protocol=port.protocol,
            node_port=allocation.node_ports.get(port.key, 0),
            external_ips=spec.external_ips,
            load_balancer_ips=ingress if spec.type is ServiceType.LOAD_BALANCER else (),
            source_ranges=spec.source_ranges if spec.type is ServiceType.LOAD_BALANCER else (),
            affinity_timeout_s=timeout,
            external_policy_local=spec.external_traffic_policy is TrafficPolicy.LOCAL,
            internal_policy_local=spec.internal_traffic_policy is TrafficPolicy.LOCAL,
        )
    return found


def service_endpoints(
    service: Service, pods: Sequence[PodView]
) -> dict[ServicePortName, tuple[Endpoint, ...]]:
    """Endpoints per service port of one Service, sorted by address."""
    spec = service.spec
    if not service.proxied or not spec.selector:
        return {}
    selector = spec.selector.items()
    members = [
        p
        for p in pods
        if p.namespace == service.namespace
        and p.ip
        and not p.finished
        and all(p.labels.get(k) == v for k, v in selector)
    ]
    found: dict[ServicePortName, tuple[Endpoint, ...]] = {}
    for port in spec.ports:
        key = ServicePortName(service.namespace, service.name, port.name, port.protocol.value)
        endpoints: set[Endpoint] = set()
        for pod in members:
            number = _resolve(port.target_port, port.protocol.value, pod.ports)
            if number is None:
                continue
            serving = pod.ready or spec.publish_not_ready_addresses
            ready = serving and (not pod.terminating or spec.publish_not_ready_addresses)
            endpoints.add(
                Endpoint(
                    ip=pod.ip,
                    port=number,
                    ready=ready,
                    serving=serving,
                    terminating=pod.terminating,
                )
            )
        found[key] = tuple(sorted(endpoints))
    return found


def _resolve(target: int | str, protocol: str, ports: Iterable[ContainerPort]) -> int | None:
    if isinstance(target, int):
        return target
    for port in ports:
        if port.name == target and port.protocol == protocol:
            return port.container_port
    return None


# --- From the kubelet's snapshot ---------------------------------------------------------


class PortMemory:
    """Container ports by pod uid, kept while the pod is still listed by the kubelet."""

    def __init__(self) -> None:
        self._ports: dict[str, tuple[ContainerPort, ...]] = {}

    def views(
        self, snapshot: Sequence[Mapping[str, Any]], desired: Mapping[str, Pod]
    ) -> list[PodView]:
        """PodViews for the pods in ``snapshot`` (the kubelet's status list)."""
        for pod in desired.values():
            self._ports[pod.uid] = tuple(port for c in pod.spec.containers for port in c.ports)
        views: list[PodView] = []
        listed: set[str] = set()
        for entry in snapshot:
            view = _view(entry, self._ports)
            if view is not None:
                views.append(view)
            uid = _map(entry.get("metadata")).get("uid")
            if isinstance(uid, str):
                listed.add(uid)
        desired_uids = {p.uid for p in desired.values()}
        for uid in [u for u in self._ports if u not in listed and u not in desired_uids]:
            del self._ports[uid]
        return views


def _view(
    entry: Mapping[str, Any], ports: Mapping[str, tuple[ContainerPort, ...]]
) -> PodView | None:
    meta = _map(entry.get("metadata"))
    status = _map(entry.get("status"))
    name, namespace, uid = meta.get("name"), meta.get("namespace"), meta.get("uid")
    if not isinstance(name, str) or not isinstance(namespace, str):
        return None
    ip = status.get("podIP")
    labels = _map(meta.get("labels"))
    conditions = status.get("conditions")
    ready = isinstance(conditions, list) and any(
        isinstance(c, Mapping) and c.get("type") == "Ready" and c.get("status") == "True"
        for c in conditions
    )
    return PodView(
        namespace=namespace,
        name=name,
        ip=ip if isinstance(ip, str) else "",
        labels={k: v for k, v in labels.items() if isinstance(k, str) and isinstance(v, str)},
        ready=ready,
        terminating=entry.get("worker") == "terminating",
        finished=status.get("phase") in FINISHED_PHASES,
        ports=ports.get(uid, ()) if isinstance(uid, str) else (),
    )


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def settled(snapshot: Sequence[Mapping[str, Any]]) -> bool:
    """Whether every pod in the kubelet's list has published a real status (conditions)."""
    return all("conditions" in _map(entry.get("status")) for entry in snapshot)
