"""The harness itself: a node's containerd answers, has the images, runs them, and a closed
node leaves nothing behind (also after containerd crashed with pods running)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from nodeagent import localimages
from tests.harness import TestNode, wait_for
from tests.harness.node import (
    alive,
    descendants,
    mounts_under,
    netns_exists,
    processes_mentioning,
    shim_socket,
    shims_for,
)

BUSYBOX = localimages.BUSYBOX_IMAGE


def test_containerd_answers_inside_the_netns(node: TestNode) -> None:
    assert "Server:" in node.ctr("version").stdout
    links = node.run(["ip", "-o", "link"]).stdout
    assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]


def test_images_are_listed_under_their_exact_names(
    node: TestNode, image_archives: dict[str, Path]
) -> None:
    names = node.image_names()
    assert {BUSYBOX, localimages.PAUSE_IMAGE} <= names
    assert set(image_archives) <= names
    assert not any(name.startswith("import-") for name in names)


def test_ctr_run_busybox(node: TestNode) -> None:
    result = node.ctr_run(BUSYBOX, "echo1", "echo", "ok")
    assert result.stdout.strip() == "ok"


def test_reset_removes_running_tasks(node: TestNode) -> None:
    node.ctr_run(BUSYBOX, "sleeper", "sleep", "600", detach=True)
    wait_for(lambda: "RUNNING" in node.ctr("tasks", "ls").stdout, 10, message="task running")
    node.reset()
    assert node.ctr("containers", "ls", "-q").stdout.strip() == ""
    assert node.ctr("tasks", "ls", "-q").stdout.strip() == ""


def _run_cri_sandbox(node: TestNode) -> str:
    """Start a pod sandbox through CRI (pause + CNI); return its IP."""
    grpc = pytest.importorskip("grpc")
    cri = pytest.importorskip("nodeagent.runtime.cri.api_pb2")
    cri_grpc = pytest.importorskip("nodeagent.runtime.cri.api_pb2_grpc")
    with grpc.insecure_channel(node.endpoint) as channel:
        stub = cri_grpc.RuntimeServiceStub(channel)
        meta = cri.PodSandboxMetadata(name="p", uid="uid-p", namespace="default")
        config = cri.PodSandboxConfig(
            metadata=meta, hostname="p", log_directory=str(node.pod_log_dir / "p")
        )
        sandbox = stub.RunPodSandbox(cri.RunPodSandboxRequest(config=config), timeout=30)
        status = stub.PodSandboxStatus(
            cri.PodSandboxStatusRequest(pod_sandbox_id=sandbox.pod_sandbox_id), timeout=10
        )
    ip: str = status.status.network.ip
    return ip


@pytest.mark.parametrize("crash", [False, True], ids=["clean", "containerd-killed"])
def test_close_leaves_nothing_behind(
    image_archives: dict[str, Path], tmp_path: Path, crash: bool
) -> None:
    node = TestNode.start(tmp_path / "n", images=image_archives)
    try:
        ip = _run_cri_sandbox(node)
        node.run(["busybox", "ping", "-c", "1", "-W", "2", ip])
        node.ctr_run(BUSYBOX, "s1", "sleep", "600", detach=True)
        shims = wait_for(lambda: shims_for(node.address), 10, message="shims")
        assert mounts_under(node.root), "containerd should have mounted below the node root"
        if crash:
            assert node._containerd is not None
            os.kill(node._containerd.pid, signal.SIGKILL)
            node._containerd.wait()
    except BaseException:
        node.close()
        raise
    pids = [p for shim in shims for p in [shim.pid, *descendants(shim.pid)]]
    sockets = [shim_socket(node.address, s.namespace, s.id) for s in shims]
    node.close()

    assert not netns_exists(node.netns)
    assert not mounts_under(node.root)
    assert not node.root.exists()
    assert processes_mentioning(node.address) == []
    assert not [p for p in pids if alive(p)]
    assert not [s for s in sockets if s.exists()]
    for shim in shims:
        assert not list(Path("/sys/fs/cgroup").glob(f"*/{shim.namespace}/{shim.id}"))
        assert not Path("/run/containerd/runc", shim.namespace, shim.id).exists()
    netns_list = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert node.netns not in netns_list
