"""Status subviews, the node view, describe, colors, and the CLI commands that show them."""

from __future__ import annotations

import copy
import json
import re
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from nodeagent import cli
from nodeagent.config import DEFAULT_STATUS_SOCKET, env_var
from nodeagent.server.colors import colorize
from nodeagent.server.describe import PodNotFound, render_pod
from nodeagent.server.nodeview import bytes_text, render_node
from nodeagent.server.render import render_status
from tests.unit.rig import run_cli

NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
ANSI = re.compile(r"\x1b\[[0-9;]*m")

SNAPSHOT: dict[str, Any] = {
    "agent": {"podLogDir": "/var/log/pods", "mode": "standalone", "metricsBind": ""},
    "node": {
        "name": "n1",
        "runtime": {"name": "containerd", "version": "1.6.20"},
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ok"},
            {"type": "DiskPressure", "status": "False", "reason": "NoPressure", "message": ""},
        ],
        "capacity": {"cpu": "2", "memory": "4028748Ki", "pods": "110"},
        "allocatable": {"cpu": "2", "memory": "3926348Ki", "pods": "110"},
        "usage": {
            "cpuPercent": 12.5,
            "memoryPercent": 41.0,
            "pids": 312,
            "cpuCount": 2,
            "memoryTotalBytes": 4 * 1024**3,
            "memoryAvailableBytes": 2 * 1024**3,
            "disk": {"path": "/var/lib/nodeagent", "totalBytes": 30 * 1024**3, "percent": 18.0},
            "pidMax": 4194304,
        },
    },
    "pods": [
        {
            "metadata": {"name": "crash", "namespace": "apps", "uid": "u2"},
            "status": {
                "phase": "Running",
                "podIP": "10.88.0.6",
                "startTime": "2026-11-25T11:00:00Z",
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [
                    {
                        "name": "main",
                        "ready": False,
                        "restartCount": 4,
                        "containerID": "containerd://abc",
                        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "x"}},
                        "lastState": {
                            "terminated": {
                                "exitCode": 1,
                                "reason": "Error",
                                "startedAt": "2026-11-25T11:59:00Z",
                                "finishedAt": "2026-11-25T11:59:01Z",
                            }
                        },
                    }
                ],
            },
            "probes": [
                {
                    "container": "main",
                    "probe": "liveness",
                    "result": "Failure",
                    "lastResult": "Failure",
                    "consecutiveFailures": 3,
                    "consecutiveSuccesses": 0,
                    "lastProbeTime": "2026-11-25T11:59:58Z",
                    "message": "command exited 1",
                }
            ],
            "worker": "syncing",
            "backoffUntil": {"main": "2026-11-25T12:00:25Z"},
            "spec": {
                "restartPolicy": "Always",
                "terminationGracePeriodSeconds": 30,
                "containers": [
                    {
                        "name": "main",
                        "image": "busybox",
                        "command": ["sh", "-c", "exit 1"],
                        "livenessProbe": "exec [false] delay=0s timeout=1s period=10s",
                    }
                ],
            },
        },
        {
            "metadata": {"name": "pull", "namespace": "default", "uid": "u3"},
            "status": {
                "phase": "Pending",
                "containerStatuses": [
                    {
                        "name": "c",
                        "ready": False,
                        "restartCount": 0,
                        "state": {
                            "waiting": {"reason": "ErrImagePull", "message": "nope:1 not found"}
                        },
                    }
                ],
            },
            "probes": [],
            "worker": "syncing",
        },
    ],
    "services": [
        {"metadata": {"name": "web", "namespace": "default"}, "spec": {"clusterIP": "10.96.0.9"}}
    ],
    "proxy": {"backend": "nft", "lastSync": "2026-11-25T11:59:57Z", "duration": 0.042},
    "errors": [{"source": "/m/bad.yaml", "object": "apps/bad", "field": "f", "message": "m"}],
    "events": [
        {
            "involvedObject": {
                "kind": "Pod",
                "namespace": "apps",
                "name": "crash",
                "uid": "u2",
                "fieldPath": "spec.containers{main}",
            },
            "type": "Warning",
            "reason": "BackOff",
            "message": "Back-off restarting failed container main",
            "count": 4,
            "firstTimestamp": "2026-11-25T11:55:00Z",
            "lastTimestamp": "2026-11-25T11:59:50Z",
        },
        {
            "involvedObject": {"kind": "Pod", "namespace": "apps", "name": "crash", "uid": "old"},
            "type": "Normal",
            "reason": "Started",
            "message": "an earlier pod of the same name",
            "count": 1,
            "firstTimestamp": "2026-11-25T10:00:00Z",
            "lastTimestamp": "2026-11-25T10:00:00Z",
        },
    ],
}


# --- Pure views ------------------------------------------------------------------------------


def test_pods_view_says_why_with_backoff_left_and_the_pull_error() -> None:
    text = render_status(SNAPSHOT, NOW, view="pods")
    assert not text.startswith("NODE:")  # the subview has no node line
    assert "CrashLoopBackOff (retry in 25s)" in text
    assert "ErrImagePull: nope:1 not found" in text
    assert "PROBES:" in text and "command exited 1" in text
    assert "SERVICES:" not in text
    assert "/m/bad.yaml" not in text  # manifest errors are the node's, not a pod's


def test_services_view_and_namespace_filter() -> None:
    text = render_status(SNAPSHOT, NOW, view="services")
    assert "10.96.0.9" in text and "PROXY: iptables (nft)" in text and "crash" not in text
    assert "No services." in render_status(SNAPSHOT, NOW, view="services", namespace="apps")
    only_apps = render_status(SNAPSHOT, NOW, namespace="apps")
    assert "crash" in only_apps and "pull" not in only_apps and "10.96.0.9" not in only_apps
    assert "apps/bad" in only_apps  # the namespace's manifest errors stay


def test_default_view_is_unchanged_by_the_new_fields() -> None:
    text = render_status(SNAPSHOT, NOW)
    assert text.startswith("NODE: n1   RUNTIME: containerd 1.6.20   READY: True   PODS: 2/110\n")


def test_node_view_standalone() -> None:
    text = render_node(SNAPSHOT, NOW)
    assert "API:          standalone (no control plane)" in text
    assert "RUNTIME:      containerd 1.6.20" in text
    assert re.search(r"DiskPressure\s+False\s+NoPressure", text)
    assert "CAPACITY:     cpu=2   memory=4028748Ki   pods=110" in text
    assert "cpu 12.5% of 2   memory 41.0% (2.0GiB available of 4.0GiB)" in text
    assert "disk 18.0% of 30.0GiB (/var/lib/nodeagent)   pids 312 of 4194304" in text
    assert "LAST SYNC: 3s ago" in text


def test_node_view_cluster_mode_shows_connection_and_heartbeat() -> None:
    snapshot = copy.deepcopy(SNAPSHOT)
    snapshot["cluster"] = {
        "server": "https://10.0.0.1:6443",
        "registered": True,
        "watching": True,
        "lastHeartbeat": "2026-11-25T11:59:52Z",
    }
    assert "https://10.0.0.1:6443   watching   last heartbeat 8s ago" in render_node(snapshot, NOW)
    snapshot["cluster"].update(watching=False, lastHeartbeat=None)
    assert "NOT CONNECTED   no heartbeat yet" in render_node(snapshot, NOW)


def test_node_view_survives_garbage() -> None:
    text = render_node({"node": {"usage": {"cpuPercent": "x", "disk": 5}, "conditions": [3]}}, NOW)
    assert text.startswith("NODE:         <none>")


def test_bytes_text() -> None:
    assert [bytes_text(n) for n in (0, 1023, 1536, 5 * 1024**3)] == [
        "0B",
        "1023B",
        "1.5KiB",
        "5.0GiB",
    ]


def test_describe_pod() -> None:
    text = render_pod(SNAPSHOT, "apps", "crash", NOW)
    assert text.startswith("Name:           crash\nNamespace:      apps\n")
    assert "    Command:          sh -c exit 1" in text
    assert "    State:            Waiting\n      Reason:         CrashLoopBackOff" in text
    assert "    Last State:       Terminated\n      Reason:         Error\n" in text
    assert "      Exit Code:      1" in text
    assert "    Back-off:         next try in 25s" in text
    assert "liveness: Failure (last Failure 2s ago, 3 failures" in text
    assert "command exited 1" in text
    events = text.split("Events:", 1)[1]
    assert re.search(r"Warning\s+BackOff\s+10s \(x4 over 5m\)\s+spec.containers\{main\}", events)
    assert "earlier pod" not in events  # another uid: not this pod's


def test_describe_unknown_pod_points_at_the_namespace() -> None:
    with pytest.raises(PodNotFound, match=r'"crash" not found in namespace "default".*apps'):
        render_pod(SNAPSHOT, "default", "crash", NOW)
    with pytest.raises(PodNotFound, match="not found"):
        render_pod({}, "default", "x", NOW)


def test_colors_only_decorate() -> None:
    plain = render_status(SNAPSHOT, NOW, view="pods")
    colored = colorize(plain)
    assert colored != plain
    assert ANSI.sub("", colored) == plain
    assert "\x1b[31mCrashLoopBackOff\x1b[0m" in colored
    assert colored.startswith("\x1b[1mNAMESPACE")


# --- The commands ----------------------------------------------------------------------------


@pytest.fixture
def snapshot() -> dict[str, Any]:
    return SNAPSHOT


async def test_status_subviews(agent: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sock = ("--status-socket", str(agent))
    assert await run_cli("status", "pods", "-n", "apps", *sock) == 0
    out = capsys.readouterr().out
    assert "crash" in out and "pull" not in out and "\x1b[" not in out  # no TTY: no colors
    assert await run_cli("status", "node", *sock) == 0
    assert capsys.readouterr().out.startswith("NODE:         n1\n")
    assert await run_cli("status", "services", "--json", *sock) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"services", "proxy"}
    assert await run_cli("status", "pods", "--json", "-n", "default", *sock) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [p["metadata"]["name"] for p in doc["pods"]] == ["pull"] and doc["events"] == []


async def test_describe_command(agent: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sock = ("--status-socket", str(agent))
    assert await run_cli("describe", "pod", "crash", "-n", "apps", *sock) == 0
    assert "    Last State:       Terminated" in capsys.readouterr().out
    assert await run_cli("describe", "pod", "crash", "-n", "apps", "--json", *sock) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["metadata"]["uid"] == "u2" and len(doc["events"]) == 2
    assert await run_cli("describe", "pod", "nope", *sock) == 1
    captured = capsys.readouterr()
    assert captured.err == 'nodeagent: pod "nope" not found in namespace "default" on this node\n'


async def test_watch_redraws_until_ctrl_c(
    agent: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", sleep)  # the module the CLI calls
    code = await run_cli(
        "status", "pods", "--watch", "--interval", "0.5", "--status-socket", str(agent)
    )
    assert code == 0 and sleeps == [0.5, 0.5]
    out = capsys.readouterr().out
    assert out.count("Every 0.5s: nodeagent status") == 2 and out.count("CrashLoopBackOff") == 2


def test_watch_keeps_going_while_the_agent_is_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(time, "sleep", lambda s: (_ for _ in ()).throw(KeyboardInterrupt))
    assert cli.main(["status", "-w", "--status-socket", str(tmp_path / "none.sock")]) == 0
    assert "no agent is listening" in capsys.readouterr().out


def test_interval_must_be_sane(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["status", "--watch", "--interval", "0"])
    assert exit_.value.code == 2
    assert "choose between 0.1 and 3600 seconds" in capsys.readouterr().err


def test_socket_path_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = cli.build_parser()
    monkeypatch.delenv(env_var("status_socket"), raising=False)
    for command in (["status"], ["describe", "pod", "x"], ["logs", "x"]):
        assert cli.socket_path(parser.parse_args(command)) == str(DEFAULT_STATUS_SOCKET)
        monkeypatch.setenv(env_var("status_socket"), "/env.sock")
        assert cli.socket_path(parser.parse_args(command)) == "/env.sock"
        flagged = parser.parse_args([*command, "--status-socket", "/flag.sock"])
        assert cli.socket_path(flagged) == "/flag.sock"
        monkeypatch.delenv(env_var("status_socket"))


def test_not_root_gets_one_line_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Root passes every permission check, so the kernel's answer to anyone else is staged.
    class Refused(socket.socket):
        def connect(self, address: Any) -> None:
            raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(socket, "socket", Refused)  # the module the client calls
    path = tmp_path / "status.sock"
    for command in (["status"], ["describe", "pod", "x"], ["logs", "x"]):
        assert cli.main([*command, "--status-socket", str(path)]) == 1
        captured = capsys.readouterr()
        assert captured.err == f"nodeagent: permission denied connecting to {path}: are you root?\n"
