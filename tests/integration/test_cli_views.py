"""The operator's view of a real running agent: status views, describe, events, /metrics.

The CLI runs as a user runs it (a subprocess reading the agent's socket). The agent listens
for metrics on its default 127.0.0.1:10255, inside the test node's network namespace, so the
scrape runs in that namespace too. One runtime (containerd) is enough here: the views read
the same snapshot under Docker, and the runtime metrics wrap either backend the same way.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import wait_for
from tests.harness.agent import Agent, cli, container_status, is_ready, sample, scrape

PODS = """
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: web
      image: busybox
      imagePullPolicy: IfNotPresent
      command: [sh, -c, "touch /tmp/ready && exec sleep 3600"]
      readinessProbe:
        exec: {command: [cat, /tmp/ready]}
        periodSeconds: 1
---
apiVersion: v1
kind: Pod
metadata:
  name: crash
  namespace: apps
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: busybox
      imagePullPolicy: IfNotPresent
      command: [sh, -c, "echo dying; exit 3"]
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
    - port: 80
"""


@pytest.fixture(scope="module")
def runtime() -> str:
    return "cri"


@pytest.fixture
def running(agent: Agent) -> Agent:
    agent.write_manifest("pods.yaml", PODS)
    agent.wait_pod("web", is_ready, timeout=60, what="ready")

    def crash_looping() -> bool:
        pod = next(p for p in agent.status()["pods"] if p["metadata"]["name"] == "crash")
        main = container_status(pod, "main")
        return main["restartCount"] >= 1 and "waiting" in main["state"]

    wait_for(crash_looping, 60, interval=0.2, message=agent.log_tail, ignore=(StopIteration,))

    def back_off_told() -> bool:  # the event feed looks at the pods twice a second
        events = agent.status()["events"]
        return any(e["reason"] == "BackOff" for e in events)

    wait_for(back_off_told, 30, interval=0.2, message=agent.log_tail)
    return agent


def test_status_views(running: Agent) -> None:
    table = cli(running, "status").stdout
    assert table.startswith("NODE: node-a   RUNTIME: containerd")
    assert "\x1b[" not in table  # not a terminal: no colors
    pod_table = table.split("\n\n")[1]  # after the node line; before probes and services
    lines = {
        line.split()[1]: line
        for line in pod_table.splitlines()
        if line.startswith(("default", "apps"))
    }
    assert "Running   1/1" in lines["web"]
    assert "CrashLoopBackOff (retry in" in lines["crash"]

    pods = cli(running, "status", "pods", "-n", "apps").stdout
    assert "crash" in pods and " web " not in pods and "NODE:" not in pods

    node = cli(running, "status", "node").stdout
    assert "API:          standalone (no control plane)" in node
    assert "RUNTIME:      containerd 1." in node
    assert "Ready" in node and "cpu=" in node and "USAGE:        cpu " in node and "pids " in node

    services = cli(running, "status", "services").stdout
    assert "SERVICES:" in services and "PROXY: iptables" in services
    assert "80/TCP" in services

    doc = json.loads(cli(running, "status", "--json").stdout)
    assert {"agent", "node", "pods", "services", "proxy", "errors", "events"} <= set(doc)
    assert doc["agent"]["mode"] == "standalone"
    assert doc["node"]["usage"]["memoryTotalBytes"] > 0
    crash = next(p for p in doc["pods"] if p["metadata"]["name"] == "crash")
    assert crash["spec"]["restartPolicy"] == "Always"
    reasons = {(e["involvedObject"]["name"], e["reason"]) for e in doc["events"]}
    assert {("web", "Created"), ("web", "Started"), ("crash", "BackOff")} <= reasons

    only = json.loads(cli(running, "status", "pods", "--json", "-n", "apps").stdout)
    assert set(only) == {"pods", "events"}
    assert {p["metadata"]["name"] for p in only["pods"]} == {"crash"}


def test_describe_pod(running: Agent) -> None:
    text = cli(running, "describe", "pod", "crash", "-n", "apps").stdout
    assert text.startswith("Name:           crash\nNamespace:      apps\n")
    assert "    Command:          sh -c echo dying; exit 3" in text
    assert "    Last State:       Terminated" in text
    assert "      Exit Code:      3" in text
    events = text.split("Events:", 1)[1]
    assert "Started container main" in events and "BackOff" in events

    web = cli(running, "describe", "pod", "web").stdout
    assert "    Readiness:        exec [cat /tmp/ready]" in web
    assert "readiness: Success" in web

    missing = cli(running, "describe", "pod", "crash", check=False)  # wrong namespace
    assert missing.returncode == 1
    assert missing.stderr == (
        'nodeagent: pod "crash" not found in namespace "default" on this node '
        "(there is one in namespace apps; use -n)\n"
    )


def test_metrics_after_pods_start(running: Agent) -> None:
    node = running.node
    assert scrape(node, "/healthz") == "ok\n"

    def scraped() -> str | None:
        text = scrape(node, "/metrics")
        # The proxy syncs once the pods settled; wait for it rather than for a fixed time.
        full = sample(text, "nodeagent_proxy_sync_duration_seconds_count", sync="full")
        return text if full >= 1 else None

    text = wait_for(scraped, 60, interval=0.5, message=running.log_tail)
    assert sample(text, "nodeagent_pod_start_duration_seconds_count") >= 1
    assert sample(text, "nodeagent_pod_start_duration_seconds_sum") > 0
    bucket = 'nodeagent_pod_start_duration_seconds_bucket{le="+Inf"}'
    assert any(line.startswith(bucket) for line in text.splitlines())
    ops = "nodeagent_runtime_operations_duration_seconds_count"
    assert sample(text, ops, operation="run_sandbox") >= 2
    assert sample(text, ops, operation="create_container") >= 2
    assert sample(text, ops, operation="list_containers") >= 1
    worker = "nodeagent_pod_worker_duration_seconds_count"
    assert sample(text, worker, operation="sync") >= 2
    probes = "nodeagent_probe_results_total"
    assert sample(text, probes, probe_type="readiness", result="successful") >= 1
    assert sample(text, "nodeagent_proxy_rules_programmed") > 0
    assert "nodeagent_proxy_restore_failures_total 0.0" in text
    assert "# TYPE nodeagent_heartbeat_age_seconds gauge" in text  # no samples: standalone


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    root = str(Path(__file__).resolve().parents[2])
    for command in (["status"], ["describe", "pod", "x"], ["logs", "x"]):
        argv = [sys.executable, "-m", "nodeagent", *command]
        result = subprocess.run(
            [*argv, "--status-socket", str(tmp_path / "nothing.sock")],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=root,
        )
        assert result.returncode == 1
        assert result.stdout == ""
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert "is `nodeagent run` running?" in result.stderr
