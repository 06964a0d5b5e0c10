"""Steady state: the agent's footprint with a full node of idle pods, then with 1000 services.

``--pods`` (110, the kubelet's max pods) pods each run ``busybox sleep``, no probes. Once every
pod is Running and the start-up work has settled, the agent process is measured for
``--seconds`` (60): CPU time (user + system, as % of one core) and RSS, sampled each second
with psutil. Then ``--services`` (1000) Services are added to the manifest directory, each
selecting one of the pods (so each has one ready endpoint); once the proxy has programmed them
all, the agent is measured again. Targets (issue 9): RSS <= 100 MB, CPU <= 3 % of one core.

Nothing reads the status socket while measuring: the figures are the agent's own upkeep (the
shared relist, manifest rescans, the proxy's checks). How long one status read takes is
reported beside them.

Prints one JSON line. Run as root: ``python bench/steady_state.py [--pods 110] [--seconds 60]``;
``--profile DIR`` records a py-spy profile of the agent during each measurement.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.benchlib import MIB, load_average, measure_agent, profiled  # noqa: E402
from nodeagent import localimages  # noqa: E402
from tests.harness import TestNode, wait_for  # noqa: E402
from tests.harness.agent import Agent  # noqa: E402

RSS_TARGET_MB = 100
CPU_TARGET_PERCENT = 3.0
SERVICES_PER_FILE = 100

POD = """apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: {name}}}}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
    - name: main
      image: busybox
      imagePullPolicy: IfNotPresent
      command: ["sleep", "86400"]
      ports: [{{containerPort: 8080}}]
"""

SERVICE = """---
apiVersion: v1
kind: Service
metadata: {{name: svc-{i}}}
spec:
  selector: {{app: {app}}}
  ports: [{{port: 80, targetPort: 8080}}]
"""


def running(agent: Agent, count: int) -> bool:
    started = 0
    for pod in agent.status()["pods"]:
        statuses = pod["status"].get("containerStatuses") or []
        started += bool(statuses) and all(s.get("started") for s in statuses)
    return started == count


def programmed(agent: Agent, count: int) -> bool:
    snapshot = agent.status()
    with_endpoints = sum(bool(s["endpoints"]) for s in snapshot["services"])
    proxy = snapshot["proxy"]
    return with_endpoints == count and proxy["lastSync"] is not None and not proxy["lastError"]


def status_ms(agent: Agent, reads: int = 5) -> float:
    """The median time of one status read, in ms."""
    times = []
    for _ in range(reads):
        started = time.monotonic()
        agent.status()
        times.append(time.monotonic() - started)
    return round(sorted(times)[len(times) // 2] * 1000, 1)


def write_services(agent: Agent, services: int, pods: list[str]) -> None:
    for first in range(0, services, SERVICES_PER_FILE):
        docs = [
            SERVICE.format(i=i, app=pods[i % len(pods)])
            for i in range(first, min(first + SERVICES_PER_FILE, services))
        ]
        agent.write_manifest(f"services-{first // SERVICES_PER_FILE:03d}.yaml", "".join(docs))


def verdict(figures: dict[str, Any]) -> dict[str, Any]:
    rss_mb = figures["rss_mib_max"] * MIB / 1e6
    figures["meets_rss_target"] = rss_mb <= RSS_TARGET_MB
    figures["meets_cpu_target"] = figures["cpu_percent_of_one_core"] <= CPU_TARGET_PERCENT
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pods", type=int, default=110)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=10.0, help="seconds before measuring")
    parser.add_argument("--profile", type=Path, help="directory for py-spy profiles")
    args = parser.parse_args()

    def profile(phase: str) -> Path | None:
        return None if args.profile is None else args.profile.resolve() / f"steady-{phase}.txt"

    archives = localimages.build_all(localimages.BuildOptions(build_dir=REPO / "build" / "images"))
    root = Path(tempfile.mkdtemp(prefix="na-bench-"))
    result: dict[str, Any] = {
        "bench": "steady_state",
        "pods": args.pods,
        "services": args.services,
        "load_avg_1m_at_start": load_average(),
        "target_rss_mb": RSS_TARGET_MB,
        "target_cpu_percent": CPU_TARGET_PERCENT,
    }
    node = TestNode.start(root, images=archives)
    try:
        agent = Agent(node)
        for old in agent.manifests.iterdir():
            old.unlink()
        agent.start()
        try:
            names = [f"p{i:03d}" for i in range(args.pods)]
            started = time.monotonic()
            for name in names:
                agent.write_manifest(f"{name}.yaml", POD.format(name=name))
            wait_for(lambda: running(agent, args.pods), 600, 1.0, message="all pods running")
            result["all_running_after_s"] = round(time.monotonic() - started, 1)
            time.sleep(args.settle)  # the burst's tail (status, first relists) is not upkeep
            with profiled(agent, profile("pods")):
                result["pods_only"] = verdict(measure_agent(agent, args.seconds))
            result["pods_only"]["status_ms"] = status_ms(agent)
            if args.services:
                started = time.monotonic()
                write_services(agent, args.services, names)
                wait_for(
                    lambda: programmed(agent, args.services), 300, 1.0, message="services synced"
                )
                result["services_programmed_after_s"] = round(time.monotonic() - started, 1)
                time.sleep(args.settle)
                with profiled(agent, profile("services")):
                    result["with_services"] = verdict(measure_agent(agent, args.seconds))
                result["with_services"]["status_ms"] = status_ms(agent)
            for path in agent.manifests.iterdir():
                path.unlink()
            wait_for(lambda: not agent.status()["pods"], 600, 1.0, message="pods removed")
        finally:
            agent.stop()
    finally:
        node.close()
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
