"""Termination messages (kubelet.termination) and how status reports them."""

from __future__ import annotations

import json
from pathlib import Path

from nodeagent.kubelet import termination
from nodeagent.kubelet.podstatus import termination_join
from nodeagent.model.pod import TerminationMessagePolicy

FILE = TerminationMessagePolicy.FILE
FALLBACK = TerminationMessagePolicy.FALLBACK_TO_LOGS_ON_ERROR


def test_the_file_is_the_message_cut_at_4096_bytes() -> None:
    assert termination.pick_message(b"Sleep expired", exit_code=0, policy=FILE) == (
        "Sleep expired",
        False,
    )
    text, _ = termination.pick_message(b"x" * 5000, exit_code=1, policy=FALLBACK)
    assert len(text) == 4096


def test_logs_only_with_fallback_an_empty_file_and_a_failure() -> None:
    assert termination.pick_message(b"", exit_code=1, policy=FILE) == ("", False)
    assert termination.pick_message(b"", exit_code=0, policy=FALLBACK) == ("", False)
    assert termination.pick_message(b"", exit_code=1, policy=FALLBACK) == ("", True)
    lines = [f"line {i}" for i in range(100)]
    text, _ = termination.pick_message(b"", exit_code=1, policy=FALLBACK, log_lines=lines)
    assert text.splitlines() == lines[-80:]
    long = ["y" * 100] * 80
    text, _ = termination.pick_message(b"", exit_code=1, policy=FALLBACK, log_lines=long)
    assert len(text.encode()) == 2048


def test_read_takes_the_log_tail_in_either_format(tmp_path: Path) -> None:
    message = tmp_path / "msg"
    termination.prepare_file(str(message))
    assert message.read_bytes() == b"" and oct(message.stat().st_mode & 0o777) == "0o666"
    cri = tmp_path / "cri.log"
    cri.write_text(
        "2026-01-01T00:00:00.1Z stdout F starting\n2026-01-01T00:00:00.2Z stderr F boom\n"
    )
    assert termination.read(str(message), str(cri), exit_code=2, policy=FALLBACK) == (
        "starting\nboom\n"
    )
    docker = tmp_path / "docker.log"
    docker.write_text(json.dumps({"log": "oops\n", "stream": "stderr", "time": "t"}) + "\n")
    assert termination.read(str(message), str(docker), exit_code=2, policy=FALLBACK) == "oops\n"
    message.write_text("written by the app")
    assert termination.read(str(message), str(cri), exit_code=2, policy=FALLBACK) == (
        "written by the app"
    )
    missing = str(tmp_path / "none")
    assert termination.read(missing, missing, exit_code=1, policy=FALLBACK) == ""


def test_status_joins_the_runtime_message_first() -> None:
    assert termination_join("", "done") == "done"
    assert termination_join("OOM", "") == "OOM"
    assert termination_join("runtime", "app") == "runtime: app"
