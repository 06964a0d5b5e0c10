"""What both proxy modes' syncers share: the change trackers, the sync statistics, and how a
sync ends (stats, log line, stale UDP flows deleted).

Each mode's ``Syncer`` (``nodeagent.proxy.iptables.sync``, ``nodeagent.proxy.nftables.sync``)
derives from ``TrackedSync`` and adds its own plan -> build -> apply steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from nodeagent.log import get_logger
from nodeagent.proxy.conntrack import Conntrack
from nodeagent.proxy.ruleconfig import RulesConfig
from nodeagent.proxy.state import Endpoint, ServicePortInfo, ServicePortName
from nodeagent.proxy.tracker import ChangeTracker

log = get_logger(__name__)


@dataclass
class SyncStats:
    last_sync: float | None = None  # wall clock of the last successful sync's end
    duration_s: float = 0.0  # of the last sync attempt
    rules: int = 0  # rules we own in the kernel after the last successful sync
    full_syncs: int = 0
    partial_syncs: int = 0
    failures: int = 0
    last_error: str | None = None  # of the last attempt; None when it succeeded
    last_kind: str = ""  # "full" or "partial"

    def record(self, started: float, *, full: bool, error: str | None) -> None:
        """One sync attempt ended (``started``: its monotonic start)."""
        self.duration_s = time.monotonic() - started
        self.last_error = error
        self.last_kind = "full" if full else "partial"
        if error is not None:
            self.failures += 1
            return
        self.last_sync = time.time()
        if full:
            self.full_syncs += 1
        else:
            self.partial_syncs += 1

    def to_json(self, backend: str) -> dict[str, object]:
        return {
            "lastSync": _rfc3339(self.last_sync) if self.last_sync is not None else None,
            "duration": round(self.duration_s, 6),
            "lastSyncKind": self.last_kind or None,
            "rules": self.rules,
            "backend": backend,
            "fullSyncs": self.full_syncs,
            "partialSyncs": self.partial_syncs,
            "failedSyncs": self.failures,
            "lastError": self.last_error,
        }


def _rfc3339(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


class TrackedSync:
    """What both modes' syncers share: the change trackers, the stats, and how a sync ends
    (stats, log line, stale UDP flows)."""

    def __init__(
        self,
        config: RulesConfig,
        *,
        conntrack: Conntrack | None,
        local_addresses: Callable[[], Iterable[str]],
    ) -> None:
        self.config = config
        self.services: ChangeTracker[ServicePortInfo] = ChangeTracker()
        self.endpoints: ChangeTracker[tuple[Endpoint, ...]] = ChangeTracker()
        self.need_full = True  # nothing is known about the kernel before the first sync
        self.stats = SyncStats()
        self._conntrack = conntrack
        self._local_addresses = local_addresses

    def pending(self) -> bool:
        return self.need_full or self.services.pending() or self.endpoints.pending()

    def _failed(self, started: float, *, full: bool, error: Exception) -> bool:
        self.need_full = True
        self.stats.record(started, full=full, error=str(error))
        log.error("proxy_sync_failed", full=full, error=str(error))
        return False

    async def _succeeded(
        self,
        started: float,
        *,
        full: bool,
        changed: frozenset[ServicePortName],
        before: Mapping[ServicePortName, ServicePortInfo],
        rules_written: int,
        chains_deleted: int,
    ) -> bool:
        self.need_full = False
        self.stats.record(started, full=full, error=None)
        log.info(
            "proxy_synced",
            full=full,
            changed=len(changed),
            rules_written=rules_written,
            chains_deleted=chains_deleted,
            duration_s=round(self.stats.duration_s, 4),
        )
        if self._conntrack is not None:
            await self._clean_conntrack(changed, before)
        return True

    async def _clean_conntrack(
        self, changed: frozenset[ServicePortName], before: Mapping[ServicePortName, ServicePortInfo]
    ) -> None:
        """Delete the stale UDP flows of the changed service ports (``before``: the service
        ports before the sync, for those that are gone). Never fatal."""
        if self._conntrack is None:
            return
        infos, endpoints = self.services.current, self.endpoints.current
        ports: list[tuple[ServicePortInfo, tuple[Endpoint, ...]]] = []
        for key in changed:
            if key.protocol != "UDP":
                continue
            if key in infos:
                ports.append((infos[key], endpoints.get(key, ())))
            elif key in before:  # the service port is gone: every flow to it is stale
                ports.append((before[key], ()))
        if not ports:
            return
        try:
            await self._conntrack.clean(ports, self._local_addresses())
        except OSError as exc:
            log.warning("conntrack_clean_failed", error=str(exc))
