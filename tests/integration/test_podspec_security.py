"""securityContext, host namespaces, /etc/hosts and termination messages, on both runtimes.

The pods are the documented examples (tasks/configure-pod-container/security-context,
tasks/network/customize-hosts-file-for-pods, termination messages), written as our own
manifests. Most report what they saw through their termination message, which tests that
feature on the way: the container writes to /dev/termination-log and exits, and the status
carries the text in state.terminated.message.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.harness import TestNode
from tests.harness.agent import Agent, RuntimeTarget, container_status, is_ready

# CapEff bits (include/uapi/linux/capability.h).
CAP_NET_ADMIN = 1 << 12
CAP_NET_RAW = 1 << 13


def pod_doc(name: str, script: str, **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main",
        "image": "busybox",
        "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c", script],
    }
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
            **spec,
        },
    }


def run_once(agent: Agent, doc: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
    """Write the pod, wait until its container terminated; return that terminated state."""
    name = doc["metadata"]["name"]
    agent.write_manifest(f"{name}.json", json.dumps(doc))

    def terminated(pod: dict[str, Any]) -> bool:
        return "terminated" in container_status(pod, "main")["state"]

    pod = agent.wait_pod(name, terminated, timeout=timeout, what="main terminated")
    state: dict[str, Any] = container_status(pod, "main")["state"]["terminated"]
    return state


def test_documented_security_context_example(agent: Agent) -> None:
    doc = pod_doc(
        "security-context-demo",
        "id > /dev/termination-log; grep NoNewPrivs /proc/self/status >> /dev/termination-log",
        securityContext={"runAsUser": 1000, "runAsGroup": 3000, "fsGroup": 2000},
        container={"securityContext": {"allowPrivilegeEscalation": False}},
    )
    state = run_once(agent, doc)
    assert state["exitCode"] == 0, state
    lines = state["message"].splitlines()
    assert lines[0] == "uid=1000 gid=3000 groups=2000,3000", lines
    assert lines[1].split() == ["NoNewPrivs:", "1"]


def test_supplemental_groups_and_the_containers_own_user(agent: Agent) -> None:
    doc = pod_doc(
        "groups",
        "id > /dev/termination-log",
        securityContext={"runAsUser": 1000, "runAsGroup": 3000, "supplementalGroups": [4000]},
        container={"securityContext": {"runAsUser": 2000}},  # the container's wins
    )
    state = run_once(agent, doc)
    assert state["message"].strip() == "uid=2000 gid=3000 groups=3000,4000", state


def test_read_only_root_filesystem(agent: Agent) -> None:
    script = (
        "touch /probe 2>/dev/null; echo root=$? > /dev/termination-log; "
        "touch /tmp/probe 2>/dev/null; echo tmp=$? >> /dev/termination-log"
    )
    writable = run_once(agent, pod_doc("rw", script))
    assert writable["message"].split() == ["root=0", "tmp=0"]
    read_only = run_once(
        agent,
        pod_doc("ro", script, container={"securityContext": {"readOnlyRootFilesystem": True}}),
    )
    # /tmp is part of the image's root too: both writes fail.
    assert read_only["message"].split() == ["root=1", "tmp=1"], read_only


def _status_fields(message: str) -> dict[str, str]:
    fields = {}
    for line in message.splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def test_capabilities_and_seccomp(agent: Agent) -> None:
    script = "grep -E '^(CapEff|Seccomp|NoNewPrivs):' /proc/self/status > /dev/termination-log"
    plain = _status_fields(run_once(agent, pod_doc("caps-default", script))["message"])
    changed = _status_fields(
        run_once(
            agent,
            pod_doc(
                "caps-changed",
                script,
                container={
                    "securityContext": {
                        "capabilities": {"add": ["NET_ADMIN"], "drop": ["NET_RAW"]},
                        "seccompProfile": {"type": "RuntimeDefault"},
                    }
                },
            ),
        )["message"]
    )
    before, after = int(plain["CapEff"], 16), int(changed["CapEff"], 16)
    assert before & CAP_NET_RAW and not before & CAP_NET_ADMIN
    assert after & CAP_NET_ADMIN and not after & CAP_NET_RAW
    # Unset means Unconfined (the kubelet's default); RuntimeDefault is a filter.
    assert (plain["Seccomp"], changed["Seccomp"]) == ("0", "2")
    assert plain["NoNewPrivs"] == "0"


def test_dropped_net_raw_makes_ping_fail(agent: Agent) -> None:
    script = "ping -c 1 -W 1 127.0.0.1 >/dev/null 2>&1; echo ping=$? > /dev/termination-log"
    allowed = run_once(agent, pod_doc("ping-ok", script))
    dropped = run_once(
        agent,
        pod_doc(
            "ping-dropped",
            script,
            container={"securityContext": {"capabilities": {"drop": ["NET_RAW"]}}},
        ),
    )
    assert allowed["message"].strip() == "ping=0", allowed
    assert dropped["message"].strip() != "ping=0", dropped


def test_run_as_non_root_refuses_an_image_running_as_root(agent: Agent) -> None:
    doc = pod_doc("nonroot", "sleep 30", securityContext={"runAsNonRoot": True})
    agent.write_manifest("nonroot.json", json.dumps(doc))

    def refused(pod: dict[str, Any]) -> bool:
        waiting = container_status(pod, "main")["state"].get("waiting", {})
        return str(waiting.get("reason")) == "CreateContainerConfigError"

    pod = agent.wait_pod("nonroot", refused, what="CreateContainerConfigError")
    message = container_status(pod, "main")["state"]["waiting"]["message"]
    assert "container has runAsNonRoot and image will run as root" in message
    assert "container: main" in message
    # With a non-root user the same image runs.
    ok = pod_doc(
        "nonroot-ok", "id -u > /dev/termination-log", securityContext={"runAsNonRoot": True}
    )
    ok["spec"]["securityContext"]["runAsUser"] = 1234
    assert run_once(agent, ok)["message"].strip() == "1234"


def test_host_aliases_in_the_managed_hosts_file(agent: Agent) -> None:
    doc = pod_doc(
        "hostaliases-pod",
        "cat /etc/hosts > /dev/termination-log",
        hostAliases=[
            {"ip": "127.0.0.1", "hostnames": ["foo.local", "bar.local"]},
            {"ip": "10.1.2.3", "hostnames": ["foo.remote", "bar.remote"]},
        ],
    )
    state = run_once(agent, doc)
    pod = agent.pod("hostaliases-pod")
    assert pod is not None
    ip = pod["status"].get("podIP", "")
    text = state["message"]
    assert text.startswith("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"), text
    assert f"\n{ip}\thostaliases-pod\n" in text, (ip, text)
    assert text.endswith(
        "\n# Entries added by HostAliases.\n"
        "127.0.0.1\tfoo.local\tbar.local\n"
        "10.1.2.3\tfoo.remote\tbar.remote\n"
    ), text


def test_termination_message_policies(agent: Agent) -> None:
    written = run_once(
        agent, pod_doc("msg-file", "echo -n 'Sleep expired' > /dev/termination-log; exit 0")
    )
    assert (written["reason"], written["message"]) == ("Completed", "Sleep expired")
    custom = run_once(
        agent,
        pod_doc(
            "msg-path",
            "echo bye > /tmp/custom-log; exit 1",
            container={"terminationMessagePath": "/tmp/custom-log"},
        ),
    )
    assert (custom["reason"], custom["message"]) == ("Error", "bye\n")
    fallback = run_once(
        agent,
        pod_doc(
            "msg-logs",
            "echo first; echo last words; exit 3",
            container={"terminationMessagePolicy": "FallbackToLogsOnError"},
        ),
    )
    assert fallback["exitCode"] == 3 and fallback["message"] == "first\nlast words\n", fallback
    # File policy: the logs are not used.
    silent = run_once(agent, pod_doc("msg-none", "echo only in the log; exit 3"))
    assert "message" not in silent, silent


def test_share_process_namespace(agent: Agent) -> None:
    doc = pod_doc(
        "shared-pids",
        # The pattern is built at run time, so that this script's own command line (which
        # the shared namespace shows too) does not match it.
        'n=100; until grep -q "^sleep.${n}1" /proc/[0-9]*/cmdline 2>/dev/null; '
        "do sleep 0.2; done; echo seen > /dev/termination-log",
        shareProcessNamespace=True,
    )
    doc["spec"]["containers"].append(
        {
            "name": "other",
            "image": "busybox",
            "imagePullPolicy": "IfNotPresent",
            "command": ["sleep", "1001"],
        }
    )
    state = run_once(agent, doc)
    assert state["message"].strip() == "seen", state


@pytest.mark.runtime_independent
def test_privileged_refused_without_allow_privileged(
    node: TestNode, runtime_target: RuntimeTarget
) -> None:
    agent = Agent(node, runtime=runtime_target, allow_privileged=False)
    for old in agent.manifests.iterdir():
        old.unlink()
    agent.start()
    try:
        privileged = pod_doc(
            "privileged", "sleep 30", container={"securityContext": {"privileged": True}}
        )
        host = pod_doc(
            "host-state",
            "sleep 30",
            volumes=[{"name": "state", "hostPath": {"path": str(node.state_dir)}}],
        )
        agent.write_manifest("privileged.json", json.dumps(privileged))
        agent.write_manifest("host-state.json", json.dumps(host))
        agent.write_manifest("plain.json", json.dumps(pod_doc("plain", "sleep 30")))
        # A configMap volume reaches the runtime as a hostPath into the pod's own directory:
        # no host access, so it runs.
        settings = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}}
        settings["data"] = {"mode": "strict"}
        configured = pod_doc(
            "configured",
            "cat /cfg/mode > /dev/termination-log",
            volumes=[{"name": "cfg", "configMap": {"name": "settings"}}],
            container={"volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]},
        )
        agent.write_manifest("settings.json", json.dumps(settings))
        assert run_once(agent, configured)["message"] == "strict"

        def forbidden(pod: dict[str, Any]) -> bool:
            return str(pod["status"].get("reason")) == "Forbidden"

        pod = agent.wait_pod("privileged", forbidden, what="Forbidden")
        message = pod["status"]["message"]
        assert "spec.containers[0].securityContext.privileged" in message
        assert "--allow-privileged" in message
        assert container_status(pod, "main")["state"]["waiting"]["reason"] == "Blocked"
        pod = agent.wait_pod("host-state", forbidden, what="Forbidden")
        assert "spec.volumes[0].hostPath.path: volume 'state'" in pod["status"]["message"]
        agent.wait_pod("plain", is_ready, what="the plain pod runs beside them")
        refused = {"privileged", "host-state"}
        running = {s.name for s in runtime_target.sandboxes()}
        assert not refused & running, running
    finally:
        agent.stop()


def test_host_namespaces_and_the_host_network_hosts_file(agent: Agent) -> None:
    script = (
        "readlink /proc/self/ns/pid > /dev/termination-log; "
        "readlink /proc/self/ns/ipc >> /dev/termination-log; "
        "head -n 1 /etc/hosts >> /dev/termination-log"
    )
    private = run_once(agent, pod_doc("own-namespaces", script))["message"].splitlines()
    doc = pod_doc("host-namespaces", script, hostPID=True, hostIPC=True, hostNetwork=True)
    shared = run_once(agent, doc)["message"].splitlines()
    host = [os.readlink("/proc/self/ns/pid"), os.readlink("/proc/self/ns/ipc")]
    assert shared[:2] == host, (shared, host)
    assert private[0] != host[0] and private[1] != host[1], private
    assert shared[2] == "# Kubernetes-managed hosts file (host network)."
    assert private[2] == "# Kubernetes-managed hosts file."


def _full_bounding_set() -> bool:
    """Whether this process may hold every capability the kernel knows."""
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    status = Path("/proc/self/status").read_text()
    bounding = next(line for line in status.splitlines() if line.startswith("CapBnd:"))
    return int(bounding.split()[1], 16) == (1 << (last + 1)) - 1


def test_privileged_container_runs_when_allowed(agent: Agent) -> None:
    if agent.runtime.kind == "docker" and not _full_bounding_set():
        # containerd grants a privileged container the capabilities it has itself; Docker
        # asks for every capability, which runc cannot apply here ("unable to apply caps").
        pytest.skip("Docker privileged containers need a full capability bounding set")
    script = (
        "grep '^CapEff:' /proc/self/status > /dev/termination-log; ls /dev >> /dev/termination-log"
    )
    plain = run_once(agent, pod_doc("unprivileged", script))["message"].splitlines()
    doc = pod_doc("privileged-ok", script, container={"securityContext": {"privileged": True}})
    privileged = run_once(agent, doc)["message"].splitlines()
    plain_caps, all_caps = int(plain[0].split()[1], 16), int(privileged[0].split()[1], 16)
    assert all_caps & CAP_NET_ADMIN and all_caps > plain_caps
    # A privileged container sees the host's devices.
    assert len(privileged) > len(plain), (plain, privileged)


def test_safe_sysctls_are_set_in_the_pod(agent: Agent) -> None:
    doc = pod_doc(
        "sysctls",
        "cat /proc/sys/net/ipv4/ip_unprivileged_port_start /proc/sys/kernel/shm_rmid_forced "
        "> /dev/termination-log",
        securityContext={
            "sysctls": [
                {"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"},
                {"name": "kernel.shm_rmid_forced", "value": "1"},
            ]
        },
    )
    assert run_once(agent, doc)["message"].split() == ["0", "1"]
