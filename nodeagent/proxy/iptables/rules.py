"""The rule builder: proxy state -> ``iptables-restore`` input for the nat and filter tables.

Pure and deterministic (golden-text tested): no I/O, no clock. It follows kube-proxy's
iptables mode (``pkg/proxy/iptables/proxier.go``) with our own chain prefix, so the rules
read the same to anyone who knows kube-proxy's and never collide with a kube-proxy on the
same host::

    nat PREROUTING, OUTPUT -> NA-SERVICES           one rule per service IP:port, then
                                                    addrtype LOCAL -> NA-NODEPORTS (last;
                                                    with --nodeport-addresses, -d per IP)
    NA-SERVICES  --cluster IP-->  NA-SVC-<hash>     (NA-SVL-<hash> for the Local policy)
                 --external IP / LB IP-->  NA-EXT-<hash>
                 --LB IP with loadBalancerSourceRanges-->  NA-FW-<hash>: one rule per
                   allowed source range -> NA-EXT-<hash>; anything else falls through
                   un-NATed and is dropped by filter NA-PROXY-FIREWALL (as kube-proxy)
    NA-NODEPORTS --nodePort-->    NA-EXT-<hash>     masquerade, then the policy chain
    NA-SVC-<hash>  off-cluster source -> NA-MARK-MASQ;
                   rule i of n: statistic --probability 1/(n-i), DNAT to endpoint i
                   (ClientIP affinity: recent --rcheck -> NA-SEP-<hash>, and rule i of n
                   jumps to NA-SEP-<hash>: recent --set; DNAT)
    nat POSTROUTING -> NA-POSTROUTING: DNATed traffic -> NA-HAIRPIN (a local endpoint
                   reached by itself through a service, source = destination: masquerade);
                   masquerade what carries mark 0x4000, clear the mark;
                   with pod_egress_masquerade, unmarked traffic first visits NA-POD-EGRESS:
                   pod -> pod (both in the cluster CIDR) ACCEPTed unchanged, so no later rule
                   (the CNI bridge's ipMasq) hides a pod's IP from pods on other nodes;
                   pod -> anywhere else masqueraded (the node's IP leaves the cluster)
    filter: NA-SERVICES / NA-EXTERNAL-SERVICES reject (no endpoints) or drop (no local
            endpoints for a Local policy); NA-FORWARD accepts marked and established
            traffic; NA-FIREWALL drops martian traffic to 127/8 (localhost NodePorts);
            NA-PROXY-FIREWALL drops new connections still addressed to a load-balancer IP
            with source ranges (those NA-FW-<hash> let through were DNATed already).

Where kube-proxy gives every endpoint a chain (NA-SEP: the hairpin check, then DNAT), the
service chain DNATs itself and the hairpin check moves to postrouting, as in our nftables
mode: on iptables-nft any transaction that adds a rule with a target makes the kernel walk
every rule reachable from the built-in chains, once per path (PREROUTING and OUTPUT, cluster
IP and NodePort), and the endpoint chains were three quarters of that walk (at 5000
services x 10 endpoints it went from 0.09 s to 0.03-0.07 s, measured). A pod's service
traffic is NATed on its own node, so only local endpoints can hairpin: NA-HAIRPIN holds one
rule per local endpoint IP, bounded by the pods on the node.

Chain names: prefix + the first 16 characters of base32(sha256("ns/name:port" + protocol)),
the endpoint chain's hash also covering "ip:port", exactly kube-proxy's scheme.

The chains no single service port owns are in ``shared``; how one sync turns it all into
``iptables-restore`` input (full or partial) is in ``restore``; what the nftables mode
decides alike (endpoint categories, chain-name hash) is in ``nodeagent.proxy.ruleconfig``.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from nodeagent.proxy.ruleconfig import (
    Categorized,
    RulesConfig,
    categorize,
    hash16,
)
from nodeagent.proxy.state import Endpoint, ServicePortInfo, ServicePortName

NAT, FILTER = "nat", "filter"

SERVICES = "NA-SERVICES"
EXTERNAL_SERVICES = "NA-EXTERNAL-SERVICES"
NODEPORTS = "NA-NODEPORTS"
POSTROUTING = "NA-POSTROUTING"
MARK_MASQ = "NA-MARK-MASQ"
POD_EGRESS = "NA-POD-EGRESS"
HAIRPIN = "NA-HAIRPIN"
FORWARD = "NA-FORWARD"
FIREWALL = "NA-FIREWALL"
PROXY_FIREWALL = "NA-PROXY-FIREWALL"  # loadBalancerSourceRanges (kube-proxy's of that name)
CANARY = "NA-PROXY-CANARY"  # one RETURN rule in nat and filter; gone means we were flushed
HINT = "NA-IPTABLES-HINT"  # an empty chain in mangle marking the backend we use

SVC_PREFIX, SVL_PREFIX, EXT_PREFIX, SEP_PREFIX = "NA-SVC-", "NA-SVL-", "NA-EXT-", "NA-SEP-"
FW_PREFIX = "NA-FW-"
SERVICE_CHAIN_PREFIXES = (SVC_PREFIX, SVL_PREFIX, EXT_PREFIX, SEP_PREFIX, FW_PREFIX)


@dataclass(frozen=True)
class Jump:
    """A rule in a built-in chain that sends traffic into one of ours."""

    table: str
    chain: str  # built-in: PREROUTING, INPUT, ...
    target: str
    comment: str
    matches: str = ""

    @property
    def spec(self) -> str:
        """The rule as ``iptables-save`` prints it, without ``-A CHAIN``."""
        matches = f"{self.matches} " if self.matches else ""
        return f'{matches}-m comment --comment "{self.comment}" -j {self.target}'


_NEW = "-m conntrack --ctstate NEW"
JUMPS: tuple[Jump, ...] = (
    Jump(NAT, "PREROUTING", SERVICES, "nodeagent service portals"),
    Jump(NAT, "OUTPUT", SERVICES, "nodeagent service portals"),
    Jump(NAT, "POSTROUTING", POSTROUTING, "nodeagent postrouting rules"),
    Jump(FILTER, "INPUT", EXTERNAL_SERVICES, "nodeagent externally-visible service portals", _NEW),
    Jump(
        FILTER, "FORWARD", EXTERNAL_SERVICES, "nodeagent externally-visible service portals", _NEW
    ),
    Jump(FILTER, "FORWARD", SERVICES, "nodeagent service portals", _NEW),
    Jump(FILTER, "OUTPUT", SERVICES, "nodeagent service portals", _NEW),
    Jump(FILTER, "FORWARD", FORWARD, "nodeagent forwarding rules"),
    Jump(FILTER, "INPUT", PROXY_FIREWALL, "nodeagent load balancer firewall", _NEW),
    Jump(FILTER, "FORWARD", PROXY_FIREWALL, "nodeagent load balancer firewall", _NEW),
    Jump(FILTER, "OUTPUT", PROXY_FIREWALL, "nodeagent load balancer firewall", _NEW),
    Jump(FILTER, "INPUT", FIREWALL, "nodeagent localnet protection"),
    Jump(FILTER, "OUTPUT", FIREWALL, "nodeagent localnet protection"),
)


# --- Names ---------------------------------------------------------------------------------


def svc_chain(name: ServicePortName) -> str:
    return SVC_PREFIX + hash16(str(name) + name.protocol.lower())


def svl_chain(name: ServicePortName) -> str:
    return SVL_PREFIX + hash16(str(name) + name.protocol.lower())


def ext_chain(name: ServicePortName) -> str:
    return EXT_PREFIX + hash16(str(name) + name.protocol.lower())


def sep_chain(name: ServicePortName, endpoint: Endpoint) -> str:
    return SEP_PREFIX + hash16(str(name) + name.protocol.lower() + str(endpoint))


def is_service_chain(chain: str) -> bool:
    return chain.startswith(SERVICE_CHAIN_PREFIXES)


# --- One service port ----------------------------------------------------------------------


# ServiceRules fields that hold a port's lines for chains shared by every port.
SHARED_LINE_FIELDS = frozenset(
    (
        "nat_services",
        "nat_nodeports",
        "filter_services",
        "filter_external",
        "filter_firewall",
        "hairpin",
    )
)


@dataclass(frozen=True)
class ServiceRules:
    """What one service port contributes: its own nat chains, and lines in shared chains."""

    chains: tuple[str, ...] = ()  # its own nat chains (SVC, SVL, EXT, SEP, FW)
    rules: tuple[str, ...] = ()  # "-A" lines for those chains; () once slimmed
    rule_count: int = 0  # len(rules) before slimming
    nat_services: tuple[str, ...] = ()
    nat_nodeports: tuple[str, ...] = ()
    filter_services: tuple[str, ...] = ()
    filter_external: tuple[str, ...] = ()
    hairpin: tuple[str, ...] = ()  # IPs of its local endpoints (NA-HAIRPIN)
    filter_firewall: tuple[str, ...] = ()  # NA-PROXY-FIREWALL lines

    def changed_shared_lines(self, other: ServiceRules | None) -> frozenset[str]:
        """The fields of lines for shared chains that differ from ``other``'s (all, for None)."""
        if other is None:
            return SHARED_LINE_FIELDS
        return frozenset(f for f in SHARED_LINE_FIELDS if getattr(self, f) != getattr(other, f))

    def slim(self) -> ServiceRules:
        """The same without its own rule text (kept only until it has been written)."""
        if not self.rules:
            return self
        return ServiceRules(  # not dataclasses.replace: a full sync slims every port
            self.chains,
            (),
            self.rule_count,
            self.nat_services,
            self.nat_nodeports,
            self.filter_services,
            self.filter_external,
            self.hairpin,
            self.filter_firewall,
        )


@dataclass(frozen=True)
class Plan:
    """Which chains one service port owns, decided before any rule text is built: a full
    sync declares every chain first and then streams the rules (see ``restore``)."""

    eps: Categorized
    svc: str
    svl: str
    ext: str
    fw: str  # "" unless the load-balancer IPs are fenced by source ranges
    seps: Mapping[str, str]  # endpoint address -> its chain (ClientIP affinity only)
    chains: tuple[str, ...]  # in the order ``service_rules`` writes them


def plan(info: ServicePortInfo, endpoints: Sequence[Endpoint]) -> Plan:
    name = info.name
    # The chain names' hash input, made once: a full sync names 11000 chains at 1000
    # services, and on iptables-legacy this pass runs before its stream declares them.
    base = str(name) + name.protocol.lower()
    port_hash = hash16(base)  # svc_chain, svl_chain and ext_chain hash the same text
    svc, svl, ext = SVC_PREFIX + port_hash, SVL_PREFIX + port_hash, EXT_PREFIX + port_hash
    eps = categorize(info, endpoints)
    chains: list[str] = []
    fw = ""
    if eps.any_usable and info.source_ranges and info.load_balancer_ips:
        fw = FW_PREFIX + port_hash
        chains.append(fw)
    if eps.any_usable and info.externally_accessible:
        chains.append(ext)
    if eps.cluster and info.uses_cluster_endpoints:
        chains.append(svc)
    if eps.local and info.uses_local_endpoints:
        chains.append(svl)
    seps = (
        {ep.address: SEP_PREFIX + hash16(base + ep.address) for ep in eps.reachable}
        if info.affinity_timeout_s
        else {}
    )
    return Plan(eps, svc, svl, ext, fw, seps, (*chains, *seps.values()))


def service_rules(
    info: ServicePortInfo,
    endpoints: Sequence[Endpoint],
    config: RulesConfig,
    planned: Plan | None = None,
) -> ServiceRules:
    """One service port's rules (``planned``: its ``plan``, when already made)."""
    name = info.name
    spn = str(name)
    proto = info.protocol.value.lower()
    match = f"-m {proto} -p {proto}"
    p = planned or plan(info, endpoints)
    svc, svl, ext, eps = p.svc, p.svl, p.ext, p.eps
    has_endpoints = eps.any_usable

    internal_chain = svl if info.internal_policy_local else svc
    has_internal = has_endpoints and (not info.internal_policy_local or bool(eps.local))
    external_chain = svl if info.external_local else svc
    has_external = has_endpoints and (not info.external_local or bool(eps.local))
    uses_ext = has_endpoints and info.externally_accessible

    if not has_endpoints:
        internal_target = external_target = "REJECT"
        internal_why = external_why = f'"{spn} has no endpoints"'
    else:
        internal_target = external_target = "DROP"
        internal_why = external_why = f'"{spn} has no local endpoints"'

    dest = f"-d {info.cluster_ip}/32 --dport {info.port}"
    nat_services: list[str] = []
    nat_nodeports: list[str] = []
    filter_services: list[str] = []
    filter_external: list[str] = []
    filter_firewall: list[str] = []
    fenced = bool(info.source_ranges)
    if has_internal:
        nat_services.append(
            f'-A {SERVICES} -m comment --comment "{spn} cluster IP" {match} {dest} '
            f"-j {internal_chain}"
        )
    else:
        filter_services.append(
            f"-A {SERVICES} -m comment --comment {internal_why} {match} {dest} -j {internal_target}"
        )
    for kind, addresses in (
        ("external IP", info.external_ips),
        ("loadbalancer IP", info.load_balancer_ips),
    ):
        lb = kind == "loadbalancer IP"
        for ip in addresses:
            vip = f"-d {ip}/32 --dport {info.port}"
            if has_endpoints:
                target = p.fw if lb and p.fw else ext
                nat_services.append(
                    f'-A {SERVICES} -m comment --comment "{spn} {kind}" {match} {vip} -j {target}'
                )
            if lb and fenced:
                filter_firewall.append(
                    f'-A {PROXY_FIREWALL} -m comment --comment "{spn} traffic not accepted by '
                    f'{p.fw or FW_PREFIX + hash16(str(name) + name.protocol.lower())}" '
                    f"{match} {vip} -j DROP"
                )
            if not has_external:
                filter_external.append(
                    f"-A {EXTERNAL_SERVICES} -m comment --comment {external_why} {match} {vip} "
                    f"-j {external_target}"
                )
    if info.node_port:
        if has_endpoints:
            nat_nodeports.append(
                f'-A {NODEPORTS} -m comment --comment "{spn}" {match} '
                f"--dport {info.node_port} -j {ext}"
            )
        if not has_external:
            filter_external.append(
                f"-A {EXTERNAL_SERVICES} -m comment --comment {external_why} "
                f"-m addrtype --dst-type LOCAL {match} --dport {info.node_port} "
                f"-j {external_target}"
            )

    chains: dict[str, list[str]] = {}
    if p.fw:
        chains[p.fw] = [
            f'-A {p.fw} -m comment --comment "{spn} loadbalancer IP" -s {cidr} -j {ext}'
            for cidr in info.source_ranges
        ]
    if uses_ext:
        chains[ext] = _external_rules(info, ext, svc, external_chain, has_external, config)
    if eps.cluster and info.uses_cluster_endpoints:
        chains[svc] = []
    if eps.local and info.uses_local_endpoints:
        chains[svl] = []
    if has_internal and config.cluster_cidr and internal_chain in chains:
        chains[internal_chain].append(
            f'-A {internal_chain} -m comment --comment "{spn} cluster IP" {match} {dest} '
            f"! -s {config.cluster_cidr} -j {MARK_MASQ}"
        )
    seps = p.seps
    if svc in chains:
        chains[svc] += _balance(info, svc, eps.cluster, seps, match, config)
    if svl in chains:
        chains[svl] += _balance(info, svl, eps.local, seps, match, config)
    comment = f'-m comment --comment "{spn}" ' if config.comments else ""
    for address, sep in seps.items():
        chains[sep] = [
            f"-A {sep} {comment}-m recent --name {sep} --set {match} "
            f"-j DNAT --to-destination {address}"
        ]
    rules = tuple(itertools.chain.from_iterable(chains.values()))
    return ServiceRules(
        chains=tuple(chains),
        rules=rules,
        rule_count=len(rules),
        nat_services=tuple(nat_services),
        nat_nodeports=tuple(nat_nodeports),
        filter_services=tuple(filter_services),
        filter_external=tuple(filter_external),
        hairpin=tuple(sorted({e.ip for e in eps.reachable if e.local})),
        filter_firewall=tuple(filter_firewall),
    )


def _external_rules(
    info: ServicePortInfo,
    ext: str,
    svc: str,
    policy_chain: str,
    has_external: bool,
    config: RulesConfig,
) -> list[str]:
    spn = str(info.name)
    lines: list[str] = []
    if not info.external_local:
        # Endpoints may be on another node: masquerade so replies come back through us.
        lines.append(
            f'-A {ext} -m comment --comment "masquerade traffic for {spn} external '
            f'destinations" -j {MARK_MASQ}'
        )
    else:
        # Local policy keeps the client's source IP, except for traffic that starts here:
        # pods and the node itself reach the service as if through an outside balancer.
        if config.cluster_cidr:
            lines.append(
                f'-A {ext} -m comment --comment "pod traffic for {spn} external destinations" '
                f"-s {config.cluster_cidr} -j {svc}"
            )
        lines.append(
            f'-A {ext} -m comment --comment "masquerade LOCAL traffic for {spn} external '
            f'destinations" -m addrtype --src-type LOCAL -j {MARK_MASQ}'
        )
        lines.append(
            f'-A {ext} -m comment --comment "route LOCAL traffic for {spn} external '
            f'destinations" -m addrtype --src-type LOCAL -j {svc}'
        )
    if has_external:
        lines.append(f"-A {ext} -j {policy_chain}")
    return lines


@functools.lru_cache(maxsize=4096)
def _chance(remaining: int) -> str:
    """The statistic match that picks one of ``remaining`` endpoints (formatting a float
    is a good part of building a rule: made once per count)."""
    return f"-m statistic --mode random --probability {1.0 / remaining:0.10f} "


def _balance(
    info: ServicePortInfo,
    chain: str,
    endpoints: Sequence[Endpoint],
    seps: Mapping[str, str],
    match: str,
    config: RulesConfig,
) -> list[str]:
    spn = str(info.name)
    lines: list[str] = []

    def comment(ep: Endpoint) -> str:
        return f'-m comment --comment "{spn} -> {ep}" ' if config.comments else ""

    if info.affinity_timeout_s:
        for ep in endpoints:
            sep = seps[ep.address]
            lines.append(
                f"-A {chain} {comment(ep)}-m recent --name {sep} "
                f"--rcheck --seconds {info.affinity_timeout_s} --reap -j {sep}"
            )
    n = len(endpoints)
    for i, ep in enumerate(endpoints):
        chance = _chance(n - i) if i < n - 1 else ""
        if info.affinity_timeout_s:
            action = f"-j {seps[ep.address]}"
        else:
            action = f"{match} -j DNAT --to-destination {ep}"
        lines.append(f"-A {chain} {comment(ep)}{chance}{action}")
    return lines
