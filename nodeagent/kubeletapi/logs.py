"""``/containerLogs/{namespace}/{pod}/{container}``: a container's log as the kubelet serves it.

The query is the API's PodLogOptions (``parse_options``, pure, validated as the API server
validates it: tailLines >= 0, limitBytes >= 1, sinceSeconds >= 1, not both sinceSeconds and
sinceTime). The file is the one ``nodeagent logs`` reads (``nodeagent.podlogs``: CRI format or
Docker json-file, partial records joined); each line is written with its newline, prefixed
with the runtime's own timestamp when ``timestamps`` is set. ``tailLines`` counts from the
end of the file, then ``since*`` filters, then ``limitBytes`` cuts, as the kubelet's reader.

``follow`` keeps reading what is appended, polling the file, until the client leaves or the
container instance stops running and its file has no more to give. File reads run in a
thread: a large log never blocks the loop.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from nodeagent.podlogs import LogRecord, parse_lines

FOLLOW_POLL_S = 0.2
READ_CHUNK = 256 * 1024
_TRUE = ("", "1", "t", "true", "y", "yes")  # "?follow" alone means true, as a flag would
_FALSE = ("0", "f", "false", "n", "no")


class InvalidOptions(ValueError):
    """A malformed or contradictory query; the message names the parameter."""


@dataclass(frozen=True)
class LogOptions:
    follow: bool = False
    previous: bool = False
    timestamps: bool = False
    tail_lines: int | None = None
    limit_bytes: int | None = None
    since: float | None = None  # epoch seconds; records before it are skipped


def parse_options(query: Mapping[str, list[str]], *, now: float) -> LogOptions:
    def flag(name: str) -> bool:
        value = (query.get(name) or ["false"])[0].lower()
        if value in _TRUE or value in _FALSE:
            return value in _TRUE
        raise InvalidOptions(f"{name}: {value!r} is not a boolean")

    def number(name: str, least: int) -> int | None:
        values = query.get(name)
        if not values:
            return None
        try:
            value = int(values[0])
        except ValueError:
            raise InvalidOptions(f"{name}: {values[0]!r} is not an integer") from None
        if value < least:
            raise InvalidOptions(f"{name}: must be greater than or equal to {least}")
        return value

    since_seconds = number("sinceSeconds", 1)
    since_time = next(iter(query.get("sinceTime") or []), None)
    if since_seconds is not None and since_time is not None:
        raise InvalidOptions("sinceSeconds and sinceTime: at most one may be specified")
    since = now - since_seconds if since_seconds is not None else None
    if since_time is not None:
        since = parse_time(since_time)
        if since is None:
            raise InvalidOptions(f"sinceTime: {since_time!r} is not an RFC 3339 time")
    return LogOptions(
        follow=flag("follow"),
        previous=flag("previous"),
        timestamps=flag("timestamps"),
        tail_lines=number("tailLines", 0),
        limit_bytes=number("limitBytes", 1),
        since=since,
    )


def parse_time(text: str) -> float | None:
    """RFC 3339 (nanoseconds allowed, which ``fromisoformat`` refuses) -> epoch seconds."""
    head, dot, rest = text.strip().partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        fraction, zone = rest[:digits], rest[digits:]
        text = f"{head}.{(fraction + '000000')[:6]}{zone}"
    try:
        parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.timestamp()


def render(records: Iterable[LogRecord], options: LogOptions) -> Iterable[bytes]:
    """The lines to send, since-filtered, timestamped on request (limitBytes is cut later)."""
    for record in records:
        if options.since is not None:
            stamp = parse_time(record.time) if record.time else None
            if stamp is not None and stamp < options.since:
                continue
        prefix = f"{record.time} " if options.timestamps and record.time else ""
        yield f"{prefix}{record.text}\n".encode()


def _read_from(path: Path, offset: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(READ_CHUNK)


def _complete_lines(data: bytes) -> tuple[list[str], int]:
    """The whole lines in ``data`` and how many bytes they take (a torn tail waits)."""
    end = data.rfind(b"\n") + 1
    text = data[:end].decode("utf-8", errors="replace")
    return text.splitlines(), end


def _partial(line: str) -> bool:
    """A record continued by the next line: CRI tag ``P``, or Docker's split record."""
    if line.startswith("{"):
        try:
            entry = json.loads(line)
        except ValueError:
            return False
        text = entry.get("log") if isinstance(entry, dict) else None
        return isinstance(text, str) and not text.endswith("\n")
    parts = line.split(" ", 3)
    return len(parts) >= 3 and parts[2] == "P"


def _whole_records(lines: list[str]) -> tuple[list[str], list[str]]:
    """(lines that end whole records, the trailing partial ones to carry)."""
    end = len(lines)
    while end and _partial(lines[end - 1]):
        end -= 1
    return lines[:end], lines[end:]


def _initial(path: Path, tail_lines: int | None) -> tuple[list[LogRecord], int]:
    with path.open("rb") as f:
        data = f.read()
    lines, end = _complete_lines(data)
    records = parse_lines(lines)
    kept = list(deque(records, maxlen=tail_lines) if tail_lines is not None else records)
    return kept, end


async def stream(
    path: Path, options: LogOptions, *, running: Callable[[], bool]
) -> AsyncIterator[bytes]:
    """The log's bytes as they are to be sent; ``running`` says whether to keep following."""
    left = options.limit_bytes
    records, offset = await asyncio.to_thread(_initial, path, options.tail_lines)
    while True:
        for chunk in render(records, options):
            if left is not None:
                chunk = chunk[:left]
                left -= len(chunk)
            yield chunk
            if left == 0:
                return
        if not options.follow:
            return
        records = []
        carried: list[str] = []  # partial records waiting for the line that ends them
        while not records:
            # Asked before reading: a last line written just before the container stopped
            # is read before the answer "not running" ends the stream.
            was_running = running()
            data = await asyncio.to_thread(_read_from, path, offset)
            lines, used = _complete_lines(data)
            if not used and len(data) == READ_CHUNK:
                lines, used = [data.decode("utf-8", errors="replace")], len(data)  # no newline
            offset += used
            complete, carried = _whole_records(carried + lines)
            records = list(parse_lines(complete))
            if records:
                break
            if not used and not was_running:
                return
            await asyncio.sleep(FOLLOW_POLL_S)


def now() -> float:
    return time.time()
