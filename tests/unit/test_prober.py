"""The prober over the fake runtime: workers per container instance, gating, the pushed view.

Exec probes make the fake runtime's ``exec_handler`` the thing under the tests' control.
Periods are whole seconds (the API's minimum is 1), so tests that need a second tick pay
about a second; everything else happens on the first probe, which runs at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from nodeagent.kubelet import specs
from nodeagent.kubelet.envvars import PodFacts
from nodeagent.kubelet.manager import PodManager
from nodeagent.kubelet.pleg import RuntimeCache
from nodeagent.kubelet.prober import ProbeManager
from nodeagent.kubelet.runtimepod import RuntimePod
from nodeagent.model.pod import (
    Container,
    ExecAction,
    Pod,
    PodSpec,
    PodUID,
    Probe,
)
from nodeagent.runtime.base import ContainerID, ExecResult, SandboxID
from nodeagent.runtime.fake import FakeRuntime
from tests.unit.rig import eventually, kubelet_context

IMAGE = "busybox:1.36"


def exec_probe(name: str, **fields: Any) -> Probe:
    return Probe(ExecAction((name,)), period_seconds=1, **fields)


def make_pod(
    uid: str = "uid-1",
    *,
    liveness_probe: Probe | None = None,
    readiness_probe: Probe | None = None,
    startup_probe: Probe | None = None,
) -> Pod:
    container = Container(
        "app",
        IMAGE,
        command=("sleep", "1d"),
        liveness_probe=liveness_probe,
        readiness_probe=readiness_probe,
        startup_probe=startup_probe,
    )
    return Pod(uid=PodUID(uid), name="web", namespace="default", spec=PodSpec((container,)))


class Sink:
    """Records every view the prober hands over, as the pod worker would receive it."""

    def __init__(self) -> None:
        self.views: list[tuple[dict[str, bool], dict[str, bool], dict[str, str]]] = []

    def set_probe_state(
        self, *, ready: dict[str, bool], started: dict[str, bool], unhealthy: dict[str, str]
    ) -> None:
        self.views.append((ready, started, unhealthy))

    @property
    def ready(self) -> dict[str, bool]:
        return self.views[-1][0] if self.views else {}

    @property
    def started(self) -> dict[str, bool]:
        return self.views[-1][1] if self.views else {}

    @property
    def unhealthy(self) -> dict[str, str]:
        return self.views[-1][2] if self.views else {}


class Checks:
    """The exec handler: per command, whether it passes; counts calls per command."""

    def __init__(self) -> None:
        self.passing: dict[str, bool] = {}
        self.fail_first: dict[str, int] = {}  # command -> how many calls fail before passing
        self.calls: dict[str, int] = {}
        self.by_container: list[tuple[ContainerID, str]] = []

    def __call__(self, cid: ContainerID, command: tuple[str, ...]) -> ExecResult:
        name = command[0]
        self.calls[name] = self.calls.get(name, 0) + 1
        self.by_container.append((cid, name))
        if self.fail_first.get(name, 0) > 0:
            self.fail_first[name] -= 1
            return ExecResult(1, b"", f"{name} is unhappy".encode())
        if self.passing.get(name, True):
            return ExecResult(0, b"", b"")
        return ExecResult(1, b"", f"{name} is unhappy".encode())


class Setup:
    def __init__(self, tmp_path: Path) -> None:
        self.checks = Checks()
        self.fake = FakeRuntime(images={IMAGE}, exec_handler=self.checks)
        self.cache = RuntimeCache(self.fake, on_change=lambda uid: None)
        self.prober = ProbeManager(self.fake)
        self.sink = Sink()
        self.tmp = tmp_path
        self.sandbox: SandboxID | None = None

    async def start_container(self, pod: Pod, attempt: int = 0) -> ContainerID:
        config = specs.sandbox_config(pod, attempt=0, pod_log_dir=str(self.tmp))
        if self.sandbox is None:
            self.sandbox = await self.fake.run_sandbox(config)
        container = pod.spec.containers[0]
        cconfig = specs.container_config(
            pod, container, attempt=attempt, facts=PodFacts("n"), volume_paths={}
        )
        cid = await self.fake.create_container(self.sandbox, cconfig, config)
        await self.fake.start_container(cid)
        return cid

    async def sync(self, pod: Pod) -> RuntimePod:
        runtime_pod = await self.cache.refresh(pod.uid)
        self.prober.sync_pod(self.sink, pod, runtime_pod)
        return runtime_pod


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    s = Setup(tmp_path)
    try:
        yield s
    finally:
        await s.prober.close()


async def test_readiness_is_false_until_the_first_success(setup: Setup) -> None:
    pod = make_pod(readiness_probe=exec_probe("ready"))
    await setup.start_container(pod)
    await setup.sync(pod)
    assert setup.sink.ready == {"app": False}  # before any probe ran
    await eventually(lambda: setup.sink.ready == {"app": True}, what="ready")
    assert setup.prober.worker_count() == 1
    (entry,) = setup.prober.report(pod, id_prefix="containerd")
    assert entry["result"] == "Success" and entry["consecutiveSuccesses"] == 1
    assert entry["containerID"].startswith("containerd://")


async def test_readiness_flips_both_ways_within_a_period(setup: Setup) -> None:
    pod = make_pod(readiness_probe=exec_probe("ready", failure_threshold=1))
    await setup.start_container(pod)
    await setup.sync(pod)
    await eventually(lambda: setup.sink.ready == {"app": True}, what="ready")
    setup.checks.passing["ready"] = False
    await eventually(lambda: setup.sink.ready == {"app": False}, 1.5, what="not ready")
    (entry,) = setup.prober.report(pod, id_prefix="containerd")
    assert entry["message"] == "command exited with 1: ready is unhappy"
    assert entry["lastResult"] == "Failure" and entry["consecutiveFailures"] == 1
    setup.checks.passing["ready"] = True
    await eventually(lambda: setup.sink.ready == {"app": True}, 1.5, what="ready again")
    assert setup.sink.unhealthy == {}  # readiness never restarts anything


async def test_liveness_failure_names_the_container_and_stops_probing(setup: Setup) -> None:
    setup.checks.passing["alive"] = False
    pod = make_pod(liveness_probe=exec_probe("alive", failure_threshold=1))
    first = await setup.start_container(pod)
    await setup.sync(pod)
    await eventually(lambda: setup.sink.unhealthy, what="unhealthy")
    assert setup.sink.unhealthy == {
        "app": "Liveness probe failed: command exited with 1: alive is unhappy"
    }
    # On hold: the worker's task ends; nothing probes the doomed container again.
    (worker,) = setup.prober._pods[pod.uid].workers.values()
    assert worker.task is not None
    await eventually(worker.task.done, what="worker on hold")
    assert setup.checks.calls["alive"] == 1

    # The pod worker kills it and starts a successor: fresh workers, a clean view.
    setup.fake.exit_container(first, 137)
    setup.checks.passing["alive"] = True
    second = await setup.start_container(pod, attempt=1)
    await setup.sync(pod)
    assert setup.sink.unhealthy == {}
    (key,) = setup.prober._pods[pod.uid].workers
    assert key.container_id == second
    # Why the first one was restarted stays visible next to the successor's fresh probe.
    (entry,) = setup.prober.report(pod, id_prefix="containerd")
    assert entry["containerID"] == f"containerd://{second}" and entry["result"] == "Success"
    assert entry["lastFailure"]["containerID"] == f"containerd://{first}"
    assert entry["lastFailure"]["message"].startswith("Liveness probe failed: command exited")
    await eventually(lambda: (second, "alive") in setup.checks.by_container, what="probe #2")


async def test_startup_probe_holds_liveness_and_readiness_back(setup: Setup) -> None:
    setup.checks.passing["boot"] = False
    pod = make_pod(
        startup_probe=exec_probe("boot", failure_threshold=30),
        liveness_probe=exec_probe("alive", failure_threshold=1),
        readiness_probe=exec_probe("ready"),
    )
    await setup.start_container(pod)
    await setup.sync(pod)
    await eventually(lambda: setup.checks.calls.get("boot", 0) >= 1, what="startup probed")
    assert setup.sink.started == {"app": False} and setup.sink.ready == {"app": False}
    assert "alive" not in setup.checks.calls and "ready" not in setup.checks.calls
    setup.checks.passing["boot"] = True
    await eventually(lambda: setup.sink.started == {"app": True}, 2.0, what="started")
    # Once started, the other two run at once (no wait for their next tick).
    await eventually(lambda: setup.sink.ready == {"app": True}, 0.5, what="ready")
    await eventually(lambda: setup.checks.calls.get("alive"), 0.5, what="liveness probed")
    boots = setup.checks.calls["boot"]
    await asyncio.sleep(1.1)  # a period: a startup probe that passed is never run again
    assert setup.checks.calls["boot"] == boots


async def test_startup_failure_is_unhealthy(setup: Setup) -> None:
    setup.checks.passing["boot"] = False
    pod = make_pod(startup_probe=exec_probe("boot", failure_threshold=1))
    await setup.start_container(pod)
    await setup.sync(pod)
    await eventually(lambda: setup.sink.unhealthy, what="unhealthy")
    assert setup.sink.unhealthy["app"].startswith("Startup probe failed: ")
    assert setup.sink.started == {"app": False}


async def test_initial_delay_holds_the_first_probe(setup: Setup) -> None:
    pod = make_pod(readiness_probe=exec_probe("ready", initial_delay_seconds=1))
    await setup.start_container(pod)
    await setup.sync(pod)
    await asyncio.sleep(0.5)
    assert "ready" not in setup.checks.calls
    await eventually(lambda: setup.sink.ready == {"app": True}, 1.5, what="ready after delay")


async def test_exited_container_and_removed_pod_stop_their_workers(setup: Setup) -> None:
    pod = make_pod(readiness_probe=exec_probe("ready"), liveness_probe=exec_probe("alive"))
    cid = await setup.start_container(pod)
    await setup.sync(pod)
    workers = list(setup.prober._pods[pod.uid].workers.values())
    assert len(workers) == 2
    setup.fake.exit_container(cid, 0)
    await setup.sync(pod)
    assert setup.prober.worker_count() == 0
    assert setup.sink.ready == {} and setup.sink.unhealthy == {}
    for worker in workers:
        assert worker.task is not None
        await eventually(worker.task.done, what="cancelled")
        worker.stop()  # idempotent
    await setup.start_container(pod, attempt=1)
    await setup.sync(pod)
    assert setup.prober.worker_count() == 2
    setup.prober.remove_pod(pod.uid)
    setup.prober.remove_pod(pod.uid)  # idempotent
    assert setup.prober.worker_count() == 0
    # Without a worker the report still lists the spec's probes, undecided.
    report = setup.prober.report(pod, id_prefix="containerd")
    assert [(e["probe"], e["result"], e["lastProbeTime"]) for e in report] == [
        ("liveness", "Success", None),
        ("readiness", "Failure", None),
    ]


async def test_pods_without_probes_cost_nothing(setup: Setup) -> None:
    pod = make_pod()
    await setup.start_container(pod)
    await setup.sync(pod)
    assert setup.sink.views == [] and setup.prober._pods == {}


# --- through the pod worker -------------------------------------------------------------------


class Rig:
    def __init__(self, tmp_path: Path, checks: Checks) -> None:
        self.fake = FakeRuntime(images={IMAGE}, exec_handler=checks)
        self.cache = RuntimeCache(self.fake, on_change=self._changed, interval_s=0.05)
        self.ctx = kubelet_context(self.fake, self.cache, tmp_path, "n")
        self.manager = PodManager(self.ctx)

    def _changed(self, uid: PodUID) -> None:
        self.manager.on_runtime_change(uid)

    def pod(self) -> dict[str, Any]:
        (pod,) = self.manager.snapshot()
        return pod

    def app(self) -> dict[str, Any]:
        statuses = self.pod()["status"].get("containerStatuses", [])
        return dict(statuses[0]) if statuses else {}


async def test_liveness_failure_restarts_and_readiness_gates_ready(tmp_path: Path) -> None:
    checks = Checks()
    checks.fail_first["alive"] = 1  # the first container fails liveness; the second is fine
    rig = Rig(tmp_path, checks)
    relist = asyncio.create_task(rig.cache.run())
    try:
        await asyncio.wait_for(rig.cache.synced.wait(), 5)
        pod = make_pod(
            liveness_probe=exec_probe("alive", failure_threshold=1),
            readiness_probe=exec_probe("ready", failure_threshold=1),
        )
        rig.manager.update({pod.key: pod})
        await eventually(lambda: rig.app().get("restartCount") == 1, what="restarted")
        await eventually(lambda: rig.app().get("ready") is True, what="ready")
        status = rig.pod()["status"]
        conditions = {c["type"]: c["status"] for c in status["conditions"]}
        assert conditions["Ready"] == conditions["ContainersReady"] == "True"
        assert "probes" not in status  # status stays a pure PodStatus
        probes = {p["probe"]: p for p in rig.pod()["probes"]}
        assert probes["readiness"]["result"] == "Success"
        assert probes["liveness"]["containerID"] == rig.app()["containerID"]

        checks.passing["ready"] = False
        await eventually(lambda: rig.app().get("ready") is False, 1.5, what="not ready")
        conditions = {c["type"]: c["status"] for c in rig.pod()["status"]["conditions"]}
        assert conditions["Ready"] == "False"
        assert rig.app()["restartCount"] == 1  # readiness restarts nothing
        assert rig.fake.count("stop_container") == 1
    finally:
        await rig.manager.detach_all()
        relist.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await relist
    assert rig.ctx.prober.worker_count() == 0
