"""The standalone agent on each runtime: pods from a manifest directory, end to end.

Every test runs twice, on containerd (CRI) and on Docker Engine (``runtime_target``): a
behaviour difference between the two is a bug. A test marked ``runtime_independent`` (manifest
validation, where no runtime plays a part) runs on containerd only.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from nodeagent.runtime.base import SandboxInfo
from tests.harness import TestNode, wait_for
from tests.harness.agent import (
    Agent,
    condition,
    container_status,
    is_ready,
    waiting_reason,
)
from tests.harness.manifests import SLEEP, static_pod_yaml

REPO = Path(__file__).resolve().parents[2]


def sleeper(name: str, script: str = SLEEP, policy: str = "Always") -> str:
    return static_pod_yaml(name, script=script, policy=policy, grace=2)


def sandboxes(agent: Agent) -> list[SandboxInfo]:
    """The sandboxes the agent's runtime holds, read by our own client of that runtime."""
    return agent.runtime.sandboxes()


def http_get(node: TestNode, url: str) -> str:
    """GET from inside the node's network namespace ("" on any failure)."""
    code = f"import urllib.request as u; print(u.urlopen({url!r}, timeout=2).read().decode())"
    result = node.run([sys.executable, "-c", code], check=False)
    return result.stdout if result.returncode == 0 else ""


def test_init_and_two_containers_run_ready_and_serve(node: TestNode, agent: Agent) -> None:
    started = time.monotonic()
    shutil.copy(REPO / "examples" / "web.yaml", agent.manifests / "web.yaml")
    pod = agent.wait_pod("web", is_ready, timeout=30, what="Running and Ready")
    elapsed = time.monotonic() - started
    print(f"web pod Running and Ready {elapsed:.2f} s after its manifest appeared")

    init = container_status(pod, "write-page")
    assert init["state"]["terminated"]["reason"] == "Completed"
    for name in ("web", "sidecar"):
        status = container_status(pod, name)
        assert "running" in status["state"] and status["ready"] and status["restartCount"] == 0
        assert status["containerID"].startswith(f"{agent.runtime.id_scheme}://")
    for kind in ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready"):
        assert condition(pod, kind) == "True", kind
    ip = pod["status"]["podIP"]
    assert ip.startswith(node.pod_cidr.rsplit(".", 2)[0])
    # The init container wrote the page with values from the downward API into an emptyDir.
    page = wait_for(lambda: http_get(node, f"http://{ip}:8080/"), 10, message="page served")
    assert page.strip() == "hello from web on node-a"
    [sandbox] = sandboxes(agent)
    assert sandbox.labels["io.kubernetes.pod.name"] == "web"
    assert sandbox.labels["io.kubernetes.pod.namespace"] == "default"


def test_killed_container_restarts_and_counts(node: TestNode, agent: Agent) -> None:
    agent.write_manifest("s.yaml", sleeper("crashy"))
    pod = agent.wait_pod("crashy", is_ready, what="ready")
    first_id = container_status(pod, "main")["containerID"].split("://")[1]
    agent.runtime.kill(first_id)

    def restarted(p: dict[str, Any]) -> bool:
        status = container_status(p, "main")
        return status["restartCount"] == 1 and "running" in status["state"]

    pod = agent.wait_pod("crashy", restarted, what="restartCount 1 and running again")
    status = container_status(pod, "main")
    assert status["containerID"].split("://")[1] != first_id
    assert status["lastState"]["terminated"]["exitCode"] == 137


def test_removed_manifest_removes_sandbox_and_frees_ip(node: TestNode, agent: Agent) -> None:
    path = agent.write_manifest("gone.yaml", sleeper("gone"))
    pod = agent.wait_pod("gone", is_ready, what="ready")
    ip = pod["status"]["podIP"]
    ipam = node.state_dir / "ipam" / "nodeagent"
    assert (ipam / ip).exists()
    path.unlink()
    wait_for(lambda: agent.pod("gone") is None, 20, message="pod gone from status")
    wait_for(lambda: not sandboxes(agent), 20, message="sandbox removed")
    wait_for(lambda: not (ipam / ip).exists(), 10, message=f"IP {ip} released")


def test_kill9_then_restart_adopts_the_same_containers(node: TestNode, agent: Agent) -> None:
    agent.write_manifest("s.yaml", sleeper("steady"))
    pod = agent.wait_pod("steady", is_ready, what="ready")
    before = container_status(pod, "main")["containerID"]
    [sandbox_before] = sandboxes(agent)
    agent.kill9()
    agent.start()
    pod = agent.wait_pod("steady", is_ready, what="ready after restart")
    after = container_status(pod, "main")
    assert after["containerID"] == before
    assert after["restartCount"] == 0
    assert [s.id for s in sandboxes(agent)] == [sandbox_before.id]


def test_sigterm_leaves_pods_running_and_restart_removes_orphans(
    node: TestNode, agent: Agent
) -> None:
    agent.write_manifest("keep.yaml", sleeper("keep"))
    agent.write_manifest("drop.yaml", sleeper("drop"))
    agent.wait_pod("keep", is_ready, what="ready")
    agent.wait_pod("drop", is_ready, what="ready")
    assert agent.stop() == 0
    assert len(sandboxes(agent)) == 2  # the agent's shutdown touched no pod
    (agent.manifests / "drop.yaml").unlink()  # removed while the agent is down
    agent.start()
    wait_for(lambda: [s.name for s in sandboxes(agent)] == ["keep"], 20, message="orphan gone")
    wait_for(lambda: agent.pod("drop") is None, 10, message="orphan gone from status")
    keep = agent.pod("keep")
    assert keep is not None and is_ready(keep)


@pytest.mark.runtime_independent
def test_bad_manifests_are_reported_and_good_pods_keep_running(
    node: TestNode, agent: Agent
) -> None:
    agent.write_manifest("good.yaml", sleeper("good"))
    agent.wait_pod("good", is_ready, what="ready")
    bad = {
        "broken.yaml": "apiVersion: v1\nkind: Pod\nmetadata: {name: x\n",
        "deploy.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n",
        "noimage.yaml": sleeper("noimage").replace("image: busybox", "image: ''"),
        "noname.yaml": sleeper("noname").replace("- name: main", "- name: ''"),
        "policy.yaml": sleeper("policy", policy="Sometimes"),
        "grace.yaml": sleeper("grace").replace("GracePeriodSeconds: 2", "GracePeriodSeconds: -1"),
        "zdup.yaml": sleeper("good"),
    }
    for name, text in bad.items():
        agent.write_manifest(name, text)
    expected = {
        "broken.yaml": "",
        "deploy.yaml": "kind",
        "noimage.yaml": "spec.containers[0].image",
        "noname.yaml": "spec.containers[0].name",
        "policy.yaml": "spec.restartPolicy",
        "grace.yaml": "spec.terminationGracePeriodSeconds",
        "zdup.yaml": "metadata.name",
    }

    def reported() -> dict[str, str]:
        errors = agent.status()["errors"]
        found = {Path(e["source"]).name: e["field"] for e in errors}
        return found if set(found) >= set(expected) else {}

    found = wait_for(reported, 10, message="every bad file reported")
    for name, field in expected.items():
        assert found[name] == field, (name, found[name])
    errors = {Path(e["source"]).name: e for e in agent.status()["errors"]}
    assert "malformed YAML" in errors["broken.yaml"]["message"]
    assert errors["zdup.yaml"]["object"] == "Pod default/good"
    pod = agent.pod("good")
    assert pod is not None and is_ready(pod)
    assert container_status(pod, "main")["restartCount"] == 0
    assert [p["metadata"]["name"] for p in agent.status()["pods"]] == ["good"]


def test_missing_image_is_err_image_pull_then_backoff(node: TestNode, agent: Agent) -> None:
    text = sleeper("noimg").replace("image: busybox", "image: example.invalid/nope:1")
    agent.write_manifest("noimg.yaml", text)
    agent.wait_pod("noimg", lambda p: waiting_reason(p, "main") == "ErrImagePull", what="pull")
    pod = agent.wait_pod(
        "noimg", lambda p: waiting_reason(p, "main") == "ImagePullBackOff", what="backoff"
    )
    assert pod["status"]["phase"] == "Pending"
    assert "example.invalid/nope:1" in container_status(pod, "main")["state"]["waiting"]["message"]


def test_missing_command_is_run_container_error_then_crash_loop(
    node: TestNode, agent: Agent
) -> None:
    text = sleeper("nocmd").replace('command: ["sh", "-c",', 'command: ["/no/such/binary",')
    agent.write_manifest("nocmd.yaml", text)
    agent.wait_pod(
        "nocmd", lambda p: waiting_reason(p, "main") == "RunContainerError", what="run error"
    )
    pod = agent.wait_pod(
        "nocmd",
        lambda p: waiting_reason(p, "main") == "CrashLoopBackOff",
        timeout=30,
        what="crash loop",
    )
    assert "back-off" in container_status(pod, "main")["state"]["waiting"]["message"]
    assert agent.status()["node"]["name"] == "node-a"  # the agent is fine


@pytest.mark.parametrize(
    ("policy", "code", "phase"),
    [("Never", 0, "Succeeded"), ("Never", 3, "Failed"), ("OnFailure", 0, "Succeeded")],
)
def test_run_to_completion_phases(
    node: TestNode, agent: Agent, policy: str, code: int, phase: str
) -> None:
    agent.write_manifest("job.yaml", sleeper("job", script=f"exit {code}", policy=policy))
    pod = agent.wait_pod("job", lambda p: p["status"]["phase"] == phase, what=phase)
    terminated = container_status(pod, "main")["state"]["terminated"]
    assert terminated["exitCode"] == code
    assert terminated["reason"] == ("Completed" if code == 0 else "Error")
    assert container_status(pod, "main")["restartCount"] == 0
    # A finished pod's sandbox is stopped, so it holds no IP.
    wait_for(
        lambda: all(s.state.value == "notready" for s in sandboxes(agent)),
        10,
        message="sandbox stopped",
    )


def test_on_failure_restarts_failed_container(node: TestNode, agent: Agent) -> None:
    agent.write_manifest("retry.yaml", sleeper("retry", script="exit 1", policy="OnFailure"))
    agent.wait_pod(
        "retry", lambda p: container_status(p, "main")["restartCount"] >= 1, what="restarted"
    )


def test_memory_limit_reports_oom_killed(node: TestNode, agent: Agent) -> None:
    text = """
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  restartPolicy: Never
  containers:
    - name: main
      image: busybox
      imagePullPolicy: IfNotPresent
      command: ["dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"]
      resources:
        limits: {memory: 20Mi, cpu: 500m}
"""
    agent.write_manifest("hog.yaml", text)

    def oom_killed(p: dict[str, Any]) -> bool:
        # containerd 1.6 may handle the OOM event after the exit event, so the container
        # can read Error/137 for a moment before OOMKilled: the agent reads such an exit
        # again until it settles (kubelet/pleg.py), and the status must follow.
        state = container_status(p, "main")["state"] if p["status"].get("containerStatuses") else {}
        reason = (state.get("terminated") or {}).get("reason")
        return p["status"]["phase"] == "Failed" and reason == "OOMKilled"

    pod = agent.wait_pod("hog", oom_killed, what="Failed, OOMKilled")
    terminated = container_status(pod, "main")["state"]["terminated"]
    assert terminated["exitCode"] == 137


def test_hooks_and_graceful_termination(node: TestNode, agent: Agent, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    text = f"""
apiVersion: v1
kind: Pod
metadata: {{name: hooks}}
spec:
  terminationGracePeriodSeconds: 10
  volumes:
    - name: marks
      hostPath: {{path: {marks}, type: Directory}}
  containers:
    - name: main
      image: busybox
      imagePullPolicy: IfNotPresent
      command:
        - sh
        - -c
        - trap 'echo term > /marks/term; exit 0' TERM; while true; do sleep 0.2; done
      volumeMounts: [{{name: marks, mountPath: /marks}}]
      lifecycle:
        postStart:
          exec: {{command: ["sh", "-c", "echo started > /marks/poststart"]}}
        preStop:
          exec: {{command: ["sh", "-c", "echo stopping > /marks/prestop"]}}
"""
    path = agent.write_manifest("hooks.yaml", text)
    agent.wait_pod("hooks", is_ready, what="ready")
    wait_for(lambda: (marks / "poststart").exists(), 10, message="postStart ran")
    path.unlink()
    wait_for(lambda: agent.pod("hooks") is None, 20, message="pod removed")
    assert (marks / "prestop").read_text().strip() == "stopping"
    assert (marks / "term").read_text().strip() == "term"  # TERM came, and before KILL


def test_changed_spec_replaces_the_pod(node: TestNode, agent: Agent) -> None:
    agent.write_manifest("v.yaml", sleeper("versioned"))
    old = agent.wait_pod("versioned", is_ready, what="ready")
    agent.write_manifest(
        "v.yaml", sleeper("versioned", script="trap 'exit 0' TERM; sleep 3600 & wait")
    )
    new = agent.wait_pod(
        "versioned",
        lambda p: p["metadata"]["uid"] != old["metadata"]["uid"] and is_ready(p),
        what="replaced and ready",
    )
    assert (
        container_status(new, "main")["containerID"] != container_status(old, "main")["containerID"]
    )
    wait_for(lambda: len(sandboxes(agent)) == 1, 20, message="old sandbox removed")


def test_logs_command_prints_container_output(node: TestNode, agent: Agent) -> None:
    script = "echo hello-from-logs; trap 'exit 0' TERM; while true; do sleep 1; done"
    agent.write_manifest("talk.yaml", sleeper("talk", script=script))
    agent.wait_pod("talk", is_ready, what="ready")
    argv = [sys.executable, "-m", "nodeagent", "logs", "talk", "--status-socket", str(agent.socket)]

    def printed() -> str:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return result.stdout if result.returncode == 0 else ""

    assert wait_for(printed, 10, message="the container's output").splitlines() == [
        "hello-from-logs"
    ]
