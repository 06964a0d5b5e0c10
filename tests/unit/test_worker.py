"""Pod workers end to end over the fake runtime: manager, relister, worker, images.

Each test builds the kubelet's parts as the daemon does (``RuntimeCache`` relisting a
``FakeRuntime``, a ``PodManager`` fed desired pods) and waits on conditions with a timeout,
never on a fixed sleep.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from nodeagent.kubelet import specs
from nodeagent.kubelet.envvars import PodFacts
from nodeagent.kubelet.worker import WorkerState
from nodeagent.model.pod import Container, Pod, PodUID
from nodeagent.runtime import base
from nodeagent.runtime.base import ContainerState, SandboxState
from nodeagent.runtime.fake import FakeRuntime
from tests.unit.rig import IMAGE, NODE, WorkerRig, eventually, make_pod


def is_dir(path: str | Path) -> bool:
    return Path(path).is_dir()


def exists(path: Path) -> bool:
    return path.exists()


def read_text(path: str) -> str:
    return Path(path).read_text()


# --- the fake behaves like the CRI backend ------------------------------------------------------


async def test_fake_lists_only_managed_objects_without_detail(tmp_path: Path) -> None:
    fake = FakeRuntime(images={IMAGE})
    pod = make_pod()
    config = specs.sandbox_config(pod, attempt=0, pod_log_dir=str(tmp_path))
    sid = await fake.run_sandbox(config)
    other = specs.sandbox_config(make_pod("other"), attempt=0, pod_log_dir=str(tmp_path))
    fake.run_unmanaged_sandbox(other)
    app = pod.spec.containers[0]
    cconfig = specs.container_config(
        pod, app, attempt=0, facts=PodFacts(NODE), volume_paths={"data": str(tmp_path)}
    )
    cid = await fake.create_container(sid, cconfig, config)
    await fake.start_container(cid)

    assert [s.id for s in await fake.list_sandboxes()] == [sid]
    assert [s.id for s in await fake.list_sandboxes(PodUID("nobody"))] == []
    listed = await fake.list_sandboxes(pod.uid)
    assert listed[0].ip == ""  # only sandbox_status knows the IP
    assert (await fake.sandbox_status(sid)).ip.startswith("10.88.")
    (summary,) = await fake.list_containers(pod.uid)
    assert (summary.detailed, summary.started_at_ns, summary.uid) == (False, 0, pod.uid)
    assert summary.labels[base.LABEL_CONTAINER_NAME] == "app"
    fake.exit_container(cid, 3)
    detail = await fake.container_status(cid)
    assert (detail.detailed, detail.state, detail.exit_code) == (True, ContainerState.EXITED, 3)
    assert detail.reason == "Error"
    assert detail.started_at_ns < detail.finished_at_ns

    # A name is reserved while its container exists, as containerd does.
    with pytest.raises(base.RuntimeFailure, match="reserved"):
        await fake.create_container(sid, cconfig, config)
    fake.fail_next("remove_container", base.RuntimeUnavailable("down"))
    with pytest.raises(base.RuntimeUnavailable):
        await fake.remove_container(cid)
    await fake.remove_container(cid)
    with pytest.raises(base.NotFound):
        await fake.container_status(cid)
    assert ("remove_container", cid) in fake.calls


async def test_fake_images_compare_normalized() -> None:
    fake = FakeRuntime(images={"busybox"}, registry={"docker.io/library/alpine:3"})
    assert await fake.image_present("docker.io/library/busybox:latest")
    assert not await fake.image_present("alpine:3")
    await fake.pull_image("alpine:3")
    assert await fake.image_present("docker.io/library/alpine:3")
    with pytest.raises(base.ImagePullFailed):
        await fake.pull_image("nginx")
    with pytest.raises(base.InvalidInput):
        await fake.image_present("Bad Name")


# --- running pods -------------------------------------------------------------------------------


async def test_pod_runs_with_cri_like_configs(rig: WorkerRig) -> None:
    pod = make_pod(inits=True)
    rig.run(pod)
    await rig.finish_init(pod)
    await eventually(lambda: rig.status(pod).get("phase") == "Running", what="Running")
    await eventually(lambda: rig.running(pod), what="app running")

    fake = rig.fake
    assert fake.count("run_sandbox") == 1
    created = [c[2] for c in fake.calls if c[0] == "create_container"]
    assert created == ["setup", "app"]  # the init container first, alone
    (sandbox,) = fake.sandboxes.values()
    assert sandbox.config.name == "web" and sandbox.config.attempt == 0
    assert sandbox.labels[base.LABEL_POD_UID] == pod.uid
    assert is_dir(sandbox.config.log_directory)
    assert Path(sandbox.config.log_directory).is_relative_to(rig.log_dir)

    (app,) = [c for c in fake.containers.values() if c.config.name == "app"]
    env = dict(app.config.env)
    assert env["POD_NAME"] == "web"
    assert env["NODE"] == NODE
    assert env["POD_IP"] == sandbox.ip != ""
    assert app.config.command == ("sh", "-c", "echo hello from web")
    mount, hosts, message = app.config.mounts  # the volume, then the agent's two files
    volume = Path(mount.host_path)
    assert mount.container_path == "/data"
    assert hosts.container_path == "/etc/hosts"
    assert read_text(hosts.host_path).startswith("# Kubernetes-managed hosts file.")
    assert message.container_path == "/dev/termination-log"
    assert read_text(message.host_path) == ""
    assert is_dir(volume)
    assert volume.is_relative_to(rig.state_dir / "pods" / pod.uid)
    assert app.config.resources.memory_limit_bytes == 64 * 2**20
    assert app.config.resources.cpu_quota == 50_000
    assert app.config.log_path == "app/0.log"
    assert app.labels[base.LABEL_CONTAINER_NAME] == "app"

    status = rig.status(pod)
    assert status["podIP"] == sandbox.ip
    assert status["initContainerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"
    assert rig.container(pod)["containerID"] == f"containerd://{app.id}"
    assert rig.container(pod)["ready"] is True


async def test_exit_under_always_is_restarted_then_backs_off(rig: WorkerRig) -> None:
    pod = make_pod()
    rig.run(pod)
    await eventually(lambda: rig.running(pod), what="app running")
    (first,) = rig.fake.container_ids("app")

    rig.fake.exit_container(first, 1)
    await eventually(
        lambda: rig.running(pod) and rig.container(pod)["restartCount"] == 1, what="restart"
    )
    last = rig.container(pod)["lastState"]["terminated"]
    assert (last["exitCode"], last["reason"]) == (1, "Error")
    assert rig.fake.count("run_sandbox") == 1  # the sandbox stays

    # A second crash soon after: CrashLoopBackOff, 10 s from the finish.
    second = rig.fake.container_ids("app", state=ContainerState.RUNNING)[0]
    rig.fake.exit_container(second, 2)
    await eventually(lambda: rig.waiting_reason(pod) == "CrashLoopBackOff", what="backoff")
    app = rig.container(pod)
    assert app["lastState"]["terminated"]["exitCode"] == 2
    assert "back-off 10s" in app["state"]["waiting"]["message"]
    assert app["restartCount"] == 1
    assert rig.fake.count("start_container") == 2
    assert rig.status(pod)["phase"] == "Running"


async def test_exit_under_never_finishes_the_pod(rig: WorkerRig) -> None:
    pod = make_pod(policy="Never")
    rig.run(pod)
    await eventually(lambda: rig.running(pod), what="app running")
    (cid,) = rig.fake.container_ids("app")
    rig.fake.exit_container(cid, 0)
    await eventually(lambda: rig.status(pod).get("phase") == "Succeeded", what="Succeeded")
    await eventually(
        lambda: rig.fake.sandbox_ids(state=SandboxState.NOTREADY), what="sandbox stopped"
    )
    assert rig.fake.count("start_container") == 1


async def test_dead_sandbox_is_replaced(rig: WorkerRig) -> None:
    pod = make_pod()
    rig.run(pod)
    await eventually(lambda: rig.running(pod), what="app running")
    (old,) = rig.fake.sandbox_ids()
    rig.fake.kill_sandbox(old)
    await eventually(lambda: rig.fake.count("run_sandbox") == 2, what="new sandbox")
    await eventually(
        lambda: rig.running(pod) and rig.container(pod)["restartCount"] == 1, what="restart"
    )
    new = [s for s in rig.fake.sandbox_ids() if s != old]
    assert [rig.fake.sandboxes[s].config.attempt for s in new] == [1]
    # The dead sandbox is removed once its replacement runs.
    await eventually(lambda: old not in rig.fake.sandboxes, what="old sandbox removed")
    # The old container was stopped, not left running beside the new one.
    assert len(rig.fake.container_ids("app", state=ContainerState.RUNNING)) == 1


# --- images and start failures ------------------------------------------------------------------


async def test_missing_image_with_pull_policy_never(rig: WorkerRig) -> None:
    pod = make_pod(image="busybox:1.99", pull="Never")
    rig.run(pod)
    await eventually(lambda: rig.waiting_reason(pod) == "ErrImageNeverPull", what="reason")
    assert (
        "not present with pull policy of Never" in rig.container(pod)["state"]["waiting"]["message"]
    )
    assert rig.fake.count("pull_image") == 0
    assert rig.fake.count("create_container") == 0
    assert rig.status(pod)["phase"] == "Pending"


async def test_pull_failure_then_backoff(rig: WorkerRig) -> None:
    rig.fake.registry = set()  # nothing can be pulled
    pod = make_pod(image="busybox:1.99")
    rig.run(pod)
    await eventually(lambda: rig.waiting_reason(pod) == "ErrImagePull", what="ErrImagePull")
    assert "busybox:1.99" in rig.container(pod)["state"]["waiting"]["message"]
    assert rig.fake.count("pull_image") == 1

    # Seen again while the pull backs off (10 s), the reason moves on to ImagePullBackOff.
    await eventually(lambda: rig.waiting_reason(pod) == "ImagePullBackOff", what="backoff")
    assert (
        'Back-off pulling image "busybox:1.99"' in rig.container(pod)["state"]["waiting"]["message"]
    )
    assert rig.fake.count("pull_image") == 1

    # The backoff is the image's: another pod that needs it waits without pulling again.
    other = make_pod("other", image="busybox:1.99")
    rig.run(pod, other)
    await eventually(
        lambda: rig.waiting_reason(other) == "ImagePullBackOff", what="ImagePullBackOff"
    )
    assert rig.fake.count("pull_image") == 1
    assert rig.fake.count("create_container") == 0


async def test_pull_policy_always_pulls_before_each_start(rig: WorkerRig) -> None:
    pod = make_pod(image="busybox:latest")
    rig.run(pod)
    await eventually(lambda: rig.running(pod), what="app running")
    assert rig.fake.calls.count(("pull_image", "busybox:latest")) == 1


async def test_start_failure_is_run_container_error(rig: WorkerRig) -> None:
    rig.fake.start_errors["app"] = 'exec: "sh": executable file not found in $PATH'
    pod = make_pod(policy="Never")
    rig.run(pod)
    await eventually(lambda: rig.waiting_reason(pod) == "RunContainerError", what="reason")
    app = rig.container(pod)
    assert "executable file not found" in app["state"]["waiting"]["message"]
    await eventually(lambda: rig.status(pod).get("phase") == "Failed", what="Failed")
    # Finished: the container shows how it ended, as the kubelet reports a failed start (once
    # the relist has seen the runtime's exited container).
    await eventually(lambda: "terminated" in rig.container(pod)["state"], what="terminated")
    ended = rig.container(pod)["state"]["terminated"]
    assert (ended["exitCode"], ended["reason"]) == (128, "StartError")
    assert rig.fake.count("start_container") == 1


async def test_start_failure_under_always_backs_off(rig: WorkerRig) -> None:
    rig.fake.start_errors["app"] = "boom"
    pod = make_pod()
    rig.run(pod)
    await eventually(lambda: rig.waiting_reason(pod) == "CrashLoopBackOff", what="backoff")
    assert rig.fake.count("start_container") == 2  # the immediate retry, then back off
    assert rig.container(pod)["lastState"]["terminated"]["reason"] == "StartError"


# --- removal, orphans, adoption -----------------------------------------------------------------


async def test_removed_pod_is_stopped_and_removed(rig: WorkerRig) -> None:
    pod = make_pod(inits=True)
    rig.run(pod)
    await rig.finish_init(pod)
    await eventually(lambda: rig.running(pod), what="app running")
    worker = rig.manager.worker_for(pod.uid)
    assert worker is not None
    volumes = rig.state_dir / "pods" / pod.uid
    assert is_dir(volumes)
    running = rig.fake.container_ids("app", state=ContainerState.RUNNING)

    rig.run()
    await eventually(lambda: worker.state is WorkerState.TERMINATED, what="terminated")
    assert rig.managed_left() == (0, 0)
    assert not exists(volumes)
    assert ("stop_container", running[0], "3") in rig.fake.calls  # the pod's grace period
    # The manager retires a terminated worker in a task of its own, a moment later.
    await eventually(lambda: rig.manager.worker_for(pod.uid) is None, what="worker retired")


async def test_changed_spec_replaces_the_pod(rig: WorkerRig) -> None:
    old = make_pod()
    rig.run(old)
    await eventually(lambda: rig.running(old), what="old running")
    new = make_pod(extra={"args": ["v2"]})
    assert new.uid != old.uid
    rig.run(new)
    await eventually(lambda: rig.running(new), what="new running")
    assert rig.fake.sandbox_ids(uid=old.uid) == []
    assert len(rig.fake.sandbox_ids(uid=new.uid)) == 1


async def test_a_new_image_under_the_same_uid_restarts_only_that_container(rig: WorkerRig) -> None:
    old = make_pod()
    other_spec = Container("other", IMAGE, command=("sleep", "1000"))
    two = dataclasses.replace(
        old, spec=dataclasses.replace(old.spec, containers=(*old.spec.containers, other_spec))
    )
    rig.run(two)
    await eventually(lambda: rig.running(two) and rig.running(two, "other"), what="running")
    (sandbox,) = rig.fake.sandbox_ids(uid=two.uid)
    (other,) = rig.fake.container_ids("other", uid=two.uid)
    (first,) = rig.fake.container_ids("app", uid=two.uid)
    rig.fake.images.add("busybox:1.37")
    app = dataclasses.replace(two.spec.containers[0], image="busybox:1.37")
    updated = dataclasses.replace(
        two, spec=dataclasses.replace(two.spec, containers=(app, two.spec.containers[1]))
    )
    worker = rig.manager.worker_for(two.uid)
    rig.run(updated)

    def restarted() -> bool:
        status = rig.container(updated)
        return "running" in status.get("state", {}) and status["restartCount"] == 1

    await eventually(restarted, what="app restarted with the new image")
    assert rig.manager.worker_for(two.uid) is worker  # the same worker, not a replacement
    assert rig.fake.sandbox_ids(uid=two.uid) == [sandbox]
    assert rig.fake.container_ids("other", uid=two.uid) == [other]
    assert rig.container(updated)["image"] == "busybox:1.37"
    running = rig.fake.container_ids("app", uid=two.uid, state=ContainerState.RUNNING)
    assert rig.fake.containers[running[0]].config.image == "busybox:1.37"
    assert first not in running and rig.fake.count("run_sandbox") == 1


async def test_an_active_deadline_set_later_applies_to_the_running_pod(rig: WorkerRig) -> None:
    pod = make_pod()
    rig.run(pod)
    await eventually(lambda: rig.running(pod), what="running")
    lowered = dataclasses.replace(
        pod, spec=dataclasses.replace(pod.spec, active_deadline_seconds=1)
    )
    rig.run(lowered)
    await eventually(lambda: rig.status(lowered).get("phase") == "Failed", what="Failed")
    assert rig.status(lowered)["reason"] == "DeadlineExceeded"
    assert rig.fake.container_ids("app", uid=pod.uid, state=ContainerState.RUNNING) == []


async def _populate(fake: FakeRuntime, pod: Pod, tmp_path: Path) -> None:
    """Make ``pod`` run in the runtime as an earlier agent would have left it."""
    config = specs.sandbox_config(pod, attempt=0, pod_log_dir=str(tmp_path / "logs"))
    sid = await fake.run_sandbox(config)
    for container in pod.spec.containers:
        cconfig = specs.container_config(
            pod,
            container,
            attempt=0,
            facts=PodFacts(NODE),
            volume_paths={v.name: str(tmp_path / v.name) for v in pod.spec.volumes},
        )
        await fake.start_container(await fake.create_container(sid, cconfig, config))


async def test_orphans_are_removed_and_foreign_sandboxes_kept(tmp_path: Path) -> None:
    rig = WorkerRig(tmp_path)
    orphan = make_pod("gone")
    await _populate(rig.fake, orphan, tmp_path)
    foreign = specs.sandbox_config(make_pod("theirs"), attempt=0, pod_log_dir=str(tmp_path))
    foreign_id = rig.fake.run_unmanaged_sandbox(foreign)
    try:
        await rig.start()
        rig.run()
        await eventually(lambda: rig.managed_left() == (0, 0), what="orphan removed")
        assert list(rig.fake.sandboxes) == [foreign_id]
        assert rig.fake.sandboxes[foreign_id].state is SandboxState.READY
    finally:
        await rig.close()


async def test_running_pod_is_adopted_without_any_create_or_start(tmp_path: Path) -> None:
    rig = WorkerRig(tmp_path)
    pod = make_pod()
    await _populate(rig.fake, pod, tmp_path)
    rig.fake.calls.clear()
    try:
        await rig.start()
        rig.run(pod)
        await eventually(lambda: rig.status(pod).get("phase") == "Running", what="Running")
        assert rig.running(pod)
        for method in ("run_sandbox", "create_container", "start_container", "stop_container"):
            assert rig.fake.count(method) == 0, method
        assert rig.container(pod)["restartCount"] == 0

        # The adopted pod's volumes are set up again when a container restarts.
        (cid,) = rig.fake.container_ids("app")
        rig.fake.exit_container(cid, 1)
        await eventually(
            lambda: rig.running(pod) and rig.container(pod)["restartCount"] == 1, what="restart"
        )
        (restarted,) = rig.fake.container_ids("app", state=ContainerState.RUNNING)
        mount = rig.fake.containers[restarted].config.mounts[0]
        assert Path(mount.host_path).is_relative_to(rig.state_dir / "pods" / pod.uid)
        assert is_dir(mount.host_path)
    finally:
        await rig.close()
