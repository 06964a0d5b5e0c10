"""Memory eviction: the threshold, the ranking and the monitor's one-pod-per-pass rule."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable

import pytest

from nodeagent.config import ConfigError, EvictionThreshold, load_config
from nodeagent.kubelet import eviction
from nodeagent.kubelet.eviction import Candidate, EvictionMonitor, MemoryReading
from nodeagent.kubelet.podstatus import qos_class
from nodeagent.model.pod import Container, Pod, PodSpec, PodUID, Resources

MI = 2**20
GI = 2**30


def pod(name: str, *resources: Resources) -> Pod:
    containers = tuple(
        Container(name=f"c{i}", image="busybox", resources=r) for i, r in enumerate(resources)
    )
    return Pod(uid=PodUID(f"uid-{name}"), name=name, namespace="default", spec=PodSpec(containers))


BEST_EFFORT = pod("be", Resources())
BURSTABLE = pod("burst", Resources(memory_request_bytes=64 * MI))
GUARANTEED = pod(
    "guar",
    Resources(
        cpu_limit_millis=100,
        memory_limit_bytes=64 * MI,
        cpu_request_millis=100,
        memory_request_bytes=64 * MI,
    ),
)


async def done(_: object) -> None:
    """An eviction whose pod is gone at once."""


def under_pressure(monitor: EvictionMonitor) -> bool | None:
    # Read through a call: mypy would otherwise keep the property narrowed across checks.
    return monitor.under_pressure


def cand(p: Pod, usage: int | None = None, priority: int = 0) -> Candidate:
    c = eviction.candidate(p, qos_class(p), usage)
    return Candidate(c.uid, c.key, c.qos, c.memory_request_bytes, c.usage_bytes, priority)


def test_threshold_as_quantity_and_percentage() -> None:
    assert eviction.threshold_bytes(EvictionThreshold(), 8 * GI) == 100 * MI
    assert eviction.threshold_bytes(EvictionThreshold(None, 10.0), 8 * GI) == int(0.8 * GI)


def test_no_pressure_above_the_threshold() -> None:
    reading = MemoryReading(available_bytes=200 * MI, total_bytes=GI)
    decision = eviction.decide(EvictionThreshold(), reading, [cand(BEST_EFFORT)])
    assert not decision.under_pressure
    assert decision.victim is None


def test_pressure_below_the_threshold_evicts_best_effort_first() -> None:
    reading = MemoryReading(available_bytes=50 * MI, total_bytes=GI)
    pods = [cand(GUARANTEED), cand(BURSTABLE), cand(BEST_EFFORT)]
    decision = eviction.decide(EvictionThreshold(), reading, pods)
    assert decision.under_pressure
    assert decision.victim is not None and decision.victim.key == "default/be"
    assert "low on resource: memory" in decision.message
    assert "Threshold quantity: 100Mi" in decision.message
    assert "available: 50Mi" in decision.message


def test_pressure_with_no_pods_evicts_nothing() -> None:
    reading = MemoryReading(available_bytes=0, total_bytes=GI)
    decision = eviction.decide(EvictionThreshold(), reading, [])
    assert decision.under_pressure and decision.victim is None


def test_rank_without_usage_follows_qos() -> None:
    ranked = eviction.rank([cand(GUARANTEED), cand(BURSTABLE), cand(BEST_EFFORT)])
    assert [c.qos for c in ranked] == ["BestEffort", "Burstable", "Guaranteed"]


def test_rank_burstable_over_its_request_before_best_effort_within_priority() -> None:
    # Upstream ranks by use above requests, not by QoS: a Burstable pod far over its request
    # goes before a small BestEffort one.
    over = cand(BURSTABLE, usage=512 * MI)
    small = cand(BEST_EFFORT, usage=1 * MI)
    assert eviction.rank([small, over])[0] is over


def test_rank_within_requests_comes_last_whatever_the_use() -> None:
    within = cand(GUARANTEED, usage=60 * MI)
    over = cand(BURSTABLE, usage=65 * MI)
    assert eviction.rank([within, over]) == [over, within]


def test_rank_lower_priority_first_among_those_over_requests() -> None:
    low = cand(BEST_EFFORT, usage=MI, priority=0)
    high = cand(pod("other", Resources()), usage=900 * MI, priority=1000)
    assert eviction.rank([high, low])[0] is low


def test_candidate_request_defaults_to_the_limit() -> None:
    limited = pod("lim", Resources(memory_limit_bytes=32 * MI), Resources(memory_request_bytes=MI))
    assert eviction.candidate(limited, "Burstable").memory_request_bytes == 33 * MI


def test_evicted_status_is_failed_with_reason_and_nothing_ready() -> None:
    exited = {"terminated": {"exitCode": 137, "reason": "Error"}}
    last = {
        "phase": "Running",
        "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": "t0"},
            {"type": "Initialized", "status": "True", "lastTransitionTime": "t0"},
        ],
        "containerStatuses": [
            {"name": "c0", "ready": True, "started": True, "state": exited},
            {"name": "c1", "ready": True, "started": True, "state": {"running": {}}},
        ],
    }
    message = "The node was low on resource: memory."
    status = eviction.evicted_status(last, message, now="t1")
    assert status["phase"] == "Failed"
    assert status["reason"] == "Evicted"
    assert "memory" in status["message"]
    ready, initialized, target = status["conditions"]
    assert ready == {
        "type": "Ready",
        "status": "False",
        "reason": "PodFailed",
        "lastTransitionTime": "t1",
    }
    assert initialized == last["conditions"][1]
    assert target["type"] == "DisruptionTarget" and target["status"] == "True"
    assert target["reason"] == "TerminationByKubelet" and target["message"] == message
    c0, c1 = status["containerStatuses"]
    assert c0["state"] == exited  # as the runtime reported it stopping
    assert c1["state"]["terminated"]["reason"] == "ContainerStatusUnknown"  # never seen stopped
    assert not any(c["ready"] or c["started"] for c in (c0, c1))
    assert last["phase"] == "Running"  # the worker's status is not mutated
    again = eviction.evicted_status(status, message, now="t2")
    assert [c["type"] for c in again["conditions"]].count("DisruptionTarget") == 1


async def test_monitor_evicts_one_pod_per_pass_and_reports_pressure() -> None:
    evicted: list[tuple[str, str]] = []
    pods = [cand(GUARANTEED), cand(BEST_EFFORT)]

    async def evict(c: Candidate, message: str) -> None:
        evicted.append((c.key, message))

    monitor = EvictionMonitor(
        EvictionThreshold(),
        read=lambda: MemoryReading(available_bytes=10 * MI, total_bytes=GI),
        pods=lambda: [p for p in pods if p.key not in {k for k, _ in evicted}],
        evict=evict,
        interval_s=10,
    )
    assert monitor.last is None
    decision = await monitor.check()
    assert decision.under_pressure and monitor.under_pressure is True
    assert [k for k, _ in evicted] == ["default/be"]
    await monitor.check()
    assert [k for k, _ in evicted] == ["default/be", "default/guar"]


async def test_monitor_without_pressure_evicts_nothing() -> None:
    evicted: list[Candidate] = []

    async def evict(c: Candidate, _: str) -> None:
        evicted.append(c)

    monitor = EvictionMonitor(
        EvictionThreshold(None, 5.0),
        read=lambda: MemoryReading(available_bytes=GI // 2, total_bytes=GI),
        pods=lambda: [cand(BEST_EFFORT)],
        evict=evict,
        interval_s=10,
    )
    await monitor.check()
    assert monitor.under_pressure is False
    assert evicted == []


def _args(**flags: object) -> argparse.Namespace:
    return argparse.Namespace(config=None, node_name="n1", **flags)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("memory.available<100Mi", EvictionThreshold(100 * MI, None)),
        ("memory.available<1Gi", EvictionThreshold(GI, None)),
        ("memory.available < 500M", EvictionThreshold(500_000_000, None)),
        ("memory.available<12.5%", EvictionThreshold(None, 12.5)),
    ],
)
def test_eviction_hard_flag(text: str, want: EvictionThreshold) -> None:
    assert load_config(_args(eviction_hard=text)).eviction_hard == want


def test_eviction_hard_default_is_upstreams() -> None:
    assert load_config(_args()).eviction_hard == EvictionThreshold(100 * MI, None)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("pid.available<10%", "the signals known are"),
        ("nodefs.inodesFree<many", "not an inode count"),
        ("memory.available>1Gi", "not a threshold"),
        ("memory.available<lots", "not a memory quantity"),
        ("memory.available<100%", "between 0 and 100"),
        ("memory.available<", "not a threshold"),
    ],
)
def test_eviction_hard_errors_name_the_flag(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as info:
        load_config(_args(eviction_hard=text))
    assert info.value.key == "eviction_hard"
    assert "--eviction-hard" in str(info.value)


async def test_memory_pressure_holds_for_the_transition_period() -> None:
    now = [0.0]
    available = [10 * MI]
    monitor = EvictionMonitor(
        EvictionThreshold(),
        read=lambda: MemoryReading(available_bytes=available[0], total_bytes=GI),
        pods=lambda: [],
        evict=lambda c, _: done(None),
        interval_s=10,
        transition_s=300,
        clock=lambda: now[0],
    )
    await monitor.check()
    assert monitor.under_pressure is True
    available[0] = 500 * MI
    now[0] = 299.0
    decision = await monitor.check()
    assert not decision.under_pressure  # no more evictions...
    assert under_pressure(monitor) is True  # ...but the condition does not flap
    now[0] = 301.0
    assert under_pressure(monitor) is False
    report = monitor.report()
    assert report["checks"] == 2 and report["belowThreshold"] is False
    assert report["availableBytes"] == 500 * MI and report["thresholdBytes"] == 100 * MI


async def test_the_next_pass_waits_for_the_victim_to_be_gone() -> None:
    gone, evicting, second_read = asyncio.Event(), asyncio.Event(), asyncio.Event()
    reads: list[int] = []

    def read() -> MemoryReading:
        reads.append(1)
        if len(reads) == 2:
            second_read.set()
        return MemoryReading(available_bytes=10 * MI, total_bytes=GI)

    async def wait_gone() -> None:
        await gone.wait()

    def evict(c: Candidate, _: str) -> Awaitable[None]:
        evicting.set()
        return wait_gone()

    monitor = EvictionMonitor(
        EvictionThreshold(), read=read, pods=lambda: [cand(BEST_EFFORT)], evict=evict, interval_s=0
    )
    task = asyncio.create_task(monitor.run())
    await asyncio.wait_for(evicting.wait(), 5)
    for _ in range(20):  # give a wrong implementation every chance to pass again
        await asyncio.sleep(0)
    assert len(reads) == 1  # held until the pod is gone
    gone.set()
    await asyncio.wait_for(second_read.wait(), 5)
    task.cancel()
