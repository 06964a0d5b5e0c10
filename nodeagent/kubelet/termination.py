"""The termination message of an exited container, as the kubelet picks it.

Each container instance gets its own empty file in the pod dir, mounted at its
terminationMessagePath. When the instance has exited, the message is that file's start (at most
4096 bytes). With FallbackToLogsOnError, an empty file and a non-zero exit code, the message
is the end of the container's log instead: its last 80 lines, cut to 2048 bytes.
The status joins it after the runtime's own message (podstatus.termination_join).
"""

from __future__ import annotations

import os
from pathlib import Path

from nodeagent import podlogs
from nodeagent.model.pod import TerminationMessagePolicy

MAX_MESSAGE_BYTES = 4096
MAX_LOG_LINES = 80
MAX_LOG_BYTES = 2048


def pick_message(
    file_bytes: bytes,
    *,
    exit_code: int,
    policy: TerminationMessagePolicy,
    log_lines: list[str] | None = None,
) -> tuple[str, bool]:
    """(message, whether the log is wanted): pure, given what was read."""
    text = file_bytes[:MAX_MESSAGE_BYTES].decode("utf-8", errors="replace")
    fallback = policy is TerminationMessagePolicy.FALLBACK_TO_LOGS_ON_ERROR
    if text or not fallback or exit_code == 0:
        return text, False
    if log_lines is None:
        return "", True
    tail = "\n".join(log_lines[-MAX_LOG_LINES:])
    if tail:
        tail += "\n"
    # Upstream reads the tail with a byte limit, which keeps the tail's first bytes.
    data = tail.encode()[:MAX_LOG_BYTES]
    return data.decode("utf-8", errors="replace"), True


def prepare_file(path: str) -> None:
    """An empty, world-writable file: the container may run as any user (blocking)."""
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    with open(path, "ab"):
        pass
    os.chmod(path, 0o666)


def read(path: str, log_path: str, *, exit_code: int, policy: TerminationMessagePolicy) -> str:
    """The message of one exited instance (blocking; missing files read as empty)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_MESSAGE_BYTES)
    except OSError:
        data = b""
    message, wants_log = pick_message(data, exit_code=exit_code, policy=policy)
    if not wants_log:
        return message
    try:
        records = podlogs.tail(Path(log_path), MAX_LOG_LINES)
    except OSError:
        return ""
    lines = [r.text for r in records]
    message, _ = pick_message(data, exit_code=exit_code, policy=policy, log_lines=lines)
    return message
