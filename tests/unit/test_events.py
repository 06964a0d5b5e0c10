"""The in-memory event ring: bounded, deduped and aggregated as client-go does; the feeds."""

from __future__ import annotations

from typing import Any, cast

import pytest

from nodeagent.apiserver.client import ApiClient
from nodeagent.apiserver.events import Event as ApiEvent
from nodeagent.apiserver.events import PodRef, pod_events
from nodeagent.apiserver.eventsender import BURST, EventRecorder
from nodeagent.events import (
    AGGREGATE_MAX,
    AGGREGATE_WINDOW_S,
    COMBINED_PREFIX,
    EventRing,
    ObjectRef,
    PodEventFeed,
    record_api_event,
)
from nodeagent.kubelet.images import Puller, PullNote

WEB = ObjectRef("default", "web", uid="u1", field_path="spec.containers{web}")


def test_identical_events_are_counted_not_repeated() -> None:
    ring = EventRing()
    ring.record(WEB, "Warning", "BackOff", "Back-off restarting", now=100.0)
    ring.record(WEB, "Normal", "Started", "Started container web", now=101.0)
    again = ring.record(WEB, "Warning", "BackOff", "Back-off restarting", now=130.0)
    assert len(ring) == 2
    assert (again.count, again.first_seen, again.last_seen) == (2, 100.0, 130.0)
    assert [e.reason for e in ring] == ["Started", "BackOff"]  # the repeat is the newest
    doc = ring.to_json()[-1]
    assert doc["count"] == 2
    assert doc["firstTimestamp"] == "1970-01-01T00:01:40Z"
    assert doc["lastTimestamp"] == "1970-01-01T00:02:10Z"
    assert doc["involvedObject"] == {
        "kind": "Pod",
        "namespace": "default",
        "name": "web",
        "uid": "u1",
        "fieldPath": "spec.containers{web}",
    }


def test_the_ring_is_bounded_and_forgets_the_oldest() -> None:
    ring = EventRing(capacity=3)
    for i in range(5):
        ring.record(ObjectRef("default", f"p{i}"), "Normal", "Started", "x", now=float(i))
    assert [e.object.name for e in ring] == ["p2", "p3", "p4"]
    assert ring.evicted == 2 and ring.recorded == 5


def test_similar_messages_are_combined_after_the_threshold() -> None:
    ring = EventRing()
    for i in range(AGGREGATE_MAX + 5):
        ring.record(WEB, "Warning", "Unhealthy", f"probe failed: attempt {i}", now=float(i))
    messages = [e.message for e in ring]
    separate = [m for m in messages if not m.startswith(COMBINED_PREFIX)]
    combined = [e for e in ring if e.message.startswith(COMBINED_PREFIX)]
    assert len(separate) == AGGREGATE_MAX - 1
    assert len(combined) == 6  # one per distinct message past the threshold...
    ring2 = EventRing()
    for i in range(AGGREGATE_MAX + 5):
        ring2.record(WEB, "Warning", "Unhealthy", "probe failed", now=float(i))
    assert len(ring2) == 1 and next(iter(ring2)).count == AGGREGATE_MAX + 5  # ...same: one


def test_the_aggregation_window_slides() -> None:
    ring = EventRing()
    for i in range(AGGREGATE_MAX - 1):
        ring.record(WEB, "Warning", "Failed", f"m{i}", now=0.0)
    late = ring.record(WEB, "Warning", "Failed", "late", now=AGGREGATE_WINDOW_S + 1)
    assert not late.message.startswith(COMBINED_PREFIX)


def test_other_objects_and_reasons_do_not_aggregate_together() -> None:
    ring = EventRing()
    for i in range(AGGREGATE_MAX + 2):
        ring.record(ObjectRef("default", f"pod{i}"), "Warning", "Failed", f"m{i}", now=1.0)
        ring.record(WEB, "Warning", f"Reason{i}", f"m{i}", now=1.0)
    assert not any(e.message.startswith(COMBINED_PREFIX) for e in ring)


def test_bad_type_is_refused() -> None:
    with pytest.raises(ValueError, match="Normal, Warning"):
        EventRing().record(WEB, "Error", "X", "y")
    with pytest.raises(ValueError, match="at least one"):
        EventRing(capacity=0)


def test_for_object() -> None:
    ring = EventRing()
    ring.record(WEB, "Normal", "Started", "a", now=1.0)
    ring.record(ObjectRef("other", "web"), "Normal", "Started", "b", now=2.0)
    assert [e.message for e in ring.for_object("default", "web")] == ["a"]


def test_api_events_land_in_the_ring() -> None:
    ring = EventRing()
    event = ApiEvent(PodRef("ns", "p", "u9"), "spec.containers{c}", "Warning", "Failed", "boom")
    record_api_event(ring, event)
    (kept,) = ring
    assert kept.object == ObjectRef("ns", "p", uid="u9", field_path="spec.containers{c}")
    assert (kept.type, kept.reason, kept.message) == ("Warning", "Failed", "boom")


# --- The standalone feed -------------------------------------------------------------------------


def pod(status: dict[str, Any], *, worker: str = "syncing", probes: Any = ()) -> dict[str, Any]:
    return {
        "metadata": {"name": "web", "namespace": "default", "uid": "u1"},
        "status": status,
        "probes": list(probes),
        "worker": worker,
    }


def container(cid: str, started: str, **state: Any) -> dict[str, Any]:
    return {
        "name": "web",
        "image": "busybox",
        "containerID": cid,
        "state": state or {"running": {"startedAt": started}},
    }


def test_feed_derives_the_pod_story() -> None:
    ring = EventRing()
    pods: list[dict[str, Any]] = []
    feed = PodEventFeed(ring, lambda: pods, started_at=1000.0)
    feed.on_pull(PullNote(Puller("default", "web", "u1", "web"), "Warning", "Failed", "gone"))
    waiting = {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}
    pods[:] = [pod({"containerStatuses": [{"name": "web", "image": "nope", "state": waiting}]})]
    feed.observe()
    pods[:] = [pod({"containerStatuses": [container("c://1", "2026-11-25T12:00:00Z")]})]
    feed.observe()
    feed.observe()  # nothing new: nothing recorded
    failure = {
        "container": "web",
        "probe": "readiness",
        "lastResult": "Failure",
        "lastProbeTime": "2026-11-25T12:00:05Z",
        "message": "HTTP probe failed with statuscode: 500",
    }
    pods[:] = [
        pod({"containerStatuses": [container("c://1", "2026-11-25T12:00:00Z")]}, probes=[failure])
    ]
    feed.observe()
    pods[:] = [
        pod(
            {"containerStatuses": [container("c://1", "2026-11-25T12:00:00Z")]},
            worker="terminating",
        )
    ]
    feed.observe()
    feed.observe()
    story = [(e.type, e.reason, e.message) for e in ring]
    assert story == [
        ("Warning", "Failed", "gone"),
        ("Normal", "BackOff", 'Back-off pulling image "nope"'),
        ("Warning", "Failed", "Error: ImagePullBackOff"),
        ("Normal", "Created", "Created container web"),
        ("Normal", "Started", "Started container web"),
        ("Warning", "Unhealthy", "Readiness probe failed: HTTP probe failed with statuscode: 500"),
        ("Normal", "Killing", "Stopping container web"),
    ]


def test_feed_stays_quiet_about_adopted_containers() -> None:
    ring = EventRing()
    started_before = "1970-01-01T00:10:00Z"  # 600 s, before the agent's start at 1000 s
    pods = [pod({"containerStatuses": [container("c://1", started_before)]})]
    feed = PodEventFeed(ring, lambda: pods, started_at=1000.0)
    feed.observe()
    assert len(ring) == 0
    pods[:] = [pod({"containerStatuses": [container("c://2", "1970-01-01T00:20:00Z")]})]
    feed.observe()
    assert [e.reason for e in ring] == ["Created", "Started"]  # a restart after adoption is news


def test_feed_tells_of_a_container_started_in_the_agents_first_second() -> None:
    # startedAt has whole seconds: 00:16:40 is 1000 s, while the agent started at 1000.7 s.
    ring = EventRing()
    pods = [pod({"containerStatuses": [container("c://1", "1970-01-01T00:16:40Z")]})]
    PodEventFeed(ring, lambda: pods, started_at=1000.7).observe()
    assert [e.reason for e in ring] == ["Created", "Started"]


def test_the_cluster_recorder_hands_every_event_to_the_ring_too() -> None:
    ring = EventRing()
    recorder = EventRecorder(cast(ApiClient, object()), node_name="n1")  # never sends here
    recorder.sink = lambda event: record_api_event(ring, event)
    ref = PodRef("default", "web", "u1")
    burst = [ApiEvent(ref, "", "Warning", "BackOff", "again")] * (BURST + 5)
    recorder.record(burst)
    assert recorder.dropped == 5  # the API's rate limit...
    (kept,) = ring
    assert kept.count == BURST + 5  # ...does not thin the local record


def test_a_container_restarted_for_a_new_image_is_told_as_upstream_tells_it() -> None:
    pod = PodRef("default", "web", "uid-1")

    def status(image: str, cid: str) -> dict[str, Any]:
        running = {"running": {"startedAt": "2026-12-06T00:00:00Z"}}
        return {
            "containerStatuses": [
                {"name": "app", "image": image, "containerID": cid, "state": running}
            ]
        }

    events = pod_events(
        pod, status("busybox:1.36", "c://1"), status("busybox:1.37", "c://1"), images={}
    )
    assert [(e.reason, e.message, e.field_path) for e in events] == [
        ("Killing", "Container app definition changed, will be restarted", "spec.containers{app}")
    ]
    later = pod_events(
        pod, status("busybox:1.37", "c://1"), status("busybox:1.37", "c://2"), images={}
    )
    assert [e.reason for e in later] == ["Created", "Started"]


def test_an_ephemeral_container_is_told_under_its_own_field_path() -> None:
    pod = PodRef("default", "web", "uid-1")
    debugger = {"name": "debugger", "image": "busybox", "containerID": "c://9", "state": {}}
    events = pod_events(pod, {}, {"ephemeralContainerStatuses": [debugger]}, images={})
    assert [(e.reason, e.field_path) for e in events] == [
        ("Created", "spec.ephemeralContainers{debugger}"),
        ("Started", "spec.ephemeralContainers{debugger}"),
    ]
