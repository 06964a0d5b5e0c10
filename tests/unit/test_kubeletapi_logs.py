"""PodLogOptions from the query, and the log stream they shape (tail, since, limit, follow)."""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path

import pytest

from nodeagent.kubeletapi import logs
from tests.unit.rig import eventually


def options(**query: str) -> logs.LogOptions:
    return logs.parse_options({k: [v] for k, v in query.items()}, now=1000.0)


def test_options_parse_as_the_api_validates_them() -> None:
    assert options() == logs.LogOptions()
    parsed = options(follow="true", previous="1", timestamps="", tailLines="0", limitBytes="5")
    assert parsed == logs.LogOptions(True, True, True, tail_lines=0, limit_bytes=5)
    assert options(sinceSeconds="10").since == 990.0
    assert options(sinceTime="1970-01-01T00:16:40Z").since == 1000.0


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"tailLines": "-1"}, "tailLines: must be greater than or equal to 0"),
        ({"limitBytes": "0"}, "limitBytes: must be greater than or equal to 1"),
        ({"sinceSeconds": "0"}, "sinceSeconds: must be greater than or equal to 1"),
        ({"tailLines": "ten"}, "tailLines: 'ten' is not an integer"),
        ({"follow": "maybe"}, "follow: 'maybe' is not a boolean"),
        ({"sinceTime": "yesterday"}, "sinceTime: 'yesterday' is not an RFC 3339 time"),
        ({"sinceSeconds": "5", "sinceTime": "2026-01-01T00:00:00Z"}, "at most one"),
    ],
)
def test_bad_options_name_the_parameter(query: dict[str, str], message: str) -> None:
    with pytest.raises(logs.InvalidOptions, match=message):
        options(**query)


def test_parse_time_takes_nanoseconds_and_offsets() -> None:
    base = datetime.datetime(2026, 12, 6, 22, 0, tzinfo=datetime.UTC).timestamp()
    assert logs.parse_time("2026-12-06T22:00:00.123456789Z") == pytest.approx(base + 0.123456)
    assert logs.parse_time("2026-12-06T23:00:00+01:00") == base
    assert logs.parse_time("2026-12-06T22:00:00") is None  # no zone: not RFC 3339
    assert logs.parse_time("") is None


CRI = (
    "2026-12-06T22:00:01.000000001Z stdout F one\n"
    "2026-12-06T22:00:02.5Z stderr P tw\n"
    "2026-12-06T22:00:02.6Z stderr F o\n"
    "2026-12-06T22:00:03Z stdout F three\n"
)
T2 = logs.parse_time("2026-12-06T22:00:02Z")


async def read(path: Path, opts: logs.LogOptions, running: bool = False) -> bytes:
    chunks = [c async for c in logs.stream(path, opts, running=lambda: running)]
    return b"".join(chunks)


async def test_stream_tails_filters_stamps_and_limits(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    path.write_text(CRI)
    assert await read(path, logs.LogOptions()) == b"one\ntwo\nthree\n"
    assert await read(path, logs.LogOptions(tail_lines=2)) == b"two\nthree\n"
    assert await read(path, logs.LogOptions(tail_lines=0)) == b""
    assert await read(path, logs.LogOptions(since=T2)) == b"two\nthree\n"
    assert await read(path, logs.LogOptions(limit_bytes=6)) == b"one\ntw"
    stamped = await read(path, logs.LogOptions(timestamps=True, tail_lines=1))
    assert stamped == b"2026-12-06T22:00:03Z three\n"


async def test_stream_reads_docker_json_file_logs(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    path.write_text(
        '{"log":"hello\\n","stream":"stdout","time":"2026-12-06T22:00:01.1Z"}\n'
        '{"log":"wor","stream":"stdout","time":"2026-12-06T22:00:02.1Z"}\n'
        '{"log":"ld\\n","stream":"stdout","time":"2026-12-06T22:00:02.2Z"}\n'
    )
    assert await read(path, logs.LogOptions()) == b"hello\nworld\n"
    assert await read(path, logs.LogOptions(since=T2)) == b"world\n"


async def test_follow_sends_appended_lines_and_ends_when_the_container_stops(
    tmp_path: Path,
) -> None:
    path = tmp_path / "0.log"
    path.write_text(CRI)
    running = True
    got: list[bytes] = []

    async def follow() -> None:
        opts = logs.LogOptions(follow=True, tail_lines=1)
        async for chunk in logs.stream(path, opts, running=lambda: running):
            got.append(chunk)

    task = asyncio.create_task(follow())
    async with asyncio.timeout(10):
        await eventually(lambda: got == [b"three\n"], what="the tail")
        with path.open("a") as f:
            f.write("2026-12-06T22:00:04Z stdout F fo")  # a torn write waits for its end
            f.flush()
            f.write("ur\n")
        await eventually(lambda: len(got) == 2, what="the line appended")
        with path.open("a") as f:
            f.write("2026-12-06T22:00:05Z stdout P fi\n")  # a partial record waits too
            f.flush()
            f.write("2026-12-06T22:00:05Z stdout F ve\n")
        await eventually(lambda: len(got) == 3, what="the partial record, whole")
        assert not task.done()
        running = False
        await task
    assert got == [b"three\n", b"four\n", b"five\n"]
