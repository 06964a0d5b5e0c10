"""Events kept in memory: what ``nodeagent describe`` and ``status --json`` show, in every mode.

The cluster-mode recorder (nodeagent.apiserver.events) sends events to the API; this ring is a
second sink beside it, and the only one on a standalone node. It keeps the newest
``CAPACITY`` records and forgets the oldest, so a crash-looping pod costs a bounded amount of
memory however long the agent runs.

Recording follows client-go's event correlator, so the ring reads like ``kubectl get events``:

- *Dedupe*: an event equal to a kept one (same object, field path, type, reason and message)
  does not add a record; the kept one gets ``count + 1`` and a new ``last_seen``, and moves to
  the newest end.
- *Aggregation*: when one object gets ``AGGREGATE_MAX`` events with the same type and reason
  but different messages within ``AGGREGATE_WINDOW_S``, further ones are folded into a single
  record whose message starts with ``(combined from similar events): `` (and that record
  then dedupes as above). A probe failing with a fresh message every period is one line, not
  a screenful.

Records are frozen; the ring replaces them. ``EventRing`` is synchronous and touched only
from the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from nodeagent.apiserver.events import Event as ApiEvent
from nodeagent.apiserver.events import (
    PodRef,
    killing_events,
    node_event,
    pod_events,
    probe_events,
    pull_event,
)
from nodeagent.kubelet.images import PullNote
from nodeagent.kubelet.nodeconditions import Transition

CAPACITY = 1000
AGGREGATE_MAX = 10  # client-go's defaultAggregateMaxEvents
AGGREGATE_WINDOW_S = 600.0  # client-go's defaultAggregateIntervalInSeconds
COMBINED_PREFIX = "(combined from similar events): "
TYPES = ("Normal", "Warning")


@dataclass(frozen=True)
class ObjectRef:
    """The object an event is about: a Pod (the default), or the Node itself (no namespace)."""

    namespace: str
    name: str
    uid: str = ""
    kind: str = "Pod"
    field_path: str = ""  # e.g. spec.containers{web}; empty for the object itself

    def __str__(self) -> str:
        return f"{self.kind.lower()}/{self.name}"


@dataclass(frozen=True)
class Event:
    object: ObjectRef
    type: str  # Normal or Warning
    reason: str  # CamelCase, as upstream: Started, BackOff, Unhealthy, ...
    message: str
    first_seen: float  # wall-clock seconds
    last_seen: float
    count: int = 1

    @property
    def key(self) -> tuple[str, ...]:
        o = self.object
        return (o.kind, o.namespace, o.name, o.uid, o.field_path, self.type, self.reason,
                self.message)  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        """The shape of a core/v1 Event's fields that matter to a reader."""
        involved: dict[str, Any] = {"kind": self.object.kind, "name": self.object.name}
        if self.object.namespace:
            involved["namespace"] = self.object.namespace
        if self.object.uid:
            involved["uid"] = self.object.uid
        if self.object.field_path:
            involved["fieldPath"] = self.object.field_path
        return {
            "involvedObject": involved,
            "type": self.type,
            "reason": self.reason,
            "message": self.message,
            "count": self.count,
            "firstTimestamp": _rfc3339(self.first_seen),
            "lastTimestamp": _rfc3339(self.last_seen),
        }


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRing:
    def __init__(self, capacity: int = CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"an event ring needs room for at least one event, got {capacity}")
        self.capacity = capacity
        # Insertion-ordered: oldest first; keyed by Event.key for the dedupe.
        self._events: collections.OrderedDict[tuple[str, ...], Event] = collections.OrderedDict()
        # (object, type, reason) -> when each distinct message of the window was first seen.
        self._similar: dict[tuple[str, ...], dict[str, float]] = {}
        self.recorded = 0  # every call to record, deduped or not
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._events)

    def __iter__(self) -> Iterator[Event]:
        return iter(self._events.values())

    def record(
        self, obj: ObjectRef, type_: str, reason: str, message: str, *, now: float | None = None
    ) -> Event:
        """Keep one occurrence; return the record that now stands for it."""
        if type_ not in TYPES:
            raise ValueError(f"event type must be one of {', '.join(TYPES)}, got {type_!r}")
        at = time.time() if now is None else now
        self.recorded += 1
        message = self._aggregated(obj, type_, reason, message, at)
        new = Event(obj, type_, reason, message, first_seen=at, last_seen=at)
        old = self._events.pop(new.key, None)
        if old is not None:
            new = replace(old, last_seen=at, count=old.count + 1)
        self._events[new.key] = new
        while len(self._events) > self.capacity:
            self._events.popitem(last=False)
            self.evicted += 1
        return new

    def _aggregated(self, obj: ObjectRef, type_: str, reason: str, message: str, at: float) -> str:
        key = (obj.kind, obj.namespace, obj.name, obj.uid, obj.field_path, type_, reason)
        window = {
            m: t for m, t in self._similar.get(key, {}).items() if at - t < AGGREGATE_WINDOW_S
        }
        window.setdefault(message, at)
        self._similar[key] = window
        if len(self._similar) > 4 * self.capacity:  # keys of objects long gone
            self._similar.pop(next(iter(self._similar)))
        return COMBINED_PREFIX + message if len(window) >= AGGREGATE_MAX else message

    def for_object(self, namespace: str, name: str, *, kind: str = "Pod") -> list[Event]:
        """The events of one object, oldest first (by last occurrence)."""
        return [
            e
            for e in self._events.values()
            if (e.object.kind, e.object.namespace, e.object.name) == (kind, namespace, name)
        ]

    def to_json(self, events: Iterable[Event] | None = None) -> list[dict[str, Any]]:
        return [e.to_json() for e in (self._events.values() if events is None else events)]


# --- Feeds -------------------------------------------------------------------------------------
# Where events come from. Cluster mode: the API recorder hands each event here too
# (``record_api_event``). Standalone: ``PodEventFeed`` derives them from the pods' statuses with
# the same pure functions the cluster link uses, so both modes tell the same story.


def record_api_event(ring: EventRing, event: ApiEvent) -> None:
    ref = event.pod
    obj = ObjectRef(
        ref.namespace, ref.name, uid=ref.uid, kind=ref.kind, field_path=event.field_path
    )
    ring.record(obj, event.type, event.reason, event.message)


def node_event_recorder(
    ring: EventRing, node_name: str, *, send: Callable[[list[ApiEvent]], None] | None = None
) -> Callable[[Transition], None]:
    """What tells a node condition's transition: the kubelet's event on its Node, by the road
    pod events take (``send``, the API's recorder in cluster mode, whose sink fills the ring
    too; else straight into the ring)."""

    def told(change: Transition) -> None:
        if not change.reason:
            return  # a first status that upstream does not announce
        event = node_event(node_name, change.reason)
        if send is not None:
            send([event])
        else:
            record_api_event(ring, event)

    return told


class PodEventFeed:
    """Standalone mode: events for what changed in the pods' snapshot since the last look."""

    def __init__(
        self,
        ring: EventRing,
        pods: Callable[[], Sequence[Mapping[str, Any]]],
        *,
        interval_s: float = 0.5,
        started_at: float | None = None,
    ) -> None:
        self.ring = ring
        self._pods = pods
        self._interval = interval_s
        # Containers that ran before the agent started were adopted, not created by it.
        self._started_at = time.time() if started_at is None else started_at
        self._seen: dict[str, Mapping[str, Any]] = {}  # uid -> status events came from
        self._probes: dict[str, set[str]] = {}
        self._killing: set[str] = set()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.observe()

    def on_pull(self, note: PullNote) -> None:
        """An image manager listener: Pulling, Pulled, Failed (not in any status diff)."""
        record_api_event(self.ring, pull_event(note))

    def observe(self) -> None:
        present = set()
        for pod in self._pods():
            meta = _mapping(pod.get("metadata"))
            ref = PodRef(
                str(meta.get("namespace") or "default"), str(meta.get("name")), str(meta.get("uid"))
            )
            present.add(ref.uid)
            status = _mapping(pod.get("status"))
            before = self._seen.get(ref.uid)
            if before is None:
                before = _adopted(status, self._started_at)
            events = pod_events(ref, before, status, images={})
            if pod.get("worker") == "syncing":
                probes = [_mapping(p) for p in pod.get("probes") or []]
                events += probe_events(ref, probes, self._probes.setdefault(ref.uid, set()))
            elif pod.get("worker") == "terminating" and ref.uid not in self._killing:
                self._killing.add(ref.uid)
                names = [
                    str(_mapping(c).get("name")) for c in status.get("containerStatuses") or []
                ]
                events += killing_events(ref, names)
            self._seen[ref.uid] = status
            for event in events:
                record_api_event(self.ring, event)
        for gone in set(self._seen) - present:
            del self._seen[gone]
            self._probes.pop(gone, None)
            self._killing.discard(gone)


def _adopted(status: Mapping[str, Any], since: float) -> dict[str, Any] | None:
    """The part of a first-seen status that predates the agent: no events for that."""
    before: dict[str, Any] = {}
    # startedAt has whole seconds: a container the agent started within its first second reads
    # as earlier than the agent; only one started in an earlier second was surely adopted.
    cutoff = math.floor(since)
    for key in ("initContainerStatuses", "containerStatuses"):
        old = [c for c in status.get(key) or [] if _started(_mapping(c)) < cutoff]
        if old:
            before[key] = old
    return before or None


def _started(container: Mapping[str, Any]) -> float:
    state = _mapping(container.get("state"))
    for kind in ("running", "terminated"):
        stamp = _mapping(state.get(kind)).get("startedAt")
        if isinstance(stamp, str) and stamp:
            try:
                return datetime.fromisoformat(stamp).timestamp()
            except ValueError:
                break
    return float("inf")  # not started (yet): whatever happens next is news


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
