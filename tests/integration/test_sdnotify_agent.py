"""The agent under a systemd-like supervisor: READY=1 once running pods are adopted, the
watchdog fed while it runs, STOPPING=1 on SIGTERM, all over a real $NOTIFY_SOCKET.

No systemd runs here (PID 1 is not systemd), so the test plays its part: it binds the
AF_UNIX datagram socket systemd would and passes NOTIFY_SOCKET and WATCHDOG_USEC to the agent.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import TestNode, wait_for
from tests.harness.agent import Agent, is_ready

POD = """
apiVersion: v1
kind: Pod
metadata:
  name: adopted
spec:
  terminationGracePeriodSeconds: 2
  containers:
    - name: main
      image: busybox
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
"""


class Listener:
    """systemd's end of the notify socket: every datagram, in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


@pytest.fixture
def listener(node: TestNode) -> Iterator[Listener]:
    got = Listener(node.root / "notify.sock")
    yield got
    got.close()


def test_ready_after_adoption_watchdog_and_stopping(
    node: TestNode, listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = Agent(node, name="sd-node")
    for old in first.manifests.iterdir():
        old.unlink()
    first.write_manifest("pod.yaml", POD)
    first.start()
    try:
        first.wait_pod("adopted", is_ready, 30, "Running and Ready")
    finally:
        first.stop()  # the pod keeps running for the next agent to adopt

    monkeypatch.setenv("NOTIFY_SOCKET", str(listener.path))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    agent = Agent(node, name="sd-node").start()
    try:
        ready = wait_for(
            lambda: [m for m in listener.drain() if m.startswith("READY=1")],
            30,
            message=lambda: f"READY=1; got {listener.messages}\n{agent.log_tail()}",
        )
        assert ready == ["READY=1\nSTATUS=1 pods adopted"]
        wait_for(
            lambda: listener.drain().count("WATCHDOG=1") >= 3,
            30,
            message=lambda: f"three watchdog pings; got {listener.messages}",
        )
        # The adopted pod was not restarted on the way.
        pod = agent.pod("adopted")
        assert pod is not None and pod["status"]["containerStatuses"][0]["restartCount"] == 0
    finally:
        agent.stop()
    assert listener.drain()[-1] == "STOPPING=1"
