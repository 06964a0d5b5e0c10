"""Probe load: the agent's CPU and memory with 110 pods x 2 HTTP probes at periodSeconds 1.

Each pod runs busybox httpd with a readiness and a liveness httpGet probe, both every second:
220 HTTP probes a second in all. Once every pod is Ready, the agent process is measured for
``--seconds`` (60 by default): CPU time used (user + system, as % of one core), RSS, the
probe rate actually achieved (from the consecutive-success counters in the status), probe
failures and restarts (both should be 0), and how long the status endpoint takes to answer
(it shares the event loop with the probes, so a starved loop shows there first).

``--baseline`` first measures the same pods without probes, so the probes' own share can be
told apart from the relister's and the status endpoint's.

Prints one JSON line. Run as root: ``python bench/probes.py [--pods 110] [--seconds 60]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.benchlib import measure_agent  # noqa: E402
from nodeagent import localimages  # noqa: E402
from tests.harness import TestNode, wait_for  # noqa: E402
from tests.harness.agent import Agent  # noqa: E402

POD = """apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
    - name: web
      image: busybox
      imagePullPolicy: IfNotPresent
      command:
        - sh
        - -c
        - mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www
      ports: [{{name: http, containerPort: 8080}}]
{probes}"""

PROBES = """      readinessProbe:
        httpGet: {path: /, port: http}
        periodSeconds: 1
      livenessProbe:
        httpGet: {path: /index.html, port: 8080}
        periodSeconds: 1
"""


def write_pods(agent: Agent, count: int, *, probes: bool) -> list[str]:
    names = [f"p{i:03d}" for i in range(count)]
    for name in names:
        agent.write_manifest(f"{name}.yaml", POD.format(name=name, probes=PROBES if probes else ""))
    return names


def all_ready(agent: Agent, names: list[str]) -> bool:
    wanted = set(names)
    ready = 0
    for pod in agent.status()["pods"]:
        if pod["metadata"]["name"] not in wanted:
            continue
        conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
        ready += conditions.get("Ready") == "True"
    return ready == len(names)


def probe_totals(snapshot: dict[str, Any]) -> tuple[int, int, int]:
    """(sum of consecutive successes, of consecutive failures, of restarts) over all pods."""
    successes = failures = restarts = 0
    for pod in snapshot["pods"]:
        for probe in pod.get("probes", []):
            successes += probe.get("consecutiveSuccesses", 0)
            failures += probe.get("consecutiveFailures", 0)
        for status in pod["status"].get("containerStatuses", []):
            restarts += status.get("restartCount", 0)
    return successes, failures, restarts


def measure(agent: Agent, seconds: float) -> dict[str, Any]:
    """CPU and RSS of the agent process over ``seconds`` (benchlib's sampler), the probe rate,
    and what a status read costs meanwhile."""
    status_s: list[float] = []

    def timed_status() -> dict[str, Any]:
        started = time.monotonic()
        snapshot = agent.status()
        status_s.append(time.monotonic() - started)
        return snapshot

    first = timed_status()
    wall0 = time.monotonic()
    figures = measure_agent(agent, seconds, every=timed_status)
    wall = time.monotonic() - wall0
    last = timed_status()
    ok0, _, restarts0 = probe_totals(first)
    ok1, failing, restarts1 = probe_totals(last)
    return {
        **figures,
        "probes_per_s": round((ok1 - ok0) / wall, 1),
        "failing_probes_at_end": failing,
        "restarts_during": restarts1 - restarts0,
        "status_ms_p50": round(statistics.median(status_s) * 1000, 1),
        "status_ms_max": round(max(status_s) * 1000, 1),
    }


def run_phase(node: TestNode, pods: int, seconds: float, *, probes: bool) -> dict[str, Any]:
    agent = Agent(node)
    for old in agent.manifests.iterdir():
        old.unlink()
    agent.start()
    try:
        started = time.monotonic()
        names = write_pods(agent, pods, probes=probes)
        wait_for(lambda: all_ready(agent, names), 600, interval=1.0, message="all pods Ready")
        ready_s = time.monotonic() - started
        time.sleep(5)  # let the start-up work (pod workers, first relists) settle
        result = measure(agent, seconds)
        result["all_ready_after_s"] = round(ready_s, 1)
        return result
    finally:
        agent.stop()
        node.reset()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pods", type=int, default=110)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--baseline", action="store_true", help="also measure without probes")
    args = parser.parse_args()
    archives = localimages.build_all(localimages.BuildOptions(build_dir=REPO / "build" / "images"))
    root = Path(tempfile.mkdtemp(prefix="na-bench-"))
    node = TestNode.start(root, images=archives)
    result: dict[str, Any] = {
        "bench": "probes",
        "pods": args.pods,
        "probes_per_pod": 2,
        "period_s": 1,
        "expected_probes_per_s": 2 * args.pods,
        "cores": psutil.cpu_count(),
    }
    try:
        if args.baseline:
            result["without_probes"] = run_phase(node, args.pods, args.seconds, probes=False)
        result["with_probes"] = run_phase(node, args.pods, args.seconds, probes=True)
    finally:
        node.close()
        shutil.rmtree(root, ignore_errors=True)
    result["target_cpu_percent"] = 15
    result["within_target"] = result["with_probes"]["cpu_percent_of_one_core"] < 15
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
