"""List+watch one API collection into a local copy, the way client-go's reflector does.

    relist --ok--> watch from the list's resourceVersion --clean end--> watch again from rv
      ^                 |            |                     (the server ends every watch after
      |                 |            +--broken connection,   timeoutSeconds)
      |                 |               5xx, 429 --> jittered backoff --> watch again from rv
      +--410 Gone-------+
      +--403 Forbidden --> ``forbidden`` set, logged once --> slow retry --> relist
      +--other ERROR event or failure --> jittered backoff --> relist

Invariants:
- ``objects`` is replaced only by a *successful* relist, and otherwise changed only by watch
  events. While the API server is unreachable it keeps the last known state, so the pods it
  describes keep running: an outage is never mistaken for "everything was deleted".
- ``resource_version`` is the version of the newest event seen (bookmarks included, which is
  their purpose: a quiet watch can still resume from a recent version after a reconnect).
  Resuming from it loses nothing; when the server has forgotten it (410 Gone: a restarted
  server, a compacted history) the reflector relists, and the relist shows deletions too.
- ``on_change`` runs after each relist and each event that changed ``objects``; it is a
  plain callback, called on the event loop, and must not block.
- A 403 is not an outage but missing RBAC (since 1.32 a node may not list all Nodes, nor
  EndpointSlices, without a ClusterRole such as ``system:node-proxier``; see docs/rbac.md).
  ``forbidden`` then holds the server's message until a list succeeds: it is logged once (with
  the ClusterRole the collection ``needs``), shown by ``nodeagent status node``, and retried
  every ``FORBIDDEN_RETRY_S`` (a binding added later takes effect without a restart). Whoever
  waits on ``synced`` for this collection must also accept ``forbidden`` as an answer, or
  wait for ever.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from nodeagent.apiserver.client import ApiClient, ApiFailure, WatchEventError

log = structlog.get_logger("nodeagent.apiserver.reflector")

Obj = dict[str, Any]

WATCH_TIMEOUT_MIN_S = 300.0  # client-go asks for 5-10 minutes, at random, per watch
FORBIDDEN_RETRY_S = 60.0  # RBAC changes by hand: no point asking more often
NODE_PROXIER = "system:node-proxier"  # the ClusterRole kube-proxy has (bootstrap policy)


@dataclass(frozen=True)
class Collection:
    """What to list and watch: a collection path and its selectors."""

    path: str  # e.g. /api/v1/pods (all namespaces)
    field_selector: str = ""
    label_selector: str = ""
    needs: str = ""  # the ClusterRole that grants it when a node's own rights do not

    def params(self) -> dict[str, str]:
        params = {}
        if self.field_selector:
            params["fieldSelector"] = self.field_selector
        if self.label_selector:
            params["labelSelector"] = self.label_selector
        return params


@dataclass
class Backoff:
    """Exponential delays with jitter: each delay is ``base * (1 + jitter * random())``."""

    initial_s: float = 0.8
    cap_s: float = 30.0
    factor: float = 2.0
    jitter: float = 1.0
    _next: float = 0.0

    def next_delay(self) -> float:
        base = self._next or self.initial_s
        self._next = min(base * self.factor, self.cap_s)
        return base * (1.0 + self.jitter * random.random())

    def reset(self) -> None:
        self._next = 0.0


def object_key(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace") or ""
    return f"{namespace}/{meta.get('name', '')}" if namespace else str(meta.get("name", ""))


class Reflector:
    def __init__(
        self,
        client: ApiClient,
        collection: Collection,
        *,
        on_change: Callable[[], None],
        backoff: Backoff | None = None,
        watch_timeout_s: float = WATCH_TIMEOUT_MIN_S,
        forbidden_retry_s: float = FORBIDDEN_RETRY_S,
    ) -> None:
        self.client = client
        self.collection = collection
        self.objects: dict[str, Obj] = {}
        self.resource_version = ""
        self.synced = asyncio.Event()  # set by the first successful relist, never cleared
        self.connected = False  # a watch is open (for status and tests)
        self.relists = 0
        self.forbidden = ""  # the server's 403 message while this collection is refused
        self.watches = 0  # watches opened; all but the first are restarts (metrics)
        self._on_change = on_change
        self._backoff = backoff or Backoff()
        self._watch_timeout_s = watch_timeout_s
        self._forbidden_retry_s = forbidden_retry_s
        self.log = log.bind(collection=collection.path)

    async def run(self) -> None:
        need_list = True
        while True:
            try:
                if need_list:
                    await self._relist()
                    need_list = False
                await self._watch()
                self._backoff.reset()  # a clean end: the server's timeout; resume at once
                continue
            except ApiFailure as exc:
                self.connected = False
                if exc.gone:
                    self.log.info("watch_expired", resource_version=self.resource_version)
                    need_list = True
                    continue
                if exc.code == 403:
                    self._refused(exc)
                    need_list = True
                    await asyncio.sleep(self._forbidden_retry_s * (1.0 + 0.2 * random.random()))
                    continue
                # A server that refused this watch (an ERROR event: "too large resource
                # version" after a restart, say) or the request wants a fresh list.
                need_list = need_list or isinstance(exc, WatchEventError) or not exc.retryable
                delay = self._backoff.next_delay()
                self.log.warning(
                    "watch_failed", error=str(exc), retry_in_s=round(delay, 2), relist=need_list
                )
            await asyncio.sleep(delay)

    def _refused(self, exc: ApiFailure) -> None:
        if not self.forbidden:
            self.log.error(
                "watch_forbidden",
                error=exc.message,
                needs=self.collection.needs or None,
                hint="bind the ClusterRole to this node's user or to system:nodes (docs/rbac.md)",
            )
        self.forbidden = exc.message or "forbidden"

    def report(self) -> dict[str, str]:
        """What a forbidden collection needs, for the status endpoint (empty if allowed)."""
        if not self.forbidden:
            return {}
        return {
            "resource": self.collection.path,
            "message": self.forbidden,
            "clusterRole": self.collection.needs,
        }

    async def _relist(self) -> None:
        items, version = await self.client.list(self.collection.path, self.collection.params())
        if self.forbidden:
            self.log.info("watch_allowed")
            self.forbidden = ""
        self.objects = {object_key(item): item for item in items}
        self.resource_version = version
        self.relists += 1
        self.log.info("listed", count=len(items), resource_version=version)
        self.synced.set()
        self._on_change()

    async def _watch(self) -> None:
        params = self.collection.params()
        params["resourceVersion"] = self.resource_version
        params["allowWatchBookmarks"] = "true"
        timeout = self._watch_timeout_s * (1.0 + random.random())
        self.connected = True
        self.watches += 1
        try:
            await self.client.watch(self.collection.path, params, self._on_event, timeout_s=timeout)
        finally:
            self.connected = False

    def _on_event(self, kind: str, obj: Obj) -> None:
        self._backoff.reset()  # the connection works
        version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        if kind == "BOOKMARK":
            if version:
                self.resource_version = version
            return
        key = object_key(obj)
        if kind in ("ADDED", "MODIFIED"):
            self.objects[key] = obj
        elif kind == "DELETED":
            self.objects.pop(key, None)
        else:
            self.log.warning("watch_event_unknown", type=kind)
            return
        if version:
            self.resource_version = version
        self._on_change()
