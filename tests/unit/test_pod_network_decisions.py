"""The pod network's decisions (network/podnet.py), its readiness in node status, and pods
waiting for it in the pod workers (over the fake runtime)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from nodeagent.kubelet import nodestatus
from nodeagent.kubelet.manager import PodManager
from nodeagent.kubelet.pleg import RuntimeCache
from nodeagent.model.pod import Pod
from nodeagent.model.security import PrivilegePolicy
from nodeagent.model.validate import parse_pod
from nodeagent.network import cni, podnet
from nodeagent.network.podnet import CidrAction, PodNetwork, PodNetworkStatus, cidr_action
from nodeagent.runtime.base import RuntimeStatus
from nodeagent.runtime.fake import FakeRuntime
from tests.unit.rig import IMAGE, eventually, kubelet_context

NOT_READY = (
    "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:"
)


@pytest.mark.parametrize(
    ("configured", "wanted", "pods", "action"),
    [
        ("", "10.244.1.0/24", 0, CidrAction.APPLY),  # the first range
        ("", "10.244.1.0/24", 3, CidrAction.APPLY),  # no config: pods hold no pod-network IP
        ("10.244.1.0/24", "10.244.1.0/24", 5, CidrAction.KEEP),
        ("10.88.0.0/16", "10.244.1.0/24", 0, CidrAction.APPLY),  # nobody left on the old one
        ("10.88.0.0/16", "10.244.1.0/24", 2, CidrAction.DEFER),
    ],
)
def test_cidr_action(configured: str, wanted: str, pods: int, action: CidrAction) -> None:
    assert cidr_action(configured, wanted, pods) is action


def test_count_in_counts_only_addresses_of_the_range() -> None:
    ips = ["10.88.0.5", "10.88.3.1", "10.244.1.2", "", "banana"]
    assert podnet.count_in("10.88.0.0/16", ips) == 2
    assert podnet.count_in("", ips) == 0


class Net:
    """A PodNetwork over a temporary conf dir, with pod IPs the test sets."""

    def __init__(self, tmp_path: Path) -> None:
        self.conf_dir = tmp_path / "net.d"
        self.ips: list[str] = []
        self.known = True
        self.applied: list[str] = []
        self.net = PodNetwork(
            conf_dir=self.conf_dir,
            ipam_dir=tmp_path / "ipam",
            pod_ips=lambda: self.ips,
            pods_known=lambda: self.known,
            on_applied=self.applied.append,
            bridge="na-unit-none",  # no such link: removing it is a no-op
        )

    def on_disk(self) -> str:
        return podnet.configured_cidr(self.conf_dir)


async def test_without_a_pod_cidr_no_config_is_written_and_pods_may_not_start(
    tmp_path: Path,
) -> None:
    n = Net(tmp_path)
    n.net.start("")
    await n.net.reconcile()
    assert not (n.conf_dir / cni.CONFLIST_NAME).exists()
    status = n.net.status()
    assert not status.ready
    assert status.error.startswith(NOT_READY)
    assert "spec.podCIDR" in status.error
    assert n.net.problem() == status.error
    n.net.set_pod_cidr("10.244.3.0/24")
    assert not n.net.status().ready  # told, not yet written
    await n.net.reconcile()
    assert n.on_disk() == "10.244.3.0/24"
    assert n.applied == ["10.244.3.0/24"]
    assert n.net.problem() == ""
    assert n.net.status().pod_cidr == "10.244.3.0/24"


async def test_the_loop_applies_what_it_is_told(tmp_path: Path) -> None:
    n = Net(tmp_path)
    n.net.start("")
    task = asyncio.create_task(n.net.run())
    try:
        n.net.set_pod_cidr("10.244.3.0/24")
        await eventually(lambda: n.applied == ["10.244.3.0/24"], what="applied")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_flag_range_is_written_at_start(tmp_path: Path) -> None:
    n = Net(tmp_path)
    n.net.start("10.88.0.0/16")
    await n.net.reconcile()
    assert n.on_disk() == "10.88.0.0/16"
    assert n.net.status().ready


async def test_a_config_left_by_an_earlier_run_serves_no_pod_until_the_node_confirms_it(
    tmp_path: Path,
) -> None:
    n = Net(tmp_path)
    n.net.start("10.244.3.0/24")
    await n.net.reconcile()
    restarted = Net(tmp_path)
    restarted.ips = ["10.244.3.7"]
    restarted.net.start("")
    await restarted.net.reconcile()
    assert not restarted.net.status().ready
    assert restarted.net.status().pod_cidr == ""
    restarted.net.set_pod_cidr("10.244.3.0/24")
    await restarted.net.reconcile()
    assert restarted.net.status().ready
    assert restarted.applied == ["10.244.3.0/24"]


async def test_a_changed_cidr_waits_for_the_pods_of_the_old_range(tmp_path: Path) -> None:
    n = Net(tmp_path)
    n.net.start("")
    n.net.set_pod_cidr("10.244.3.0/24")
    await n.net.reconcile()
    n.ips = ["10.244.3.2", "10.244.3.3"]
    n.net.set_pod_cidr("10.244.9.0/24")
    await n.net.reconcile()
    status = n.net.status()
    assert n.on_disk() == "10.244.3.0/24"  # pods keep starting, on the old range
    assert status.ready and status.change_pending
    assert (status.pod_cidr, status.wanted_cidr) == ("10.244.3.0/24", "10.244.9.0/24")
    n.ips = ["10.244.3.3"]
    await n.net.reconcile()
    assert n.on_disk() == "10.244.3.0/24"
    n.ips = []
    await n.net.reconcile()
    assert n.on_disk() == "10.244.9.0/24"
    assert not n.net.status().change_pending
    assert n.applied == ["10.244.3.0/24", "10.244.9.0/24"]


async def test_a_change_waits_until_the_running_pods_are_known(tmp_path: Path) -> None:
    n = Net(tmp_path)
    n.net.start("10.88.0.0/16")
    await n.net.reconcile()
    n.known = False  # a restart: the running pods are not adopted yet
    n.net.set_pod_cidr("10.244.1.0/24")
    await n.net.reconcile()
    assert n.on_disk() == "10.88.0.0/16"
    n.known = True
    await n.net.reconcile()
    assert n.on_disk() == "10.244.1.0/24"


async def test_an_unwritable_config_is_a_network_error(tmp_path: Path) -> None:
    n = Net(tmp_path)
    n.conf_dir.parent.mkdir(parents=True, exist_ok=True)
    n.conf_dir.write_text("a file where the directory should be")
    n.net.start("10.244.1.0/24")
    await n.net.reconcile()
    assert n.net.status().error.startswith(NOT_READY)
    assert "cannot write the CNI config" in n.net.status().error


# --- node status ------------------------------------------------------------------------


def facts(tmp_path: Path, **overrides: Any) -> nodestatus.NodeFacts:
    base: dict[str, Any] = {
        "name": "n1",
        "max_pods": 110,
        "runtime_name": "containerd",
        "runtime_version": "1.6.20",
        "runtime_healthy": True,
        "runtime_error": "",
        "state_dir": str(tmp_path),
        "now": time.time(),
        "memory_pressure": False,
    }
    return nodestatus.NodeFacts(**{**base, **overrides})


def condition(conditions: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(c for c in conditions if c["type"] == kind)


def test_ready_is_false_with_the_kubelets_reason_while_the_network_waits(tmp_path: Path) -> None:
    waiting = PodNetworkStatus(pod_cidr="", wanted_cidr="", error=NOT_READY + "no podCIDR")
    ready = condition(nodestatus.conditions(facts(tmp_path, pod_network=waiting)), "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "KubeletNotReady")
    assert ready["message"] == NOT_READY + "no podCIDR"
    both = facts(tmp_path, pod_network=waiting, runtime_healthy=False, runtime_error="gone")
    message = condition(nodestatus.conditions(both), "Ready")["message"]
    assert message == f"[container runtime is down: gone, {NOT_READY}no podCIDR]"
    up = PodNetworkStatus(pod_cidr="10.244.1.0/24", wanted_cidr="10.244.1.0/24", error="")
    conditions = nodestatus.conditions(facts(tmp_path, pod_network=up))
    assert condition(conditions, "Ready")["status"] == "True"
    assert condition(conditions, "NetworkUnavailable")["status"] == "False"


def test_a_deferred_cidr_change_is_network_unavailable(tmp_path: Path) -> None:
    pending = PodNetworkStatus(pod_cidr="10.88.0.0/16", wanted_cidr="10.244.1.0/24", error="")
    conditions = nodestatus.conditions(facts(tmp_path, pod_network=pending))
    cond = condition(conditions, "NetworkUnavailable")
    assert (cond["status"], cond["reason"]) == ("True", "PodCIDRChangePending")
    assert "10.244.1.0/24" in cond["message"] and "10.88.0.0/16" in cond["message"]
    assert condition(conditions, "Ready")["status"] == "True"  # pods still start


# --- pods wait for the network ---------------------------------------------------------------


def make_pod(name: str, *, host_network: bool = False) -> Pod:
    doc = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "hostNetwork": host_network,
            "containers": [{"name": "app", "image": IMAGE, "command": ["sleep", "9"]}],
        },
    }
    return parse_pod(doc, source="test", node_name="n1")


class Gate:
    def __init__(self) -> None:
        self.problem = NOT_READY + "waiting"

    def __call__(self) -> str:
        return self.problem


@pytest.fixture
async def kubelet(tmp_path: Path) -> AsyncIterator[tuple[PodManager, FakeRuntime, Gate]]:
    fake, gate = FakeRuntime(images={IMAGE}), Gate()
    holder: list[PodManager] = []
    cache = RuntimeCache(fake, on_change=lambda uid: holder[0].on_runtime_change(uid))
    ctx = dataclasses.replace(
        kubelet_context(fake, cache, tmp_path, "n1"),
        privilege=PrivilegePolicy(allow_privileged=True),  # hostNetwork
        network_problem=gate,
    )
    holder.append(PodManager(ctx))
    relist = asyncio.create_task(cache.run())
    await asyncio.wait_for(cache.synced.wait(), 5)
    try:
        yield holder[0], fake, gate
    finally:
        await holder[0].detach_all()
        relist.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await relist


def app_state(manager: PodManager, pod: Pod) -> dict[str, Any]:
    worker = manager.worker_for(pod.uid)
    status = (worker.status if worker is not None else None) or {}
    for item in status.get("containerStatuses", []):
        return dict(item.get("state") or {})
    return {}


async def test_pods_wait_for_the_network_and_host_network_pods_do_not(
    kubelet: tuple[PodManager, FakeRuntime, Gate],
) -> None:
    manager, fake, gate = kubelet
    web, host = make_pod("web"), make_pod("host", host_network=True)
    manager.update({web.key: web, host.key: host})
    await eventually(lambda: "running" in app_state(manager, host), what="hostNetwork pod runs")
    waiting = await eventually(lambda: app_state(manager, web).get("waiting"), what="waiting")
    assert waiting["reason"] == "ContainerCreating"
    assert waiting["message"] == f"network is not ready: {gate.problem}"
    assert [s.config.name for s in fake.sandboxes.values()] == ["host"]
    worker = manager.worker_for(web.uid)
    assert worker is not None and worker.status is not None
    assert worker.status["phase"] == "Pending"
    gate.problem = ""
    manager.wake_all()
    await eventually(lambda: "running" in app_state(manager, web), what="web runs once woken")


def test_conflist_subnet_is_read_back(tmp_path: Path) -> None:
    conf = cni.render_conflist(pod_cidr="10.244.7.0/24", ipam_data_dir="/x")
    cni.write_conflist(tmp_path, conf)
    assert podnet.configured_cidr(tmp_path) == "10.244.7.0/24"
    (tmp_path / cni.CONFLIST_NAME).write_text(json.dumps({"plugins": []}))
    assert podnet.configured_cidr(tmp_path) == ""


# --- the runtime's own Status ------------------------------------------------------------------


def test_cri_status_conditions() -> None:
    from nodeagent.runtime.cri import api_pb2 as pb
    from nodeagent.runtime.cri.convert import runtime_status_from_pb

    def status(*conditions: tuple[str, bool, str, str]) -> RuntimeStatus:
        msg = pb.RuntimeStatus(
            conditions=[
                pb.RuntimeCondition(type=t, status=s, reason=r, message=m)
                for t, s, r, m in conditions
            ]
        )
        return runtime_status_from_pb(msg)

    ok = status(("RuntimeReady", True, "", ""), ("NetworkReady", True, "", ""))
    assert ok == RuntimeStatus(runtime_ready=True, network_ready=True)
    no_cni = status(
        ("RuntimeReady", True, "", ""),
        ("NetworkReady", False, "NetworkPluginNotReady", "cni plugin not initialized"),
    )
    assert (no_cni.network_ready, no_cni.reason) == (False, "NetworkPluginNotReady")
    assert nodestatus.runtime_problem(no_cni) == (
        "container runtime network not ready: NetworkReady=false "
        "reason:NetworkPluginNotReady message:cni plugin not initialized"
    )
    silent = status(("RuntimeReady", True, "", ""))
    assert not silent.network_ready and silent.reason == "StatusNotReported"
    down = status(("RuntimeReady", False, "Broken", "no"), ("NetworkReady", True, "", ""))
    assert nodestatus.runtime_problem(down) == (
        "container runtime not ready: RuntimeReady=false reason:Broken message:no"
    )
    assert nodestatus.runtime_problem(None) == ""


def test_ready_reflects_the_runtimes_network(tmp_path: Path) -> None:
    up = PodNetworkStatus(pod_cidr="10.244.1.0/24", wanted_cidr="10.244.1.0/24", error="")
    no_cni = RuntimeStatus(
        runtime_ready=True, network_ready=False, reason="NetworkPluginNotReady", message="x"
    )
    ready = condition(
        nodestatus.conditions(facts(tmp_path, pod_network=up, runtime_status=no_cni)), "Ready"
    )
    assert ready["status"] == "False"
    assert ready["message"] == NOT_READY + "x"
    # While our own network waits, ours is the one reason given (it says why).
    waiting = PodNetworkStatus(pod_cidr="", wanted_cidr="", error="ours")
    both = facts(tmp_path, pod_network=waiting, runtime_status=no_cni)
    assert condition(nodestatus.conditions(both), "Ready")["message"] == "ours"


def test_cniexec_problem_names_the_missing_config(tmp_path: Path) -> None:
    from nodeagent.network.cniexec import CNIExec

    net = CNIExec(conf_dir=tmp_path / "net.d", bin_dirs=(tmp_path,), cache_dir=tmp_path / "c")
    (tmp_path / "net.d").mkdir()
    assert "no CNI network configuration" in net.problem()
    conf = cni.render_conflist(pod_cidr="10.1.0.0/24", ipam_data_dir="/x")
    cni.write_conflist(tmp_path / "net.d", conf)
    assert net.problem() == ""


def test_a_pod_waiting_for_the_network_gets_one_network_not_ready_event() -> None:
    from nodeagent.apiserver.events import PodRef, pod_events

    message = f"network is not ready: {NOT_READY}waiting"
    waiting = {"state": {"waiting": {"reason": "ContainerCreating", "message": message}}}
    status = {"containerStatuses": [{"name": "a", **waiting}, {"name": "b", **waiting}]}
    events = pod_events(PodRef("default", "web", "u1"), None, status, images={})
    assert [(e.field_path, e.type, e.reason, e.message) for e in events] == [
        ("", "Warning", "NetworkNotReady", message)
    ]
    assert pod_events(PodRef("default", "web", "u1"), status, status, images={}) == []
