"""The nftables rule builder: proxy state -> the objects of our ``ip nodeagent`` table. Pure.

The nftables mode does what the iptables mode does (``nodeagent.proxy.iptables.rules``),
shaped like kube-proxy's nftables mode: lookups in maps replace the long shared chains, so
that a change of one service port touches only that port's chain and its map elements::

    nat-prerouting, nat-output -> services:
        ip daddr . l4proto . dport  vmap @service-ips     -> svc-/svl-/ext- chain of a port
        fib daddr type local: l4proto . dport  vmap @service-nodeports -> ext- chain
        (with --nodeport-addresses: ip daddr { those addresses } instead of fib)
    svc-<hash>-<ns>/<name>/<proto>/<port>   (svl- for the Local policy)
        cluster IP from off-cluster -> masquerade mark
        dnat to numgen random mod n map { i : endpoint i }   (one rule, no per-endpoint chain)
        with ClientIP affinity: ip saddr @aff-<hash> goto sep-<hash> (kube-proxy's way), and
        numgen random mod n vmap { i : goto sep- }; sep-: update @aff-, dnat
    ext-<hash>-...  masquerade or Local-policy rules, then goto svc-/svl-
    filter-prerouting-pre-dnat, filter-output-pre-dnat -> firewall-check (before DNAT):
        ip daddr . l4proto . dport  vmap @firewall-ips  -> firewall-<hash>-...: one rule,
        ip saddr != { loadBalancerSourceRanges } drop  (kube-proxy's firewall chains)
    nat-postrouting: ct status dnat, ip saddr . ip daddr @hairpin -> mark (a pod reached
        itself through its service); pod egress (multi-node); masquerade what carries the mark
    filter-input/forward/output (ct state new): vmap @no-endpoint-services and
        @no-endpoint-nodeports -> goto reject-chain (no endpoints) or drop (no local ones);
        firewall: martian traffic to 127/8 (localhost NodePorts)

Why no chain per endpoint: every transaction that adds a rule with a verdict, a NAT or a
jump makes the kernel re-validate every rule reachable from the base chains; with one chain
per endpoint that walk (5000 services x 10 endpoints) costs 80 ms, and nft's cache fetch of
55k chains as much again. Endpoints inside one map per service cut both to a few ms, and the
hairpin check moves to postrouting, where after DNAT "source is the endpoint itself" is
"source equals destination": one set of ``ip . ip`` pairs.

The table is ours alone; nothing here ever touches another table. An ``accept`` in our
table cannot override a ``drop`` of another (an iptables FORWARD policy of DROP, say), so
unlike the iptables mode there is no forwarding-accept chain: the host firewall must allow
forwarded service traffic, as with kube-proxy's nftables mode.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from nodeagent.proxy.ruleconfig import (
    LOCALHOST,
    MASQ_MARK,
    MULTICAST,
    RulesConfig,
    categorize,
    hash16,
)
from nodeagent.proxy.state import Endpoint, ServicePortInfo, ServicePortName

TABLE = "ip nodeagent"

SERVICE_IPS = "service-ips"
SERVICE_NODEPORTS = "service-nodeports"
NO_ENDPOINT_SERVICES = "no-endpoint-services"
NO_ENDPOINT_NODEPORTS = "no-endpoint-nodeports"
HAIRPIN = "hairpin"
FIREWALL_IPS = "firewall-ips"  # load-balancer IP . proto . port : goto firewall- chain
CANARY = "canary"  # an empty set: gone means our table was deleted or flushed
MAPS = (
    SERVICE_IPS,
    SERVICE_NODEPORTS,
    NO_ENDPOINT_SERVICES,
    NO_ENDPOINT_NODEPORTS,
    FIREWALL_IPS,
)

SERVICES, REJECT = "services", "reject-chain"
ENDPOINTS_CHECK, NODEPORTS_CHECK = "service-endpoints-check", "nodeport-endpoints-check"
FIREWALL, MASQUERADING, POD_EGRESS = "firewall", "masquerading", "pod-egress"
FIREWALL_CHECK = "firewall-check"

MARK = f"meta mark set meta mark | {MASQ_MARK}"

_KEY_TYPES = {
    SERVICE_IPS: "ipv4_addr . inet_proto . inet_service",
    SERVICE_NODEPORTS: "inet_proto . inet_service",
    NO_ENDPOINT_SERVICES: "ipv4_addr . inet_proto . inet_service",
    NO_ENDPOINT_NODEPORTS: "inet_proto . inet_service",
    FIREWALL_IPS: "ipv4_addr . inet_proto . inet_service",
}

# Base chains: (name, type, hook, priority). nat at kube-proxy's priorities; our srcnat runs
# just before iptables' (100), so a pod-to-pod flow we leave unchanged is not masqueraded by
# a CNI plugin's iptables rule after us (the first NAT binding of a flow wins). filter runs
# before iptables' filter (0); the firewall before DNAT (dstnat - 10), as kube-proxy's.
BASE_CHAINS = (
    ("filter-prerouting-pre-dnat", "filter", "prerouting", "-110"),
    ("filter-output-pre-dnat", "filter", "output", "-110"),
    ("nat-prerouting", "nat", "prerouting", "dstnat"),
    ("nat-output", "nat", "output", "-100"),
    ("nat-postrouting", "nat", "postrouting", "99"),
    ("filter-input", "filter", "input", "-10"),
    ("filter-forward", "filter", "forward", "-10"),
    ("filter-output", "filter", "output", "-10"),
)


@dataclass(frozen=True, order=True)
class Element:
    """One element of one of our maps: ``key : verdict``."""

    map: str
    key: str
    verdict: str


@dataclass(frozen=True)
class PortObjects:
    """What one service port owns in the table."""

    chains: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (chain, rule bodies), in order
    sets: tuple[tuple[str, int], ...] = ()  # affinity sets: (name, timeout seconds)
    elements: tuple[Element, ...] = ()
    hairpin: tuple[str, ...] = ()  # endpoint IPs that may reach themselves through us

    @property
    def chain_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.chains)

    @functools.cached_property
    def rule_count(self) -> int:
        return sum(len(body) for _, body in self.chains) + len(self.elements)


# --- Names ---------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9_./-]")


def _hash8(text: str) -> str:
    # The first 8 characters of the iptables mode's chain hash (kube-proxy's scheme), so
    # one service port's chains carry the same hash in both modes.
    return hash16(text)[:8]


def _suffix(name: ServicePortName) -> str:
    # Readable in `nft list`; Kubernetes names are DNS labels, so nothing needs escaping, but
    # a name must never break the script's syntax.
    text = f"{name.namespace}/{name.name}/{name.protocol.lower()}/{name.port}"
    return _UNSAFE.sub("_", text)


def port_chain(prefix: str, name: ServicePortName) -> str:
    return f"{prefix}-{_hash8(str(name) + name.protocol.lower())}-{_suffix(name)}"


def endpoint_chain(name: ServicePortName, endpoint: Endpoint) -> str:
    return f"sep-{_hash8(str(name) + name.protocol.lower() + endpoint.address)}-{_suffix(name)}"


def affinity_set(name: ServicePortName, endpoint: Endpoint, timeout_s: int) -> str:
    # The timeout is part of the name: a set's timeout cannot change in place.
    key = f"{name}{name.protocol.lower()}{endpoint.address}/{timeout_s}"
    return f"aff-{_hash8(key)}-{_suffix(name)}"


# --- One service port ----------------------------------------------------------------------


def port_objects(
    info: ServicePortInfo, endpoints: Sequence[Endpoint], config: RulesConfig
) -> PortObjects:
    name = info.name
    proto = info.protocol.value.lower()
    eps = categorize(info, endpoints)
    svc, svl, ext = port_chain("svc", name), port_chain("svl", name), port_chain("ext", name)
    has_endpoints = eps.any_usable
    internal_chain = svl if info.internal_policy_local else svc
    has_internal = has_endpoints and (not info.internal_policy_local or bool(eps.local))
    external_chain = svl if info.external_local else svc
    has_external = has_endpoints and (not info.external_local or bool(eps.local))
    blocked = f"goto {REJECT}" if not has_endpoints else "drop"

    elements: list[Element] = []
    key = f"{info.cluster_ip} . {proto} . {info.port}"
    if has_internal:
        elements.append(Element(SERVICE_IPS, key, f"goto {internal_chain}"))
    else:
        elements.append(Element(NO_ENDPOINT_SERVICES, key, blocked))
    chains: dict[str, list[str]] = {}
    if info.source_ranges and info.load_balancer_ips:
        # Before DNAT, whether or not there are endpoints: unlisted sources never get
        # through, not even to the rejection.
        fw = port_chain("firewall", name)
        chains[fw] = [f"ip saddr != {{ {', '.join(info.source_ranges)} }} drop"]
        for ip in info.load_balancer_ips:
            elements.append(Element(FIREWALL_IPS, f"{ip} . {proto} . {info.port}", f"goto {fw}"))
    for ip in (*info.external_ips, *info.load_balancer_ips):
        vip = f"{ip} . {proto} . {info.port}"
        if has_endpoints:
            elements.append(Element(SERVICE_IPS, vip, f"goto {ext}"))
        if not has_external:
            elements.append(Element(NO_ENDPOINT_SERVICES, vip, blocked))
    if info.node_port:
        node_key = f"{proto} . {info.node_port}"
        if has_endpoints:
            elements.append(Element(SERVICE_NODEPORTS, node_key, f"goto {ext}"))
        if not has_external:
            elements.append(Element(NO_ENDPOINT_NODEPORTS, node_key, blocked))

    sets: list[tuple[str, int]] = []
    if has_endpoints and info.externally_accessible:
        chains[ext] = _external_rules(info, svc, external_chain, has_external, config)
    for chain, chosen, used in (
        (svc, eps.cluster, info.uses_cluster_endpoints),
        (svl, eps.local, info.uses_local_endpoints),
    ):
        if not (chosen and used):
            continue
        chains[chain] = []
        if chain == internal_chain and has_internal and config.cluster_cidr:
            off_cluster = f"ip daddr {info.cluster_ip} ip saddr != {config.cluster_cidr}"
            chains[chain].append(f"{off_cluster} {MARK}")
        chains[chain] += _balance(info, chosen, proto, chains, sets)
    return PortObjects(
        chains=tuple((chain, tuple(body)) for chain, body in chains.items()),
        sets=tuple(sorted(set(sets))),
        elements=tuple(elements),
        hairpin=tuple(sorted({e.ip for e in eps.reachable})),
    )


def _external_rules(
    info: ServicePortInfo, svc: str, policy_chain: str, has_external: bool, config: RulesConfig
) -> list[str]:
    lines: list[str] = []
    if not info.external_local:
        lines.append(MARK)  # endpoints may be on another node: replies must come back here
    else:
        # Local policy keeps the client's source, except for traffic that starts here.
        if config.cluster_cidr:
            lines.append(f"ip saddr {config.cluster_cidr} goto {svc}")
        lines.append(f"fib saddr type local {MARK}")
        lines.append(f"fib saddr type local goto {svc}")
    if has_external:
        lines.append(f"goto {policy_chain}")
    return lines


def _balance(
    info: ServicePortInfo,
    endpoints: Sequence[Endpoint],
    proto: str,
    chains: dict[str, list[str]],
    sets: list[tuple[str, int]],
) -> list[str]:
    if not info.affinity_timeout_s:
        if len(endpoints) == 1:
            return [f"meta l4proto {proto} dnat to {endpoints[0].address}"]
        targets = ", ".join(f"{i} : {e.ip} . {e.port}" for i, e in enumerate(endpoints))
        return [
            f"meta l4proto {proto} dnat ip addr . port to "
            f"numgen random mod {len(endpoints)} map {{ {targets} }}"
        ]
    timeout = info.affinity_timeout_s
    lines: list[str] = []
    seps = [endpoint_chain(info.name, e) for e in endpoints]
    for ep, sep in zip(endpoints, seps, strict=True):
        affinity = affinity_set(info.name, ep, timeout)
        sets.append((affinity, timeout))
        lines.append(f"ip saddr @{affinity} goto {sep}")
        chains[sep] = [
            f"update @{affinity} {{ ip saddr }}",
            f"meta l4proto {proto} dnat to {ep.address}",
        ]
    if len(seps) == 1:
        lines.append(f"goto {seps[0]}")
    else:
        targets = ", ".join(f"{i} : goto {sep}" for i, sep in enumerate(seps))
        lines.append(f"numgen random mod {len(seps)} vmap {{ {targets} }}")
    return lines


# --- The shared objects --------------------------------------------------------------------


def shared_script(config: RulesConfig) -> list[str]:
    """The commands creating every object not owned by one service port (into a new table)."""
    t = TABLE
    lines = [f"add table {t}", *set_declarations()]
    for chain, kind, hook, priority in BASE_CHAINS:
        lines.append(
            f"add chain {t} {chain} {{ type {kind} hook {hook} priority {priority} ; "
            "policy accept ; }"
        )
    for chain in (
        SERVICES,
        REJECT,
        ENDPOINTS_CHECK,
        NODEPORTS_CHECK,
        FIREWALL,
        FIREWALL_CHECK,
        MASQUERADING,
    ):
        lines.append(f"add chain {t} {chain}")
    nodeport_dst = "fib daddr type local" + (
        "" if config.localhost_nodeports else f" ip daddr != {LOCALHOST}"
    )
    if config.nodeport_ips is not None:  # --nodeport-addresses; no address: no NodePorts
        nodeport_dst = f"ip daddr {{ {', '.join(config.nodeport_ips) or '0.0.0.0'} }}"
    rules: list[tuple[str, str]] = [
        ("nat-prerouting", f"jump {SERVICES}"),
        ("nat-output", f"jump {SERVICES}"),
        ("nat-postrouting", f"jump {MASQUERADING}"),
        (SERVICES, f"ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}"),
        (SERVICES, f"{nodeport_dst} meta l4proto . th dport vmap @{SERVICE_NODEPORTS}"),
        (REJECT, "reject"),
        (ENDPOINTS_CHECK, f"ip daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}"),
        (NODEPORTS_CHECK, f"{nodeport_dst} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}"),
        (MASQUERADING, f"ct status dnat ip saddr . ip daddr @{HAIRPIN} {MARK}"),
        ("filter-prerouting-pre-dnat", f"ct state new jump {FIREWALL_CHECK}"),
        ("filter-output-pre-dnat", f"ct state new jump {FIREWALL_CHECK}"),
        (FIREWALL_CHECK, f"ip daddr . meta l4proto . th dport vmap @{FIREWALL_IPS}"),
    ]
    for chain in ("filter-input", "filter-forward", "filter-output"):
        rules.append((chain, f"ct state new jump {ENDPOINTS_CHECK}"))
        rules.append((chain, f"ct state new jump {NODEPORTS_CHECK}"))
    if config.localhost_nodeports:
        rules.append(("filter-input", f"jump {FIREWALL}"))
        rules.append(("filter-output", f"jump {FIREWALL}"))
        rules.append(
            (
                FIREWALL,
                f"ip daddr {LOCALHOST} ip saddr != {LOCALHOST} "
                "ct state != { established, related } ct status ! dnat drop",
            )
        )
    if config.pod_egress_masquerade and config.cluster_cidr:
        cidr = config.cluster_cidr
        lines.append(f"add chain {t} {POD_EGRESS}")
        rules.append((MASQUERADING, f"meta mark & {MASQ_MARK} == 0 jump {POD_EGRESS}"))
        # A NAT to the flow's own source: it keeps the pod's IP and, being the flow's first
        # NAT binding, stops any later masquerade rule (a CNI plugin's ipMasq) from hiding
        # it from pods on other nodes.
        rules.append((POD_EGRESS, f"ip saddr {cidr} ip daddr {cidr} snat ip to ip saddr"))
        rules.append(
            (
                POD_EGRESS,
                f"ip saddr {cidr} ip daddr != {MULTICAST} counter masquerade fully-random",
            )
        )
    rules += [
        (MASQUERADING, f"meta mark & {MASQ_MARK} == 0 return"),
        (MASQUERADING, f"meta mark set meta mark ^ {MASQ_MARK}"),
        (MASQUERADING, "masquerade fully-random"),
    ]
    lines += [f"add rule {t} {chain} {body}" for chain, body in rules]
    return lines


def set_declarations() -> list[str]:
    """The canary, the maps and the hairpin set ("add" of an existing one changes nothing)."""
    t = TABLE
    lines = [f"add set {t} {CANARY} {{ type ipv4_addr ; }}"]
    for name in MAPS:
        lines.append(f"add map {t} {name} {{ type {_KEY_TYPES[name]} : verdict ; }}")
    lines.append(f"add set {t} {HAIRPIN} {{ type ipv4_addr . ipv4_addr ; }}")
    return lines


def affinity_set_declaration(name: str, timeout_s: int) -> str:
    return (
        f"add set {TABLE} {name} {{ type ipv4_addr ; flags dynamic,timeout ; "
        f"timeout {timeout_s}s ; }}"
    )


def shared_chains(config: RulesConfig) -> frozenset[str]:
    return frozenset(
        line.split()[4] for line in shared_script(config) if line.startswith("add chain ")
    )


def shared_rule_count(config: RulesConfig) -> int:
    return sum(1 for line in shared_script(config) if line.startswith("add rule "))


def element_lines(command: str, elements: Iterable[Element], *, keys_only: bool) -> list[str]:
    """``add``/``delete element`` commands, one per map, a few thousand elements each."""
    by_map: dict[str, list[str]] = {}
    for e in elements:
        by_map.setdefault(e.map, []).append(e.key if keys_only else f"{e.key} : {e.verdict}")
    return [
        line for name, items in sorted(by_map.items()) for line in _batches(command, name, items)
    ]


def hairpin_lines(command: str, ips: Iterable[str]) -> list[str]:
    return _batches(command, HAIRPIN, [f"{ip} . {ip}" for ip in sorted(ips)])


def _batches(command: str, name: str, items: list[str]) -> list[str]:
    return [
        f"{command} element {TABLE} {name} {{ {', '.join(items[i : i + 4096])} }}"
        for i in range(0, len(items), 4096)
    ]
