"""Garbage collection and disk eviction decisions, and the GC applied to a fake runtime."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from nodeagent.config import ConfigError, load_config
from nodeagent.configparse import DEFAULT_DISK_THRESHOLDS, DiskThreshold, EvictionThreshold
from nodeagent.kubelet import diskpressure
from nodeagent.kubelet.diskeviction import DiskMonitor
from nodeagent.kubelet.diskpressure import DiskReading, FsReading
from nodeagent.kubelet.eviction import Candidate
from nodeagent.kubelet.gc import GarbageCollector
from nodeagent.kubelet.gcplan import GCInput, log_dir_uid, plan_gc
from nodeagent.kubelet.runtimepod import RuntimePod
from nodeagent.model.pod import EmptyDirSource, PodUID, Volume
from nodeagent.runtime.base import (
    ContainerID,
    ContainerInfo,
    ContainerState,
    SandboxID,
    SandboxInfo,
    SandboxState,
)
from nodeagent.runtime.fake import FakeRuntime
from tests.unit.rig import make_pod

U1, U2 = PodUID("u1"), PodUID("u2")
GI = 2**30


def container(
    uid: PodUID, name: str, attempt: int, state: ContainerState, sandbox: str = "s1"
) -> ContainerInfo:
    cid = ContainerID(f"{uid}-{name}-{attempt}")
    return ContainerInfo(cid, SandboxID(sandbox), uid, name, attempt, "img", state, attempt)


def sandbox(uid: PodUID, sid: str, attempt: int, state: SandboxState) -> SandboxInfo:
    return SandboxInfo(SandboxID(sid), uid, "web", "default", attempt, state, attempt)


EXITED, RUNNING = ContainerState.EXITED, ContainerState.RUNNING


def test_a_wanted_pod_keeps_its_newest_dead_instance_per_container() -> None:
    pod = RuntimePod(
        U1,
        sandboxes=(sandbox(U1, "s1", 0, SandboxState.READY),),
        containers=(
            container(U1, "app", 3, RUNNING),
            container(U1, "app", 2, EXITED),
            container(U1, "app", 1, EXITED),
            container(U1, "app", 0, EXITED),
            container(U1, "side", 0, EXITED),
        ),
    )
    plan = plan_gc(GCInput([pod], frozenset({U1})))
    assert [c.id for c in plan.containers] == ["u1-app-1", "u1-app-0"]
    assert plan.sandboxes == ()


def test_a_removed_pod_loses_every_dead_container_and_sandbox() -> None:
    pod = RuntimePod(
        U2,
        sandboxes=(sandbox(U2, "s2", 0, SandboxState.NOTREADY),),
        containers=(container(U2, "app", 0, EXITED, "s2"),),
    )
    plan = plan_gc(GCInput([pod], frozenset({U1})))
    assert [c.id for c in plan.containers] == ["u2-app-0"]
    assert [s.id for s in plan.sandboxes] == ["s2"]


def test_running_containers_keep_their_sandbox_even_of_a_removed_pod() -> None:
    pod = RuntimePod(
        U2,
        sandboxes=(sandbox(U2, "s2", 0, SandboxState.NOTREADY),),
        containers=(container(U2, "app", 0, RUNNING, "s2"),),
    )
    plan = plan_gc(GCInput([pod], frozenset()))
    assert plan.containers == () and plan.sandboxes == ()


def test_old_dead_sandboxes_go_but_a_wanted_pods_newest_stays() -> None:
    pod = RuntimePod(
        U1,
        sandboxes=(
            sandbox(U1, "old", 0, SandboxState.NOTREADY),
            sandbox(U1, "new", 1, SandboxState.NOTREADY),
        ),
    )
    assert [s.id for s in plan_gc(GCInput([pod], frozenset({U1}))).sandboxes] == ["old"]


def test_directories_of_pods_neither_wanted_nor_in_the_runtime_go() -> None:
    pod = RuntimePod(U2, sandboxes=(sandbox(U2, "s2", 0, SandboxState.READY),))
    inp = GCInput(
        [pod],
        frozenset({U1}),
        log_dirs=["default_a_u1", "default_b_u2", "default_c_u3", "stray"],
        pod_dirs=["u1", "u2", "u3"],
    )
    plan = plan_gc(inp)
    assert plan.log_dirs == ("default_c_u3",)
    assert plan.pod_dirs == ("u3",)


def test_nothing_of_unwanted_pods_is_touched_before_the_sources_are_ready() -> None:
    pod = RuntimePod(
        U2, containers=(container(U2, "app", 1, EXITED), container(U2, "app", 0, EXITED))
    )
    plan = plan_gc(GCInput([pod], None, log_dirs=["default_c_u3"], pod_dirs=["u3"]))
    assert [c.id for c in plan.containers] == ["u2-app-0"]  # the per-container rule only
    assert plan.log_dirs == () and plan.pod_dirs == ()


def test_log_dir_names() -> None:
    assert log_dir_uid("ns_name_1234") == "1234"
    assert log_dir_uid("nonsense") is None


async def test_the_collector_removes_from_the_runtime_and_the_disk(tmp_path: Path) -> None:
    fake = FakeRuntime(images={"img"})
    (tmp_path / "logs" / "default_gone_u9" / "app").mkdir(parents=True)
    (tmp_path / "state" / "pods" / "u9" / "volumes").mkdir(parents=True)
    (tmp_path / "logs" / "default_web_u1").mkdir(parents=True)
    collector = GarbageCollector(
        fake,
        pods=lambda: [],
        wanted=lambda: frozenset({U1}),
        state_dir=tmp_path / "state",
        pod_log_dir=tmp_path / "logs",
        interval_s=60,
    )
    plan = await collector.collect()
    assert plan.log_dirs == ("default_gone_u9",) and plan.pod_dirs == ("u9",)
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["default_web_u1"]
    assert list((tmp_path / "state" / "pods").iterdir()) == []
    assert collector.report()["removed"] == {
        "containers": 0,
        "sandboxes": 0,
        "logDirs": 1,
        "podDirs": 1,
    }


def fs(available: int, capacity: int = 100 * GI, inodes_free: int = 10**6) -> FsReading:
    return FsReading(available, capacity, inodes_free, 10**6)


def test_disk_signals_against_the_kubelets_defaults() -> None:
    plenty = DiskReading(fs(50 * GI), fs(50 * GI))
    assert diskpressure.breaches(DEFAULT_DISK_THRESHOLDS, plenty) == []
    low = DiskReading(fs(9 * GI, inodes_free=40_000), fs(9 * GI))
    found = diskpressure.breaches(DEFAULT_DISK_THRESHOLDS, low)
    assert [b.signal for b in found] == [
        "nodefs.available",
        "nodefs.inodesFree",
        "imagefs.available",
    ]
    assert found[0].threshold == 10 * GI
    assert "low on resource: ephemeral-storage. Threshold quantity: 10Gi" in found[0].message
    assert "low on resource: inodes" in found[1].message


def test_an_absolute_threshold() -> None:
    threshold = [DiskThreshold("nodefs.available", quantity=2 * GI)]
    assert diskpressure.breaches(threshold, DiskReading(fs(GI), fs(GI)))[0].threshold == 2 * GI
    assert diskpressure.breaches(threshold, DiskReading(fs(3 * GI), fs(GI))) == []


def cand(uid: str, qos: str) -> Candidate:
    return Candidate(uid=PodUID(uid), key=f"default/{uid}", qos=qos, memory_request_bytes=0)


def test_disk_ranking_best_effort_first_then_by_use() -> None:
    pods = [
        cand("g", "Guaranteed"),
        cand("b1", "Burstable"),
        cand("b2", "Burstable"),
        cand("e", "BestEffort"),
    ]
    usage = {PodUID("g"): 9 * GI, PodUID("b1"): GI, PodUID("b2"): 2 * GI, PodUID("e"): 1}
    assert [p.uid for p in diskpressure.rank(pods, usage)] == ["e", "b2", "b1", "g"]


def test_an_empty_dir_past_its_size_limit_names_the_volume() -> None:
    pod = make_pod()
    limited = Volume("scratch", EmptyDirSource(size_limit_bytes=2**20))
    memory = Volume("ram", EmptyDirSource(medium="Memory", size_limit_bytes=2**20))
    spec = dataclasses.replace(pod.spec, volumes=(*pod.spec.volumes, limited, memory))
    pod = dataclasses.replace(pod, spec=spec)
    assert diskpressure.size_limited_volumes(pod) == {"scratch": 2**20}  # tmpfs: the kernel's
    assert diskpressure.over_limits([pod], {(pod.uid, "scratch"): 2**20}, {}) == []
    (breach,) = diskpressure.over_limits([pod], {(pod.uid, "scratch"): 2**20 + 1}, {})
    assert breach.uid == pod.uid
    assert breach.message == 'Usage of EmptyDir volume "scratch" exceeds the limit "1Mi".'


@pytest.mark.parametrize(("value", "text"), [(2**20, "1Mi"), (3 * 2**30, "3Gi"), (1000, "1000")])
def test_quantities_read_as_the_api_writes_them(value: int, text: str) -> None:
    assert diskpressure.quantity(value) == text


def disk_monitor(
    tmp_path: Path, readings: list[DiskReading], evicted: list[tuple[str, str]]
) -> tuple[DiskMonitor, list[int]]:
    reclaims: list[int] = []

    async def reclaim() -> int:
        reclaims.append(1)
        return 0

    async def evict(victim: Candidate, message: str) -> None:
        evicted.append((victim.uid, message))

    monitor = DiskMonitor(
        EvictionThreshold(),
        state_dir=tmp_path,
        pod_log_dir=tmp_path,
        pods=lambda: [],
        runtime_pods=lambda: [],
        candidates=lambda _: [cand("g", "Guaranteed"), cand("e", "BestEffort")],
        evict=evict,
        reclaim=reclaim,
        interval_s=10,
    )
    monitor.read = lambda: readings.pop(0) if len(readings) > 1 else readings[0]  # type: ignore[method-assign]
    return monitor, reclaims


LOW = DiskReading(fs(GI), fs(GI))
PLENTY = DiskReading(fs(50 * GI), fs(50 * GI))


async def test_disk_pressure_reclaims_before_it_evicts(tmp_path: Path) -> None:
    evicted: list[tuple[str, str]] = []
    monitor, reclaims = disk_monitor(tmp_path, [LOW, PLENTY], evicted)
    assert monitor.under_pressure is None
    await monitor.check()
    assert reclaims == [1] and evicted == []  # reclaiming was enough
    assert monitor.under_pressure is False


async def test_disk_pressure_evicts_best_effort_when_reclaim_is_not_enough(tmp_path: Path) -> None:
    evicted: list[tuple[str, str]] = []
    monitor, reclaims = disk_monitor(tmp_path, [LOW, LOW], evicted)
    await monitor.check()
    assert reclaims == [1]
    assert [uid for uid, _ in evicted] == ["e"]
    assert "low on resource: ephemeral-storage" in evicted[0][1]
    assert monitor.under_pressure is True
    assert monitor.report()["below"] == ["nodefs.available", "imagefs.available"]


def test_a_container_past_its_ephemeral_storage_limit_evicts_its_pod() -> None:
    pod = make_pod(extra={"resources": {"limits": {"ephemeral-storage": "2Mi"}}})
    assert diskpressure.storage_limited_containers(pod) == {"app": 2 * 2**20}
    assert diskpressure.over_limits([pod], {}, {(pod.uid, "app"): 2 * 2**20}) == []
    (breach,) = diskpressure.over_limits([pod], {}, {(pod.uid, "app"): 3 * 2**20})
    assert breach.message == 'Container app exceeded its local ephemeral storage limit "2Mi". '


MOUNTINFO = (
    "1234 1200 0:88 / / rw,relatime master:1 - overlay overlay "
    "rw,lowerdir=/var/lib/c/snapshots/1/fs,upperdir=/var/lib/c/snapshots/7/fs,"
    "workdir=/var/lib/c/snapshots/7/work\n"
    "1235 1234 0:89 / /proc rw,nosuid - proc proc rw\n"
)


def test_the_writable_layer_is_the_root_overlays_upperdir() -> None:
    assert diskpressure.upper_dir(MOUNTINFO) == "/var/lib/c/snapshots/7/fs"
    assert diskpressure.upper_dir("25 1 8:1 / / rw - ext4 /dev/vda rw\n") is None


def flags(**given: object) -> argparse.Namespace:
    return argparse.Namespace(config=None, node_name="n1", **given)


def test_eviction_hard_takes_disk_signals_and_keeps_the_other_defaults() -> None:
    text = "memory.available<1Gi, nodefs.available<2Gi,nodefs.inodesFree<100k"
    got = load_config(flags(eviction_hard=text)).eviction_hard
    assert got.quantity_bytes == GI
    assert got.disk == (
        DiskThreshold("nodefs.available", quantity=2 * GI),
        DiskThreshold("nodefs.inodesFree", quantity=100_000),
        DiskThreshold("imagefs.available", percent=15.0),  # not given: the kubelet's default
    )
    # Memory alone, as before: the disk signals keep their defaults.
    assert load_config(flags(eviction_hard="memory.available<1Gi")).eviction_hard.disk == (
        DEFAULT_DISK_THRESHOLDS
    )
    assert str(load_config(flags()).eviction_hard) == (
        "memory.available<104857600,nodefs.available<10%,nodefs.inodesFree<5%,imagefs.available<15%"
    )


def test_log_rotation_flags() -> None:
    config = load_config(flags(container_log_max_size="20Mi", container_log_max_files="3"))
    assert (config.container_log_max_size, config.container_log_max_files) == (20 * 2**20, 3)
    defaults = load_config(flags())
    assert (defaults.container_log_max_size, defaults.container_log_max_files) == (10 * 2**20, 5)


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("container_log_max_files", "1", "at least 2"),
        ("container_log_max_size", "big", "not a positive size"),
        ("container_log_max_size", "0", "not a positive size"),
    ],
)
def test_bad_log_rotation_flags_name_the_flag(key: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as info:
        load_config(flags(**{key: value}))
    assert info.value.key == key
