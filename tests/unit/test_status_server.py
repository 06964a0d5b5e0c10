"""The status server on a real unix socket, and the client's error messages."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from nodeagent.server.client import StatusUnavailable, fetch_status
from nodeagent.server.status import StatusServer, StatusServerError

SNAPSHOT: dict[str, Any] = {"node": {"name": "n1"}, "pods": [], "services": [], "errors": []}


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "status.sock"  # "run" does not exist yet: start() creates it


@pytest.fixture
async def server(sock_path: Path) -> AsyncIterator[StatusServer]:
    srv = StatusServer(str(sock_path), lambda: SNAPSHOT, request_timeout_s=0.5)
    await srv.start()
    yield srv
    await srv.close()


async def raw_request(path: Path, data: bytes) -> bytes:
    """Send bytes, half-close, read everything the server answers."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(data)
    await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer


def exists(path: Path) -> bool:
    # A plain function: ruff's async checks object to path lookups inside coroutines.
    return os.path.exists(path)


async def fetch(path: Path) -> dict[str, Any]:
    # The client blocks; the server lives on this event loop, so the client gets a thread.
    return await asyncio.to_thread(fetch_status, str(path), 5.0)


async def test_serves_snapshot_as_json(server: StatusServer, sock_path: Path) -> None:
    assert await fetch(sock_path) == SNAPSHOT
    answer = await raw_request(sock_path, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: application/json" in head
    assert json.loads(body) == SNAPSHOT


async def test_snapshot_is_taken_per_request(sock_path: Path) -> None:
    count = {"n": 0}

    def snapshot() -> Mapping[str, Any]:
        count["n"] += 1
        return {"n": count["n"]}

    srv = StatusServer(str(sock_path), snapshot)
    await srv.start()
    try:
        assert (await fetch(sock_path))["n"] == 1
        assert (await fetch(sock_path))["n"] == 2
    finally:
        await srv.close()


async def test_socket_mode_and_parent_dir(server: StatusServer, sock_path: Path) -> None:
    st = os.stat(sock_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(sock_path.parent).st_mode) == 0o755
    # No staging directory is left behind next to the socket.
    assert os.listdir(sock_path.parent) == ["status.sock"]


async def test_healthz(server: StatusServer, sock_path: Path) -> None:
    answer = await raw_request(sock_path, b"GET /healthz HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b"\r\n\r\nok\n")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /nope HTTP/1.1\r\n\r\n", b"404"),
        (b"GET /status/x HTTP/1.1\r\n\r\n", b"404"),
        (b"POST /status HTTP/1.1\r\nContent-Length: 0\r\n\r\n", b"405"),
        (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", b"400"),
        (b"GET /status\n\n", b"400"),  # HTTP/0.9 style
        (b"GET /status HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", b"431"),
    ],
)
async def test_bad_requests_get_errors(
    server: StatusServer, sock_path: Path, request_bytes: bytes, status: bytes
) -> None:
    answer = await raw_request(sock_path, request_bytes)
    assert answer.split(b" ", 2)[1] == status
    assert await fetch(sock_path) == SNAPSHOT  # and the server carries on


async def test_bare_lf_and_query_string_accepted(server: StatusServer, sock_path: Path) -> None:
    answer = await raw_request(sock_path, b"GET /status?pretty=1 HTTP/1.0\n\n")
    assert answer.startswith(b"HTTP/1.1 200 OK")


async def test_client_that_hangs_up_early(server: StatusServer, sock_path: Path) -> None:
    for data in (b"", b"GET /sta", b"\x00\xff" * 100):
        await raw_request(sock_path, data)
    assert await fetch(sock_path) == SNAPSHOT


async def test_slow_client_does_not_block_others(server: StatusServer, sock_path: Path) -> None:
    reader, writer = await asyncio.open_unix_connection(str(sock_path))
    writer.write(b"GET /status HTTP/1.1\r\n")  # ...and then nothing more
    await writer.drain()
    # Others are served while the slow one dawdles.
    assert await asyncio.wait_for(fetch(sock_path), 0.4) == SNAPSHOT
    # The slow one is cut off at the deadline (0.5 s in the fixture) with a 408.
    answer = await asyncio.wait_for(reader.read(), 3)
    assert answer.startswith(b"HTTP/1.1 408")
    writer.close()


async def test_failing_snapshot_is_a_500_not_a_crash(sock_path: Path) -> None:
    def snapshot() -> Mapping[str, Any]:
        raise RuntimeError("bug")

    srv = StatusServer(str(sock_path), snapshot)
    await srv.start()
    try:
        with pytest.raises(StatusUnavailable, match="answered HTTP 500"):
            await fetch(sock_path)
        answer = await raw_request(sock_path, b"GET /healthz HTTP/1.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200")
    finally:
        await srv.close()


async def test_close_removes_socket_and_is_idempotent(sock_path: Path) -> None:
    srv = StatusServer(str(sock_path), lambda: SNAPSHOT)
    await srv.start()
    await srv.close()
    assert not exists(sock_path)
    await srv.close()


async def test_close_drops_idle_connections(sock_path: Path) -> None:
    srv = StatusServer(str(sock_path), lambda: SNAPSHOT, request_timeout_s=60)
    await srv.start()
    reader, writer = await asyncio.open_unix_connection(str(sock_path))
    await asyncio.sleep(0.05)  # let the server accept it
    await asyncio.wait_for(srv.close(), 2)  # does not wait out the 60 s deadline
    assert await asyncio.wait_for(reader.read(), 2) == b""
    writer.close()


async def test_stale_socket_is_replaced(sock_path: Path) -> None:
    os.mkdir(sock_path.parent)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock_path))
    stale.close()  # the file stays, nobody listens: what a crash leaves behind
    srv = StatusServer(str(sock_path), lambda: SNAPSHOT)
    await srv.start()
    try:
        assert await fetch(sock_path) == SNAPSHOT
    finally:
        await srv.close()


async def test_live_socket_is_not_stolen(server: StatusServer, sock_path: Path) -> None:
    second = StatusServer(str(sock_path), lambda: {"other": True})
    with pytest.raises(StatusServerError, match="already serving"):
        await second.start()
    assert await fetch(sock_path) == SNAPSHOT


async def test_refuses_to_replace_a_regular_file(sock_path: Path) -> None:
    os.mkdir(sock_path.parent)
    with open(sock_path, "w") as f:  # noqa: ASYNC230 - test setup, nothing else is running
        f.write("precious")
    with pytest.raises(StatusServerError, match="not a socket"):
        await StatusServer(str(sock_path), lambda: SNAPSHOT).start()
    assert os.stat(sock_path).st_size == len("precious")


async def test_close_leaves_a_successors_socket(sock_path: Path) -> None:
    first = StatusServer(str(sock_path), lambda: SNAPSHOT)
    await first.start()
    os.unlink(sock_path)  # someone removed ours and a new agent took the path
    second = StatusServer(str(sock_path), lambda: {"second": True})
    await second.start()
    await first.close()
    assert exists(sock_path)
    assert await fetch(sock_path) == {"second": True}
    await second.close()


# --- Client messages ---------------------------------------------------------------------


def test_missing_socket_message(tmp_path: Path) -> None:
    path = tmp_path / "absent.sock"
    with pytest.raises(StatusUnavailable) as info:
        fetch_status(str(path))
    assert str(info.value) == (
        f"no agent is listening at {path}: is `nodeagent run` running? (--status-socket)"
    )


def test_leftover_socket_message(tmp_path: Path) -> None:
    path = tmp_path / "left.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()
    with pytest.raises(StatusUnavailable, match=r"no agent is listening.*left over"):
        fetch_status(str(path))


def test_permission_denied_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Tests run as root, for whom 0600 is no obstacle; simulate what a normal user gets.
    class DeniedSocket(socket.socket):
        def connect(self, address: Any) -> None:
            raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("socket.socket", DeniedSocket)
    with pytest.raises(StatusUnavailable, match=r"permission denied .*: are you root\?"):
        fetch_status(str(tmp_path / "x.sock"))


async def test_non_http_peer_message(tmp_path: Path) -> None:
    path = tmp_path / "echo.sock"

    async def babble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"hello there\n")
        writer.close()

    srv = await asyncio.start_unix_server(babble, path=str(path))
    try:
        with pytest.raises(StatusUnavailable, match="does not speak HTTP"):
            await fetch(path)
    finally:
        srv.close()
        await srv.wait_closed()
