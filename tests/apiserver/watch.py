"""Watch: the bounded change history and the per-request event streams.

Follows the upstream "API Concepts" doc, sections "Efficient detection of changes",
"Watch bookmarks", "Streaming lists" and "Resource versions" ("Semantics for watch"):

- Every write appends a ``Change`` to one history bounded at ``capacity`` entries (the watch
  cache). A watch from resourceVersion N replays the changes after N and then streams; when
  N is older than the oldest change kept, the stream opens (HTTP 200) with one ERROR event
  whose object is a Status with code 410 and reason Expired ("too old resource version"),
  exactly as the cacher does. ``compact`` drops the whole history, forcing that.
- A watch with no resourceVersion ("Get State and Start at Most Recent") or "0" ("Start at
  Any") first sends a synthetic ADDED event per existing object. With
  ``sendInitialEvents=true`` the synthetic ADDED events end with a BOOKMARK annotated
  ``k8s.io/initial-events-end: "true"``.
- Selectors filter like the cacher's ``convertToWatchEvent``: an object that starts to match
  arrives as ADDED, one that stops matching as DELETED (its previous content, the event's
  resourceVersion). DELETED events carry the resourceVersion of the delete.
- With ``allowWatchBookmarks=true``, a BOOKMARK (an object of the watched kind holding only
  ``metadata.resourceVersion``) is sent every ``bookmark_interval`` seconds of quiet, so a
  client can resume from a recent version. Upstream sends them about once a minute.
- ``timeoutSeconds`` ends the stream cleanly (end of the chunked body); the client is expected
  to watch again from the last resourceVersion it saw.

The history is global, like etcd's revision log, not one cache per resource: a small
capacity forces 410s on every resource at once, which is what tests want.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from tests.apiserver.errors import status_body
from tests.apiserver.resources import ResourceType
from tests.apiserver.selectors import (
    FieldRequirement,
    LabelRequirement,
    match_fields,
    match_labels,
    object_fields,
)

Obj = dict[str, Any]
WatchEvent = tuple[str, Obj]  # (type, object)

ADDED = "ADDED"
MODIFIED = "MODIFIED"
DELETED = "DELETED"
BOOKMARK = "BOOKMARK"
ERROR = "ERROR"
INITIAL_EVENTS_END = "k8s.io/initial-events-end"


@dataclass(frozen=True)
class Change:
    """One committed write. For DELETED, ``obj`` is the last state at the delete's version."""

    rv: int
    rt: ResourceType
    type: str
    obj: Obj
    prev: Obj | None


class Expired(Exception):
    """The requested resourceVersion is older than the history: 410 Gone."""


@dataclass(frozen=True)
class Filter:
    rt: ResourceType
    namespace: str | None
    labels: list[LabelRequirement]
    fields: list[FieldRequirement]

    def matches(self, obj: Obj) -> bool:
        meta = obj.get("metadata", {})
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        if not match_labels(self.labels, meta.get("labels")):
            return False
        return not self.fields or match_fields(self.fields, object_fields(obj, self.rt.fields()))


def translate(change: Change, flt: Filter) -> WatchEvent | None:
    """What a watcher with ``flt`` sees of ``change`` (None: nothing)."""
    if change.rt.key != flt.rt.key:
        return None
    if change.type == DELETED:
        return (DELETED, change.obj) if flt.matches(change.obj) else None
    cur = flt.matches(change.obj)
    old = change.prev is not None and flt.matches(change.prev)
    if cur:
        return (MODIFIED if old else ADDED, change.obj)
    if old and change.prev is not None:
        gone = {**change.prev, "metadata": dict(change.prev.get("metadata", {}))}
        gone["metadata"]["resourceVersion"] = str(change.rv)
        return (DELETED, gone)
    return None


class Subscription:
    """One open watch: events queued by the hub, drained by ``stream``."""

    def __init__(self, flt: Filter) -> None:
        self.filter = flt
        self.queue: asyncio.Queue[WatchEvent | None] = asyncio.Queue()

    def offer(self, change: Change) -> None:
        event = translate(change, self.filter)
        if event is not None:
            self.queue.put_nowait(event)

    def close(self) -> None:
        """End the stream (the server is stopping)."""
        self.queue.put_nowait(None)


class WatchHub:
    """The history and the open subscriptions. Synchronous: callers hold no awaits between
    a replay and its subscribe, so no change can fall between them."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.history: deque[Change] = deque()
        self.compacted_rv = 0  # every change with rv <= this is gone
        self.subs: set[Subscription] = set()

    def record(self, change: Change) -> None:
        self.history.append(change)
        self._trim()
        for sub in list(self.subs):
            sub.offer(change)

    def _trim(self) -> None:
        while len(self.history) > self.capacity:
            self.compacted_rv = self.history.popleft().rv

    def set_capacity(self, capacity: int) -> None:
        self.capacity = max(0, capacity)
        self._trim()

    def compact(self, current_rv: int) -> None:
        """Forget every change: a watch from any older version now gets 410."""
        self.history.clear()
        self.compacted_rv = current_rv

    def replay(self, since_rv: int, flt: Filter) -> list[WatchEvent]:
        if since_rv < self.compacted_rv:
            raise Expired(f"too old resource version: {since_rv} ({self.compacted_rv})")
        out: list[WatchEvent] = []
        for change in self.history:
            if change.rv > since_rv:
                event = translate(change, flt)
                if event is not None:
                    out.append(event)
        return out

    def subscribe(self, flt: Filter, initial: list[WatchEvent]) -> Subscription:
        sub = Subscription(flt)
        for event in initial:
            sub.queue.put_nowait(event)
        self.subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self.subs.discard(sub)

    def close_all(self) -> None:
        for sub in list(self.subs):
            sub.close()


def encode_event(kind: str, obj: Obj) -> bytes:
    return json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n"


def bookmark(rt: ResourceType, rv: int, *, initial_end: bool = False) -> Obj:
    meta: Obj = {"resourceVersion": str(rv)}
    if initial_end:
        meta["annotations"] = {INITIAL_EVENTS_END: "true"}
    return {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta}


def expired_event(message: str) -> bytes:
    return encode_event(ERROR, status_body(410, "Expired", message))


@dataclass(frozen=True)
class StreamOptions:
    timeout: float
    bookmarks: bool
    bookmark_interval: float


async def stream(
    sub: Subscription,
    write: Callable[[bytes], Awaitable[None]],
    current_rv: Callable[[], int],
    opts: StreamOptions,
) -> None:
    """Write the subscription's events until the timeout, a server stop or a dead client."""
    deadline = time.monotonic() + opts.timeout
    next_bookmark = time.monotonic() + opts.bookmark_interval
    while True:
        now = time.monotonic()
        if now >= deadline:
            return
        wait = deadline - now
        if opts.bookmarks:
            wait = min(wait, max(0.0, next_bookmark - now))
        event: WatchEvent | None
        try:
            # A queued event is taken at once: on 3.11 wait_for(timeout=0), what an overdue
            # bookmark asks for, cancels the get before it runs, and the stream would spin
            # on a full queue for ever.
            if sub.queue.empty():
                event = await asyncio.wait_for(sub.queue.get(), timeout=wait)
            else:
                event = sub.queue.get_nowait()
        except TimeoutError:
            # The queue may have filled between the timeout and this line: drain first, so
            # a bookmark never claims a version whose events are still queued.
            if not sub.queue.empty():
                continue
            if opts.bookmarks and time.monotonic() >= next_bookmark:
                await write(encode_event(BOOKMARK, bookmark(sub.filter.rt, current_rv())))
                next_bookmark = time.monotonic() + opts.bookmark_interval
            continue
        if event is None:
            return
        await write(encode_event(*event))
        next_bookmark = time.monotonic() + opts.bookmark_interval


@contextlib.contextmanager
def subscribed(hub: WatchHub, sub: Subscription) -> Iterator[Subscription]:
    try:
        yield sub
    finally:
        hub.unsubscribe(sub)
