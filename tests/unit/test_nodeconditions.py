"""Node condition transitions: the record each change leaves (time, event, metric)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from nodeagent import metrics
from nodeagent.apiserver.events import Event as ApiEvent
from nodeagent.config import Config
from nodeagent.daemon import Node
from nodeagent.events import EventRing, node_event_recorder
from nodeagent.kubelet.nodeconditions import (
    ConditionState,
    NodeConditionTracker,
    Transition,
    stamped,
    track,
)
from nodeagent.kubelet.podstatus import rfc3339
from nodeagent.runtime.fake import FakeRuntime
from tests.unit.rig import eventually


def sample(
    ready: str = "True", memory: str = "False", disk: str = "False", pid: str = "False"
) -> list[dict[str, Any]]:
    return [
        {"type": "Ready", "status": ready, "reason": "r", "message": "m"},
        {"type": "MemoryPressure", "status": memory, "reason": "r", "message": "m"},
        {"type": "DiskPressure", "status": disk, "reason": "r", "message": "m"},
        {"type": "PIDPressure", "status": pid, "reason": "r", "message": "m"},
    ]


def told(transitions: Sequence[Transition]) -> list[str]:
    return [t.reason for t in transitions if t.reason]


def test_a_first_sample_tells_the_pressures_but_not_ready() -> None:
    first = track({}, sample(), 100.0)
    assert told(first.transitions) == [
        "NodeHasSufficientMemory",
        "NodeHasNoDiskPressure",
        "NodeHasSufficientPID",
    ]
    # Ready too took its first status (it counts as a transition), but upstream tells no event.
    assert [t.condition for t in first.transitions if not t.reason] == ["Ready"]
    assert first.states["Ready"] == ConditionState("True", 100.0)


def test_a_status_that_holds_keeps_its_transition_time_and_tells_nothing() -> None:
    first = track({}, sample(), 100.0)
    again = track(first.states, sample(), 110.0)
    assert again.transitions == ()
    assert again.states == first.states


def test_memory_pressure_coming_and_going_is_told_each_way() -> None:
    start = track({}, sample(), 100.0).states
    up = track(start, sample(memory="True"), 105.0)
    assert told(up.transitions) == ["NodeHasInsufficientMemory"]
    assert up.states["MemoryPressure"] == ConditionState("True", 105.0)
    assert up.states["Ready"] == ConditionState("True", 100.0)  # the others hold
    held = track(up.states, sample(memory="True"), 200.0)
    assert held.states["MemoryPressure"].since == 105.0
    down = track(held.states, sample(), 400.0)
    assert told(down.transitions) == ["NodeHasSufficientMemory"]
    assert down.transitions[0] == Transition(
        "MemoryPressure", "False", 400.0, "NodeHasSufficientMemory"
    )


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"ready": "False"}, "NodeNotReady"),
        ({"disk": "True"}, "NodeHasDiskPressure"),
        ({"pid": "True"}, "NodeHasInsufficientPID"),
    ],
)
def test_each_condition_is_told_by_the_kubelets_name(change: dict[str, str], reason: str) -> None:
    start = track({}, sample(), 100.0).states
    changed = track(start, sample(**change), 101.0)
    assert told(changed.transitions) == [reason]
    back = track(changed.states, sample(), 102.0)
    assert len(back.transitions) == 1 and back.transitions[0].reason != ""


def test_ready_back_is_node_ready() -> None:
    start = track({}, sample(ready="False"), 100.0).states
    assert told(track(start, sample(), 101.0).transitions) == ["NodeReady"]


def test_a_condition_left_out_of_a_sample_keeps_its_state() -> None:
    start = track({}, sample(), 100.0).states
    partial = track(start, sample()[:1], 101.0)
    assert partial.states == start and partial.transitions == ()


def test_stamped_conditions_carry_their_transition_time() -> None:
    states = {"Ready": ConditionState("True", 1000.0)}
    out = stamped(sample()[:2], states)
    assert out[0]["lastTransitionTime"] == "1970-01-01T00:16:40Z"
    assert out[0]["reason"] == "r"  # the rest of the condition as sampled
    assert "lastTransitionTime" not in out[1]  # no state for it: nothing made up


@pytest.fixture
def installed() -> Iterator[metrics.Metrics]:
    observed = metrics.Metrics()
    metrics.install(observed)
    yield observed
    metrics.install(None)


def test_the_tracker_hands_on_each_transition_and_counts_it(installed: metrics.Metrics) -> None:
    now = [100.0]
    seen: list[Transition] = []

    def never() -> list[dict[str, Any]]:
        raise AssertionError("observe is fed directly here")

    tracker = NodeConditionTracker(never, on_transition=seen.append, clock=lambda: now[0])
    tracker.observe(sample())
    now[0] = 150.0
    conditions = tracker.observe(sample(memory="True"))
    assert [t.reason for t in seen][-1] == "NodeHasInsufficientMemory"
    assert tracker.transitions == 5  # four first statuses, one change
    memory = next(c for c in conditions if c["type"] == "MemoryPressure")
    assert memory["lastTransitionTime"] == "1970-01-01T00:02:30Z"
    text = installed.exposition().decode()
    line = (
        'nodeagent_node_condition_transitions_total{condition="MemoryPressure",status="True"} 1.0'
    )
    assert line in text
    assert 'condition="MemoryPressure",status="False"} 1.0' in text


async def test_the_tracker_samples_on_its_own() -> None:
    samples = iter([sample(), sample(memory="True")])
    last = sample(memory="True")
    seen: list[Transition] = []

    def next_sample() -> list[dict[str, Any]]:
        return next(samples, last)

    tracker = NodeConditionTracker(next_sample, on_transition=seen.append, interval_s=0.01)
    task = asyncio.create_task(tracker.run())
    try:
        await eventually(
            lambda: "NodeHasInsufficientMemory" in [t.reason for t in seen], what="the change"
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# --- The daemon's wiring: the same road as pod events ------------------------------------------


def standalone(tmp_path: Path) -> Node:
    return Node(Config(node_name="n1", state_dir=tmp_path, manifests=None), FakeRuntime())


def test_standalone_transitions_reach_the_event_ring(tmp_path: Path) -> None:
    node = standalone(tmp_path)
    node.conditions.observe(sample())
    node.conditions.observe(sample(memory="True"))
    events = [e for e in node.events.to_json() if e["involvedObject"]["kind"] == "Node"]
    assert [e["reason"] for e in events][-1] == "NodeHasInsufficientMemory"
    assert events[-1]["involvedObject"] == {"kind": "Node", "name": "n1", "uid": "n1"}
    assert events[-1]["message"] == "Node n1 status is now: NodeHasInsufficientMemory"
    assert events[-1]["type"] == "Normal"


def test_the_status_sample_is_observed_and_stamped(tmp_path: Path) -> None:
    node = standalone(tmp_path)
    conditions = {c["type"]: c for c in node.snapshot()["node"]["conditions"]}
    assert set(node.conditions.states) == set(conditions)  # the tracker saw what is shown
    since = node.conditions.states["MemoryPressure"].since
    assert conditions["MemoryPressure"]["lastTransitionTime"] == rfc3339(since)
    reasons = [e["reason"] for e in node.snapshot()["events"]]
    assert "NodeHasSufficientMemory" in reasons or "NodeHasInsufficientMemory" in reasons


def test_cluster_transitions_go_to_the_api_recorder() -> None:
    ring = EventRing()
    sent: list[ApiEvent] = []
    tracker = NodeConditionTracker(
        lambda: [], on_transition=node_event_recorder(ring, "n1", send=sent.extend)
    )
    tracker.observe(sample(memory="True"))
    assert [e.reason for e in sent] == [
        "NodeHasInsufficientMemory",
        "NodeHasNoDiskPressure",
        "NodeHasSufficientPID",
    ]
    assert sent[0].pod.kind == "Node" and sent[0].pod.namespace == ""
    assert len(ring) == 0  # the recorder's sink fills the ring, not a second road
