"""QoS and pod cgroups on a real node, read from the cgroup files themselves (cgroup v1 here).

One agent per runtime runs three pods at once, one per QoS class, with ``--pod-max-pids``
and reservations set. The test reads where each container's process really is
(``/proc/<pid>/cgroup``), the pod cgroups' cpu.shares, cfs quota, memory limit and
pids.max, the QoS cgroups' shares, kubepods' cap, the processes' oom_score_adj and the
node's allocatable; the BestEffort pod is a fork bomb that must stop at pids.max. Then the
pod cgroups go: one when its manifest is removed while the agent runs, one removed while the
agent is stopped (found again after the restart).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import psutil
import pytest

from nodeagent.kubelet.cgroups import policy
from nodeagent.kubelet.cgroups.manager import read_oom_score_floor
from tests.harness import TestNode, wait_for
from tests.harness.agent import Agent, RuntimeTarget, cli, container_status

pytestmark = pytest.mark.skipif(
    Path("/sys/fs/cgroup/cgroup.controllers").exists(), reason="reads cgroup v1 files"
)

MI = 2**20
MAX_PIDS = 40
FORKS = 80  # well past MAX_PIDS: the bomb must be stopped, not merely slowed
CGROUP = Path("/sys/fs/cgroup")

GUARANTEED = """apiVersion: v1
kind: Pod
metadata: {name: gold}
spec:
  terminationGracePeriodSeconds: 0
  containers:
    - name: main
      image: busybox
      imagePullPolicy: IfNotPresent
      command: ["sleep", "3600"]
      resources:
        limits: {cpu: 200m, memory: 64Mi}
"""

BURSTABLE = """apiVersion: v1
kind: Pod
metadata: {name: silver}
spec:
  terminationGracePeriodSeconds: 0
  containers:
    - name: main
      image: busybox
      imagePullPolicy: IfNotPresent
      command: ["sleep", "3600"]
      resources:
        requests: {cpu: 100m, memory: 32Mi}
        limits: {memory: 128Mi}
"""

# The loop runs in a child shell: busybox sh exits when a fork fails, and the pod's first
# shell must outlive it to say so (then becomes the sleep without forking).
BOMB_LOOP = f"i=0; while [ $i -lt {FORKS} ]; do sleep 3600 & i=$((i+1)); done"
FORK_BOMB = f"""apiVersion: v1
kind: Pod
metadata: {{name: bomb}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
    - name: main
      image: busybox
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c", "sh -c '{BOMB_LOOP}' || echo refused; exec sleep 3600"]
"""


def runtime_cgroup_driver(target: RuntimeTarget) -> str:
    async def ask() -> str:
        runtime = target.backend()
        try:
            return await runtime.cgroup_driver()
        finally:
            await runtime.close()

    return asyncio.run(ask())


def cgroup_file(hierarchy: str, path: str, name: str) -> str:
    return (CGROUP / hierarchy / path.lstrip("/") / name).read_text().strip()


def main_pid(target: RuntimeTarget, pod: dict[str, Any]) -> int | None:
    container_id = container_status(pod, "main")["containerID"].split("://", 1)[1]
    namespace = "moby" if target.docker is not None else "k8s.io"
    listed = target.node.ctr("tasks", "ls", namespace=namespace).stdout.splitlines()
    for line in listed[1:]:
        task, pid, *_ = line.split()
        if task == container_id:
            return int(pid)
    return None


def wait_main_pid(agent: Agent, target: RuntimeTarget, name: str) -> int:
    def found() -> int | None:
        return main_pid(target, agent.pod(name) or {})

    return wait_for(
        found, 20, message=lambda: f"{name}: {container_status(agent.pod(name) or {}, 'main')}"
    )


def proc_cgroup(pid: int, controller: str) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path
    raise AssertionError(f"no {controller} line for pid {pid}")


def running(pod: dict[str, Any]) -> bool:
    return "running" in container_status(pod, "main").get("state", {})


def pids_in(pod_cgroup: str) -> int:
    with contextlib.suppress(FileNotFoundError):
        return int(cgroup_file("pids", pod_cgroup, "pids.current"))
    return 0


def gone(path: str) -> bool:
    return not any((CGROUP / h / path.lstrip("/")).exists() for h in ("cpu", "memory", "pids"))


def test_pods_run_in_qos_cgroups_with_their_limits(
    node: TestNode, runtime_target: RuntimeTarget
) -> None:
    agent = Agent(
        node,
        runtime=runtime_target,
        extra=[
            "--pod-max-pids",
            str(MAX_PIDS),
            "--kube-reserved",
            "cpu=100m,memory=100Mi",
            "--system-reserved",
            "memory=50Mi",
        ],
    )
    for name, text in (
        ("gold.yaml", GUARANTEED),
        ("silver.yaml", BURSTABLE),
        ("bomb.yaml", FORK_BOMB),
    ):
        agent.write_manifest(name, text)
    agent.start()
    try:
        pods = {
            n: agent.wait_pod(n, running, timeout=60, what="running")
            for n in ("gold", "silver", "bomb")
        }
        root = node.cgroup_root
        kubepods = f"{root}/kubepods"
        expected = {
            "gold": f"{kubepods}/pod{pods['gold']['metadata']['uid']}",
            "silver": f"{kubepods}/burstable/pod{pods['silver']['metadata']['uid']}",
            "bomb": f"{kubepods}/besteffort/pod{pods['bomb']['metadata']['uid']}",
        }
        pids = {n: wait_main_pid(agent, runtime_target, n) for n in pods}
        for name, pod_cgroup in expected.items():
            for controller in ("cpu", "memory", "pids"):
                where = proc_cgroup(pids[name], controller)
                assert where.rsplit("/", 1)[0] == pod_cgroup, (name, controller, where)

        gold, silver, bomb = expected["gold"], expected["silver"], expected["bomb"]
        assert cgroup_file("cpu", gold, "cpu.shares") == "204"
        assert cgroup_file("cpu", gold, "cpu.cfs_quota_us") == "20000"
        assert cgroup_file("memory", gold, "memory.limit_in_bytes") == str(64 * MI)
        assert cgroup_file("cpu", silver, "cpu.shares") == "102"
        assert cgroup_file("cpu", silver, "cpu.cfs_quota_us") == "-1"
        assert cgroup_file("memory", silver, "memory.limit_in_bytes") == str(128 * MI)
        assert cgroup_file("cpu", bomb, "cpu.shares") == "2"
        for pod_cgroup in expected.values():
            assert cgroup_file("pids", pod_cgroup, "pids.max") == str(MAX_PIDS)

        assert cgroup_file("cpu", f"{kubepods}/burstable", "cpu.shares") == "102"
        assert cgroup_file("cpu", f"{kubepods}/besteffort", "cpu.shares") == "2"
        total = psutil.virtual_memory().total
        capped = (total - 150 * MI) // 4096 * 4096  # the kernel keeps whole pages
        assert int(cgroup_file("memory", kubepods, "memory.limit_in_bytes")) == capped

        floor = read_oom_score_floor()
        silver_adj = 1000 - (1000 * 32 * MI) // total
        adjs = {n: int(Path(f"/proc/{pid}/oom_score_adj").read_text()) for n, pid in pids.items()}
        assert adjs == {
            "gold": max(-997, floor) if floor is not None else -997,
            "silver": silver_adj,
            "bomb": 1000,
        }

        # What the agent asked to choose its driver: containerd 1.6 has no RuntimeConfig, so
        # this is its runc options; Docker's from its info.
        assert runtime_cgroup_driver(runtime_target) == "cgroupfs"
        allocatable = agent.status()["node"]["allocatable"]
        assert allocatable["cpu"] == policy.cpu_quantity((psutil.cpu_count() or 1) * 1000 - 100)
        assert allocatable["memory"] == f"{(total - 250 * MI) // 1024}Ki"

        # Without the limit the loop would end well (FORKS sleeps) and say nothing.
        wait_for(
            lambda: "refused" in cli(agent, "logs", "bomb").stdout,
            30,
            message=lambda: f"{pids_in(bomb)} pids in {bomb}\n{cli(agent, 'logs', 'bomb')}",
        )
        assert 0 < pids_in(bomb) <= MAX_PIDS

        (agent.manifests / "silver.yaml").unlink()
        wait_for(lambda: gone(silver), 60, message=lambda: f"{silver} left\n{agent.log_tail()}")
        agent.stop()
        (agent.manifests / "bomb.yaml").unlink()
        agent.start()
        wait_for(lambda: gone(bomb), 90, message=lambda: f"{bomb} left\n{agent.log_tail()}")
        assert not gone(gold)
    finally:
        agent.stop()
