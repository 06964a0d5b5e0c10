from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nodeagent import podlogs


def snapshot(restarts: int = 1) -> dict[str, Any]:
    return {
        "pods": [
            {
                "metadata": {"name": "web", "namespace": "default", "uid": "u1"},
                "status": {
                    "containerStatuses": [
                        {"name": "main", "restartCount": restarts},
                        {"name": "side", "restartCount": 0},
                    ]
                },
            }
        ]
    }


def test_partial_records_are_joined_and_malformed_lines_kept() -> None:
    lines = [
        "2026-01-01T00:00:00.1Z stdout P hel\n",
        "2026-01-01T00:00:00.2Z stdout F lo\n",
        "2026-01-01T00:00:00.3Z stderr F oops\n",
        "not a cri line\n",
        "2026-01-01T00:00:00.4Z stdout F\n",
    ]
    records = list(podlogs.parse_lines(lines))
    assert [(r.stream, r.text) for r in records] == [
        ("stdout", "hello"),
        ("stderr", "oops"),
        ("", "not a cri line"),
        ("stdout", ""),
    ]


def test_find_log_uses_uid_and_attempt(tmp_path: Path) -> None:
    log = tmp_path / "default_web_u1" / "main" / "1.log"
    log.parent.mkdir(parents=True)
    log.write_text("2026-01-01T00:00:00Z stdout F now\n")
    (log.parent / "0.log").write_text("2026-01-01T00:00:00Z stdout F before\n")
    found = podlogs.find_log(
        snapshot(), tmp_path, pod="web", namespace="default", container="main", previous=False
    )
    assert found == log
    previous = podlogs.find_log(
        snapshot(), tmp_path, pod="web", namespace="default", container="main", previous=True
    )
    assert [r.text for r in podlogs.tail(previous, None)] == ["before"]


@pytest.mark.parametrize(
    ("pod", "container", "previous", "message"),
    [
        ("nope", "main", False, "pod default/nope not found"),
        ("web", None, False, "choose one with -c"),
        ("web", "other", False, "container 'other' not found"),
        ("web", "side", True, "has no previous run"),
        ("web", "main", False, "no log at"),
    ],
)
def test_find_log_errors_say_what_is_missing(
    tmp_path: Path, pod: str, container: str | None, previous: bool, message: str
) -> None:
    with pytest.raises(podlogs.LogsError, match=message):
        podlogs.find_log(
            snapshot(),
            tmp_path,
            pod=pod,
            namespace="default",
            container=container,
            previous=previous,
        )


def test_tail_keeps_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    log.write_text("".join(f"2026-01-01T00:00:00Z stdout F {i}\n" for i in range(10)))
    assert [r.text for r in podlogs.tail(log, 3)] == ["7", "8", "9"]


def test_docker_json_file_records_are_read() -> None:
    lines = [
        '{"log":"par","stream":"stdout","time":"2026-01-01T00:00:00Z"}\n',
        '{"log":"tial\\n","stream":"stdout","time":"2026-01-01T00:00:01Z"}\n',
        '{"log":"err\\n","stream":"stderr","time":"2026-01-01T00:00:02Z"}\n',
    ]
    records = list(podlogs.parse_lines(lines))
    assert [(r.stream, r.text) for r in records] == [("stdout", "partial"), ("stderr", "err")]
