"""One sync of the proxy rules: plan (trackers) -> render (pure) -> apply (runner) -> observe.

``Syncer`` owns the two change trackers, a per-service-port cache of built rules, and the
memory of what the last successful sync wrote (``restore_input.Written``). A sync:

1. applies both trackers; the union of their results is the set of changed service ports;
2. partial: rebuilds ``ServiceRules`` for those, keeping the others, renders the restore
   input and hands it to the runner in one ``iptables-restore``;
3. full: streams the input to ``iptables-restore`` while building every port's rules
   (``FullStream``), so the Python work overlaps iptables' parsing instead of adding to
   it; ``iptables-save`` of nat and filter (stale chains of earlier runs, jumps missing
   from the built-in chains) runs meanwhile and is waited for only at the end of nat,
   before anything is committed;
4. on success adopts the new ``Written`` and drops the rule text it no longer needs; on
   failure marks the next sync full: the trackers' changes are consumed, so the exact delta
   is lost, and a full sync is correct whatever state the kernel was left in;
5. deletes stale UDP conntrack flows of the changed UDP service ports (never fatal).

Building and rendering run in a worker thread: at 5000 services they are a second of CPU, and the
event loop (status endpoint, pod workers, probes) must not stall for it. The runner is a
seam (``RuleWriter``): the iptables runner in production, a recorder in unit tests. One
sync at a time, by construction: the proxy loop awaits each one, so nothing else touches
the trackers or the rule cache meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Protocol

from nodeagent.log import get_logger
from nodeagent.proxy.conntrack import Conntrack
from nodeagent.proxy.iptables import restore as restore_input
from nodeagent.proxy.iptables import rules
from nodeagent.proxy.iptables.runner import IptablesError
from nodeagent.proxy.iptables.shared import shared_chains
from nodeagent.proxy.ruleconfig import LARGE_CLUSTER_ENDPOINTS, RulesConfig
from nodeagent.proxy.state import ServicePortName
from nodeagent.proxy.tracked import TrackedSync

log = get_logger(__name__)


class RuleWriter(Protocol):
    @property
    def backend_name(self) -> str: ...

    async def restore(self, tables: Mapping[str, str], *, chains: Mapping[str, int]) -> None: ...

    async def restore_stream(self, chunks: Iterable[str], *, chains: Mapping[str, int]) -> None:
        """Iterate ``chunks`` in a worker thread: they may wait for ``save`` on the loop."""

    async def save(self, table: str) -> str: ...

    async def canary_ok(self) -> bool: ...


class Syncer(TrackedSync):
    def __init__(
        self,
        writer: RuleWriter,
        config: RulesConfig,
        *,
        conntrack: Conntrack | None,
        local_addresses: Callable[[], Iterable[str]],
    ) -> None:
        super().__init__(config, conntrack=conntrack, local_addresses=local_addresses)
        self.writer = writer
        self._rules: dict[ServicePortName, rules.ServiceRules] = {}
        self._written = restore_input.Written()

    async def sync(self, *, full: bool = False) -> bool:
        """Bring the kernel in line with the trackers; True on success."""
        started = time.monotonic()
        full = full or self.need_full
        before = dict(self.services.current)
        changed = self.services.apply() | self.endpoints.apply()
        infos, endpoints = self.services.current, self.endpoints.current
        comments = sum(map(len, endpoints.values())) <= LARGE_CLUSTER_ENDPOINTS
        if comments != self.config.comments:
            self.config = replace(self.config, comments=comments)
            full = True  # every service port's rules change form
        for key in [k for k in self._rules if k not in infos]:
            del self._rules[key]
        rebuild: set[ServicePortName] = set(infos) if full else set(changed) & set(infos)
        try:
            if full:
                restore = await self._stream_full()
            else:
                restore = await self._write_partial(rebuild)
        except IptablesError as exc:
            return self._failed(started, full=full, error=exc)
        self._written = restore.written
        for key in rebuild:
            self._rules[key] = self._rules[key].slim()
        self.stats.rules = sum(r.rule_count for r in self._rules.values()) + sum(
            len(lines) for lines in self._written.shared.values()
        )
        return await self._succeeded(
            started,
            full=full,
            changed=changed,
            before=before,
            rules_written=restore.rules_written,
            chains_deleted=restore.chains_deleted,
        )

    async def _stream_full(self) -> restore_input.Restore:
        """Stream every port's rules into iptables-restore while iptables-save runs.

        The save (stale chains of earlier runs, jumps missing from the built-in chains) is
        needed only at the end of nat: the stream plans and builds every port while the
        saves run on the event loop, and waits for them there (see restore.FullStream)."""
        saving = asyncio.run_coroutine_threadsafe(self._save(), asyncio.get_running_loop())
        loop_thread = threading.get_ident()

        def saved() -> Mapping[str, str]:
            if not saving.done() and threading.get_ident() == loop_thread:
                raise RuntimeError("a full sync's stream must be consumed off the event loop")
            return saving.result()

        stream = restore_input.FullStream(
            self.services.current,
            self.endpoints.current,
            previous=self._written,
            config=self.config,
            saved=saved,
            # iptables-nft takes chains in any order (see restore.py): no planning pass.
            interleave=self.writer.backend_name == "nft",
        )
        self._rules = {}  # a failure leaves no half-built cache behind: the next sync is full
        try:
            await self.writer.restore_stream(stream.chunks(), chains=stream.chains_declared)
        finally:
            # A refused stream may end before it asked: no iptables-save outlives the sync.
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(saving)
        self._rules = stream.built
        return stream.result()

    async def _write_partial(self, rebuild: set[ServicePortName]) -> restore_input.Restore:
        # Building and rendering run in a thread: the event loop must not stall.
        changed = await asyncio.to_thread(self._rebuild, rebuild)
        if len(self._rules) != len(self._written.chains):  # a port went: its lines with it
            changed = rules.SHARED_LINE_FIELDS
        restore = await asyncio.to_thread(self._render, rebuild, changed)
        if restore.text:  # a change may cancel out in the rules: nothing to write
            await self.writer.restore(restore.text, chains=restore.chains_declared)
        return restore

    async def _save(self) -> dict[str, str]:
        nat, filter_ = await asyncio.gather(
            self.writer.save(rules.NAT), self.writer.save(rules.FILTER)
        )
        return {rules.NAT: nat, rules.FILTER: filter_}

    def _rebuild(self, keys: set[ServicePortName]) -> frozenset[str]:
        """Rebuild the rules of ``keys``; the fields of their shared-chain lines that changed."""
        infos, endpoints = self.services.current, self.endpoints.current
        changed: frozenset[str] = frozenset()
        for key in keys:
            new = rules.service_rules(infos[key], endpoints.get(key, ()), self.config)
            changed |= new.changed_shared_lines(self._rules.get(key))
            self._rules[key] = new
        return changed

    def _render(
        self, rebuild: set[ServicePortName], changed: frozenset[str]
    ) -> restore_input.Restore:
        """A partial sync's input; only the shared chains of ``changed`` fields are gathered
        again (5000 services' lines take milliseconds)."""
        shared = shared_chains(
            self._rules, self.config, previous=self._written.shared, changed=changed
        )
        return restore_input.render(
            self._rules,
            write=rebuild,
            previous=self._written,
            full=False,
            config=self.config,
            shared=shared,
        )
