"""Pod startup: the agent against the raw runtime, measured in the same run, on one node.

(a) baseline: the same work issued straight to CRI (RunPodSandbox, CreateContainer,
    StartContainer) with no agent, for N pods at once and for one pod on an idle node;
(b) agent: N manifests written at once into the agent's directory, each timed from its file
    appearing to the agent's status showing all its containers started.

Prints one JSON line: p50/p90/p99/max for each, the agent/baseline ratios and throughput.
Run as root: ``python bench/pod_startup.py [--pods 30]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nodeagent import localimages  # noqa: E402
from nodeagent.kubelet import specs  # noqa: E402
from nodeagent.model.validate import parse_pod  # noqa: E402
from nodeagent.runtime.cri import CRIRuntime  # noqa: E402
from tests.harness import TestNode, wait_for  # noqa: E402
from tests.harness.agent import Agent  # noqa: E402

POD = """apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
    - name: main
      image: busybox
      imagePullPolicy: IfNotPresent
      command: ["sleep", "3600"]
"""


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": round(ordered[-1], 3)}


async def raw_pods(node: TestNode, names: list[str]) -> list[float]:
    """Seconds per pod for sandbox + container create + start, all pods concurrently."""
    import yaml

    runtime = CRIRuntime(node.endpoint)

    async def one(name: str) -> float:
        pod = parse_pod(yaml.safe_load(POD.format(name=name)), source="bench", node_name="n")
        started = time.monotonic()
        sandbox = specs.sandbox_config(pod, attempt=0, pod_log_dir=str(node.pod_log_dir))
        sandbox_id = await runtime.run_sandbox(sandbox)
        status = await runtime.sandbox_status(sandbox_id)
        config = specs.container_config(
            pod,
            pod.spec.containers[0],
            attempt=0,
            facts=specs.envvars.PodFacts("n", status.ip),
            volume_paths={},
        )
        container_id = await runtime.create_container(sandbox_id, config, sandbox)
        await runtime.start_container(container_id)
        return time.monotonic() - started

    try:
        return list(await asyncio.gather(*(one(n) for n in names)))
    finally:
        await runtime.close()


def agent_pods(agent: Agent, names: list[str]) -> list[float]:
    """Seconds from each manifest appearing to all its containers started in status."""
    written: dict[str, float] = {}
    for name in names:
        agent.write_manifest(f"{name}.yaml", POD.format(name=name))
        written[name] = time.monotonic()
    done: dict[str, float] = {}

    def all_started() -> bool:
        now = time.monotonic()
        for pod in agent.status()["pods"]:
            name = pod["metadata"]["name"]
            statuses = pod["status"].get("containerStatuses", [])
            if name in written and name not in done and statuses and all(
                s.get("started") for s in statuses
            ):
                done[name] = now - written[name]
        return len(done) == len(names)

    wait_for(all_started, 120, interval=0.02, message="all pods started")
    return [done[n] for n in names]


def clear(agent: Agent, node: TestNode) -> None:
    for path in agent.manifests.iterdir():
        path.unlink()
    wait_for(lambda: not agent.status()["pods"], 120, message="pods removed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pods", type=int, default=30)
    args = parser.parse_args()
    archives = localimages.build_all(localimages.BuildOptions(build_dir=REPO / "build" / "images"))
    root = Path(tempfile.mkdtemp(prefix="na-bench-"))
    node = TestNode.start(root, images=archives)
    try:
        burst = [f"raw-{i}" for i in range(args.pods)]
        asyncio.run(raw_pods(node, ["raw-warmup"]))
        node.reset()
        raw_one = asyncio.run(raw_pods(node, ["raw-one"]))[0]
        node.reset()
        started = time.monotonic()
        raw_burst = asyncio.run(raw_pods(node, burst))
        raw_wall = time.monotonic() - started
        node.reset()

        agent = Agent(node).start()
        try:
            agent_one = agent_pods(agent, ["agent-one"])[0]
            clear(agent, node)
            names = [f"agent-{i}" for i in range(args.pods)]
            started = time.monotonic()
            agent_burst = agent_pods(agent, names)
            agent_wall = time.monotonic() - started
            clear(agent, node)
        finally:
            agent.stop()
    finally:
        node.close()
        shutil.rmtree(root, ignore_errors=True)
    raw = percentiles(raw_burst)
    ours = percentiles(agent_burst)
    print(
        json.dumps(
            {
                "bench": "pod_startup",
                "runtime": "cri",
                "pods": args.pods,
                "baseline_burst_s": raw,
                "agent_burst_s": ours,
                "burst_p99_ratio": round(ours["p99"] / raw["p99"], 2),
                "baseline_pods_per_s": round(args.pods / raw_wall, 2),
                "agent_pods_per_s": round(args.pods / agent_wall, 2),
                "baseline_one_pod_s": round(raw_one, 3),
                "agent_one_pod_s": round(agent_one, 3),
                "one_pod_overhead_s": round(agent_one - raw_one, 3),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
