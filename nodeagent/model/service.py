"""Typed views of the Service fields nodeagent honours, and their validation.

A Service is read once, here, into frozen dataclasses; the proxy never looks at the raw dict
again (the raw document is kept only to show it back in status). As with pods, a field is
either honoured, safely ignored on one node (``_SPEC_IGNORED``), or rejected by name: a
Service must never be programmed with part of its spec silently dropped.

Defaults are the API server's: type ClusterIP, protocol TCP, targetPort = port,
sessionAffinity None with a 10800 s timeout, both traffic policies Cluster.

What stays for later, because it depends on configuration or on other Services, is checked
by the proxy's allocator and reported with the same field paths: that a clusterIP lies in the
service CIDR and a nodePort in the node-port range, and that neither is taken.

Dual-stack Services (``ipFamilies``, ``clusterIPs``, ``ipFamilyPolicy``) are read whole, but
the proxy programs IPv4 only: the IPv4 side is served, and every IPv6 address (the second
clusterIP, IPv6 externalIPs, ingress IPs and source ranges) is listed in ``not_programmed``
for status, instead of dropping the Service. A Service with no IPv4 side at all (IPv6
single-stack) is an error that says so. As the API server does, an unset ``ipFamilyPolicy``
with two families or two clusterIPs means RequireDualStack; whether the node can honour
RequireDualStack is the allocator's question (standalone mode: it cannot).

A Service labelled ``service.kubernetes.io/service-proxy-name`` belongs to another proxy, and
one labelled ``service.kubernetes.io/headless`` has no virtual IP to serve: ``Service.proxied``
is false for both (kube-proxy's label selector), whatever their spec.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from nodeagent.model.fields import Node

HEADLESS = "None"  # spec.clusterIP of a headless Service: no virtual IP, no proxying
SERVICE_PROXY_NAME_LABEL = "service.kubernetes.io/service-proxy-name"  # another proxy's
HEADLESS_LABEL = "service.kubernetes.io/headless"  # kube-proxy skips what carries it
SOURCE_RANGES_ANNOTATION = "service.beta.kubernetes.io/load-balancer-source-ranges"
DEFAULT_AFFINITY_TIMEOUT_S = 10800  # three hours, the API default
MAX_AFFINITY_TIMEOUT_S = 86400

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
# IANA service name, as a named targetPort must be: at most 15 characters, a letter in it.
_IANA_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")

_SPEC_KNOWN = (
    "type",
    "ports",
    "selector",
    "clusterIP",
    "clusterIPs",
    "externalIPs",
    "sessionAffinity",
    "sessionAffinityConfig",
    "externalTrafficPolicy",
    "internalTrafficPolicy",
    "externalName",
    "publishNotReadyAddresses",
    "allocateLoadBalancerNodePorts",
    "ipFamilies",
    "ipFamilyPolicy",
    "loadBalancerSourceRanges",
    "healthCheckNodePort",
)
# No effect on one node without a cloud provider.
_SPEC_IGNORED = (
    "loadBalancerIP",
    "loadBalancerClass",
    "trafficDistribution",
)
_PORT_KNOWN = ("name", "protocol", "port", "targetPort", "nodePort", "appProtocol")


class ServiceType(enum.Enum):
    CLUSTER_IP = "ClusterIP"  # a virtual IP reachable from the node and its pods
    NODE_PORT = "NodePort"  # ClusterIP plus a port on every local address of the node
    LOAD_BALANCER = "LoadBalancer"  # NodePort plus the ingress IPs a balancer reports
    EXTERNAL_NAME = "ExternalName"  # a DNS alias: no virtual IP and no rules at all


class Protocol(enum.Enum):
    TCP = "TCP"  # the default
    UDP = "UDP"  # stale conntrack entries are cleaned when endpoints go
    SCTP = "SCTP"  # needs the kernel's SCTP conntrack/NAT support


class TrafficPolicy(enum.Enum):
    CLUSTER = "Cluster"  # any usable endpoint; external traffic is masqueraded
    LOCAL = "Local"  # only endpoints on this node; external clients keep their source IP


class IPFamilyPolicy(enum.Enum):
    SINGLE_STACK = "SingleStack"  # one family (the default with one family)
    PREFER_DUAL_STACK = "PreferDualStack"  # both where the cluster has both, else one
    REQUIRE_DUAL_STACK = "RequireDualStack"  # both, or the Service is refused


class SessionAffinity(enum.Enum):
    NONE = "None"  # every new connection is balanced afresh
    CLIENT_IP = "ClientIP"  # a client IP sticks to one endpoint for timeoutSeconds


@dataclass(frozen=True)
class ServicePort:
    name: str  # "" only when the Service has a single port
    protocol: Protocol
    port: int
    target_port: int | str  # a number, or the name of a container port
    node_port: int = 0  # 0: none asked for (allocated for NodePort and LoadBalancer)

    @property
    def key(self) -> str:
        """Identity of the port within its Service, stable across reordering."""
        return f"{self.name}/{self.protocol.value}"


@dataclass(frozen=True)
class LoadBalancerIngress:
    ip: str
    proxied: bool = False  # ipMode Proxy: the balancer proxies itself; no VIP rules here


@dataclass(frozen=True)
class ServiceSpec:
    type: ServiceType = ServiceType.CLUSTER_IP
    ports: tuple[ServicePort, ...] = ()
    # None: no selector, so the endpoints are not derived from pods (standalone: none at all).
    selector: Mapping[str, str] | None = None
    cluster_ip: str = ""  # "" means "allocate one"; HEADLESS means none
    external_ips: tuple[str, ...] = ()
    session_affinity: SessionAffinity = SessionAffinity.NONE
    affinity_timeout_s: int = DEFAULT_AFFINITY_TIMEOUT_S
    external_traffic_policy: TrafficPolicy = TrafficPolicy.CLUSTER
    internal_traffic_policy: TrafficPolicy = TrafficPolicy.CLUSTER
    external_name: str = ""
    publish_not_ready_addresses: bool = False
    allocate_load_balancer_node_ports: bool = True
    ip_family_policy: IPFamilyPolicy = IPFamilyPolicy.SINGLE_STACK
    ipv6_cluster_ip: str = ""  # the IPv6 side of a dual-stack Service (not programmed)
    source_ranges: tuple[str, ...] = ()  # IPv4 loadBalancerSourceRanges, as networks
    health_check_node_port: int = 0  # 0: none given (allocated when needs_health_check)
    # IPv6 parts the proxy does not program, as "field: address" for status.
    not_programmed: tuple[str, ...] = ()

    @property
    def needs_health_check(self) -> bool:
        """A health check node port is served (apiservice.NeedsHealthCheck)."""
        return (
            self.type is ServiceType.LOAD_BALANCER
            and self.external_traffic_policy is TrafficPolicy.LOCAL
        )

    @property
    def headless(self) -> bool:
        return self.cluster_ip == HEADLESS

    @property
    def wants_node_ports(self) -> bool:
        if self.type is ServiceType.NODE_PORT:
            return True
        return self.type is ServiceType.LOAD_BALANCER and self.allocate_load_balancer_node_ports

    @property
    def proxied(self) -> bool:
        """Whether the proxy writes rules for it at all (not ExternalName, not headless)."""
        return self.type is not ServiceType.EXTERNAL_NAME and not self.headless


@dataclass(frozen=True)
class Service:
    """A Service as the proxy sees it. ``raw`` is the document as given, for status only."""

    name: str
    namespace: str
    spec: ServiceSpec = ServiceSpec()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    load_balancer_ingress: tuple[LoadBalancerIngress, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def proxied(self) -> bool:
        """Whether this proxy writes rules for it: not another proxy's, not headless."""
        if SERVICE_PROXY_NAME_LABEL in self.labels or HEADLESS_LABEL in self.labels:
            return False
        return self.spec.proxied


def read_service(
    root: Node, *, name: str, namespace: str, raw: Mapping[str, Any], source: str
) -> Service:
    """The Service below ``root`` (whose metadata identity the caller checked already).

    Problems are recorded on ``root``'s error list; the caller raises them together.
    """
    meta = root.child("metadata")
    status = root.child("status")
    status.reject_unknown(("loadBalancer",), ("conditions",))
    annotations = meta.string_map("annotations")
    spec = read_spec(root.child("spec"))
    ingress, skipped = _ingress(status.child("loadBalancer"))
    ranges = spec.source_ranges
    more: tuple[str, ...] = ()
    if not root.child("spec").present("loadBalancerSourceRanges"):
        # The older annotation counts only when the field is unset (as the service helper).
        given = annotations.get(SOURCE_RANGES_ANNOTATION, "")
        ranges, more = _source_ranges(
            meta.child("annotations"), SOURCE_RANGES_ANNOTATION, given.split(",")
        )
    return Service(
        name=name,
        namespace=namespace,
        spec=replace(
            spec, source_ranges=ranges, not_programmed=spec.not_programmed + more + skipped
        ),
        labels=meta.string_map("labels"),
        annotations=annotations,
        load_balancer_ingress=ingress,
        raw=raw,
        source=source,
    )


def read_spec(spec: Node) -> ServiceSpec:
    spec.reject_unknown(_SPEC_KNOWN, _SPEC_IGNORED)
    kind = ServiceType(spec.enum_value("type", [t.value for t in ServiceType], default="ClusterIP"))
    cluster_ip, ipv6_cluster_ip = _cluster_ips(spec, kind)
    ports = _ports(spec, kind, headless=cluster_ip == HEADLESS)
    affinity = SessionAffinity(
        spec.enum_value("sessionAffinity", [a.value for a in SessionAffinity], default="None")
    )
    external_ips, skipped = _addresses(spec, "externalIPs")
    if kind is ServiceType.EXTERNAL_NAME:
        for key in ("externalIPs", "selector"):
            if spec.present(key):
                spec.error("must not be set for an ExternalName service", key)
    accessible = kind in (ServiceType.NODE_PORT, ServiceType.LOAD_BALANCER) or bool(external_ips)
    if spec.present("externalTrafficPolicy") and not accessible:
        spec.error(
            "may only be set for externally-accessible services (NodePort, LoadBalancer, "
            "or with externalIPs)",
            "externalTrafficPolicy",
        )
    policies = [p.value for p in TrafficPolicy]
    selector = spec.string_map("selector") if spec.present("selector") else None
    family_policy = _ip_families(spec, cluster_ip, ipv6_cluster_ip)
    ranges, skipped_ranges = _source_ranges(
        spec, "loadBalancerSourceRanges", spec.strings("loadBalancerSourceRanges")
    )
    if ranges and kind is not ServiceType.LOAD_BALANCER:
        spec.error("may only be set for a LoadBalancer service", "loadBalancerSourceRanges")
    external_policy = TrafficPolicy(
        spec.enum_value("externalTrafficPolicy", policies, default="Cluster")
    )
    v6 = (f"spec.clusterIPs: {ipv6_cluster_ip}",) if ipv6_cluster_ip else ()
    return ServiceSpec(
        type=kind,
        ports=ports,
        selector=selector or None,  # an empty selector selects nothing, as no selector
        cluster_ip=cluster_ip,
        external_ips=external_ips,
        session_affinity=affinity,
        affinity_timeout_s=_affinity_timeout(spec, affinity),
        external_traffic_policy=external_policy,
        internal_traffic_policy=TrafficPolicy(
            spec.enum_value("internalTrafficPolicy", policies, default="Cluster")
        ),
        external_name=_external_name(spec, kind),
        publish_not_ready_addresses=spec.boolean("publishNotReadyAddresses"),
        allocate_load_balancer_node_ports=_allocate_lb_node_ports(spec, kind),
        ip_family_policy=family_policy,
        ipv6_cluster_ip=ipv6_cluster_ip,
        source_ranges=ranges,
        health_check_node_port=_health_check_node_port(spec, kind, external_policy),
        not_programmed=v6 + skipped + skipped_ranges,
    )


def _cluster_ips(spec: Node, kind: ServiceType) -> tuple[str, str]:
    """(IPv4 clusterIP, IPv6 clusterIP) from clusterIP and clusterIPs; "" where none."""
    value = spec.string("clusterIP")
    ips = spec.strings("clusterIPs")
    if len(ips) > 2:
        spec.error("at most two addresses, one per IP family", "clusterIPs")
    if ips and value and ips[0] != value:
        spec.error(f"must begin with spec.clusterIP {value!r}", "clusterIPs")
    ips = ips or ((value,) if value else ())
    value = value or (ips[0] if ips else "")
    if kind is ServiceType.EXTERNAL_NAME:
        if value not in ("", HEADLESS):
            spec.error("must be empty for an ExternalName service", "clusterIP")
        return "", ""
    if value in ("", HEADLESS):
        if value == HEADLESS and kind is not ServiceType.CLUSTER_IP:
            spec.error(f"may not be None for a {kind.value} service", "clusterIP")
        if value == HEADLESS and len(ips) > 1:
            spec.error("must hold only None for a headless service", "clusterIPs")
        return value, ""
    found: dict[int, str] = {}
    for i, ip in enumerate(ips[:2]):
        where = "clusterIP" if i == 0 else f"clusterIPs[{i}]"
        address = _address(spec, where, ip)
        if address is None:
            continue
        if address.version in found:
            spec.error(f"{ip!r}: at most one address per IP family", where)
        found[address.version] = ip
    if 6 in found and 4 not in found:
        spec.error(
            f"{found[6]!r}: an IPv6-only service cannot be served: nodeagent's proxy "
            "programs IPv4 only",
            "clusterIP",
        )
    return found.get(4, ""), found.get(6, "")


def _address(
    node: Node, key: str, value: str
) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        node.error(f"{value!r} is not a valid IP address", key)
        return None


def _addresses(spec: Node, key: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(IPv4 addresses, "field: address" of the IPv6 ones, which are not programmed)."""
    found: list[str] = []
    skipped: list[str] = []
    for i, value in enumerate(spec.strings(key)):
        item = f"{key}[{i}]"
        address = _address(spec, item, value)
        if address is None:
            continue
        if address.is_loopback or address.is_link_local or address.is_multicast:
            spec.error(f"{value!r} may not be a loopback, link-local or multicast address", item)
        elif address.is_unspecified:
            spec.error(f"{value!r} is not a usable address", item)
        elif address.version == 6:
            skipped.append(f"spec.{item}: {value}")
        elif value not in found:
            found.append(value)
    return tuple(found), tuple(skipped)


def _source_ranges(
    node: Node, key: str, values: Iterable[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(IPv4 networks, "field: range" of the IPv6 ones). Whitespace around an item is
    trimmed, as kube-proxy does (the API's validation lets it through)."""
    found: list[str] = []
    skipped: list[str] = []
    for i, raw in enumerate(values):
        value = raw.strip()
        if not value:
            continue
        try:
            net = ipaddress.ip_network(value, strict=False)
        except ValueError:
            node.error(f"{value!r} is not a valid CIDR (for example 203.0.113.0/24)", f"{key}[{i}]")
            continue
        if net.version == 6:
            skipped.append(f"{node.path}.{key}[{i}]: {value}")
        elif str(net) not in found:
            found.append(str(net))
    return tuple(found), tuple(skipped)


def _ports(spec: Node, kind: ServiceType, *, headless: bool) -> tuple[ServicePort, ...]:
    items = spec.items("ports")
    if not items and kind is not ServiceType.EXTERNAL_NAME and not headless:
        spec.error("at least one port is required", "ports")
    ports = tuple(_port(p, kind, single=len(items) == 1) for p in items)
    names: set[str] = set()
    pairs: set[tuple[int, Protocol]] = set()
    node_ports: set[tuple[int, Protocol]] = set()
    for i, port in enumerate(ports):
        where = f"ports[{i}]"
        if port.name and port.name in names:
            spec.error(f"duplicate port name {port.name!r}", f"{where}.name")
        names.add(port.name)
        if (port.port, port.protocol) in pairs:
            spec.error(f"duplicate port {port.port}/{port.protocol.value}", f"{where}.port")
        pairs.add((port.port, port.protocol))
        if port.node_port and (port.node_port, port.protocol) in node_ports:
            spec.error(f"duplicate nodePort {port.node_port}", f"{where}.nodePort")
        node_ports.add((port.node_port, port.protocol))
    return ports


def _port(p: Node, kind: ServiceType, *, single: bool) -> ServicePort:
    p.reject_unknown(_PORT_KNOWN)
    name = p.string("name")
    if name and not _DNS1123_LABEL.match(name):
        p.error(f"{name!r} is not a valid DNS-1123 label", "name")
    if not name and not single:
        p.error("is required when a service has more than one port", "name")
    number = p.integer("port", default=0, minimum=0)
    if not 1 <= number <= 65535:
        p.error("must be a port number 1-65535", "port")
    protocol = Protocol(p.enum_value("protocol", [x.value for x in Protocol], default="TCP"))
    target = p.int_or_string("targetPort")
    if target is None or target == 0:
        target = number
    elif isinstance(target, int) and not 1 <= target <= 65535:
        p.error("must be a port number 1-65535", "targetPort")
    elif isinstance(target, str) and not _IANA_SVC_NAME.match(target):
        p.error(f"{target!r} is not a valid port name (at most 15 of a-z, 0-9, '-')", "targetPort")
    node_port = p.integer("nodePort", default=0, minimum=0)
    if node_port > 65535:
        p.error("must be a port number 1-65535", "nodePort")
    if node_port and kind not in (ServiceType.NODE_PORT, ServiceType.LOAD_BALANCER):
        p.error(f"may not be used for a {kind.value} service", "nodePort")
    return ServicePort(
        name=name, protocol=protocol, port=number, target_port=target, node_port=node_port
    )


def _affinity_timeout(spec: Node, affinity: SessionAffinity) -> int:
    if not spec.present("sessionAffinityConfig"):
        return DEFAULT_AFFINITY_TIMEOUT_S
    config = spec.child("sessionAffinityConfig")
    config.reject_unknown(("clientIP",))
    client = config.child("clientIP")
    client.reject_unknown(("timeoutSeconds",))
    if affinity is not SessionAffinity.CLIENT_IP:
        spec.error("may only be set with sessionAffinity ClientIP", "sessionAffinityConfig")
    timeout = client.integer("timeoutSeconds", default=DEFAULT_AFFINITY_TIMEOUT_S, minimum=1)
    if timeout > MAX_AFFINITY_TIMEOUT_S:
        client.error(f"must be at most {MAX_AFFINITY_TIMEOUT_S}", "timeoutSeconds")
        return DEFAULT_AFFINITY_TIMEOUT_S
    return timeout


def _external_name(spec: Node, kind: ServiceType) -> str:
    value = spec.string("externalName")
    if kind is ServiceType.EXTERNAL_NAME:
        if not value:
            spec.error("is required for an ExternalName service", "externalName")
        elif not _DNS1123_SUBDOMAIN.match(value.rstrip(".").lower()):
            spec.error(f"{value!r} is not a valid DNS name", "externalName")
    elif value:
        spec.error("may only be set for an ExternalName service", "externalName")
    return value


def _allocate_lb_node_ports(spec: Node, kind: ServiceType) -> bool:
    if spec.present("allocateLoadBalancerNodePorts") and kind is not ServiceType.LOAD_BALANCER:
        spec.error("may only be set for a LoadBalancer service", "allocateLoadBalancerNodePorts")
    return spec.boolean("allocateLoadBalancerNodePorts", default=True)


def _ip_families(spec: Node, ipv4: str, ipv6: str) -> IPFamilyPolicy:
    families = spec.strings("ipFamilies")
    for i, family in enumerate(families):
        if family not in ("IPv4", "IPv6"):
            spec.error(f"{family!r}: must be IPv4 or IPv6", f"ipFamilies[{i}]")
    if len(families) > 2 or len(set(families)) != len(families):
        spec.error("at most one of each IP family", "ipFamilies")
    if families == ("IPv6",) and spec.string("clusterIP") != HEADLESS:
        spec.error(
            "an IPv6-only service cannot be served: nodeagent's proxy programs IPv4 only",
            "ipFamilies",
        )
    choices = [p.value for p in IPFamilyPolicy]
    two = len(families) == 2 or bool(ipv4 and ipv6)
    # Unset with two families is RequireDualStack, as the API server defaults it.
    default = IPFamilyPolicy.REQUIRE_DUAL_STACK if two else IPFamilyPolicy.SINGLE_STACK
    policy = IPFamilyPolicy(spec.enum_value("ipFamilyPolicy", choices, default=default.value))
    if two and policy is IPFamilyPolicy.SINGLE_STACK:
        spec.error("SingleStack allows one IP family, but two are given", "ipFamilyPolicy")
    return policy


def _health_check_node_port(spec: Node, kind: ServiceType, policy: TrafficPolicy) -> int:
    port = spec.integer("healthCheckNodePort", default=0, minimum=0)
    if not port:
        return 0
    if port > 65535:
        spec.error("must be a port number 1-65535", "healthCheckNodePort")
        return 0
    if kind is not ServiceType.LOAD_BALANCER or policy is not TrafficPolicy.LOCAL:
        spec.error(
            "may only be set for a LoadBalancer service with externalTrafficPolicy Local",
            "healthCheckNodePort",
        )
        return 0
    return port


def _ingress(lb: Node) -> tuple[tuple[LoadBalancerIngress, ...], tuple[str, ...]]:
    lb.reject_unknown(("ingress",))
    found: list[LoadBalancerIngress] = []
    skipped: list[str] = []
    for item in lb.items("ingress"):
        item.reject_unknown(("ip", "hostname", "ipMode"), ("ports",))
        ip = item.string("ip")
        mode = item.enum_value("ipMode", ("VIP", "Proxy"), default="VIP")
        address = _address(item, "ip", ip) if ip else None
        if address is not None and address.version == 6:
            skipped.append(f"{item.path}.ip: {ip}")
        elif address is not None:
            found.append(LoadBalancerIngress(ip=ip, proxied=mode == "Proxy"))
    return tuple(found), tuple(skipped)
