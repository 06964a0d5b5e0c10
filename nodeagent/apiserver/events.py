"""Events: what happened to a pod, as ``kubectl describe pod`` lists it.

Where they come from (``pod_events``, pure): the difference between two statuses of a pod,
plus its probes' last failures. That keeps the pod workers free of any API concern, and an
event says only what the status shows happened:

    a container got a new containerID            Normal  Created, Started
    waiting: ImagePullBackOff                    Normal  BackOff  Back-off pulling image "x"
    waiting: CrashLoopBackOff                    Warning BackOff  Back-off restarting ...
    waiting: Create/RunContainerError, ...       Warning Failed   Error: <message>
    a liveness/readiness/startup probe failed    Warning Unhealthy <Kind> probe failed: ...
    the pod is deleted (``killing``)             Normal  Killing  Stopping container x
    held: a volume's source is missing           Warning FailedMount (the pod; the message)
    held: an env source is missing               Warning Failed   Error: <message>

The Node's own events (a condition's transition, ``node_event``) take the same road, with
the kubelet's node reference as their object.

Image pulls are told as they happen instead (``pull_event``: the image manager's notes per
waiting container): Pulling, Pulled, and for a failed pull Warning Failed with the error, then
``Error: ErrImagePull``. A status seen twice a second would miss a pull that failed and was
retried in between, and a pod that joins another pod's pull still gets its own events.

``EventRecorder`` sends them as client-go's recorder does (``tools/record``): the source is
``kubelet`` on this host; an event identical to one sent before (object, type, reason,
message) increments that Event's ``count`` instead of creating another; a per-pod token
bucket (burst ``BURST``, one token back every ``REFILL_S``) drops the excess, so a crash-
looping pod cannot flood the API; the queue is bounded, and a failed send is retried a few
times, then dropped: events are best effort.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from nodeagent.apiserver.client import ApiClient, ApiFailure
from nodeagent.apiserver.reflector import Backoff
from nodeagent.kubelet.images import PullNote
from nodeagent.kubelet.podstatus import rfc3339
from nodeagent.model.refs import CONFIG_ERROR

log = structlog.get_logger("nodeagent.apiserver.events")

Obj = dict[str, Any]

BURST = 25
REFILL_S = 300.0
QUEUE_MAX = 1000
SEEN_MAX = 4096
ATTEMPTS = 5
_FAILED_REASONS = (
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "InvalidImageName",
    "ErrImageNeverPull",
    "PostStartHookError",
)


@dataclass(frozen=True)
class PodRef:
    namespace: str
    name: str
    uid: str
    # The Node's own events (``node_event``) use the kubelet's node reference: kind Node, no
    # namespace (the Event then lives in ``default``), the node's name as its uid.
    kind: str = "Pod"


@dataclass(frozen=True)
class Event:
    pod: PodRef
    field_path: str  # spec.containers{name}, or "" for the pod
    type: str  # Normal or Warning
    reason: str
    message: str

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        return (self.pod.uid, self.field_path, self.type, self.reason, self.message)


def _container_path(name: str, init: bool) -> str:
    return f"spec.{'initContainers' if init else 'containers'}{{{name}}}"


NETWORK_NOT_READY = "network is not ready:"  # the worker's waiting message (kubelet's words)
_STATUS_GROUPS = (
    ("initContainerStatuses", "initContainers"),
    ("containerStatuses", "containers"),
    ("ephemeralContainerStatuses", "ephemeralContainers"),
)


def pod_events(
    pod: PodRef,
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any],
    *,
    images: Mapping[str, str],
) -> list[Event]:
    """Events for what changed from status ``old`` to ``new`` (``images``: container ->
    image, for messages)."""
    events: list[Event] = []
    network_told = False
    for key, group in _STATUS_GROUPS:
        before = {c.get("name"): c for c in (old or {}).get(key) or []}
        for cur in new.get(key) or []:
            name = str(cur.get("name"))
            prev = before.get(name) or {}
            path = f"spec.{group}{{{name}}}"
            image = images.get(name, str(cur.get("image", "")))
            cid = cur.get("containerID")
            if cid and prev.get("containerID") and cur.get("image") != prev.get("image"):
                # computePodActions' words for a container restarted for a new spec (seen in
                # the statuses: none if the old one was never seen running its old image).
                message = f"Container {name} definition changed, will be restarted"
                events.append(Event(pod, path, "Normal", "Killing", message))
            if cid and cid != prev.get("containerID"):
                events.append(Event(pod, path, "Normal", "Created", f"Created container {name}"))
                events.append(Event(pod, path, "Normal", "Started", f"Started container {name}"))
            waiting = (cur.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            before_reason = ((prev.get("state") or {}).get("waiting") or {}).get("reason")
            if not reason or reason == before_reason:
                continue
            message = str(waiting.get("message") or "")
            events.extend(_waiting_events(pod, path, name, image, str(reason), message))
            if message.startswith(NETWORK_NOT_READY) and not network_told:
                # The kubelet's NetworkNotReady: one Warning on the pod, not per container.
                events.append(Event(pod, "", "Warning", "NetworkNotReady", message))
                network_told = True
    return events


def hold_events(
    pod: PodRef, containers: Sequence[tuple[str, bool]], *, reason: str, message: str
) -> list[Event]:
    """Events for a pod held back by what it references (``containers``: name, init): a
    volume that cannot be set up is the pod's ``FailedMount``, as upstream's volume manager
    reports it; an env reference is each container's ``CreateContainerConfigError``."""
    if reason == CONFIG_ERROR:
        return [
            Event(pod, _container_path(name, init), "Warning", "Failed", f"Error: {message}")
            for name, init in containers
        ]
    return [Event(pod, "", "Warning", "FailedMount", message)]


def pull_event(note: PullNote) -> Event:
    """The Event of one image-pull note of a container."""
    who = note.puller
    pod = PodRef(who.namespace, who.name, who.uid)
    return Event(
        pod, _container_path(who.container, who.init), note.type, note.reason, note.message
    )


def _waiting_events(
    pod: PodRef, path: str, name: str, image: str, reason: str, message: str
) -> list[Event]:
    if reason == "ImagePullBackOff":
        return [
            Event(pod, path, "Normal", "BackOff", f'Back-off pulling image "{image}"'),
            Event(pod, path, "Warning", "Failed", "Error: ImagePullBackOff"),
        ]
    if reason == "CrashLoopBackOff":
        text = f"Back-off restarting failed container {name} in pod {pod.name}_{pod.namespace}"
        return [Event(pod, path, "Warning", "BackOff", f"{text}({pod.uid})")]
    if reason in _FAILED_REASONS:
        return [Event(pod, path, "Warning", "Failed", f"Error: {message or reason}")]
    return []


def probe_events(pod: PodRef, probes: Iterable[Mapping[str, Any]], seen: set[str]) -> list[Event]:
    """Unhealthy events for probe failures not reported yet (``seen``: their keys, updated)."""
    events = []
    for probe in probes:
        failed = probe.get("lastResult") == "Failure"  # proberesults.Result.FAILURE's value
        at = probe.get("lastProbeTime")
        if not failed or not at:
            continue
        key = f"{probe.get('container')}/{probe.get('probe')}/{at}"
        if key in seen:
            continue
        seen.add(key)
        kind = str(probe.get("probe", "")).capitalize()
        message = f"{kind} probe failed: {probe.get('message') or 'failure'}"
        path = _container_path(str(probe.get("container")), False)
        events.append(Event(pod, path, "Warning", "Unhealthy", message))
    return events


def node_event(node_name: str, reason: str) -> Event:
    """The kubelet's event on its Node: a condition's transition (``kubelet.nodeconditions``)."""
    node = PodRef("", node_name, node_name, kind="Node")
    return Event(node, "", "Normal", reason, f"Node {node_name} status is now: {reason}")


def killing_events(pod: PodRef, containers: Sequence[str]) -> list[Event]:
    return [
        Event(pod, _container_path(c, False), "Normal", "Killing", f"Stopping container {c}")
        for c in containers
    ]


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
