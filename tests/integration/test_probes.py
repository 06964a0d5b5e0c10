"""Probes on a real containerd: restarts by liveness, Ready by readiness, startup gating, timeouts.

Each pod uses short periods (1 s) so that a test takes seconds, not minutes. Files inside a
container are changed through CRI ExecSync, the way an operator's ``crictl exec`` would.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from nodeagent.runtime.base import ContainerID, ExecResult
from nodeagent.server.render import render_status
from tests.harness import TestNode, wait_for
from tests.harness.agent import Agent, condition, container_status, is_ready

HTTPD = """
apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: web
      image: busybox
      imagePullPolicy: IfNotPresent
      command:
        - sh
        - -c
        - mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www
      ports:
        - {{name: http, containerPort: 8080}}
{probes}
"""

SHELL = """
apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: busybox
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c", {script!r}]
{probes}
"""


def indent(text: str) -> str:
    return "\n".join("      " + line for line in text.strip().splitlines())


def httpd(name: str, probes: str) -> str:
    return HTTPD.format(name=name, probes=indent(probes))


def shell(name: str, script: str, probes: str) -> str:
    return SHELL.format(name=name, script=script, probes=indent(probes))


def exec_in(agent: Agent, container_id: str, *command: str) -> ExecResult:
    async def go() -> ExecResult:
        runtime = agent.runtime.backend()
        try:
            return await runtime.exec_sync(ContainerID(container_id), command, 5)
        finally:
            await runtime.close()

    return asyncio.run(go())


def container_id(pod: dict[str, Any], name: str) -> str:
    return str(container_status(pod, name)["containerID"]).split("://", 1)[1]


def probe_entry(pod: dict[str, Any], container: str, kind: str) -> dict[str, Any]:
    for entry in pod.get("probes", []):
        if entry["container"] == container and entry["probe"] == kind:
            return dict(entry)
    raise KeyError((container, kind))


def ready(pod: dict[str, Any]) -> bool:
    return condition(pod, "Ready") == "True"


def log_events(agent: Agent, event: str) -> list[dict[str, Any]]:
    found = []
    for line in agent.log_path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == event:
            found.append(record)
    return found


def test_exec_liveness_failure_restarts_the_container(node: TestNode, agent: Agent) -> None:
    # Healthy for ~4 s after each start, then the probe's file disappears.
    script = "touch /tmp/healthy; sleep 4; rm /tmp/healthy; exec sleep 3600"
    probes = """
livenessProbe:
  exec: {command: ["cat", "/tmp/healthy"]}
  periodSeconds: 1
  failureThreshold: 2
  terminationGracePeriodSeconds: 1
"""
    started = time.monotonic()
    agent.write_manifest("live.yaml", shell("live", script, probes))
    pod = agent.wait_pod("live", is_ready, what="ready")
    first = container_id(pod, "main")
    pod = agent.wait_pod(
        "live",
        lambda p: (
            container_status(p, "main")["restartCount"] >= 1
            and "running" in container_status(p, "main")["state"]
        ),
        timeout=30,
        what="restarted by its liveness probe",
    )
    elapsed = time.monotonic() - started
    status = container_status(pod, "main")
    assert container_id(pod, "main") != first
    assert (
        status["lastState"]["terminated"]["containerID"] == f"{agent.runtime.id_scheme}://{first}"
    )
    assert elapsed > 4  # not before the probe could have failed twice
    # The reason is recorded: next to the fresh container's probe, and as a log event.
    entry = probe_entry(pod, "main", "liveness")
    assert entry["lastFailure"]["containerID"] == f"{agent.runtime.id_scheme}://{first}"
    assert entry["lastFailure"]["message"].startswith("Liveness probe failed: command exited")
    [event] = [e for e in log_events(agent, "container_unhealthy") if e["pod"] == "live"][:1]
    assert (event["namespace"], event["container"], event["probe"]) == (
        "default",
        "main",
        "liveness",
    )
    assert "Liveness probe failed" in event["message"]
    killing = [e for e in log_events(agent, "container_killing") if e["pod"] == "live"]
    assert killing and killing[0]["reason"].startswith("Liveness probe failed")


def test_http_readiness_follows_the_served_file(node: TestNode, agent: Agent) -> None:
    probes = """
readinessProbe:
  httpGet: {path: /index.html, port: http}
  periodSeconds: 1
  failureThreshold: 1
"""
    agent.write_manifest("web.yaml", httpd("web", probes))
    pod = agent.wait_pod("web", ready, timeout=30, what="Ready")
    assert container_status(pod, "web")["ready"] is True
    assert probe_entry(pod, "web", "readiness")["message"] == "HTTP 200"
    cid = container_id(pod, "web")

    assert exec_in(agent, cid, "rm", "/www/index.html").exit_code == 0
    removed = time.monotonic()
    pod = agent.wait_pod("web", lambda p: not ready(p), timeout=10, what="not Ready")
    print(f"Ready false {time.monotonic() - removed:.2f} s after the file was removed")
    assert time.monotonic() - removed < 4  # within a period or so, plus status polling
    assert condition(pod, "ContainersReady") == "False"
    assert pod["status"]["phase"] == "Running"
    entry = probe_entry(pod, "web", "readiness")
    assert entry["message"] == "HTTP probe failed with statuscode: 404"
    assert entry["lastResult"] == "Failure" and entry["consecutiveFailures"] >= 1
    table = render_status(agent.status(), datetime.now(UTC))
    assert "Readiness probe failed: HTTP probe failed with statuscode: 404" in table
    assert "PROBES:" in table

    assert exec_in(agent, cid, "sh", "-c", "echo back > /www/index.html").exit_code == 0
    pod = agent.wait_pod("web", ready, timeout=10, what="Ready again")
    assert container_status(pod, "web")["restartCount"] == 0  # readiness restarts nothing


def test_tcp_socket_probes(node: TestNode, agent: Agent) -> None:
    agent.write_manifest(
        "open.yaml",
        httpd("open", "readinessProbe:\n  tcpSocket: {port: 8080}\n  periodSeconds: 1"),
    )
    closed = "readinessProbe:\n  tcpSocket: {port: 9999}\n  periodSeconds: 1\n  failureThreshold: 1"
    agent.write_manifest("closed.yaml", httpd("closed", closed))
    agent.wait_pod("open", ready, timeout=30, what="Ready through a TCP connect")
    pod = agent.wait_pod(
        "closed",
        lambda p: probe_entry(p, "web", "readiness")["consecutiveFailures"] >= 2,
        timeout=30,
        what="TCP probe to a closed port failing",
    )
    assert not ready(pod) and pod["status"]["phase"] == "Running"
    assert "9999" in probe_entry(pod, "web", "readiness")["message"]


def test_startup_probe_holds_liveness_back(node: TestNode, agent: Agent) -> None:
    # Starts slowly (~5 s). A liveness probe running before that would kill it at once.
    script = "sleep 5; touch /tmp/up; exec sleep 3600"
    probes = """
startupProbe:
  exec: {command: ["cat", "/tmp/up"]}
  periodSeconds: 1
  failureThreshold: 30
livenessProbe:
  exec: {command: ["cat", "/tmp/up"]}
  periodSeconds: 1
  failureThreshold: 1
readinessProbe:
  exec: {command: ["cat", "/tmp/up"]}
  periodSeconds: 1
"""
    agent.write_manifest("slow.yaml", shell("slow", script, probes))
    pod = agent.wait_pod(
        "slow",
        lambda p: probe_entry(p, "main", "startup")["consecutiveFailures"] >= 2,
        timeout=30,
        what="startup probe failing while the app starts",
    )
    status = container_status(pod, "main")
    assert status["started"] is False and status["ready"] is False
    assert probe_entry(pod, "main", "liveness")["lastProbeTime"] is None  # held back
    pod = agent.wait_pod("slow", is_ready, timeout=30, what="started and ready")
    status = container_status(pod, "main")
    assert status["started"] is True and status["restartCount"] == 0
    assert probe_entry(pod, "main", "startup")["result"] == "Success"
    # Liveness and readiness are released together; either may report first.
    agent.wait_pod(
        "slow",
        lambda p: probe_entry(p, "main", "liveness")["lastResult"] == "Success",
        timeout=10,
        what="liveness probing once the startup probe passed",
    )


def test_probe_timeout_is_honored(node: TestNode, agent: Agent) -> None:
    probes = """
readinessProbe:
  exec: {command: ["sleep", "5"]}
  periodSeconds: 1
  timeoutSeconds: 1
  failureThreshold: 1
"""
    agent.write_manifest("slowprobe.yaml", shell("slowprobe", "exec sleep 3600", probes))
    agent.wait_pod(
        "slowprobe",
        lambda p: "running" in container_status(p, "main")["state"],
        timeout=30,
        what="running",
    )
    running = time.monotonic()
    agent.wait_pod(
        "slowprobe",
        lambda p: probe_entry(p, "main", "readiness")["consecutiveFailures"] >= 1,
        timeout=20,
        what="a timed-out probe",
    )
    first = time.monotonic() - running
    pod = agent.wait_pod(
        "slowprobe",
        lambda p: probe_entry(p, "main", "readiness")["consecutiveFailures"] >= 3,
        timeout=20,
        what="three timed-out probes",
    )
    elapsed = time.monotonic() - running
    print(f"first timed-out exec probe after {first:.2f} s, three after {elapsed:.2f} s")
    # A probe that ran its full 5 s would need 5 s for one failure and 15 s for three.
    assert first < 4
    assert elapsed < 7
    assert "timed out" in probe_entry(pod, "main", "readiness")["message"]
    assert not ready(pod)


@pytest.mark.runtime_independent
def test_bad_probe_is_a_validation_error_not_a_crash(node: TestNode, agent: Agent) -> None:
    bad = {
        "nohandler.yaml": "livenessProbe: {periodSeconds: 1}",
        "twohandlers.yaml": ('livenessProbe: {tcpSocket: {port: 80}, exec: {command: ["true"]}}'),
        "noport.yaml": "readinessProbe: {httpGet: {port: admin}}",
        "success.yaml": "livenessProbe: {tcpSocket: {port: 80}, successThreshold: 2}",
    }
    for filename, probes in bad.items():
        agent.write_manifest(filename, shell(filename.split(".")[0], "sleep 3600", probes))
    agent.write_manifest("fine.yaml", httpd("fine", "readinessProbe: {tcpSocket: {port: http}}"))

    def reported() -> dict[str, str]:
        found = {e["source"].rsplit("/", 1)[-1]: e["field"] for e in agent.status()["errors"]}
        return found if set(found) >= set(bad) else {}

    fields = wait_for(reported, 10, message="every bad probe reported")
    assert fields["nohandler.yaml"] == "spec.containers[0].livenessProbe"
    assert fields["twohandlers.yaml"] == "spec.containers[0].livenessProbe"
    assert fields["noport.yaml"] == "spec.containers[0].readinessProbe.httpGet.port"
    assert fields["success.yaml"] == "spec.containers[0].livenessProbe.successThreshold"
    agent.wait_pod("fine", ready, timeout=30, what="the good pod Ready")
    assert [p["metadata"]["name"] for p in agent.status()["pods"]] == ["fine"]
