"""Container logs as the runtime wrote them: CRI log files under the pod log directory.

Layout (the kubelet's): ``<pod_log_dir>/<namespace>_<name>_<uid>/<container>/<attempt>.log``.
Each line is ``<RFC3339Nano time> <stream> <tag> <message>``, where tag ``P`` marks a partial
line that continues on the next record and ``F`` a full one. Under the Docker runtime the file
at that path is Docker's own json-file log, which is read too. The pod's uid and the current
attempt (restartCount) come from the agent's status, so ``--previous`` is ``attempt - 1``.
A log is read across its rotated files (``log_files``), the kubelet's or Docker's, oldest
first; following it moves to the new live file when the old one is rotated away.
"""

from __future__ import annotations

import glob
import json
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from nodeagent.kubelet import logplan, logrotation


class LogsError(Exception):
    """The log can't be found; the message says which pod or container, and why."""


@dataclass(frozen=True)
class LogRecord:
    time: str
    stream: str  # stdout or stderr
    text: str  # a whole line, partial records joined


def _docker_record(line: str) -> LogRecord | None:
    """Docker's json-file format ({"log", "stream", "time"}), used under --runtime docker."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("log"), str):
        return None
    return LogRecord(str(entry.get("time", "")), str(entry.get("stream", "")), entry["log"])


def parse_lines(lines: Iterable[str]) -> Iterator[LogRecord]:
    """CRI (or Docker json-file) log records -> whole lines; others pass through as text."""
    pending: list[str] = []
    partial_docker = ""
    for raw in lines:
        line = raw.rstrip("\n")
        docker = _docker_record(line) if line.startswith("{") else None
        if docker is not None:
            # Docker splits long lines into records without a trailing newline.
            partial_docker += docker.text
            if partial_docker.endswith("\n"):
                yield LogRecord(docker.time, docker.stream, partial_docker[:-1])
                partial_docker = ""
            continue
        parts = line.split(" ", 3)
        if len(parts) < 3 or parts[2] not in ("P", "F"):
            yield LogRecord("", "", line)
            continue
        stamp, stream, tag = parts[:3]
        pending.append(parts[3] if len(parts) == 4 else "")
        if tag == "F":
            yield LogRecord(stamp, stream, "".join(pending))
            pending = []


def find_log(
    snapshot: dict[str, Any],
    pod_log_dir: Path,
    *,
    pod: str,
    namespace: str,
    container: str | None,
    previous: bool,
) -> Path:
    """The log file of one container instance, from the agent's status snapshot."""
    entry = next(
        (
            p
            for p in snapshot.get("pods", [])
            if p["metadata"]["name"] == pod and p["metadata"]["namespace"] == namespace
        ),
        None,
    )
    if entry is None:
        raise LogsError(f"pod {namespace}/{pod} not found on this node")
    statuses = [
        s
        for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses")
        for s in entry["status"].get(key, [])
    ]
    names = [s["name"] for s in entry["status"].get("containerStatuses", [])]
    if container is None:
        if len(names) != 1:
            raise LogsError(
                f"pod {namespace}/{pod} has containers {', '.join(names)}: choose one with -c"
            )
        container = names[0]
    status = next((s for s in statuses if s["name"] == container), None)
    if status is None:
        raise LogsError(f"container {container!r} not found in pod {namespace}/{pod}")
    attempt = int(status.get("restartCount", 0)) - (1 if previous else 0)
    if attempt < 0:
        raise LogsError(f"container {container!r} in pod {namespace}/{pod} has no previous run")
    uid = entry["metadata"]["uid"]
    path = pod_log_dir / f"{namespace}_{pod}_{uid}" / container / f"{attempt}.log"
    if not path.exists():
        raise LogsError(f"no log at {path} (is --pod-log-dir right?)")
    return path


def log_files(path: Path) -> list[Path]:
    """The files of one container instance's log, oldest first, the live one last.

    CRI runtimes: the kubelet's rotated ``<attempt>.log.<time>[.gz]`` beside the live file.
    Docker: the live path links to Docker's json-file log, whose rotated files are
    ``<file>.1`` (newest) to ``<file>.N``, gzipped when Docker compresses them."""
    if path.is_symlink():
        target = Path(os.path.realpath(path))
        prefix = target.name + "."
        rotated = []
        for sibling in target.parent.glob(glob.escape(prefix) + "*"):
            number = sibling.name[len(prefix) :].removesuffix(logplan.COMPRESS_SUFFIX)
            if number.isdigit():
                rotated.append((int(number), sibling))
        return [p for _, p in sorted(rotated, reverse=True)] + [target]
    names = logplan.log_files(str(path), logrotation.siblings(str(path)))
    return [Path(n) for n in names]


def tail(path: Path, lines: int | None) -> list[LogRecord]:
    """The last ``lines`` records (all when None) across the rotated files and the live one.

    With a count, the newest files are read first and older ones only while too few lines
    were found (a termination message reads 80 lines; it need not unzip a whole history)."""
    files = log_files(path)
    if lines is None:
        return list(parse_lines(logrotation.read_files(files)))
    for start in range(len(files) - 1, -1, -1):
        # Read through to the live file, so a record split across two files is joined.
        records = deque(parse_lines(logrotation.read_files(files[start:])), maxlen=lines)
        if len(records) == lines or start == 0:
            return list(records)
    return []


def follow(path: Path, out: TextIO, *, poll_s: float = 0.2) -> None:
    """Print new whole lines as they are written, until interrupted; after a rotation (the
    live file renamed away, a new one in its place) the new file is followed."""
    f = path.open(encoding="utf-8", errors="replace")
    try:
        f.seek(0, 2)
        buffer = ""
        while True:
            chunk = f.read()
            if not chunk:
                if _replaced(path, f):
                    f.close()
                    f = path.open(encoding="utf-8", errors="replace")
                    continue
                time.sleep(poll_s)
                continue
            buffer += chunk
            *complete, buffer = buffer.split("\n")
            for record in parse_lines(complete):
                out.write(record.text + "\n")
            out.flush()
    finally:
        f.close()


def _replaced(path: Path, f: TextIO) -> bool:
    try:
        return os.stat(path).st_ino != os.fstat(f.fileno()).st_ino
    except FileNotFoundError:
        return False  # between the rename and the reopen: the new file comes
