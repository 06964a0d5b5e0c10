"""Events sent to the API, as client-go's recorder sends them (``tools/record``).

The source is ``kubelet`` on this host; an event identical to one sent before (object, type,
reason, message) increments that Event's ``count`` instead of creating another; a per-pod
token bucket (burst ``BURST``, one token back every ``REFILL_S``) drops the excess, so a
crash-looping pod cannot flood the API; the queue is bounded, and a failed send is retried a
few times, then dropped: events are best effort. What the events say is ``events.py``'s.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog

from nodeagent.apiserver.client import ApiClient, ApiFailure
from nodeagent.apiserver.events import Event
from nodeagent.apiserver.reflector import Backoff
from nodeagent.kubelet.podstatus import rfc3339

log = structlog.get_logger("nodeagent.apiserver.eventsender")

Obj = dict[str, Any]

BURST = 25
REFILL_S = 300.0
QUEUE_MAX = 1000
SEEN_MAX = 4096
ATTEMPTS = 5


class EventRecorder:
    def __init__(self, client: ApiClient, *, node_name: str) -> None:
        self.client = client
        self.node_name = node_name
        self._queue: collections.deque[tuple[Event, float, int]] = collections.deque()
        self._seen: collections.OrderedDict[tuple[str, ...], tuple[str, str, int]] = (
            collections.OrderedDict()
        )  # key -> (namespace, Event object name, count)
        self._buckets: dict[str, tuple[float, float]] = {}  # pod uid -> (tokens, at)
        self._wake = asyncio.Event()
        self.sent = 0
        self.dropped = 0
        self.sink: Callable[[Event], None] | None = None  # another consumer (the local ring)

    def record(self, events: Iterable[Event]) -> None:
        now = time.time()
        for event in events:
            if self.sink is not None:
                self.sink(event)  # before the rate limit: the ring is bounded on its own
            if not self._take(event.pod.uid, now) or len(self._queue) >= QUEUE_MAX:
                self.dropped += 1
                continue
            self._queue.append((event, now, 0))
            self._wake.set()

    def _take(self, uid: str, now: float) -> bool:
        tokens, at = self._buckets.get(uid, (float(BURST), now))
        tokens = min(float(BURST), tokens + (now - at) / REFILL_S)
        if tokens < 1.0:
            self._buckets[uid] = (tokens, now)
            return False
        self._buckets[uid] = (tokens - 1.0, now)
        return True

    def forget(self, uids: set[str]) -> None:
        """Drop the rate-limit state of pods that are gone."""
        self._buckets = {u: b for u, b in self._buckets.items() if u in uids}

    async def run(self) -> None:
        backoff = Backoff(initial_s=1.0, cap_s=30.0)
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                event, at, attempts = self._queue[0]
                try:
                    await self._send(event, at)
                    backoff.reset()
                except ApiFailure as exc:
                    if exc.retryable and attempts + 1 < ATTEMPTS:
                        self._queue[0] = (event, at, attempts + 1)
                        await asyncio.sleep(backoff.next_delay())
                        continue
                    self.dropped += 1
                    log.debug("event_dropped", reason=event.reason, error=str(exc))
                self._queue.popleft()

    async def _send(self, event: Event, at: float) -> None:
        stamp = rfc3339(at)
        known = self._seen.get(event.key)
        if known is not None:
            namespace, name, count = known
            body = {"count": count + 1, "lastTimestamp": stamp}
            try:
                await self.client.request(
                    "PATCH",
                    f"/api/v1/namespaces/{namespace}/events/{name}",
                    body=body,
                    content_type="application/strategic-merge-patch+json",
                )
                self._remember(event, namespace, name, count + 1)
                self.sent += 1
                return
            except ApiFailure as exc:
                if not exc.not_found:
                    raise
        name = f"{event.pod.name}.{time.time_ns():x}"
        # client-go's recorder puts the events of a cluster-scoped object in ``default``.
        namespace = event.pod.namespace or "default"
        involved: Obj = {
            "apiVersion": "v1",
            "kind": event.pod.kind,
            **({"namespace": event.pod.namespace} if event.pod.namespace else {}),
            "name": event.pod.name,
            "uid": event.pod.uid,
        }
        if event.field_path:
            involved["fieldPath"] = event.field_path
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": involved,
            "reason": event.reason,
            "message": event.message,
            "type": event.type,
            "source": {"component": "kubelet", "host": self.node_name},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
            "reportingComponent": "kubelet",
            "reportingInstance": self.node_name,
        }
        await self.client.request("POST", f"/api/v1/namespaces/{namespace}/events", body=body)
        self._remember(event, namespace, name, 1)
        self.sent += 1

    def _remember(self, event: Event, namespace: str, name: str, count: int) -> None:
        self._seen[event.key] = (namespace, name, count)
        self._seen.move_to_end(event.key)
        while len(self._seen) > SEEN_MAX:
            self._seen.popitem(last=False)
