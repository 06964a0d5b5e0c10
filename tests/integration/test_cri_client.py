"""CRIRuntime against a real containerd (the ``node`` fixture of tests/integration/conftest.py).

The fixture gives: ``endpoint`` (the containerd socket as a unix:// target), ``netns`` (the
network namespace containerd runs in), ``pod_log_dir``, the CNI config, and two local images:
``docker.io/library/busybox:latest`` and the sandbox image ``registry.k8s.io/pause:3.6``.
There is no registry, so nothing here pulls successfully.

Every pod gets a fresh uid, and the ``pods`` fixture removes the sandboxes it started when
the test ends, pass or fail, so tests neither see nor leak each other's objects.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc.aio
import pytest

from nodeagent.model.pod import PodUID
from nodeagent.runtime import base
from nodeagent.runtime.cri import CRIRuntime, tasks
from tests.harness.wait import async_wait_for

pytestmark = pytest.mark.integration

BUSYBOX = "docker.io/library/busybox:latest"


@dataclass(frozen=True)
class Pod:
    runtime: CRIRuntime
    config: base.SandboxConfig
    sandbox_id: base.SandboxID


def sandbox_config(node: Any, *, host_network: bool = False) -> base.SandboxConfig:
    uid = PodUID(str(uuid.uuid4()))
    name = f"cri-test-{uid[:8]}"
    return base.SandboxConfig(
        name=name,
        namespace="default",
        uid=uid,
        attempt=0,
        hostname=name,
        log_directory=os.path.join(node.pod_log_dir, f"default_{name}_{uid}"),
        labels={"app": "cri-test"},
        annotations={"test": "true"},
        host_network=host_network,
    )


def sleeper(name: str = "sleeper", **kwargs: Any) -> base.ContainerConfig:
    return base.ContainerConfig(
        name=name,
        attempt=0,
        image=BUSYBOX,
        log_path=f"{name}/0.log",
        command=("sleep", "3600"),
        **kwargs,
    )


class Pods:
    """Starts pods with fresh uids, and removes every one of them when the test ends."""

    def __init__(self, runtime: CRIRuntime, node: Any) -> None:
        self.runtime = runtime
        self._node = node
        self._uids: list[PodUID] = []

    async def start(self, *, host_network: bool = False) -> Pod:
        config = sandbox_config(self._node, host_network=host_network)
        self._uids.append(config.uid)
        return Pod(self.runtime, config, await self.runtime.run_sandbox(config))

    async def cleanup(self) -> None:
        for uid in self._uids:
            for sandbox in await self.runtime.list_sandboxes(uid):
                await self.runtime.stop_sandbox(sandbox.id)
                await self.runtime.remove_sandbox(sandbox.id)


@pytest.fixture
async def runtime(node: Any) -> AsyncIterator[CRIRuntime]:
    rt = CRIRuntime(node.endpoint, timeout_s=20.0, pull_timeout_s=30.0)
    try:
        yield rt
    finally:
        await rt.close()


@pytest.fixture
async def pods(runtime: CRIRuntime, node: Any) -> AsyncIterator[Pods]:
    factory = Pods(runtime, node)
    try:
        yield factory
    finally:
        await factory.cleanup()


async def start_container(pod: Pod, config: base.ContainerConfig) -> base.ContainerID:
    container_id = await pod.runtime.create_container(pod.sandbox_id, config, pod.config)
    await pod.runtime.start_container(container_id)
    return container_id


@pytest.fixture
async def pod(pods: Pods) -> Pod:
    return await pods.start()


@pytest.fixture
async def running(pod: Pod) -> base.ContainerID:
    return await start_container(pod, sleeper())


async def test_version(runtime: CRIRuntime) -> None:
    version = await runtime.version()
    assert version.name == "containerd"
    assert version.api_version == "v1"
    assert version.version


async def test_sandbox_is_ready_labelled_and_listed(pod: Pod) -> None:
    status = await pod.runtime.sandbox_status(pod.sandbox_id)
    assert status.state is base.SandboxState.READY
    assert (status.uid, status.name, status.namespace) == (
        pod.config.uid,
        pod.config.name,
        pod.config.namespace,
    )
    assert status.ip  # the CNI plugin gave the pod an address
    assert status.created_at_ns > 0
    assert status.labels[base.LABEL_POD_UID] == pod.config.uid
    assert status.labels[base.LABEL_MANAGED_BY] == "true"
    assert status.labels["app"] == "cri-test"

    listed = await pod.runtime.list_sandboxes(pod.config.uid)
    assert [s.id for s in listed] == [pod.sandbox_id]
    assert pod.sandbox_id in {s.id for s in await pod.runtime.list_sandboxes()}


async def test_container_runs_and_is_listed(pod: Pod, running: base.ContainerID) -> None:
    listed = await pod.runtime.list_containers(pod.config.uid)
    assert [c.id for c in listed] == [running]
    (summary,) = listed
    assert (summary.name, summary.sandbox_id, summary.uid) == (
        "sleeper",
        pod.sandbox_id,
        pod.config.uid,
    )
    assert summary.state is base.ContainerState.RUNNING
    assert not summary.detailed

    status = await pod.runtime.container_status(running)
    assert status.detailed
    assert status.state is base.ContainerState.RUNNING
    assert status.sandbox_id == pod.sandbox_id
    assert status.started_at_ns >= status.created_at_ns > 0
    assert status.finished_at_ns == 0
    assert status.image == BUSYBOX
    assert status.image_ref
    assert status.labels[base.LABEL_CONTAINER_NAME] == "sleeper"
    assert status.labels[base.LABEL_POD_NAME] == pod.config.name


async def test_exec_sync_captures_output_and_exit_code(pod: Pod, running: base.ContainerID) -> None:
    result = await pod.runtime.exec_sync(running, ["echo", "hi"], timeout_s=5)
    assert result == base.ExecResult(exit_code=0, stdout=b"hi\n", stderr=b"")

    result = await pod.runtime.exec_sync(running, ["sh", "-c", "echo oops >&2; exit 3"], 5)
    assert (result.exit_code, result.stdout, result.stderr) == (3, b"", b"oops\n")


async def test_exec_sync_honours_timeout(pod: Pod, running: base.ContainerID) -> None:
    started = time.monotonic()
    result = await pod.runtime.exec_sync(running, ["sleep", "5"], timeout_s=1)
    elapsed = time.monotonic() - started
    assert result.exit_code != 0
    assert elapsed < 4, f"exec took {elapsed:.1f}s despite a 1s timeout"


async def test_container_env_mounts_and_log(pod: Pod, tmp_path: Any) -> None:
    (tmp_path / "f").write_text("from host\n")
    config = base.ContainerConfig(
        name="worker",
        attempt=0,
        image=BUSYBOX,
        log_path="worker/0.log",
        command=("sh", "-c"),
        args=('echo "$GREETING"; cat /data/f; exec sleep 3600',),
        working_dir="/tmp",
        env=(("GREETING", "hello"),),
        mounts=(base.Mount(host_path=str(tmp_path), container_path="/data", readonly=True),),
    )
    container_id = await start_container(pod, config)

    result = await pod.runtime.exec_sync(container_id, ["sh", "-c", "pwd; touch /data/x"], 5)
    assert result.stdout == b"/tmp\n"
    assert result.exit_code != 0  # the mount is read-only

    log = os.path.join(pod.config.log_directory, "worker", "0.log")
    text = await async_wait_for(lambda: _read_if(log, "from host"), 5, message=f"output in {log}")
    assert " stdout F hello\n" in text  # the CRI log format: time, stream, tag, line
    assert " stdout F from host\n" in text


def _read_if(path: str, needle: str) -> str:
    """The file's text once it holds ``needle``, else "" (the runtime writes logs async)."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return ""
    return text if needle in text else ""


async def test_stop_and_remove_container(pod: Pod, running: base.ContainerID) -> None:
    # sleep is PID 1 without a TERM handler, so TERM is ignored and KILL ends it at the timeout.
    await pod.runtime.stop_container(running, timeout_s=1)
    status = await pod.runtime.container_status(running)
    assert status.state is base.ContainerState.EXITED
    assert status.exit_code == 137
    assert status.finished_at_ns >= status.started_at_ns > 0

    await pod.runtime.remove_container(running)
    with pytest.raises(base.NotFound):
        await pod.runtime.container_status(running)
    assert await pod.runtime.list_containers(pod.config.uid) == []


async def test_containerd_task_service_reaps_a_task_behind_cri(
    node: Any, pod: Pod, running: base.ContainerID
) -> None:
    # The way out of the one state CRI cannot leave (a task left behind a container CRI
    # believes exited: see runtime/cri/tasks.py), shown on a running container: the task
    # service's kill reaches the real process, and CRI hears it exit.
    channel = grpc.aio.insecure_channel(node.endpoint)
    try:
        await tasks.reap(channel, running, timeout_s=10)
    finally:
        await channel.close()

    async def exited() -> base.ContainerInfo | None:
        status = await pod.runtime.container_status(running)
        return status if status.state is base.ContainerState.EXITED else None

    status = await async_wait_for(exited, 30)
    assert status.exit_code == 137
    await pod.runtime.remove_container(running)
    with pytest.raises(base.NotFound):
        await pod.runtime.container_status(running)


async def test_stop_and_remove_sandbox(pod: Pod, running: base.ContainerID) -> None:
    await pod.runtime.stop_sandbox(pod.sandbox_id)
    assert (await pod.runtime.sandbox_status(pod.sandbox_id)).state is base.SandboxState.NOTREADY
    # Stopping a sandbox stops its containers too.
    status = await pod.runtime.container_status(running)
    assert status.state is base.ContainerState.EXITED

    await pod.runtime.remove_sandbox(pod.sandbox_id)
    assert await pod.runtime.list_sandboxes(pod.config.uid) == []
    assert await pod.runtime.list_containers(pod.config.uid) == []
    with pytest.raises(base.NotFound):
        await pod.runtime.sandbox_status(pod.sandbox_id)


async def test_host_network_pod_shares_the_node_namespace(pods: Pods, node: Any) -> None:
    pod = await pods.start(host_network=True)
    container_id = await start_container(pod, sleeper())
    assert (await pod.runtime.sandbox_status(pod.sandbox_id)).state is base.SandboxState.READY

    # The fixture's containerd runs in node.netns, so "the node's namespace" is that one.
    result = await pod.runtime.exec_sync(container_id, ["readlink", "/proc/self/ns/net"], 5)
    assert result.exit_code == 0, result.stderr
    node_netns = os.stat(f"/run/netns/{node.netns}").st_ino
    assert result.stdout.decode().strip() == f"net:[{node_netns}]"


@pytest.mark.parametrize(
    "call",
    [
        lambda rt: rt.container_status(base.ContainerID("no-such-container")),
        lambda rt: rt.sandbox_status(base.SandboxID("no-such-sandbox")),
        lambda rt: rt.exec_sync(base.ContainerID("no-such-container"), ["true"], 1),
        lambda rt: rt.stop_container(base.ContainerID("no-such-container"), 0),
    ],
    ids=["container_status", "sandbox_status", "exec_sync", "stop_container"],
)
async def test_unknown_ids_raise_not_found(runtime: CRIRuntime, call: Any) -> None:
    with pytest.raises(base.NotFound):
        await call(runtime)


async def test_image_present(runtime: CRIRuntime) -> None:
    assert await runtime.image_present(BUSYBOX)
    assert await runtime.image_present("busybox")  # the runtime normalizes the name itself
    assert not await runtime.image_present("docker.io/library/nope:1")


async def test_pull_of_a_missing_image_fails(runtime: CRIRuntime) -> None:
    with pytest.raises(base.ImagePullFailed):
        await runtime.pull_image("docker.io/library/nope:1")
