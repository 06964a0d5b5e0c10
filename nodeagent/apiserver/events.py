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

They reach the API through ``eventsender.EventRecorder``; this module stays free of the
client, so a standalone agent derives the same events without loading it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nodeagent.kubelet.images import PullNote
from nodeagent.model.refs import CONFIG_ERROR

Obj = dict[str, Any]

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
