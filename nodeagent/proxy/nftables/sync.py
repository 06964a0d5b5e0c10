"""One sync of the nftables mode: plan (trackers) -> build (pure) -> apply (nft) -> observe.

The same loop as the iptables mode's ``Syncer`` (same trackers, stats and conntrack
cleanup, driven by the same ``ServiceProxy``), with nftables' shapes: each changed service
port's objects are rebuilt (``nftrules.port_objects``), the script is a diff against what
the last successful sync wrote (``nftscript.partial``) or the whole table
(``nftscript.full``), and one ``nft -f`` applies it as one transaction. A failure marks
the next sync full. Building runs in a worker thread: at 5000 services a full build is a
few hundred milliseconds of CPU the event loop must not stall for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from nodeagent.proxy.conntrack import Conntrack
from nodeagent.proxy.nftables import rules as nftrules
from nodeagent.proxy.nftables import script as nftscript
from nodeagent.proxy.nftables.runner import NftablesError
from nodeagent.proxy.ruleconfig import RulesConfig
from nodeagent.proxy.state import ServicePortName
from nodeagent.proxy.tracked import TrackedSync


class ScriptWriter(Protocol):
    @property
    def backend_name(self) -> str: ...

    async def apply(self, script: str) -> None: ...

    async def canary_ok(self) -> bool: ...


class NftSyncer(TrackedSync):
    def __init__(
        self,
        writer: ScriptWriter,
        config: RulesConfig,
        *,
        conntrack: Conntrack | None,
        local_addresses: Callable[[], Iterable[str]],
    ) -> None:
        super().__init__(config, conntrack=conntrack, local_addresses=local_addresses)
        self.writer = writer
        self._ports: dict[ServicePortName, nftrules.PortObjects] = {}
        self._written = nftscript.Written()
        # What the last sync wrote, when it succeeded: a full sync then empties the table in
        # place (keeping affinity entries) instead of replacing it.
        self._trusted: nftscript.Written | None = None
        self._config_written: RulesConfig | None = None

    async def sync(self, *, full: bool = False) -> bool:
        """Bring the kernel in line with the trackers; True on success."""
        started = time.monotonic()
        # The shared chains follow the config (cluster CIDR, localhost NodePorts): rewrite all.
        full = full or self.need_full or self.config != self._config_written
        before = dict(self.services.current)
        changed = self.services.apply() | self.endpoints.apply()
        try:
            script = await asyncio.to_thread(self._script, changed, full)
            if script.text:
                await self.writer.apply(script.text)
        except NftablesError as exc:
            self._trusted = None
            return self._failed(started, full=full, error=exc)
        self._written = self._trusted = script.written
        self._config_written = self.config
        self.stats.rules = sum(p.rule_count for p in self._ports.values()) + (
            nftrules.shared_rule_count(self.config)
        )
        return await self._succeeded(
            started,
            full=full,
            changed=changed,
            before=before,
            rules_written=script.rules_written,
            chains_deleted=script.chains_deleted,
        )

    def _script(self, changed: frozenset[ServicePortName], full: bool) -> nftscript.Script:
        """(In a worker thread.) Rebuild what changed; the script that writes it."""
        infos, endpoints = self.services.current, self.endpoints.current
        for key in [k for k in self._ports if k not in infos]:
            del self._ports[key]
        rebuild = set(infos) if full else set(changed) & set(infos)
        for key in rebuild:
            eps = endpoints.get(key, ())
            self._ports[key] = nftrules.port_objects(infos[key], eps, self.config)
        if full:
            return nftscript.full(self._ports, self.config, self._trusted)
        return nftscript.partial(self._ports, changed, self._written)
