"""Node resources on each runtime: container logs rotate, dead things are collected.

Every test runs on containerd (the agent rotates: rename, ReopenContainerLog, gzip) and on
Docker Engine (dockerd rotates its json-file logs with the options the agent gave at create).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import TestNode, wait_for
from tests.harness.agent import Agent, RuntimeTarget, cli, condition, is_ready
from tests.harness.manifests import static_pod_yaml

MAX_SIZE = 16 * 1024
MAX_FILES = 3
# Bursts of 100 numbered lines (about 10 KiB), one a second: a rotation every pass or two,
# and never more than the log monitor can keep up with.
CHATTY = (
    "i=0; trap 'exit 0' TERM; while true; do j=0; while [ $j -lt 100 ]; do "
    'echo "line $i ........................................................................"; '
    "i=$((i+1)); j=$((j+1)); done; sleep 1; done"
)


@pytest.fixture
def resource_agent(
    node: TestNode, runtime_target: RuntimeTarget, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Agent]:
    monkeypatch.setenv("NODEAGENT_CONTAINER_LOG_MONITOR_INTERVAL_S", "1")
    monkeypatch.setenv("NODEAGENT_GC_INTERVAL_S", "1")
    extra = ["--container-log-max-size", str(MAX_SIZE), "--container-log-max-files", str(MAX_FILES)]
    agent = Agent(node, runtime=runtime_target, extra=extra)
    for old in agent.manifests.iterdir():
        old.unlink()
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


def log_files(node: TestNode, pod: dict[str, object]) -> list[Path]:
    """The container's log files as the runtime keeps them (Docker's beside its own file)."""
    meta = pod["metadata"]
    assert isinstance(meta, dict)
    live = node.pod_log_dir / f"default_{meta['name']}_{meta['uid']}" / "main" / "0.log"
    if live.is_symlink():
        target = Path(os.path.realpath(live))
        return sorted(target.parent.glob(target.name + "*"))
    return sorted(live.parent.glob("0.log*"))


def numbers(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"^line (\d+) ", text, re.MULTILINE)]


def test_a_chatty_container_logs_rotate_to_the_configured_count(
    node: TestNode, resource_agent: Agent
) -> None:
    agent = resource_agent
    agent.write_manifest("chatty.yaml", static_pod_yaml("chatty", script=CHATTY))
    pod = agent.wait_pod("chatty", is_ready, what="ready")

    # Rotation drops the oldest files: the log, read across the rest, starts past line 0.
    def dropped_oldest() -> list[int] | None:
        result = cli(agent, "logs", "chatty", check=False)
        seen = numbers(result.stdout)
        # A read during a rotation may miss a file: wait for a whole one.
        whole = seen and seen == list(range(seen[0], seen[0] + len(seen)))
        return seen if whole and seen[0] > 0 else None

    seen = wait_for(dropped_oldest, 60, message=lambda: f"rotated logs\n{agent.log_tail()}")
    assert len(seen) >= 100
    settled = wait_for(
        lambda: rotation_settled(agent, node, pod), 30, message="the log files between rotations"
    )
    if agent.runtime.kind == "cri":
        # A file is rotated once it reached the size.
        (newest_size,) = settled[-1:]
        assert newest_size >= MAX_SIZE, settled
    else:
        # dockerd rotates once a write took the file to max-size: at most one record over.
        assert all(MAX_SIZE <= size <= MAX_SIZE + 1024 for size in settled), settled


def rotation_settled(agent: Agent, node: TestNode, pod: dict[str, Any]) -> list[int] | None:
    """The rotated files' sizes, oldest first, read between two rotations: all the files
    there, in the runtime's scheme (None while a rotation is under way)."""
    files = log_files(node, pod)
    if len(files) != MAX_FILES:
        return None
    live, *rotated = files
    if agent.runtime.kind == "cri":
        # The kubelet's scheme: the newest rotated file plain, older ones gzipped.
        older, newest = rotated
        if live.name != "0.log" or not older.name.endswith(".gz") or newest.suffix == ".gz":
            return None
    try:
        return [f.stat().st_size for f in rotated]
    except FileNotFoundError:
        return None  # rotated away between the listing and the look


def test_a_removed_pod_leaves_no_log_or_pod_directory(
    node: TestNode, resource_agent: Agent
) -> None:
    agent = resource_agent
    # A leftover of a pod this agent never knew (an earlier life): collected too.
    ghost = node.pod_log_dir / "default_ghost_0d5a3c1e-dead-4bee-8000-000000000000"
    (ghost / "main").mkdir(parents=True)
    ghost_dir = node.state_dir / "pods" / "0d5a3c1e-dead-4bee-8000-000000000000"
    (ghost_dir / "volumes").mkdir(parents=True)
    manifest = agent.write_manifest("brief.yaml", static_pod_yaml("brief"))
    pod = agent.wait_pod("brief", is_ready, what="ready")
    uid = pod["metadata"]["uid"]
    logs = node.pod_log_dir / f"default_brief_{uid}"
    assert logs.is_dir() and (node.state_dir / "pods" / uid).is_dir()
    manifest.unlink()

    def gone() -> bool:
        leftovers = (logs, node.state_dir / "pods" / uid, ghost, ghost_dir)
        return agent.pod("brief") is None and not any(p.exists() for p in leftovers)

    wait_for(gone, 60, message=lambda: f"the pod's directories collected\n{agent.log_tail()}")
    assert not [c for c in agent.runtime.containers() if c.uid == uid]
    # The node part of the status is sampled at most once a second.
    wait_for(
        lambda: agent.status()["node"]["eviction"]["gc"]["removed"]["logDirs"] >= 2,
        10,
        message="the collector's report",
    )


SIZE_LIMITED = """apiVersion: v1
kind: Pod
metadata: {name: filler}
spec:
  terminationGracePeriodSeconds: 1
  volumes:
    - name: scratch
      emptyDir: {sizeLimit: 1Mi}
  containers:
    - name: main
      image: busybox
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c", "dd if=/dev/zero of=/scratch/fill bs=1M count=4; sleep 3600"]
      volumeMounts:
        - {name: scratch, mountPath: /scratch}
"""


def evicted(agent: Agent, name: str) -> dict[str, Any] | None:
    pod = agent.pod(name)
    return pod if pod is not None and pod["status"].get("reason") == "Evicted" else None


def test_a_pod_filling_an_empty_dir_past_its_size_limit_is_evicted(
    resource_agent: Agent,
) -> None:
    agent = resource_agent
    agent.write_manifest("steady.yaml", static_pod_yaml("steady"))
    agent.wait_pod("steady", is_ready, what="ready")
    agent.write_manifest("filler.yaml", SIZE_LIMITED)
    pod = wait_for(lambda: evicted(agent, "filler"), 60, message=lambda: agent.log_tail())
    assert pod["status"]["phase"] == "Failed"
    assert pod["status"]["message"] == 'Usage of EmptyDir volume "scratch" exceeds the limit "1Mi".'
    assert condition(pod, "DisruptionTarget") == "True"
    steady = agent.pod("steady")
    assert steady is not None and is_ready(steady)  # only the pod past its limit goes


DISK_HOG = """apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  terminationGracePeriodSeconds: 1
  volumes:
    - name: scratch
      emptyDir: {}
  containers:
    - name: main
      image: busybox
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c", "dd if=/dev/zero of=/scratch/fill bs=1M count=40; sleep 3600"]
      volumeMounts:
        - {name: scratch, mountPath: /scratch}
"""

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
        limits: {cpu: 100m, memory: 32Mi}
"""


@pytest.fixture
def small_disk(node: TestNode) -> Iterator[Path]:
    """A 64 MiB tmpfs for the agent's state: a disk a pod can fill in a moment."""
    path = node.root / "small-disk"
    path.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_disk_pressure_evicts_the_best_effort_pod(
    node: TestNode,
    runtime_target: RuntimeTarget,
    small_disk: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NODEAGENT_EVICTION_INTERVAL_S", "1")
    # Half the small disk must stay free: the hog's 40 MiB takes it past that.
    extra = ["--state-dir", str(small_disk), "--eviction-hard", "nodefs.available<50%"]
    agent = Agent(node, runtime=runtime_target, extra=extra)
    for old in agent.manifests.iterdir():
        old.unlink()
    agent.start()
    try:
        agent.write_manifest("steady.yaml", GUARANTEED)
        agent.wait_pod("steady", is_ready, what="ready")
        assert disk_condition(agent)["status"] == "False"
        agent.write_manifest("hog.yaml", DISK_HOG)
        hog = wait_for(lambda: evicted(agent, "hog"), 60, message=lambda: agent.log_tail())
        assert hog["status"]["phase"] == "Failed"
        assert "low on resource: ephemeral-storage" in hog["status"]["message"]

        # The node part of the status is sampled at most once a second: wait for the event
        # and the condition together (the condition holds for the transition period).
        def pressure_told() -> dict[str, Any] | None:
            event = node_event(agent, "NodeHasDiskPressure")
            return event if event and disk_condition(agent)["status"] == "True" else None

        told = wait_for(pressure_told, 30, message="the pressure event and condition")
        assert told["message"] == f"Node {agent.name} status is now: NodeHasDiskPressure"
        # The hog's emptyDir went with it: the node has room again and the rest stays.
        report = wait_for(
            lambda: (r := agent.status()["node"]["eviction"]["disk"])["below"] == [] and r,
            30,
            message="room again",
        )
        assert report["evictions"] == 1 and report["reclaims"] >= 1, report
        steady = agent.pod("steady")
        assert steady is not None and is_ready(steady)
    finally:
        agent.stop()


def disk_condition(agent: Agent) -> dict[str, Any]:
    conditions = agent.status()["node"]["conditions"]
    return next(c for c in conditions if c["type"] == "DiskPressure")


def node_event(agent: Agent, reason: str) -> dict[str, Any] | None:
    events = agent.status()["events"]
    return next(
        (e for e in events if e["involvedObject"].get("kind") == "Node" and e["reason"] == reason),
        None,
    )


STORAGE_LIMITED = """apiVersion: v1
kind: Pod
metadata: {name: scribbler}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: busybox
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c", "dd if=/dev/zero of=/scribble bs=1M count=4; sleep 3600"]
      resources:
        limits: {ephemeral-storage: 2Mi}
"""


def test_a_container_past_its_ephemeral_storage_limit_is_evicted(resource_agent: Agent) -> None:
    agent = resource_agent
    agent.write_manifest("scribbler.yaml", STORAGE_LIMITED)
    pod = wait_for(lambda: evicted(agent, "scribbler"), 60, message=lambda: agent.log_tail())
    assert pod["status"]["phase"] == "Failed"
    message = 'Container main exceeded its local ephemeral storage limit "2Mi". '
    assert pod["status"]["message"] == message
