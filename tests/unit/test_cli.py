"""The CLI's commands and exit codes, and the status table rendered from a canned snapshot."""

from __future__ import annotations

import json
import logging
import sys
import types
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog

from nodeagent import cli
from nodeagent.config import KEYS, Config, env_var
from nodeagent.log import get_logger
from nodeagent.server.fmt import human_duration
from nodeagent.server.render import render_status
from tests.unit.rig import run_cli

NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)

SNAPSHOT: dict[str, Any] = {
    "node": {
        "name": "worker-1",
        "runtime": {"name": "containerd", "version": "1.6.20"},
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ok"},
            {"type": "MemoryPressure", "status": "False", "reason": "", "message": ""},
        ],
        "capacity": {"cpu": "2", "memory": "4028748Ki", "pods": "110"},
        "allocatable": {"cpu": "2", "memory": "3926348Ki", "pods": "110"},
    },
    "pods": [
        {
            "metadata": {
                "name": "web",
                "namespace": "default",
                "uid": "u1",
                "creationTimestamp": "2026-11-25T11:55:00Z",
            },
            "status": {
                "phase": "Running",
                "podIP": "10.88.0.5",
                "startTime": "2026-11-25T11:55:01Z",
                "containerStatuses": [
                    {
                        "name": "nginx",
                        "ready": True,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": "2026-11-25T11:55:02Z"}},
                    }
                ],
            },
        },
        {
            "metadata": {
                "name": "crash",
                "namespace": "apps",
                "uid": "u2",
                "creationTimestamp": "2026-11-25T09:30:00Z",
            },
            "status": {
                "phase": "Running",
                "podIP": "10.88.0.6",
                "containerStatuses": [
                    {
                        "name": "main",
                        "ready": False,
                        "restartCount": 4,
                        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "..."}},
                        "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
                    },
                    {"name": "side", "ready": True, "restartCount": 1, "state": {"running": {}}},
                ],
            },
        },
        {
            # Init container failing: its reason beats the app container's PodInitializing.
            "metadata": {"name": "init", "namespace": "apps", "uid": "u3"},
            "status": {
                "phase": "Pending",
                "startTime": "2026-11-23T12:00:00Z",
                "initContainerStatuses": [
                    {
                        "name": "setup",
                        "ready": False,
                        "restartCount": 2,
                        "state": {"terminated": {"exitCode": 3, "reason": "Error"}},
                    }
                ],
                "containerStatuses": [
                    {
                        "name": "app",
                        "ready": False,
                        "restartCount": 0,
                        "state": {"waiting": {"reason": "PodInitializing"}},
                    }
                ],
            },
            "errors": ["volume data: /srv/data is missing"],
        },
    ],
    "services": [{"metadata": {"name": "web", "namespace": "default"}}],
    "errors": [
        {
            "source": "/etc/pods/bad.yaml",
            "object": "default/bad",
            "field": "spec.containers[0].image",
            "message": "must not be empty",
        }
    ],
}

EXPECTED = """\
NODE: worker-1   RUNTIME: containerd 1.6.20   READY: True   PODS: 3/110

NAMESPACE   NAME    PHASE     READY   RESTARTS   AGE    IP          REASON
apps        crash   Running   1/2     5          150m   10.88.0.6   CrashLoopBackOff
apps        init    Pending   0/1     2          2d     <none>      Error
default     web     Running   1/1     0          5m     10.88.0.5

SERVICES:
NAMESPACE   NAME   TYPE        CLUSTER-IP   EXTERNAL-IP   PORT(S)   ENDPOINTS
default     web    ClusterIP   <none>       <none>        <none>    0/0

ERRORS:
SOURCE               OBJECT        FIELD                      MESSAGE
/etc/pods/bad.yaml   default/bad   spec.containers[0].image   must not be empty
                     apps/init                                volume data: /srv/data is missing
"""


def test_render_status() -> None:
    assert render_status(SNAPSHOT, NOW) == EXPECTED


def test_render_not_ready_node_without_pods() -> None:
    snapshot = {
        "node": {
            "name": "n1",
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "NetworkNotReady",
                    "message": "cni config\nuninitialized",
                },
                {"type": "DiskPressure", "status": "True"},
            ],
        },
        "pods": [],
    }
    assert render_status(snapshot, NOW) == (
        "NODE: n1   RUNTIME: <none>   READY: False (NetworkNotReady: cni config uninitialized)"
        "   PODS: 0   PROBLEMS: DiskPressure\n\nNo pods.\n"
    )


def test_render_survives_garbage() -> None:
    garbage: dict[str, Any] = {
        "node": "not a map",
        "pods": [None, {"metadata": [], "status": {"containerStatuses": "x"}}],
        "errors": [42],
    }
    text = render_status(garbage, NOW)
    assert "NODE: <none>" in text
    assert "Unknown" in text


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (-5, "<invalid>"),
        (-1, "0s"),
        (0, "0s"),
        (119, "119s"),
        (120, "2m"),
        (185, "3m5s"),
        (600, "10m"),
        (3 * 3600, "3h"),
        (3 * 3600 + 120, "3h2m"),
        (9 * 3600, "9h"),
        (50 * 3600, "2d2h"),
        (10 * 86400, "10d"),
        (3 * 365 * 86400 + 86400, "3y1d"),
        (9 * 365 * 86400, "9y"),
    ],
)
def test_human_duration(seconds: int, expected: str) -> None:
    assert human_duration(timedelta(seconds=seconds)) == expected


# --- Commands ------------------------------------------------------------------------------


@pytest.fixture
def snapshot() -> dict[str, Any]:
    return SNAPSHOT


async def test_status_json(agent: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_cli("status", "--json", "--status-socket", str(agent)) == 0
    out = capsys.readouterr().out
    assert json.loads(out) == SNAPSHOT
    assert out.startswith('{\n  "node"')  # indent 2


async def test_status_table(agent: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_cli("status", "--status-socket", str(agent)) == 0
    out = capsys.readouterr().out
    assert out.startswith("NODE: worker-1")
    assert "CrashLoopBackOff" in out


async def test_status_socket_from_env(
    agent: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(env_var("status_socket"), str(agent))
    assert await run_cli("status", "--json") == 0
    assert json.loads(capsys.readouterr().out) == SNAPSHOT


def test_status_unavailable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "absent.sock"
    assert cli.main(["status", "--status-socket", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"nodeagent: no agent is listening at {path}: is `nodeagent run` running? "
        "(--status-socket)\n"
    )


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("nodeagent ") and out.count("\n") == 1
    assert "(kubelet v1." in out and "-nodeagent." in out  # what the Node reports


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in KEYS:
        monkeypatch.delenv(env_var(key), raising=False)


@pytest.mark.usefixtures("clean_env")
def test_run_config_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--node-name", "n1", "--pod-cidr", "10.0.0.1/8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nodeagent: pod_cidr: ")
    assert "(from flag --pod-cidr)" in err
    assert "Traceback" not in err


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """`run` configures logging process-wide; later tests must not inherit it."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("clean_env", "restore_logging")
def test_run_hands_config_to_the_agent(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    seen: list[Config] = []

    async def fake_run(config: Config) -> int:
        seen.append(config)
        get_logger("test").info("daemon_called", node=config.node_name)
        return 7

    fake = types.ModuleType("nodeagent.agent")
    fake.run = fake_run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "nodeagent.agent", fake)
    monkeypatch.setattr("nodeagent.agent", fake, raising=False)

    code = cli.main(
        ["run", "--node-name", "n1", "--manifests", str(tmp_path), "--log-format", "json"]
    )
    assert code == 7
    assert [c.node_name for c in seen] == ["n1"]
    assert seen[0].manifests == tmp_path
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["event"] == "daemon_called"
    assert line["node"] == "n1"
    assert line["logger"] == "test"
    assert line["level"] == "info"
    assert datetime.fromisoformat(line["timestamp"]).tzinfo is not None


def test_no_command_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2
