"""One sync's ``iptables-restore`` input, full or partial, from every service port's rules. Pure.

A sync writes one buffer per table (``render``). A full sync declares every chain we own
(``:CHAIN`` with ``--noflush`` flushes just that chain), writes every rule and deletes stale
service chains found in the kernel. A partial sync (KEP-3453) writes only the chains of the
service ports that changed, the shared chains whose content changed, and deletes the chains
those service ports no longer use (``:CHAIN`` then ``-X CHAIN``). Rewriting shared chains
only when their text changed is a departure from kube-proxy, which rewrites them on every
sync: with 5000 services that costs ~0.3 s per sync on the nft backend, and our memory of
what we wrote (``Written``) is guarded by the canary check and by periodic full syncs.

Chain declarations are sorted by name, descending: iptables-nft 1.8.9 keeps its chain cache
in a sorted list and inserts linearly, so ascending order costs O(chains^2) (10 s for 40k
chains, measured) and descending order O(chains).

A full sync is streamed instead (``FullStream``): ``iptables-restore`` parses its input as
it arrives, and parsing is about 40% of a large restore (the kernel's commit is the rest),
so the rules are built while it parses what came before. The chains are declared first,
from each service port's ``plan`` (names only, cheap), then each port's rules are built and
yielded, then the shared chains, which gather every port's lines. nat comes before filter:
filter holds only shared chains, which need every port built.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence, Set
from dataclasses import dataclass, field

from nodeagent.proxy.rules import (
    FILTER,
    FIREWALL,
    JUMPS,
    NAT,
    ChainKey,
    Jump,
    Plan,
    RulesConfig,
    ServiceRules,
    is_service_chain,
    service_rules,
    shared_chains,
    sort_key,
)
from nodeagent.proxy.state import Endpoint, ServicePortInfo, ServicePortName

STREAM_BATCH = 256  # service ports per chunk: few writes, yet parsing starts early


@dataclass(frozen=True)
class Written:
    """What the last successful sync left in the kernel, as far as we know."""

    shared: Mapping[ChainKey, tuple[str, ...]] = field(default_factory=dict)
    chains: Mapping[ServicePortName, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Restore:
    """The input of one sync: ``text[table]`` for each table that has anything to write."""

    text: Mapping[str, str]
    written: Written  # adopt once the restore succeeded
    chains_declared: Mapping[str, int]  # per table, for the runner's cost decisions
    rules_written: int
    chains_deleted: int


def render(
    rules: Mapping[ServicePortName, ServiceRules],
    *,
    write: Set[ServicePortName],
    previous: Written,
    full: bool,
    config: RulesConfig,
    existing: Mapping[str, Set[str]] | None = None,
    missing_jumps: Sequence[Jump] = (),
    shared: Mapping[ChainKey, tuple[str, ...]] | None = None,
) -> Restore:
    """The restore input for one sync.

    ``rules`` holds every current service port; those in ``write`` (all of them on a full
    sync) must still carry their rule text. ``previous`` is what the last successful sync
    wrote. On a full sync ``existing`` lists the chains the kernel has per table (from
    ``iptables-save``), so stale chains of an earlier run are deleted too, and
    ``missing_jumps`` are inserted into the built-in chains. ``shared``, when given, is the
    content of the shared chains, known not to have changed (a shortcut for the caller).
    """
    targets = set(rules) if full else set(write) & set(rules)
    for key in targets:
        if rules[key].rule_count and not rules[key].rules:
            raise ValueError(f"rules of {key} were slimmed before being written")
    if shared is None:
        shared = shared_chains(rules, config)
    shared_out = [k for k, v in shared.items() if full or previous.shared.get(k) != v]

    if full:
        current_own = {chain for r in rules.values() for chain in r.chains}
        candidates = {c for chains in previous.chains.values() for c in chains}
        if existing is not None:
            candidates |= {c for c in existing.get(NAT, ()) if is_service_chain(c)}
    else:
        # Own chains belong to one service port each (their names hash its key), so only
        # the touched ports' chains can have gone stale.
        touched = targets | (previous.chains.keys() - rules.keys())
        candidates = {c for key in touched for c in previous.chains.get(key, ())}
        current_own = {c for key in targets for c in rules[key].chains}
    stale = sorted(candidates - current_own)

    text: dict[str, str] = {}
    declared: dict[str, int] = {}
    written_rules = 0
    for table in (FILTER, NAT):
        ordered_targets = sorted(targets, key=sort_key)
        own_chains = [c for k in ordered_targets for c in rules[k].chains] if table == NAT else []
        table_stale = stale if table == NAT else []
        shared_here = [chain for (t, chain) in shared_out if t == table]
        jumps = [j for j in missing_jumps if j.table == table]
        if not (own_chains or table_stale or shared_here or jumps):
            continue
        names = sorted({*shared_here, *own_chains, *table_stale}, reverse=True)
        out = [f"*{table}"]
        out += [f":{name} - [0:0]" for name in names]
        out += [f"-I {j.chain} {j.spec}" for j in jumps]
        for chain in shared_here:
            out += shared[(table, chain)]
            written_rules += len(shared[(table, chain)])
        for key in ordered_targets if table == NAT else ():
            out += rules[key].rules
            written_rules += rules[key].rule_count
        out += [f"-X {name}" for name in table_stale]
        out.append("COMMIT\n")
        text[table] = "\n".join(out)
        declared[table] = len(names)
    if full:
        chains = {k: r.chains for k, r in rules.items()}
    else:
        chains = dict(previous.chains)
        for key in previous.chains.keys() - rules.keys():
            del chains[key]
        chains.update((k, rules[k].chains) for k in targets)
    written = Written(shared=shared, chains=chains)
    return Restore(
        text=text,
        written=written,
        chains_declared=declared,
        rules_written=written_rules,
        chains_deleted=len(stale),
    )


def missing_jumps(saved: Mapping[str, str], config: RulesConfig) -> list[Jump]:
    """The jumps from built-in chains that ``iptables-save`` output (per table) lacks."""
    wanted = [j for j in JUMPS if config.localhost_nodeports or j.target != FIREWALL]
    missing = []
    for jump in wanted:
        text = saved.get(jump.table, "")
        if f"-A {jump.chain} {jump.spec}" not in text:
            missing.append(jump)
    return missing


def saved_chains(saved: str) -> set[str]:
    """Chain names declared in one table's ``iptables-save`` output."""
    return {line[1:].split(" ", 1)[0] for line in saved.splitlines() if line.startswith(":")}


def rule_count(rules: Mapping[ServicePortName, ServiceRules], config: RulesConfig) -> int:
    """Every rule we own in the kernel once all of ``rules`` is written."""
    shared = shared_chains(rules, config)
    return sum(r.rule_count for r in rules.values()) + sum(len(v) for v in shared.values())


class FullStream:
    """A full sync's restore input as a stream of text chunks (see the module docstring).

    ``chunks()`` builds every service port's rules as it goes (pure: no I/O); once it is
    exhausted, ``result()`` tells what was written and ``built`` holds the rules. The
    content equals ``render(..., full=True)``; only the order of tables and lines differs.
    """

    def __init__(
        self,
        infos: Mapping[ServicePortName, ServicePortInfo],
        endpoints: Mapping[ServicePortName, Sequence[Endpoint]],
        plans: Mapping[ServicePortName, Plan],
        *,
        previous: Written,
        config: RulesConfig,
        existing: Mapping[str, Set[str]] | None = None,
        missing_jumps: Sequence[Jump] = (),
    ) -> None:
        self._infos, self._endpoints, self._plans = infos, endpoints, plans
        self._config = config
        self._jumps = missing_jumps
        own = {c for p in plans.values() for c in p.chains}
        candidates = {c for chains in previous.chains.values() for c in chains}
        if existing is not None:
            candidates |= {c for c in existing.get(NAT, ()) if is_service_chain(c)}
        self._stale = sorted(candidates - own)
        shared_names = shared_chains({}, config)  # the same chains whatever the services
        self._shared = {t: [c for (table, c) in shared_names if table == t] for t in (NAT, FILTER)}
        self._nat_names = sorted({*self._shared[NAT], *own, *self._stale}, reverse=True)
        self.chains_declared = {NAT: len(self._nat_names), FILTER: len(self._shared[FILTER])}
        self.built: dict[ServicePortName, ServiceRules] = {}
        self._result: Restore | None = None

    def chunks(self) -> Iterator[str]:
        out = ["*nat"]
        out += [f":{name} - [0:0]" for name in self._nat_names]
        out += [f"-I {j.chain} {j.spec}" for j in self._jumps if j.table == NAT]
        yield "\n".join(out) + "\n"
        written = 0
        batch: list[str] = []
        for n, key in enumerate(sorted(self._infos, key=sort_key), 1):
            built = service_rules(
                self._infos[key], self._endpoints.get(key, ()), self._config, self._plans[key]
            )
            self.built[key] = built
            batch += built.rules
            written += built.rule_count
            if n % STREAM_BATCH == 0 and batch:
                yield "\n".join(batch) + "\n"
                batch = []
        shared = shared_chains(self.built, self._config)
        for chain in self._shared[NAT]:
            batch += shared[(NAT, chain)]
            written += len(shared[(NAT, chain)])
        batch += [f"-X {name}" for name in self._stale]
        batch.append("COMMIT")
        yield "\n".join(batch) + "\n"
        out = ["*filter"]
        out += [f":{name} - [0:0]" for name in sorted(self._shared[FILTER], reverse=True)]
        out += [f"-I {j.chain} {j.spec}" for j in self._jumps if j.table == FILTER]
        for chain in self._shared[FILTER]:
            out += shared[(FILTER, chain)]
            written += len(shared[(FILTER, chain)])
        out.append("COMMIT")
        yield "\n".join(out) + "\n"
        self._result = Restore(
            text={},
            written=Written(shared=shared, chains={k: r.chains for k, r in self.built.items()}),
            chains_declared=self.chains_declared,
            rules_written=written,
            chains_deleted=len(self._stale),
        )

    def result(self) -> Restore:
        """What the stream wrote; only once ``chunks()`` has been exhausted."""
        if self._result is None:
            raise RuntimeError("the stream has not been written yet")
        return self._result
