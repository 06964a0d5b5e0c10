"""Pod cgroups: the pure decisions (kubelet/cgroups/policy.py), the v1/v2 file writes on a
directory standing in for /sys/fs/cgroup, and the manager's make-and-remove over it."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
from pathlib import Path

import pytest

from nodeagent.config import ConfigError, load_config
from nodeagent.configparse import EvictionThreshold, Reserved
from nodeagent.kubelet.cgroups import policy
from nodeagent.kubelet.cgroups.fs import CgroupFS, v1_files, v2_files
from nodeagent.kubelet.cgroups.manager import CgroupSettings, PodCgroups
from nodeagent.kubelet.cgroups.policy import (
    CgroupDriver,
    CgroupLayout,
    NodeResources,
    QOSClass,
    ResourceConfig,
)
from nodeagent.kubelet.manager import PodManager
from nodeagent.model.pod import Container, Pod, PodSpec, PodUID, Resources
from nodeagent.runtime import base
from nodeagent.runtime.cri import convert
from nodeagent.runtime.docker_convert import container_spec, resource_args, sandbox_spec

MI = 2**20
GI = 2**30
UID = PodUID("1b4e28ba-2fa1-11d2-883f-0016d3cca427")


def container(name: str = "c", sidecar: bool = False, **res: int) -> Container:
    return Container(name=name, image="busybox", resources=Resources(**res), sidecar=sidecar)


def pod(*containers: Container, inits: tuple[Container, ...] = (), priority: int = 0) -> Pod:
    spec = PodSpec(containers=containers, init_containers=inits, priority=priority or None)
    return Pod(uid=UID, name="p", namespace="default", spec=spec)


GUARANTEED = pod(container(cpu_limit_millis=250, memory_limit_bytes=64 * MI))
BURSTABLE = pod(
    container("a", cpu_request_millis=100, memory_request_bytes=32 * MI),
    container("b", cpu_request_millis=300, cpu_limit_millis=500, memory_limit_bytes=128 * MI),
)
BEST_EFFORT = pod(container())


# --- conversions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("millis", "shares"), [(0, 2), (1, 2), (100, 102), (1000, 1024), (10**9, 262_144)]
)
def test_shares_from_millicpu_as_upstream(millis: int, shares: int) -> None:
    assert policy.milli_cpu_to_shares(millis) == shares


@pytest.mark.parametrize(("millis", "quota"), [(0, 0), (1, 1000), (250, 25_000), (2000, 200_000)])
def test_quota_from_millicpu_has_a_floor_of_one_millisecond(millis: int, quota: int) -> None:
    assert policy.milli_cpu_to_quota(millis) == quota


@pytest.mark.parametrize(("shares", "weight"), [(2, 1), (1024, 39), (262_144, 10_000)])
def test_v2_weight_from_shares_as_runc(shares: int, weight: int) -> None:
    assert policy.shares_to_weight(shares) == weight


# --- pod totals and limits -----------------------------------------------------------------


def test_pod_totals_take_the_larger_of_app_containers_and_any_one_init() -> None:
    p = pod(
        container("app", cpu_request_millis=100, memory_request_bytes=10 * MI),
        inits=(
            container("side", sidecar=True, cpu_request_millis=50),
            container("init", cpu_request_millis=500, memory_request_bytes=5 * MI),
        ),
    )
    # the init runs beside the sidecar started before it: 550m; the app and sidecar: 150m
    assert policy.pod_requests(p) == policy.PodTotals(cpu_millis=550, memory_bytes=10 * MI)


def test_guaranteed_pod_gets_shares_quota_and_memory() -> None:
    assert policy.pod_resource_config(GUARANTEED) == ResourceConfig(
        cpu_shares=256, cpu_quota_us=25_000, cpu_period_us=100_000, memory_bytes=64 * MI
    )


def test_burstable_pod_limits_only_where_every_container_has_one() -> None:
    config = policy.pod_resource_config(BURSTABLE)
    assert config == ResourceConfig(cpu_shares=409)  # (100 + 300) * 1024 / 1000
    both = pod(
        container("a", cpu_request_millis=100, cpu_limit_millis=200, memory_limit_bytes=MI),
        container("b", cpu_limit_millis=300, memory_request_bytes=MI, memory_limit_bytes=2 * MI),
    )
    assert policy.pod_resource_config(both) == ResourceConfig(
        cpu_shares=409, cpu_quota_us=50_000, cpu_period_us=100_000, memory_bytes=3 * MI
    )


def test_best_effort_pod_gets_two_shares_and_the_pid_limit() -> None:
    assert policy.pod_resource_config(BEST_EFFORT, pids_max=100) == ResourceConfig(
        cpu_shares=2, pids_max=100
    )
    assert policy.pod_resource_config(GUARANTEED, pids_max=-1).pids_max is None


def test_qos_shares_follow_the_burstable_pods() -> None:
    shares = policy.qos_cpu_shares([GUARANTEED, BURSTABLE, BEST_EFFORT, BURSTABLE])
    assert shares == {QOSClass.BURSTABLE: 819, QOSClass.BESTEFFORT: 2}
    assert policy.qos_cpu_shares([])[QOSClass.BURSTABLE] == 2


# --- oom_score_adj -------------------------------------------------------------------------


def test_oom_score_adj_by_class() -> None:
    assert policy.oom_score_adj(GUARANTEED, GUARANTEED.spec.containers[0], 8 * GI) == -997
    assert policy.oom_score_adj(BEST_EFFORT, BEST_EFFORT.spec.containers[0], 8 * GI) == 1000
    a, b = BURSTABLE.spec.containers
    assert policy.oom_score_adj(BURSTABLE, a, 8 * GI) == 1000 - (1000 * 32 * MI) // (8 * GI)
    assert policy.oom_score_adj(BURSTABLE, b, 8 * GI) == 985  # the request is the limit
    cpu_only = pod(container(cpu_request_millis=100))
    assert policy.oom_score_adj(cpu_only, cpu_only.spec.containers[0], GI) == 999
    big = pod(container(memory_request_bytes=8 * GI))
    assert policy.oom_score_adj(big, big.spec.containers[0], 8 * GI) == 3


def test_node_critical_pods_score_as_guaranteed() -> None:
    critical = pod(container(), priority=2_000_001_000)
    assert policy.oom_score_adj(critical, critical.spec.containers[0], GI) == -997


# --- names ---------------------------------------------------------------------------------


def test_cgroupfs_names() -> None:
    layout = CgroupLayout(CgroupDriver.CGROUPFS, policy.parse_cgroup_root("/node-a"))
    assert layout.path(layout.kubepods()) == "/node-a/kubepods"
    assert layout.path(layout.pod(UID, QOSClass.GUARANTEED)) == f"/node-a/kubepods/pod{UID}"
    burstable = layout.path(layout.pod(UID, QOSClass.BURSTABLE))
    assert burstable == f"/node-a/kubepods/burstable/pod{UID}"
    assert layout.parent(layout.pod(UID, QOSClass.BURSTABLE), leaf_only=True) == burstable
    assert layout.pod_uid(f"pod{UID}") == UID
    assert layout.pod_uid("burstable") is None


def test_systemd_names_expand_slices_and_escape_dashes() -> None:
    layout = CgroupLayout(CgroupDriver.SYSTEMD, policy.parse_cgroup_root("/"))
    name = layout.pod(UID, QOSClass.BESTEFFORT)
    leaf = f"kubepods-besteffort-pod{UID.replace('-', '_')}.slice"
    assert layout.path(name) == f"/kubepods.slice/kubepods-besteffort.slice/{leaf}"
    assert layout.parent(name, leaf_only=True) == leaf
    assert layout.pod_uid(leaf) == UID
    assert layout.pod_uid("kubepods-besteffort.slice") is None
    rooted = CgroupLayout(CgroupDriver.SYSTEMD, policy.parse_cgroup_root("node.slice"))
    assert rooted.path(rooted.kubepods()) == "/node.slice/node-kubepods.slice"


# --- allocatable ---------------------------------------------------------------------------


def test_allocatable_keeps_back_reservations_and_the_eviction_threshold() -> None:
    capacity = NodeResources(cpu_millis=2000, memory_bytes=4 * GI)
    reserved = (Reserved(cpu_millis=100, memory_bytes=100 * MI), Reserved(memory_bytes=50 * MI))
    left = policy.node_allocatable(capacity, reserved, 100 * MI)
    assert left == NodeResources(cpu_millis=1900, memory_bytes=4 * GI - 250 * MI)
    assert policy.cpu_quantity(left.cpu_millis) == "1900m"
    assert policy.cpu_quantity(2000) == "2"
    starved = policy.node_allocatable(capacity, (Reserved(cpu_millis=5000),), 8 * GI)
    assert starved == NodeResources(cpu_millis=0, memory_bytes=0)


def test_kubepods_capped_only_when_enforced_and_without_the_eviction_threshold() -> None:
    capacity = NodeResources(cpu_millis=2000, memory_bytes=4 * GI)
    reserved = (Reserved(cpu_millis=1000, memory_bytes=GI),)
    assert policy.kubepods_config(capacity, reserved, enforce=True) == ResourceConfig(
        cpu_shares=1024, memory_bytes=3 * GI
    )
    assert policy.kubepods_config(capacity, reserved, enforce=False) == ResourceConfig(
        cpu_shares=2048
    )


def test_node_status_allocatable_reads_the_reservation() -> None:
    from nodeagent.kubelet import nodestatus

    total = nodestatus.node_capacity().memory_bytes
    reservation = nodestatus.Reservation(
        kube=Reserved(memory_bytes=100 * MI), eviction=EvictionThreshold(quantity_bytes=MI)
    )
    assert nodestatus.allocatable(5, reservation)["memory"] == f"{(total - 101 * MI) // 1024}Ki"


# --- configuration -------------------------------------------------------------------------


def config(*argv: str) -> argparse.Namespace:
    from nodeagent.cli import build_parser

    return build_parser().parse_args(["run", "--node-name", "n", *argv])


def test_flags_parse_as_the_kubelet_spells_them() -> None:
    loaded = load_config(
        config(
            "--kube-reserved",
            "cpu=250m,memory=1Gi",
            "--system-reserved",
            "cpu=1",
            "--pod-max-pids",
            "1024",
            "--cgroup-driver",
            "systemd",
            "--cgroup-root",
            "/nodes/a",
            "--enforce-node-allocatable",
            "none",
        )
    )
    assert loaded.kube_reserved == Reserved(cpu_millis=250, memory_bytes=GI)
    assert loaded.system_reserved == Reserved(cpu_millis=1000)
    assert (loaded.pod_max_pids, loaded.cgroup_driver) == (1024, "systemd")
    assert (loaded.cgroup_root, loaded.enforce_node_allocatable) == ("/nodes/a", ())
    defaults = load_config(config())
    assert (defaults.cgroups_per_qos, defaults.enforce_node_allocatable) == (True, ("pods",))


@pytest.mark.parametrize(
    ("argv", "key"),
    [
        (("--kube-reserved", "gpu=1"), "kube_reserved"),
        (("--system-reserved", "memory=lots"), "system_reserved"),
        (("--pod-max-pids", "0"), "pod_max_pids"),
        (("--cgroup-root", "relative"), "cgroup_root"),
        (("--enforce-node-allocatable", "kube-reserved"), "enforce_node_allocatable"),
        (("--cgroup-driver", "lxc"), "cgroup_driver"),
    ],
)
def test_bad_flags_name_their_key(argv: tuple[str, ...], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(config(*argv))
    assert caught.value.key == key


# --- runtime seams -------------------------------------------------------------------------


def test_cri_sandbox_carries_the_cgroup_parent_and_containers_the_score() -> None:
    sandbox = base.SandboxConfig(
        name="p", namespace="d", uid=UID, attempt=0, hostname="p", log_directory="/l",
        cgroup_parent="/kubepods/burstable/podx",
    )  # fmt: skip
    assert convert.sandbox_config_to_pb(sandbox).linux.cgroup_parent == sandbox.cgroup_parent
    assert convert.resources_to_pb(base.Resources(oom_score_adj=1000)).oom_score_adj == 1000


def test_docker_sandbox_and_containers_go_under_the_pod_cgroup() -> None:
    sandbox = base.SandboxConfig(
        name="p", namespace="d", uid=UID, attempt=0, hostname="p", log_directory="/l",
        cgroup_parent="/kubepods/podx",
    )  # fmt: skip
    assert sandbox_spec(sandbox, image="pause").host["cgroup_parent"] == "/kubepods/podx"
    app = base.ContainerConfig(name="c", attempt=0, image="busybox", log_path="c/0.log")
    spec = container_spec(base.SandboxID("s"), app, sandbox)
    assert spec.host["cgroup_parent"] == "/kubepods/podx"
    assert resource_args(base.Resources(oom_score_adj=999))["oom_score_adj"] == 999


@pytest.mark.parametrize(
    ("info", "driver"),
    [
        (
            '{"containerd": {"defaultRuntimeName": "runc", "runtimes": {"runc": '
            '{"options": {"SystemdCgroup": true}}}}}',
            "systemd",
        ),
        ('{"containerd": {"runtimes": {"runc": {"options": null}}}}', "cgroupfs"),
        ("not json", ""),
        ("{}", ""),
    ],
)
def test_containerd_cgroup_driver_from_its_config(info: str, driver: str) -> None:
    assert convert.cgroup_driver_from_info({"config": info}) == driver


# --- the filesystem ------------------------------------------------------------------------


def test_v1_and_v2_files() -> None:
    config = ResourceConfig(cpu_shares=1024, cpu_quota_us=50_000, memory_bytes=MI, pids_max=9)
    assert v1_files(config) == [
        ("cpu", "cpu.shares", "1024"),
        ("cpu", "cpu.cfs_period_us", "100000"),
        ("cpu", "cpu.cfs_quota_us", "50000"),
        ("memory", "memory.limit_in_bytes", str(MI)),
        ("pids", "pids.max", "9"),
    ]
    assert v2_files(ResourceConfig(cpu_shares=2)) == [
        ("cpu.weight", "1"),
        ("cpu.max", "max 100000"),
        ("memory.max", "max"),
        ("pids.max", "max"),
    ]


class DirectoryFS(CgroupFS):
    """Plain directories hold their "control files" as real files: unlink them first."""

    def rmdir(self, directory: Path) -> None:
        for entry in directory.iterdir():
            if entry.is_file():
                entry.unlink()
        directory.rmdir()


def v1_mount(tmp_path: Path) -> CgroupFS:
    for hierarchy in ("cpu,cpuacct", "memory", "pids", "freezer"):
        (tmp_path / hierarchy).mkdir()
    return DirectoryFS(tmp_path)


def test_v1_ensure_writes_each_controllers_files_and_remove_clears_every_hierarchy(
    tmp_path: Path,
) -> None:
    fs = v1_mount(tmp_path)
    fs.ensure("/k/pod1", ResourceConfig(cpu_shares=2, pids_max=5))
    assert (tmp_path / "cpu,cpuacct/k/pod1/cpu.shares").read_text() == "2"
    assert (tmp_path / "pids/k/pod1/pids.max").read_text() == "5"
    assert (tmp_path / "memory/k/pod1/memory.limit_in_bytes").read_text() == "-1"
    (tmp_path / "freezer/k/pod1/ctr").mkdir(parents=True)  # what runc makes
    assert fs.children("/k") == ["pod1"]
    assert fs.remove("/k/pod1")
    assert not any((tmp_path / h / "k/pod1").exists() for h in ("cpu,cpuacct", "freezer"))


def test_v2_ensure_enables_controllers_down_the_path(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids")
    CgroupFS(tmp_path).ensure("/k/pod1", ResourceConfig(cpu_shares=1024, memory_bytes=MI))
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (tmp_path / "k/cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (tmp_path / "k/pod1/cpu.weight").read_text() == "39"
    assert (tmp_path / "k/pod1/memory.max").read_text() == str(MI)


# --- the manager ---------------------------------------------------------------------------


def test_manager_makes_pod_cgroups_and_removes_those_of_gone_pods(tmp_path: Path) -> None:
    fs = v1_mount(tmp_path)
    layout = CgroupLayout(CgroupDriver.CGROUPFS, ("node",))
    desired: dict[PodUID, Pod] = {BURSTABLE.uid: BURSTABLE}
    live: set[PodUID] = set()
    cgroups = PodCgroups(
        CgroupSettings(
            layout=layout,
            kubepods=ResourceConfig(cpu_shares=2048, memory_bytes=GI),
            memory_capacity_bytes=GI,
            pids_max=64,
            oom_score_floor=0,
        ),
        pods=lambda: desired.values(),
        live=lambda: live,
        ready=lambda: True,
        fs=fs,
    )
    parent = asyncio.run(cgroups.ensure_pod(BURSTABLE))
    assert parent == f"/node/kubepods/burstable/pod{UID}"
    cpu = tmp_path / "cpu,cpuacct/node/kubepods"
    assert (cpu / "cpu.shares").read_text() == "2048"
    assert (tmp_path / "memory/node/kubepods/memory.limit_in_bytes").read_text() == str(GI)
    assert (cpu / "burstable/cpu.shares").read_text() == "409"
    assert (cpu / "besteffort/cpu.shares").read_text() == "2"
    assert (tmp_path / f"pids/node/kubepods/burstable/pod{UID}/pids.max").read_text() == "64"
    assert cgroups.oom_score_adj(GUARANTEED, GUARANTEED.spec.containers[0]) == 0  # the floor

    desired.clear()
    live.add(UID)  # the runtime still holds something of it: kept
    asyncio.run(cgroups.housekeep())
    assert (cpu / f"burstable/pod{UID}").exists()
    assert (cpu / "burstable/cpu.shares").read_text() == "2"
    live.clear()
    asyncio.run(cgroups.housekeep())
    assert not (cpu / f"burstable/pod{UID}").exists()
    assert (cpu / "burstable").exists()


class BusyFS(DirectoryFS):
    """A cgroup that still holds a process: rmdir fails with EBUSY."""

    def rmdir(self, directory: Path) -> None:
        if directory.name == "busy":
            raise OSError(errno.EBUSY, "Device or resource busy")
        super().rmdir(directory)


def test_remove_reports_a_busy_cgroup_and_keeps_it(tmp_path: Path) -> None:
    (tmp_path / "memory").mkdir()
    fs = BusyFS(tmp_path)
    fs.ensure("/k/pod1", ResourceConfig())
    (tmp_path / "memory/k/pod1/busy").mkdir()
    (tmp_path / "memory/k/pod1/done").mkdir()
    assert not fs.remove("/k/pod1")
    assert (tmp_path / "memory/k/pod1/busy").exists()
    assert not (tmp_path / "memory/k/pod1/done").exists()


async def test_a_worker_starts_its_pod_under_the_pod_cgroup(tmp_path: Path) -> None:
    from tests.unit.rig import WorkerRig, eventually, make_pod

    rig = WorkerRig(tmp_path)
    mount = tmp_path / "cgroup"
    mount.mkdir()
    settings = CgroupSettings(
        layout=CgroupLayout(CgroupDriver.CGROUPFS, ("n",)),
        kubepods=ResourceConfig(),
        memory_capacity_bytes=GI,
    )
    cgroups = PodCgroups(settings, pods=list, live=set, ready=lambda: True, fs=v1_mount(mount))
    rig.ctx = dataclasses.replace(rig.ctx, cgroups=cgroups)
    rig.manager = PodManager(rig.ctx)
    web = make_pod()  # limits 500m and 64Mi, requests defaulted to them: Guaranteed
    await rig.start()
    try:
        rig.run(web)
        await eventually(lambda: rig.running(web), what="app running")
        (sandbox,) = rig.fake.sandboxes.values()
        assert sandbox.config.cgroup_parent == f"/n/kubepods/pod{web.uid}"
        (app,) = rig.fake.containers.values()
        assert app.sandbox_config.cgroup_parent == f"/n/kubepods/pod{web.uid}"
        assert app.config.resources.oom_score_adj == -997
        pod_dir = mount / f"memory/n/kubepods/pod{web.uid}"
        assert (pod_dir / "memory.limit_in_bytes").read_text() == str(64 * MI)
    finally:
        await rig.close()
