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
so the rules are built while it parses what came before. iptables-restore starts on an
opened nat table before any port is looked at. For iptables-legacy the chains are then
declared first, in descending order, from each service port's ``plan`` (names only); for
iptables-nft, whose full-sync input starts with ``-Z`` (see ``runner``), the order of
declarations costs nothing (measured at 1000 x 10: descending, ascending, shuffled and
interleaved within 5%), so each batch of ports declares its own chains just before its
rules, and parsing starts without a planning pass. Then come the shared chains, which
gather every port's lines, and last the stale chains and missing jumps, which need the
kernel's state (``iptables-save``, run meanwhile). nat comes before filter: filter holds
only shared chains, which need every port built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass, field

from nodeagent.proxy.iptables.rules import (
    FILTER,
    FIREWALL,
    JUMPS,
    NAT,
    Jump,
    Plan,
    ServiceRules,
    is_service_chain,
    plan,
    service_rules,
)
from nodeagent.proxy.iptables.shared import ChainKey, shared_chains
from nodeagent.proxy.ruleconfig import RulesConfig, sort_key
from nodeagent.proxy.state import Endpoint, ServicePortInfo, ServicePortName

STREAM_BATCH = 64  # service ports per chunk: few writes, yet parsing starts early


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
    saved: Mapping[str, str] | None = None,
    shared: Mapping[ChainKey, tuple[str, ...]] | None = None,
) -> Restore:
    """The restore input for one sync.

    ``rules`` holds every current service port; those in ``write`` (all of them on a full
    sync) must still carry their rule text. ``previous`` is what the last successful sync
    wrote. On a full sync ``saved`` is the kernel's ``iptables-save`` output per table, as
    ``FullStream`` reads it: stale chains of an earlier run are deleted too, and the jumps
    the built-in chains lack are inserted. ``shared``, when given, is the content of the
    shared chains, known not to have changed (a shortcut for the caller).
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
        if saved is not None:
            candidates |= _saved_service_chains(saved)
    else:
        # Own chains belong to one service port each (their names hash its key), so only
        # the touched ports' chains can have gone stale.
        touched = targets | (previous.chains.keys() - rules.keys())
        candidates = {c for key in touched for c in previous.chains.get(key, ())}
        current_own = {c for key in targets for c in rules[key].chains}
    stale = sorted(candidates - current_own)

    all_jumps = missing_jumps(saved, config) if full and saved is not None else []
    text: dict[str, str] = {}
    declared: dict[str, int] = {}
    written_rules = 0
    for table in (FILTER, NAT):
        ordered_targets = sorted(targets, key=sort_key)
        own_chains = [c for k in ordered_targets for c in rules[k].chains] if table == NAT else []
        table_stale = stale if table == NAT else []
        shared_here = [chain for (t, chain) in shared_out if t == table]
        jumps = [j for j in all_jumps if j.table == table]
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


def _saved_service_chains(saved: Mapping[str, str]) -> set[str]:
    return {c for c in saved_chains(saved.get(NAT, "")) if is_service_chain(c)}


def saved_chains(saved: str) -> set[str]:
    """Chain names declared in one table's ``iptables-save`` output."""
    return {line[1:].split(" ", 1)[0] for line in saved.splitlines() if line.startswith(":")}


def rule_count(rules: Mapping[ServicePortName, ServiceRules], config: RulesConfig) -> int:
    """Every rule we own in the kernel once all of ``rules`` is written."""
    shared = shared_chains(rules, config)
    return sum(r.rule_count for r in rules.values()) + sum(len(v) for v in shared.values())


class FullStream:
    """A full sync's restore input as a stream of text chunks (see the module docstring).

    ``chunks()`` plans and builds every service port's rules as it goes; once it is
    exhausted, ``result()`` tells what was written and ``built`` holds the rules (slimmed:
    their text is written). The content equals ``render(..., full=True)``; only the order of
    tables and lines differs.

    What the kernel holds (``saved``: ``iptables-save`` output per table) is needed only at
    the end of nat, for the stale chains of earlier runs (declared there, then deleted) and
    the jumps the built-in chains lack, so the caller can run the save while the stream
    goes: ``saved`` is called once, after every service port's rules, and may block until
    the save is done. The stream is pure otherwise, and iterating it may block: consume it
    in a worker thread, never on an event loop that the save needs.

    The first chunk only opens nat, so that iptables-restore starts (and, with the runner's
    ``-Z``, reads the nat table) while the first ports are looked at. ``interleave``: each
    batch declares its own ports' chains (iptables-nft) instead of all of them first, in
    descending order, after a planning pass (iptables-legacy). ``chains_declared`` is
    filled in as the stream goes: an estimate for nat when the first chunk comes (the
    runner's ``-Z`` choice), the final counts at the end.
    """

    def __init__(
        self,
        infos: Mapping[ServicePortName, ServicePortInfo],
        endpoints: Mapping[ServicePortName, Sequence[Endpoint]],
        *,
        previous: Written,
        config: RulesConfig,
        saved: Callable[[], Mapping[str, str]],
        interleave: bool = False,
    ) -> None:
        self._infos, self._endpoints = infos, endpoints
        self._interleave = interleave
        self._previous = previous
        self._config = config
        self._saved = saved
        shared_names = shared_chains({}, config)  # the same chains whatever the services
        self._shared = {t: [c for (table, c) in shared_names if table == t] for t in (NAT, FILTER)}
        self.chains_declared: dict[str, int] = {}
        self.built: dict[ServicePortName, ServiceRules] = {}
        self._result: Restore | None = None

    def chunks(self) -> Iterator[str]:
        infos, endpoints, config = self._infos, self._endpoints, self._config
        # About one chain per service port (and one per endpoint under ClientIP affinity):
        # enough to decide on -Z.
        estimate = len(self._shared[NAT]) + len(infos)
        estimate += sum(len(endpoints.get(k, ())) for k, i in infos.items() if i.affinity_timeout_s)
        self.chains_declared.update({NAT: estimate, FILTER: len(self._shared[FILTER])})
        yield f"*{NAT}\n"
        ordered = sorted(infos, key=sort_key)
        plans: dict[ServicePortName, Plan] = {}
        names = list(self._shared[NAT])
        if not self._interleave:  # every chain first, in descending order
            plans = {key: plan(infos[key], endpoints.get(key, ())) for key in ordered}
            names += [c for p in plans.values() for c in p.chains]
            names.sort(reverse=True)
            self.chains_declared[NAT] = len(names)
        batch = [f":{name} - [0:0]" for name in names]
        if not self._interleave:
            yield "\n".join(batch) + "\n"
            batch = []
        written = 0
        for n, key in enumerate(ordered, 1):
            built = service_rules(infos[key], endpoints.get(key, ()), config, plans.get(key))
            if self._interleave:
                batch += [f":{name} - [0:0]" for name in built.chains]
            batch += built.rules
            written += built.rule_count
            self.built[key] = built.slim()
            if n % STREAM_BATCH == 0 and batch:
                yield "\n".join(batch) + "\n"
                batch = []
        own = {c for r in self.built.values() for c in r.chains}
        self.chains_declared[NAT] = len(self._shared[NAT]) + len(own)
        shared = shared_chains(self.built, config)
        for chain in self._shared[NAT]:
            batch += shared[(NAT, chain)]
            written += len(shared[(NAT, chain)])
        saved = self._saved()
        candidates = {c for chains in self._previous.chains.values() for c in chains}
        candidates |= _saved_service_chains(saved)
        stale = sorted(candidates - own)
        jumps = missing_jumps(saved, config)
        # A chain is flushed by its declaration and deleted by -X: only at the end of nat,
        # once the save tells which chains are there (iptables-restore takes declarations
        # anywhere in a table; the same transaction either way).
        batch += [f":{name} - [0:0]" for name in reversed(stale)]
        batch += [f"-I {j.chain} {j.spec}" for j in jumps if j.table == NAT]
        batch += [f"-X {name}" for name in stale]
        batch.append("COMMIT")
        self.chains_declared[NAT] += len(stale)
        yield "\n".join(batch) + "\n"
        out = [f"*{FILTER}"]
        out += [f":{name} - [0:0]" for name in sorted(self._shared[FILTER], reverse=True)]
        out += [f"-I {j.chain} {j.spec}" for j in jumps if j.table == FILTER]
        for chain in self._shared[FILTER]:
            out += shared[(FILTER, chain)]
            written += len(shared[(FILTER, chain)])
        out.append("COMMIT")
        yield "\n".join(out) + "\n"
        self._result = Restore(
            text={},
            written=Written(shared=shared, chains={k: r.chains for k, r in self.built.items()}),
            chains_declared=dict(self.chains_declared),
            rules_written=written,
            chains_deleted=len(stale),
        )

    def result(self) -> Restore:
        """What the stream wrote; only once ``chunks()`` has been exhausted."""
        if self._result is None:
            raise RuntimeError("the stream has not been written yet")
        return self._result
