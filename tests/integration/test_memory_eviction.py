"""Memory eviction on a real node: a pod filling memory past the threshold is evicted.

The threshold is set just below what the machine has available when the test starts; a
BestEffort pod then writes more than that margin into a memory-backed emptyDir (tmpfs pages
count against ``memory.available``, as the kubelet's signal does). The agent must report
MemoryPressure, evict the BestEffort pod (Failed, reason Evicted) and keep the Guaranteed
one, which stays within its requests, running: once the evicted pod's memory is freed the
node is above the threshold again and nothing else goes.

MemoryPressure is read from the record its transition leaves (the Node's
``NodeHasInsufficientMemory`` event and the condition's ``lastTransitionTime``), not caught in
a poll: the hog may be evicted, and its memory freed, between two reads of the status.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import psutil
import pytest

from tests.harness import TestNode, wait_for
from tests.harness.agent import Agent, condition, container_status

MI = 2**20
MARGIN = 768 * MI  # the threshold sits this far below what is available now
FILL_MIB = 2048  # what the BestEffort pod writes to memory: well past the margin

GUARANTEED = """apiVersion: v1
kind: Pod
metadata: {name: steady}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: busybox
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
      resources:
        limits: {cpu: 100m, memory: 64Mi}
        requests: {cpu: 100m, memory: 64Mi}
"""

BEST_EFFORT = f"""apiVersion: v1
kind: Pod
metadata: {{name: hog}}
spec:
  terminationGracePeriodSeconds: 1
  volumes:
    - name: ram
      emptyDir: {{medium: Memory}}
  containers:
    - name: main
      image: busybox
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c", "dd if=/dev/zero of=/ram/fill bs=1M count={FILL_MIB}; sleep 3600"]
      volumeMounts:
        - {{name: ram, mountPath: /ram}}
"""


def node_condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status["node"]["conditions"] if c["type"] == kind), {})


def node_events(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The Node's own events, by reason (the ring counts repeats instead of adding records)."""
    return {e["reason"]: e for e in status["events"] if e["involvedObject"].get("kind") == "Node"}


def seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


@pytest.fixture
def pressured_agent(node: TestNode, monkeypatch: pytest.MonkeyPatch) -> Iterator[Agent]:
    available = psutil.virtual_memory().available
    if available < MARGIN + FILL_MIB * MI + 1024 * MI:
        pytest.skip(f"needs about {(MARGIN // MI) + FILL_MIB + 1024} MiB of free memory")
    threshold_mib = (available - MARGIN) // MI
    monkeypatch.setenv("NODEAGENT_EVICTION_INTERVAL_S", "1")
    agent = Agent(node, extra=["--eviction-hard", f"memory.available<{threshold_mib}Mi"])
    for old in agent.manifests.iterdir():
        old.unlink()
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


def test_memory_pressure_evicts_best_effort_and_keeps_guaranteed(
    pressured_agent: Agent,
) -> None:
    agent = pressured_agent
    agent.write_manifest("steady.yaml", GUARANTEED)
    steady = agent.wait_pod("steady", lambda p: p["status"].get("phase") == "Running")
    steady_id = container_status(steady, "main")["containerID"]
    assert steady["status"]["qosClass"] == "Guaranteed"
    # A starting node tells its first MemoryPressure status, as a kubelet does.
    calm = wait_for(
        lambda: node_events(agent.status()).get("NodeHasSufficientMemory"),
        30,
        message=lambda: f"the node's first memory event\n{agent.log_tail()}",
    )
    assert calm["message"] == f"Node {agent.name} status is now: NodeHasSufficientMemory"
    assert node_condition(agent.status(), "MemoryPressure")["status"] == "False"
    assert "NodeHasInsufficientMemory" not in node_events(agent.status())

    written = math.floor(time.time())  # transition times have whole seconds
    agent.write_manifest("hog.yaml", BEST_EFFORT)

    def evicted() -> dict[str, Any] | None:
        pod = agent.pod("hog")
        return pod if pod is not None and pod["status"].get("reason") == "Evicted" else None

    hog = wait_for(evicted, 120, interval=0.2, message=lambda: agent.log_tail())
    assert hog["status"]["phase"] == "Failed"
    assert hog["status"]["qosClass"] == "BestEffort"
    assert "low on resource: memory" in hog["status"]["message"]
    assert condition(hog, "DisruptionTarget") == "True"
    assert container_status(hog, "main")["state"].get("terminated") is not None

    # The pressure left its record when it began: however soon the hog's memory was freed,
    # the condition holds for the transition period, and its event stays in the ring. Both
    # stay, so waiting for them to show together is waiting on a condition, not a race.
    def pressure_told() -> tuple[dict[str, Any], dict[str, Any]] | None:
        status = agent.status()
        event = node_events(status).get("NodeHasInsufficientMemory")
        memory = node_condition(status, "MemoryPressure")
        return (event, memory) if event and memory.get("status") == "True" else None

    pressure, memory = wait_for(
        pressure_told,
        30,
        message=lambda: f"the NodeHasInsufficientMemory record\n{agent.log_tail()}",
    )
    assert pressure["type"] == "Normal" and pressure["count"] == 1
    assert pressure["involvedObject"] == {"kind": "Node", "name": agent.name, "uid": agent.name}
    assert seconds(pressure["firstTimestamp"]) >= written
    assert memory["reason"] == "KubeletHasInsufficientMemory"
    assert seconds(memory["lastTransitionTime"]) >= written
    assert agent.status()["node"]["eviction"]["evictions"] >= 1

    # The hog's memory is freed with its pod; from then on the node is above the threshold
    # and the monitor, still checking every second, must leave the Guaranteed pod alone.
    def recovered() -> dict[str, Any] | None:
        report = agent.status()["node"]["eviction"]
        return report if report.get("belowThreshold") is False else None

    seen = wait_for(recovered, 60, interval=0.5, message=lambda: agent.log_tail())
    wait_for(
        lambda: agent.status()["node"]["eviction"]["checks"] >= seen["checks"] + 3,
        30,
        message="three more eviction passes",
    )
    steady_now = agent.pod("steady")
    assert steady_now is not None
    assert steady_now["status"]["phase"] == "Running"
    assert condition(steady_now, "Ready") == "True"
    assert container_status(steady_now, "main")["containerID"] == steady_id
    report = agent.status()["node"]["eviction"]
    assert report["evictions"] == 1, report
    hog_now = agent.pod("hog")
    assert hog_now is not None and hog_now["status"]["reason"] == "Evicted"  # not restarted
    # Its final status: the container's exit as the runtime reported it once killed.
    stopped = container_status(hog_now, "main")["state"]["terminated"]
    assert stopped["reason"] != "ContainerStatusUnknown", stopped
    assert condition(hog_now, "DisruptionTarget") == "True"
    # The condition holds through the transition period, as upstream's does: no second
    # transition, and the time of the first one kept.
    status = agent.status()
    final = node_condition(status, "MemoryPressure")
    assert (final["status"], final["lastTransitionTime"]) == ("True", memory["lastTransitionTime"])
    told = node_events(status)
    assert told["NodeHasInsufficientMemory"]["count"] == 1
    assert told["NodeHasSufficientMemory"]["count"] == 1  # only the first, at the start
