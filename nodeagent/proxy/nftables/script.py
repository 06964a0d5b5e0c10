"""One sync's ``nft -f`` script, full or partial, from every service port's objects. Pure.

Full: the whole table again, in the same transaction as emptying it, so packets never meet
a half-built table. At start (nothing known of the kernel) and after a failed sync the old
table is deleted (``add table; delete table``); otherwise it is emptied in place, keeping
the affinity sets' entries, as kube-proxy's full syncs keep ClientIP affinity (an hourly
full sync must not re-balance every sticky client): every rule and map element goes, and
the chains and sets the last sync wrote that are no longer wanted are deleted. Each of
those commands works whether or not the object exists, so a table deleted behind our back
(what a missing canary reports) makes no error.

Partial: only the objects of the service ports that changed, in an order the kernel
accepts within one transaction:

1. delete the map elements that changed or went (they may point at chains about to go);
2. flush the chains the changed ports had (kept ones are refilled below);
3. delete the chains and affinity sets they no longer need;
4. add their new sets and chains, then every changed port's rules;
5. add the new and changed map elements, and update the hairpin set.

Map elements are owned globally, not per port: two Services may claim the same external IP
and port (bad input the API does not stop). The first in name order owns the element, the
other gets none, and when the first goes the other's element is written: a per-port diff
would instead fail the whole transaction on the duplicate.

Memory of what was written (``Written``) stands in for reading the kernel back: a failed
transaction changes nothing, and the caller's next sync is then full.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Set
from dataclasses import dataclass, field

from nodeagent.proxy.nftables.rules import (
    HAIRPIN,
    MAPS,
    TABLE,
    Element,
    PortObjects,
    affinity_set_declaration,
    element_lines,
    hairpin_lines,
    set_declarations,
    shared_chains,
    shared_script,
)
from nodeagent.proxy.ruleconfig import RulesConfig, sort_key
from nodeagent.proxy.state import ServicePortName

ElementKey = tuple[str, str]  # (map, key)


@dataclass(frozen=True)
class Written:
    """What the last successful sync left in the kernel."""

    ports: Mapping[ServicePortName, PortObjects] = field(default_factory=dict)
    elements: Mapping[ElementKey, str] = field(default_factory=dict)  # -> verdict
    hairpin: Mapping[str, int] = field(default_factory=dict)  # IP -> ports that reach it
    shared: frozenset[str] = frozenset()  # the chains not owned by one service port


@dataclass(frozen=True)
class Script:
    text: str
    written: Written  # adopt once nft succeeded
    rules_written: int
    chains_deleted: int


def effective_elements(ports: Mapping[ServicePortName, PortObjects]) -> dict[ElementKey, str]:
    """Every map element, the first claim (in service-port order) of a key winning."""
    out: dict[ElementKey, str] = {}
    for name in sorted(ports, key=sort_key):
        for e in ports[name].elements:
            out.setdefault((e.map, e.key), e.verdict)
    return out


def hairpin_counts(ports: Mapping[ServicePortName, PortObjects]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for port in ports.values():
        for ip in port.hairpin:
            counts[ip] = counts.get(ip, 0) + 1
    return counts


def full(
    ports: Mapping[ServicePortName, PortObjects],
    config: RulesConfig,
    previous: Written | None = None,
) -> Script:
    """The whole table; ``previous``: what the last sync wrote, when it can be trusted."""
    elements = effective_elements(ports)
    hairpin = hairpin_counts(ports)
    shared = shared_chains(config)
    if previous is None:
        head = [f"add table {TABLE}", f"delete table {TABLE}"]
    else:
        head = _emptied(previous, ports, shared)
    lines = [*head, *shared_script(config)]
    rules = 0
    for name in sorted(ports, key=sort_key):
        port = ports[name]
        lines += _declare(port, port.chain_names, {s for s, _ in port.sets})
        for chain, body in port.chains:
            lines += _rules(chain, body)
            rules += len(body)
    lines += element_lines("add", _elements(elements), keys_only=False)
    lines += hairpin_lines("add", hairpin)
    written = Written(ports=dict(ports), elements=elements, hairpin=hairpin, shared=shared)
    return Script(_text(lines), written, rules + len(elements), 0)


def _emptied(
    previous: Written, ports: Mapping[ServicePortName, PortObjects], shared: frozenset[str]
) -> list[str]:
    """Commands emptying the table in place (see the module docstring)."""
    t = TABLE
    lines = [f"add table {t}", f"flush table {t}", *set_declarations()]
    lines += [f"flush map {t} {name}" for name in MAPS]
    lines.append(f"flush set {t} {HAIRPIN}")
    wanted = shared | {c for p in ports.values() for c in p.chain_names}
    had = previous.shared | {c for p in previous.ports.values() for c in p.chain_names}
    for chain in sorted(had - wanted):
        lines += [f"add chain {t} {chain}", f"delete chain {t} {chain}"]
    wanted_sets = {s for p in ports.values() for s in p.sets}
    had_sets = {s for p in previous.ports.values() for s in p.sets}
    for name, timeout in sorted(had_sets - wanted_sets):
        lines += [affinity_set_declaration(name, timeout), f"delete set {t} {name}"]
    return lines


def partial(
    ports: Mapping[ServicePortName, PortObjects],
    changed: Set[ServicePortName],
    previous: Written,
) -> Script:
    """The script for ``changed`` ports (present in ``ports``, or gone from it).

    Its cost follows the change, not the table: the global element and hairpin views are
    recomputed only when a changed port's own elements changed (a Service added, removed or
    losing its last endpoint), and hairpin counts are updated, not recounted.
    """
    empty = PortObjects()
    olds = {name: previous.ports.get(name, empty) for name in changed}
    news = {name: ports.get(name, empty) for name in changed}
    old_elements = previous.elements
    elements = old_elements
    stale: list[ElementKey] = []
    fresh: list[ElementKey] = []
    if any(olds[n].elements != news[n].elements for n in changed):
        elements = effective_elements(ports)
        stale = [k for k, v in old_elements.items() if elements.get(k) != v]
        fresh = [k for k, v in elements.items() if old_elements.get(k) != v]
    hairpin, gone_ips, new_ips = _hairpin_update(previous.hairpin, olds, news)
    flush: list[str] = []
    drop_chains: list[str] = []
    drop_sets: list[str] = []
    declare: list[str] = []
    fill: list[str] = []
    rules = 0
    for name in sorted(changed, key=sort_key):
        old, new = olds[name], news[name]
        old_chains = dict(old.chains)
        new_chains = dict(new.chains)
        flush += [c for c in old_chains if old_chains[c] != new_chains.get(c)]
        drop_chains += [c for c in old_chains if c not in new_chains]
        new_sets = {s for s, _ in new.sets}
        drop_sets += [s for s, _ in old.sets if s not in new_sets]
        declare += _declare(
            new,
            [c for c in new_chains if c not in old_chains],
            new_sets - {s for s, _ in old.sets},
        )
        for chain, body in new.chains:
            if old_chains.get(chain) != body:
                fill += _rules(chain, body)
                rules += len(body)
    lines = [
        *element_lines("delete", _elements({k: old_elements[k] for k in stale}), keys_only=True),
        *(f"flush chain {TABLE} {c}" for c in flush),
        *(f"delete chain {TABLE} {c}" for c in drop_chains),
        *(f"delete set {TABLE} {s}" for s in drop_sets),
        *declare,
        *fill,
        *element_lines("add", _elements({k: elements[k] for k in fresh}), keys_only=False),
        *hairpin_lines("delete", gone_ips),
        *hairpin_lines("add", new_ips),
    ]
    kept = dict(previous.ports)
    for name in changed:
        if name in ports:
            kept[name] = ports[name]
        else:
            kept.pop(name, None)
    written = Written(ports=kept, elements=elements, hairpin=hairpin, shared=previous.shared)
    return Script(_text(lines), written, rules + len(fresh), len(drop_chains))


def _hairpin_update(
    counts: Mapping[str, int],
    olds: Mapping[ServicePortName, PortObjects],
    news: Mapping[ServicePortName, PortObjects],
) -> tuple[Mapping[str, int], set[str], set[str]]:
    """The new counts, and the IPs leaving and entering the hairpin set."""
    if all(olds[n].hairpin == news[n].hairpin for n in olds):
        return counts, set(), set()
    updated = dict(counts)
    touched: set[str] = set()
    for name in olds:
        for ip in olds[name].hairpin:
            updated[ip] -= 1
            touched.add(ip)
            if not updated[ip]:
                del updated[ip]
        for ip in news[name].hairpin:
            updated[ip] = updated.get(ip, 0) + 1
            touched.add(ip)
    gone = {ip for ip in touched if ip in counts and ip not in updated}
    new = {ip for ip in touched if ip in updated and ip not in counts}
    return updated, gone, new


def _declare(port: PortObjects, chains: Iterable[str], sets: Set[str]) -> list[str]:
    lines = [affinity_set_declaration(name, t) for name, t in port.sets if name in sets]
    lines += [f"add chain {TABLE} {c}" for c in chains]
    return lines


def _rules(chain: str, body: Iterable[str]) -> Iterator[str]:
    return (f"add rule {TABLE} {chain} {rule}" for rule in body)


def _elements(elements: Mapping[ElementKey, str]) -> Iterator[Element]:
    return (Element(m, k, v) for (m, k), v in elements.items())


def _text(lines: list[str]) -> str:
    return "\n".join(lines) + "\n" if lines else ""
