"""Probes in ``nodeagent status``: the PROBES table and the REASON of a not-ready pod."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from nodeagent.server.render import render_status

NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)


def pod(name: str, ready: bool, probes: list[Any]) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "default",
            "creationTimestamp": "2026-11-25T11:59:00Z",
        },
        "status": {
            "phase": "Running",
            "podIP": "10.88.0.7",
            "containerStatuses": [
                {
                    "name": "api",
                    "ready": ready,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": "2026-11-25T11:59:01Z"}},
                }
            ],
        },
        "probes": probes,
    }


def probe(kind: str, result: str, last: str, fails: int, oks: int, message: str) -> dict[str, Any]:
    return {
        "container": "api",
        "probe": kind,
        "handler": "httpGet",
        "result": result,
        "lastResult": last,
        "consecutiveFailures": fails,
        "consecutiveSuccesses": oks,
        "message": message,
        "lastProbeTime": "2026-11-25T11:59:58Z",
    }


def test_not_ready_pod_shows_its_probe_failure_and_the_probes_table() -> None:
    snapshot = {
        "node": {"name": "n1"},
        "pods": [
            pod(
                "api",
                False,
                [
                    probe("liveness", "Success", "Success", 0, 12, "HTTP 200"),
                    probe(
                        "readiness",
                        "Failure",
                        "Failure",
                        4,
                        0,
                        "HTTP probe failed with statuscode: 404",
                    ),
                ],
            ),
            pod("web", True, [{"container": "api", "probe": "readiness", "result": "Failure"}]),
        ],
    }
    text = render_status(snapshot, NOW)
    assert text == (
        "NODE: n1   RUNTIME: <none>   READY: Unknown   PODS: 2\n"
        "\n"
        "NAMESPACE   NAME   PHASE     READY   RESTARTS   AGE   IP          REASON\n"
        "default     api    Running   0/1     0          60s   10.88.0.7   "
        "Readiness probe failed: HTTP probe failed with statuscode: 404\n"
        "default     web    Running   1/1     0          60s   10.88.0.7\n"
        "\n"
        "PROBES:\n"
        "NAMESPACE   NAME   CONTAINER   PROBE       RESULT    LAST      FAILURES   SUCCESSES   "
        "PROBED   MESSAGE\n"
        "default     api    api         liveness    Success   Success   0          12          "
        "2s ago   HTTP 200\n"
        "default     api    api         readiness   Failure   Failure   4          0           "
        "2s ago   HTTP probe failed with statuscode: 404\n"
        "default     web    api         readiness   Failure   <none>    0          0           "
        "never\n"
    )


def test_no_probes_no_table_and_garbage_is_tolerated() -> None:
    plain = render_status({"pods": [pod("a", True, [])]}, NOW)
    assert "PROBES" not in plain
    junk = render_status({"pods": [pod("b", False, ["x", {"lastProbeTime": 5}, None])]}, NOW)
    assert "PROBES:" in junk and "never" in junk
