"""The relister's cost on an unchanged node, and the manager's lookup of a pod's worker.

A relist that finds nothing new must reuse what it built last time (no runtime call per
container or sandbox, the same objects, no pod reported changed), while a real change is
still seen, detailed and reported for exactly its pod. Finding a pod's worker by uid (each
runtime change, each pod in a status snapshot) is a lookup, and stays right as pods are
replaced and removed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from nodeagent.kubelet import pleg, specs
from nodeagent.kubelet.envvars import PodFacts
from nodeagent.kubelet.pleg import RuntimeCache
from nodeagent.kubelet.worker import WorkerState
from nodeagent.model.pod import Pod, PodUID
from nodeagent.model.validate import parse_pod
from nodeagent.runtime.base import ContainerInfo, ContainerState, SandboxInfo
from nodeagent.runtime.fake import FakeRuntime
from tests.unit.rig import IMAGE, eventually, manager_rig


def pod_of(name: str, *, containers: int = 1, args: tuple[str, ...] = ()) -> Pod:
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 0,
        "containers": [
            {"name": f"c{i}", "image": IMAGE, "command": ["sleep", "9"], "args": list(args)}
            for i in range(containers)
        ],
    }
    doc = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}
    return parse_pod(doc, source="test", node_name="n1")


async def run_pod(fake: FakeRuntime, pod: Pod) -> None:
    sandbox = specs.sandbox_config(pod, attempt=0, pod_log_dir="/nonexistent")
    sandbox_id = await fake.run_sandbox(sandbox)
    for container in pod.spec.containers:
        config = specs.container_config(
            pod, container, attempt=0, facts=PodFacts("n1", "10.0.0.2"), volume_paths={}
        )
        container_id = await fake.create_container(sandbox_id, config, sandbox)
        await fake.start_container(container_id)


async def test_unchanged_relist_reuses_everything_and_reports_nothing() -> None:
    fake = FakeRuntime(images={IMAGE})
    pods = [pod_of(f"p{i}", containers=2) for i in range(5)]
    for pod in pods:
        await run_pod(fake, pod)
    changed: list[PodUID] = []
    cache = RuntimeCache(fake, on_change=changed.append)
    await cache.relist()
    assert sorted(changed) == sorted(p.uid for p in pods)
    before = {uid: cache.get(uid) for uid in cache.uids()}
    calls = (fake.count("container_status"), fake.count("sandbox_status"))
    changed.clear()

    await cache.relist()

    assert changed == []
    assert (fake.count("container_status"), fake.count("sandbox_status")) == calls
    for uid, old in before.items():
        new = cache.get(uid)
        assert all(a is b for a, b in zip(new.sandboxes, old.sandboxes, strict=True))
        assert all(a is b for a, b in zip(new.containers, old.containers, strict=True))
        assert new.sandboxes[0].ip  # the view with the IP, not the bare summary


async def test_a_change_is_detailed_and_reported_for_its_pod_only() -> None:
    fake = FakeRuntime(images={IMAGE})
    quiet, busy = pod_of("quiet"), pod_of("busy", containers=3)
    await run_pod(fake, quiet)
    await run_pod(fake, busy)
    changed: list[PodUID] = []
    cache = RuntimeCache(fake, on_change=changed.append)
    await cache.relist()
    order = [c.name for c in cache.get(busy.uid).containers]
    changed.clear()
    (middle,) = fake.container_ids("c1", uid=busy.uid)

    fake.exit_container(middle, 3)
    await cache.relist()

    assert changed == [busy.uid]
    containers = cache.get(busy.uid).containers
    assert [c.name for c in containers] == order  # the listing's order, as before
    exited = next(c for c in containers if c.id == middle)
    assert exited.state is ContainerState.EXITED and exited.exit_code == 3


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The relister's monotonic clock, moved by hand: the settle window never races."""
    now = [1000.0]
    monkeypatch.setattr(pleg, "_clock", lambda: now[0])
    return now


async def test_a_killed_exit_is_read_again_until_a_late_oom_reason_settles(
    clock: list[float],
) -> None:
    fake = FakeRuntime(images={IMAGE})
    pod = pod_of("hog")
    await run_pod(fake, pod)
    changed: list[PodUID] = []
    cache = RuntimeCache(fake, on_change=changed.append)
    await cache.relist()
    (cid,) = fake.container_ids("c0", uid=pod.uid)
    fake.exit_container(cid, 137, "Error")  # the exit event came first
    await cache.relist()
    assert cache.get(pod.uid).containers[0].reason == "Error"
    changed.clear()

    fake.revise_exit_reason(cid, "OOMKilled")  # then the OOM event
    await cache.relist()

    assert changed == [pod.uid]
    assert cache.get(pod.uid).containers[0].reason == "OOMKilled"
    settled = fake.count("container_status")
    await cache.relist()  # OOMKilled is final: no more reads
    assert fake.count("container_status") == settled


async def test_a_killed_exit_is_read_again_only_for_the_settle_window(
    clock: list[float],
) -> None:
    fake = FakeRuntime(images={IMAGE})
    pod = pod_of("killed")
    await run_pod(fake, pod)
    changed: list[PodUID] = []
    cache = RuntimeCache(fake, on_change=changed.append)
    await cache.relist()
    (cid,) = fake.container_ids("c0", uid=pod.uid)
    fake.exit_container(cid, 137, "Error")  # a plain SIGKILL: it stays Error
    await cache.relist()
    first = cache.get(pod.uid)
    changed.clear()
    reads = fake.count("container_status")

    await cache.relist()  # within the window: read again, nothing changed, nothing told
    assert fake.count("container_status") == reads + 1
    assert changed == [] and cache.get(pod.uid) == first
    assert cache.get(pod.uid).containers[0] is first.containers[0]

    clock[0] += pleg.SETTLE_S + 1
    await cache.relist()  # past it: the cached details again
    await cache.relist()
    assert fake.count("container_status") == reads + 1


async def test_removed_sandbox_is_forgotten() -> None:
    fake = FakeRuntime(images={IMAGE})
    pod = pod_of("gone")
    await run_pod(fake, pod)
    cache = RuntimeCache(fake, on_change=lambda uid: None)
    await cache.relist()
    (sandbox_id,) = fake.sandbox_ids(uid=pod.uid)
    for container_id in fake.container_ids("c0", uid=pod.uid):
        await fake.stop_container(container_id, 0)
        await fake.remove_container(container_id)
    await fake.stop_sandbox(sandbox_id)
    await fake.remove_sandbox(sandbox_id)

    await cache.relist()

    assert pod.uid not in cache.uids()
    assert sandbox_id not in cache._views and sandbox_id not in cache._ips


# -- the manager's worker lookup ------------------------------------------------------------


async def test_worker_for_follows_replacements_and_removals(tmp_path: Path) -> None:
    pods, cache = manager_rig(tmp_path, "n1")
    await cache.relist()
    try:
        old, other = pod_of("web"), pod_of("db")
        pods.update({old.key: old, other.key: other})
        first = pods.worker_for(old.uid)
        assert first is not None and first.pod.uid == old.uid
        assert pods.worker_for(other.uid) is not first

        new = pod_of("web", args=("v2",))
        assert new.uid != old.uid
        pods.update({new.key: new, other.key: other})
        assert pods.worker_for(old.uid) is first  # retiring, still found by its uid
        await eventually(lambda: pods.worker_for(new.uid) is not None, what="the new incarnation")
        assert first.state is WorkerState.TERMINATED
        assert pods.worker_for(old.uid) is None

        pods.update({other.key: other})
        await eventually(lambda: pods.worker_for(new.uid) is None, what="the pod removed")
        assert pods.worker_for(PodUID("no-such-uid")) is None
    finally:
        await pods.detach_all()


async def test_runtime_change_wakes_only_that_pods_worker(tmp_path: Path) -> None:
    pods, cache = manager_rig(tmp_path, "n1")
    await cache.relist()
    try:
        a, b = pod_of("a"), pod_of("b")
        pods.update({a.key: a, b.key: b})
        worker_a, worker_b = pods.worker_for(a.uid), pods.worker_for(b.uid)
        assert worker_a is not None and worker_b is not None
        woken: list[str] = []
        worker_a.wake = lambda: woken.append("a")  # type: ignore[method-assign]
        worker_b.wake = lambda: woken.append("b")  # type: ignore[method-assign]

        pods.on_runtime_change(b.uid)
        pods.on_runtime_change(PodUID("unknown"))

        assert woken == ["b"]
    finally:
        await pods.detach_all()


class SlowLists(FakeRuntime):
    """Answers a sandbox list only once a container list has been asked for too: a relister
    that lists one after the other never gets its answer."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.containers_asked = asyncio.Event()

    async def list_sandboxes(self, uid: PodUID | None = None) -> Sequence[SandboxInfo]:
        await self.containers_asked.wait()
        return await super().list_sandboxes(uid)

    async def list_containers(self, uid: PodUID | None = None) -> Sequence[ContainerInfo]:
        self.containers_asked.set()
        return await super().list_containers(uid)


async def test_both_lists_are_asked_for_at_once() -> None:
    fake = SlowLists(images={IMAGE})
    pod = pod_of("both")
    await run_pod(fake, pod)
    cache = RuntimeCache(fake, on_change=lambda uid: None)

    async with asyncio.timeout(5):
        await cache.relist()
        fake.containers_asked.clear()
        refreshed = await cache.refresh(pod.uid)

    assert len(refreshed.sandboxes) == 1 and len(refreshed.containers) == 1
