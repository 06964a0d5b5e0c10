"""The iptables mode's shared chains: those no single service port owns. Pure.

Some gather every port's lines (``NA-SERVICES``, ``NA-NODEPORTS``, the filter chains and
``NA-HAIRPIN``); the rest depend on the configuration only. A partial sync gathers again
only the chains whose lines changed in the ports it rebuilt: at 5000 services gathering
all of them is a few milliseconds, a good part of a sync that writes one endpoint.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set

from nodeagent.proxy.iptables.rules import (
    CANARY,
    EXTERNAL_SERVICES,
    FILTER,
    FIREWALL,
    FORWARD,
    HAIRPIN,
    MARK_MASQ,
    NAT,
    NODEPORTS,
    POD_EGRESS,
    POSTROUTING,
    PROXY_FIREWALL,
    SERVICES,
    ServiceRules,
)
from nodeagent.proxy.ruleconfig import LOCALHOST, MASQ_MARK, MULTICAST, RulesConfig, sort_key
from nodeagent.proxy.state import ServicePortName

ChainKey = tuple[str, str]  # (table, chain)

# The chains gathered from every port, by the ServiceRules field that holds its lines.
GATHERED: dict[ChainKey, str] = {
    (NAT, SERVICES): "nat_services",
    (NAT, NODEPORTS): "nat_nodeports",
    (NAT, HAIRPIN): "hairpin",
    (FILTER, SERVICES): "filter_services",
    (FILTER, EXTERNAL_SERVICES): "filter_external",
    (FILTER, PROXY_FIREWALL): "filter_firewall",
}


def shared_chains(
    rules: Mapping[ServicePortName, ServiceRules],
    config: RulesConfig,
    *,
    previous: Mapping[ChainKey, tuple[str, ...]] | None = None,
    changed: Set[str] = frozenset(GATHERED.values()),
) -> dict[ChainKey, tuple[str, ...]]:
    """The content of every shared chain, in a stable order. Given ``previous`` (an earlier
    result, for the same configuration), only the chains gathered from the ``changed``
    ServiceRules fields are gathered again."""
    keys = [k for k, field in GATHERED.items() if field in changed or previous is None]
    chains = dict(previous or {})
    if keys == [(NAT, HAIRPIN)]:  # its lines are sorted by IP: no need to sort the ports
        chains[(NAT, HAIRPIN)] = _gathered((NAT, HAIRPIN), rules.values(), config)
    elif keys:
        ordered = [rules[k] for k in sorted(rules, key=sort_key)]
        chains.update((key, _gathered(key, ordered, config)) for key in keys)
    if previous is not None:
        return chains
    chains.update(_fixed(config))
    return chains


def _gathered(
    key: ChainKey, ordered: Iterable[ServiceRules], config: RulesConfig
) -> tuple[str, ...]:
    field = GATHERED[key]
    if key == (NAT, HAIRPIN):
        return tuple(
            f"-A {HAIRPIN} -s {ip}/32 -d {ip}/32 -j MASQUERADE --random-fully"
            for ip in sorted({ip for r in ordered for ip in r.hairpin})
        )
    lines = tuple(line for r in ordered for line in getattr(r, field))
    if key != (NAT, SERVICES):
        return lines
    last = (
        '-m comment --comment "nodeagent service nodeports; NOTE: this must be the last rule '
        'in this chain"'
    )
    if config.nodeport_ips is not None:  # --nodeport-addresses: one rule per address
        return (
            *lines,
            *(f"-A {SERVICES} {last} -d {ip}/32 -j {NODEPORTS}" for ip in config.nodeport_ips),
        )
    return (
        *lines,
        f"-A {SERVICES} {last} -m addrtype --dst-type LOCAL "
        + ("" if config.localhost_nodeports else f"! -d {LOCALHOST} ")
        + f"-j {NODEPORTS}",
    )


def _fixed(config: RulesConfig) -> dict[ChainKey, tuple[str, ...]]:
    chains: dict[ChainKey, tuple[str, ...]] = {
        (NAT, POSTROUTING): (
            # First: pod egress would let a pod's traffic to itself through unchanged.
            f'-A {POSTROUTING} -m comment --comment "a pod reaching itself through a service" '
            f"-m conntrack --ctstate DNAT -j {HAIRPIN}",
            *_egress_jump(config),
            f"-A {POSTROUTING} -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
            f"-A {POSTROUTING} -j MARK --xor-mark {MASQ_MARK}",
            f'-A {POSTROUTING} -m comment --comment "nodeagent service traffic requiring SNAT" '
            "-j MASQUERADE --random-fully",
        ),
        (NAT, MARK_MASQ): (f"-A {MARK_MASQ} -j MARK --or-mark {MASQ_MARK}",),
        (NAT, CANARY): (f"-A {CANARY} -j RETURN",),
        (FILTER, FORWARD): (
            f'-A {FORWARD} -m comment --comment "nodeagent forwarding rules" '
            f"-m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT",
            f'-A {FORWARD} -m comment --comment "nodeagent forwarding conntrack rule" '
            "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        ),
        (FILTER, FIREWALL): (
            (
                f'-A {FIREWALL} -m comment --comment "block incoming localnet connections" '
                f"-d {LOCALHOST} ! -s {LOCALHOST} -m conntrack ! --ctstate "
                "RELATED,ESTABLISHED,DNAT -j DROP",
            )
            if config.localhost_nodeports
            else ()
        ),
        (FILTER, CANARY): (f"-A {CANARY} -j RETURN",),
    }
    if _egress_jump(config):
        cidr = config.cluster_cidr
        chains[(NAT, POD_EGRESS)] = (
            f'-A {POD_EGRESS} -m comment --comment "pod to pod keeps its source" '
            f"-s {cidr} -d {cidr} -j ACCEPT",
            f'-A {POD_EGRESS} -m comment --comment "pod traffic leaving the cluster CIDR" '
            f"-s {cidr} ! -d {MULTICAST} -j MASQUERADE --random-fully",
        )
    return chains


def _egress_jump(config: RulesConfig) -> tuple[str, ...]:
    if not (config.pod_egress_masquerade and config.cluster_cidr):
        return ()
    return (f"-A {POSTROUTING} -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j {POD_EGRESS}",)
