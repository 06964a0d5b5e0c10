"""Crash safety and churn on both real runtimes: nothing leaks, nothing runs twice.

The agent is SIGKILLed at random points while pods are being created and deleted, then
restarted; afterwards the runtime, the IPAM store and the node's interfaces must hold exactly
the desired pods, and containers that were already running must not have been restarted.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from nodeagent.runtime.base import (
    ContainerInfo,
    ContainerState,
    RuntimeFailure,
    RuntimeUnavailable,
    SandboxID,
    SandboxInfo,
)
from nodeagent.runtime.cri import CRIRuntime
from tests.harness import TestNode, WaitTimeout, wait_for
from tests.harness.agent import Agent, RuntimeTarget, container_status, is_ready
from tests.harness.manifests import static_pod_yaml


def runtime_state(target: RuntimeTarget) -> tuple[list[SandboxInfo], list[ContainerInfo]]:
    async def go() -> tuple[list[SandboxInfo], list[ContainerInfo]]:
        runtime = target.backend()
        try:
            return list(await runtime.list_sandboxes()), list(await runtime.list_containers())
        finally:
            await runtime.close()

    return asyncio.run(go())


def ipam_ips(node: TestNode) -> set[str]:
    directory = node.state_dir / "ipam" / "nodeagent"
    if not directory.exists():
        return set()
    return {p.name for p in directory.iterdir() if p.name[0].isdigit()}


def veths(node: TestNode) -> int:
    links = node.run(["ip", "-o", "link", "show", "type", "veth"]).stdout
    return len([line for line in links.splitlines() if line.strip()])


def runtime_errors(target: RuntimeTarget, lines: int = 40) -> str:
    """What containerd (or dockerd) complained about: where a leftover's story is told."""
    log = target.docker.log_path if target.docker is not None else target.node.log_path
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "(no containerd log)"
    found = [line for line in text.splitlines() if "level=error" in line or "level=warn" in line]
    return "\n".join(found[-lines:])


@dataclass
class Residue:
    """The one leftover this test tolerates, recognised by containerd's own words.

    A SIGKILL that lands inside StartContainer cancels the call in containerd 1.6, with two
    outcomes seen here:
    - a task containerd still holds for a container CRI reports exited (a start error):
      RemoveContainer fails FAILED_PRECONDITION ("cannot delete running task") and CRI's
      StopContainer does nothing for an exited container (1 run in 4 here before the fix).
      Fixed, and asserted: the CRI client kills and deletes the task through containerd's
      task service and retries the removal (CRIRuntime.remove_container, runtime/cri/tasks.py).
    - rarely (1 run in 18 here), a start that never finishes: the container stays "starting"
      (its runc init hangs; upstream containerd issue #11674), and CRI refuses to remove it
      ("container is in starting state, can't be removed") until containerd restarts. Nothing
      a CRI client can do. Tolerated: that container, the sandbox that holds it (when it holds
      no running container) with its IP and veth, and the agent's record of its pod when the
      pod is no longer desired. Every other promise is still asserted.
    """

    containers: dict[str, str] = field(default_factory=dict)  # container id -> its name
    sandboxes: set[str] = field(default_factory=set)
    uids: set[str] = field(default_factory=set)  # pods of the sandboxes above
    ips: set[str] = field(default_factory=set)  # the sandboxes' IPs, where CNI still holds them


@dataclass(frozen=True)
class Check:
    pods: dict[str, Any]
    problems: list[str]


def check(target: RuntimeTarget, agent: Agent, desired: set[str], residue: Residue) -> Check:
    """Whether the node holds exactly the desired pods, each running once: what is wrong."""
    node = target.node
    problems: list[str] = []
    pods: dict[str, Any] = {}
    for pod in agent.status()["pods"]:
        name = pod["metadata"]["name"]
        if name in desired or pod["metadata"].get("uid") not in residue.uids:
            pods[name] = pod
    if set(pods) != desired:
        problems.append(f"agent reports {sorted(pods)}")
    not_ready = sorted(name for name, pod in pods.items() if not is_ready(pod))
    if not_ready:
        problems.append(f"not ready: {not_ready}")
    all_sandboxes, all_containers = runtime_state(target)
    sandboxes = [s for s in all_sandboxes if s.id not in residue.sandboxes]
    containers = [c for c in all_containers if c.id not in residue.containers]
    if sorted(s.name for s in sandboxes) != sorted(desired):
        problems.append("not one sandbox per desired pod")
    running = sorted(c.uid for c in containers if c.state.value == "running")
    if running != sorted({c.uid for c in containers}) or len(running) != len(desired):
        problems.append("not one running container per pod")
    dead = [c.uid for c in containers if c.state.value != "running"]
    if len(dead) != len(set(dead)):  # a pod keeps at most its newest dead one, as the kubelet
        problems.append("a pod keeps more than one dead container")
    ips = {p["status"].get("podIP") for p in pods.values()}
    held = ipam_ips(node)
    if held - residue.ips != ips:
        problems.append(f"IPAM holds {sorted(held)} for pod IPs {sorted(map(str, ips))}")
    if veths(node) != len(desired) + len(held & residue.ips):
        problems.append(f"{veths(node)} veths for {len(desired)} pods")
    return Check(pods, problems)


def starting_containers(target: RuntimeTarget) -> dict[str, str]:
    """Containers CRI refuses to remove because containerd keeps them "starting"."""

    async def go() -> dict[str, str]:
        runtime = CRIRuntime(target.endpoint)
        found: dict[str, str] = {}
        try:
            for c in await runtime.list_containers():
                # containerd reports a container whose start never finished as created.
                if c.state is not ContainerState.CREATED:
                    continue
                try:
                    await runtime.remove_container(c.id)
                except RuntimeFailure as exc:
                    if "in starting state" in str(exc):
                        found[c.id] = f"{c.name} of pod {c.uid}"
        finally:
            await runtime.close()
        return found

    # Only containerd's CRI is known to leave one (dockerd's containerd has not, here).
    return asyncio.run(go()) if target.kind == "cri" else {}


def note_residue(target: RuntimeTarget, residue: Residue, stuck: dict[str, str]) -> None:
    residue.containers.update(stuck)
    sandboxes, containers = runtime_state(target)
    holders = {c.sandbox_id for c in containers if c.id in stuck}
    live = {c.sandbox_id for c in containers if c.state.value == "running"}
    for sandbox in sandboxes:
        if sandbox.id in holders and sandbox.id not in live:
            residue.sandboxes.add(sandbox.id)
            residue.uids.add(sandbox.uid)
            residue.ips.add(sandbox_ip(target, sandbox.id))


def sandbox_ip(target: RuntimeTarget, sandbox_id: SandboxID) -> str:
    async def go() -> str:
        runtime = target.backend()
        try:
            return (await runtime.sandbox_status(sandbox_id)).ip
        finally:
            await runtime.close()

    return asyncio.run(go())


def assert_exactly(
    target: RuntimeTarget, agent: Agent, desired: set[str], residue: Residue | None = None
) -> dict[str, Any]:
    """Wait until the node holds exactly the desired pods, each running once; return them.

    With a residue, a container containerd keeps "starting" is added to it, and tolerated.
    """
    known = residue if residue is not None else Residue()
    last: list[Check] = []

    def converged() -> tuple[dict[str, Any]] | None:
        last[:] = [check(target, agent, desired, known)]
        return None if last[0].problems else (last[0].pods,)  # truthy even with no pods

    def describe() -> str:
        node = target.node
        sandboxes, containers = runtime_state(target)
        return (
            f"{last[0].problems if last else []}; desired {sorted(desired)}; "
            f"sandboxes {sorted((s.name, s.state.value) for s in sandboxes)}; "
            f"containers {sorted((c.name, c.state.value) for c in containers)}; "
            f"ipam {sorted(ipam_ips(node))}; veths {veths(node)}; "
            f"tolerated {sorted(known.containers.values())}\n{agent.log_tail()}"
            f"\nthe runtime's errors:\n{runtime_errors(target)}"
        )

    try:
        # A containerd slow to answer on a loaded machine is "not yet", not a failure.
        unavailable = (RuntimeUnavailable,)
        return wait_for(converged, 90, interval=0.25, message=describe, ignore=unavailable)[0]
    except WaitTimeout:
        if residue is None:
            raise
        failure = describe()  # before the probe below removes any leftover it can
        stuck = starting_containers(target)
        if not stuck:
            raise
        note_residue(target, residue, stuck)
        result = check(target, agent, desired, residue)
        assert not result.problems, f"besides {sorted(stuck.values())}: {failure}"
        return result.pods


def fresh_agent(target: RuntimeTarget) -> Agent:
    agent = Agent(target.node, runtime=target)
    for old in agent.manifests.iterdir():  # the node's directory outlives a failed test
        old.unlink()
    return agent.start()


def test_kill9_at_random_points_leaks_nothing_and_runs_each_pod_once(
    make_node: Callable[[], TestNode], runtime_target: RuntimeTarget
) -> None:
    # On containerd a node of its own, so that a residue (see Residue) cannot spill into
    # other tests; dockerd runs on the module's node.
    docker = runtime_target.kind == "docker"
    target = runtime_target if docker else RuntimeTarget.cri(make_node())
    agent = fresh_agent(target)
    rng = random.Random(20261125)
    residue = Residue()
    desired: set[str] = set()
    counter = 0
    try:
        for _ in range(6):
            for _ in range(4):
                name = f"p{counter}"
                counter += 1
                agent.write_manifest(f"{name}.yaml", static_pod_yaml(name))
                desired.add(name)
            for name in rng.sample(sorted(desired), k=min(2, len(desired))):
                (agent.manifests / f"{name}.yaml").unlink()
                desired.discard(name)
            time.sleep(rng.uniform(0.0, 0.6))  # a random point in the agent's work
            agent.kill9()
            agent.start()
        before = assert_exactly(target, agent, desired, residue)
        ids = {n: container_status(p, "main")["containerID"] for n, p in before.items()}
        agent.kill9()
        agent.start()
        after = assert_exactly(target, agent, desired, residue)
        for name, pod in after.items():
            status = container_status(pod, "main")
            assert status["containerID"] == ids[name], f"{name} was restarted"
            assert status["restartCount"] == container_status(before[name], "main")["restartCount"]
        for path in agent.manifests.iterdir():
            path.unlink()
        assert_exactly(target, agent, set(), residue)
    finally:
        agent.stop()
    if residue.containers:
        pytest.xfail(
            f"every promise held; containerd 1.6 keeps {sorted(residue.containers.values())} "
            "'starting' (containerd issue 11674)"
        )


def test_churn_in_waves_leaves_nothing_behind(runtime_target: RuntimeTarget) -> None:
    target = runtime_target
    agent = fresh_agent(target)
    try:
        for wave in range(5):
            names = {f"w{wave}-{i}" for i in range(40)}
            for name in sorted(names):
                agent.write_manifest(f"{name}.yaml", static_pod_yaml(name))
            assert_exactly(target, agent, names)
            for path in agent.manifests.iterdir():
                path.unlink()
            assert_exactly(target, agent, set())
        pod_dirs = target.node.state_dir / "pods"
        assert not pod_dirs.exists() or not any(pod_dirs.iterdir())  # volumes cleaned up
    finally:
        agent.stop()
