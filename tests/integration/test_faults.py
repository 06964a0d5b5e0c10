"""Runtime faults under a running agent: containerd or dockerd crashes and comes back.

While the runtime is gone the agent must say so (node condition Ready False, naming the
runtime) and keep going; when it is back, the agent reconnects on its own and resyncs
without duplicating anything: the pod's running container is the same one (not restarted)
and the pod has exactly one sandbox.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import TestNode, wait_for
from tests.harness.agent import Agent, RuntimeTarget, container_status, is_ready
from tests.harness.dockerd import DockerDaemon

POD = """apiVersion: v1
kind: Pod
metadata: {name: survivor}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: busybox
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
"""


def node_condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status["node"]["conditions"] if c["type"] == kind)


def fresh_agent(node: TestNode, runtime: RuntimeTarget) -> Agent:
    agent = Agent(node, runtime=runtime)
    for old in agent.manifests.iterdir():
        old.unlink()
    return agent.start()


def survives_a_runtime_restart(
    agent: Agent, runtime: RuntimeTarget, *, kill: Callable[[], None], restart: Callable[[], None]
) -> None:
    agent.write_manifest("survivor.yaml", POD)
    before = agent.wait_pod("survivor", is_ready, timeout=60)
    container_id = container_status(before, "main")["containerID"]
    assert node_condition(agent.status(), "Ready")["status"] == "True"

    kill()

    def down() -> dict[str, Any] | None:
        ready = node_condition(agent.status(), "Ready")
        return ready if ready["status"] == "False" else None

    ready = wait_for(down, 30, interval=0.2, message=lambda: agent.log_tail())
    assert ready["reason"] == "KubeletNotReady"
    assert "runtime is down" in ready["message"]
    assert agent.proc is not None and agent.proc.poll() is None  # the agent keeps running

    restart()

    def up() -> dict[str, Any] | None:
        status = agent.status()
        if node_condition(status, "Ready")["status"] != "True":
            return None
        pod = agent.pod("survivor")
        return pod if pod is not None and is_ready(pod) else None

    after = wait_for(up, 60, interval=0.2, message=lambda: agent.log_tail())
    status = container_status(after, "main")
    assert status["containerID"] == container_id, "the running container was restarted"
    assert status["restartCount"] == container_status(before, "main")["restartCount"]
    sandboxes = [s for s in runtime.sandboxes() if s.name == "survivor"]
    assert len(sandboxes) == 1, sandboxes
    # A few relists later nothing has changed: no late duplicate either.
    relisted = wait_for(
        lambda: (p := agent.pod("survivor")) is not None and p, 10, message="pod listed"
    )
    assert container_status(relisted, "main")["containerID"] == container_id
    assert len([s for s in runtime.sandboxes() if s.name == "survivor"]) == 1


def test_containerd_restarted_under_the_agent(make_node: Callable[[], TestNode]) -> None:
    node = make_node()  # a node of its own: its containerd is killed
    runtime = RuntimeTarget.cri(node)
    agent = fresh_agent(node, runtime)
    try:
        survives_a_runtime_restart(
            agent, runtime, kill=node.kill_containerd, restart=node.restart_containerd
        )
    finally:
        agent.stop()
        if not node.containerd_alive():
            node.restart_containerd()  # so that teardown removes the pods through CRI


@pytest.fixture
def docker_node(
    make_node: Callable[[], TestNode], image_archives: dict[str, Path]
) -> Iterator[tuple[TestNode, DockerDaemon]]:
    node = make_node()
    daemon = DockerDaemon.start(node, images=image_archives, live_restore=True)
    try:
        yield node, daemon
    finally:
        if not daemon.alive():
            daemon.restart_dockerd()
        daemon.close()


def test_dockerd_restarted_under_the_agent(docker_node: tuple[TestNode, DockerDaemon]) -> None:
    node, daemon = docker_node
    runtime = RuntimeTarget.for_docker(node, daemon)
    agent = fresh_agent(node, runtime)
    try:
        survives_a_runtime_restart(
            agent, runtime, kill=daemon.kill_dockerd, restart=daemon.restart_dockerd
        )
    finally:
        agent.stop()
