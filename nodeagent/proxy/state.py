"""The proxy's view of the world: service ports and their endpoints, as plain frozen values.

Everything the rule builder needs is here and nothing else. A Service with three ports is
three ``ServicePortInfo`` values under three ``ServicePortName`` keys; that key is the unit
of change tracking, of partial syncs and of chain naming, as it is in kube-proxy.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

from nodeagent.model.service import Protocol


@dataclass(frozen=True, order=True)
class ServicePortName:
    """One port of one Service: ``namespace/name:port`` (``namespace/name`` if unnamed)."""

    namespace: str
    name: str
    port: str  # the port's name; "" for the single unnamed port of a Service
    protocol: str  # "TCP", "UDP" or "SCTP"

    def __post_init__(self) -> None:
        # Trackers hash every key on every pass (50k lookups at 5000 services); the
        # generated __hash__ rebuilds a 4-tuple each time, so compute it once.
        object.__setattr__(
            self, "_hash", hash((self.namespace, self.name, self.port, self.protocol))
        )

    def __hash__(self) -> int:
        return self._hash  # type: ignore[no-any-return,attr-defined]

    def __str__(self) -> str:
        return self.text

    @functools.cached_property
    def text(self) -> str:  # computed once: chain names and comments use it many times
        base = f"{self.namespace}/{self.name}"
        return f"{base}:{self.port}" if self.port else base

    @property
    def service(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class ServicePortInfo:
    """What the rules of one service port depend on, except its endpoints."""

    name: ServicePortName
    cluster_ip: str
    port: int
    protocol: Protocol
    node_port: int = 0  # 0: no NodePort
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()
    # loadBalancerSourceRanges (IPv4 networks): only these sources reach load_balancer_ips;
    # empty: any source.
    source_ranges: tuple[str, ...] = ()
    affinity_timeout_s: int = 0  # 0: no session affinity; else ClientIP for this long
    external_policy_local: bool = False  # externalTrafficPolicy: Local
    internal_policy_local: bool = False  # internalTrafficPolicy: Local

    @property
    def externally_accessible(self) -> bool:
        return bool(self.node_port or self.external_ips or self.load_balancer_ips)

    @property
    def external_local(self) -> bool:
        return self.external_policy_local and self.externally_accessible

    @property
    def uses_cluster_endpoints(self) -> bool:
        # External traffic from pods and from the node itself is short-circuited to the
        # cluster-wide endpoints even under externalTrafficPolicy Local (as kube-proxy does).
        return not self.internal_policy_local or self.externally_accessible

    @property
    def uses_local_endpoints(self) -> bool:
        return self.internal_policy_local or self.external_local


@dataclass(frozen=True, order=True)
class Endpoint:
    """One backend of one service port, with the EndpointSlice conditions."""

    ip: str
    port: int
    ready: bool = True  # serving and not terminating
    serving: bool = True  # passes readiness, whether or not it is terminating
    terminating: bool = False
    local: bool = True  # on this node (always, in standalone mode)

    def __str__(self) -> str:
        return self.address

    @functools.cached_property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"


ServiceMap = Mapping[ServicePortName, ServicePortInfo]
EndpointsMap = Mapping[ServicePortName, tuple[Endpoint, ...]]
