"""The local status endpoint: a tiny HTTP/1.1 server on a unix socket, read by the CLI.

Routes: ``GET /status`` (the daemon's snapshot as JSON) and ``GET /healthz`` ("ok").
Nothing else. It is deliberately not a general HTTP server:

- One request per connection, answered with ``Connection: close``. The only client is
  ``nodeagent status`` (and curl --unix-socket), which asks once and goes.
- The request head is bounded (``MAX_REQUEST_BYTES``) and the whole exchange has a deadline
  (``request_timeout_s``). A client that sends garbage gets a 400 and a client that sends
  nothing gets cut off, each in its own task, so neither delays other clients nor the agent.
- A failing ``snapshot()`` is a 500 for that request and a log line, never a dead server.

The socket is root-only (0600): the snapshot shows pod names, IPs and error messages. To leave
no moment in which the socket exists with looser permissions, it is bound inside a fresh
private (0700) directory, chmodded, listening, and only then renamed onto the public path.
This is used instead of a tightened umask because the umask is process-wide, and other threads
(blocking runtime SDK calls run in the default executor) may create files at the same moment.

An existing socket file at the path is removed only if nobody answers on it (left over from
a crash); if another agent is listening there, ``start`` fails rather than stealing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from nodeagent.log import get_logger

log = get_logger(__name__)

MAX_REQUEST_BYTES = 8 * 1024  # request line plus headers; ours are ~100 bytes
DEFAULT_REQUEST_TIMEOUT_S = 5.0
SOCKET_MODE = 0o600
DIR_MODE = 0o755
_MAX_SOCKET_PATH_BYTES = 107  # sun_path is 108 bytes with the terminating NUL

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}


class StatusServerError(RuntimeError):
    """The status socket could not be set up (path taken, not a socket, ...)."""


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class StatusServer:
    """Serves ``snapshot()`` at ``GET /status`` on the unix socket ``path``."""

    def __init__(
        self,
        path: str,
        snapshot: Callable[[], Mapping[str, Any]],
        *,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    ) -> None:
        self._path = Path(path)
        self._snapshot = snapshot
        self._timeout = request_timeout_s
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        # Identity of the socket file we created, so close() never unlinks a successor's.
        self._inode: tuple[int, int] | None = None

    @property
    def path(self) -> str:
        return str(self._path)

    async def start(self) -> None:
        if self._server is not None:
            return
        _make_parent(self._path.parent)
        if _existing_socket(self._path):
            if await _is_served(self._path):
                raise StatusServerError(f"another process is already serving at {self._path}")
            # A leftover of an agent that did not shut down cleanly; _bind_private's rename
            # replaces it atomically.
            log.info("status_socket_stale", path=str(self._path))
        sock, self._inode = _bind_private(self._path)
        try:
            self._server = await asyncio.start_unix_server(
                self._on_connection, sock=sock, limit=MAX_REQUEST_BYTES
            )
        except BaseException:
            sock.close()
            self._unlink_own_socket()
            raise
        log.info("status_server_listening", path=str(self._path))

    async def close(self) -> None:
        """Stop accepting, drop in-flight connections, remove our socket file. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()
        self._unlink_own_socket()

    def _unlink_own_socket(self) -> None:
        try:
            st = self._path.lstat()
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) == self._inode:
            self._path.unlink(missing_ok=True)
        self._inode = None

    # --- One connection ------------------------------------------------------------------

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the client went away or stalled; there is no one left to answer
        except Exception:
            log.exception("status_request_failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if task is not None:
                self._connections.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                method, target = await _read_request_head(reader)
        except TimeoutError:
            # Only while reading the head: a timeout halfway through writing a response must
            # not append a second response to the first.
            await _respond_briefly(writer, 408, "request timed out\n")
            return
        except _BadRequest as e:
            await _respond_briefly(writer, e.status, f"{e}\n")
            return
        async with asyncio.timeout(self._timeout):
            await self._answer(writer, method, target)

    async def _answer(self, writer: asyncio.StreamWriter, method: str, target: str) -> None:
        route = target.split("?", 1)[0]
        if route not in ("/status", "/healthz"):
            await _respond(writer, 404, "not found\n")
        elif method != "GET":
            await _respond(writer, 405, "only GET is supported\n", extra=(("Allow", "GET"),))
        elif route == "/healthz":
            await _respond(writer, 200, "ok\n")
        else:
            try:
                body = json.dumps(self._snapshot(), separators=(",", ":"))
            except Exception:
                # A bug in the snapshot (or an unserialisable value) must cost one answer,
                # not the server.
                log.exception("status_snapshot_failed")
                await _respond(writer, 500, "snapshot failed; see the agent's log\n")
                return
            await _respond(writer, 200, body, content_type="application/json")


async def _read_request_head(reader: asyncio.StreamReader) -> tuple[str, str]:
    """Read the request line and headers; return (method, target). Headers are ignored.

    Accepts bare LF line ends too, for people typing requests into nc/socat.
    """
    total = 0
    lines: list[bytes] = []
    while True:
        try:
            line = await reader.readline()
        except ValueError:  # a single line beyond the StreamReader limit
            raise _BadRequest(431, "request too large") from None
        if not line.endswith(b"\n"):
            raise asyncio.IncompleteReadError(line, None)  # EOF before the head ended
        total += len(line)
        if total > MAX_REQUEST_BYTES:
            raise _BadRequest(431, "request too large")
        if line in (b"\r\n", b"\n"):
            if lines:
                break
            continue  # RFC 9112 2.2: ignore empty lines before the request line
        lines.append(line)
    parts = lines[0].decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest(400, "malformed request line")
    return parts[0], parts[1]


async def _respond(
    writer: asyncio.StreamWriter,
    status: int,
    body: str,
    *,
    content_type: str = "text/plain; charset=utf-8",
    extra: tuple[tuple[str, str], ...] = (),
) -> None:
    payload = body.encode("utf-8")
    headers = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(payload)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in extra),
    ]
    writer.write(("\r\n".join(headers) + "\r\n\r\n").encode("latin-1") + payload)
    await writer.drain()


async def _respond_briefly(writer: asyncio.StreamWriter, status: int, body: str) -> None:
    # An error answer to a client that may not be reading at all: one short chance, no more.
    with contextlib.suppress(Exception):
        async with asyncio.timeout(0.5):
            await _respond(writer, status, body)


# --- Socket file handling ------------------------------------------------------------------


def _make_parent(parent: Path) -> None:
    if parent.is_dir():
        return  # an existing directory keeps the permissions its owner chose
    parent.mkdir(parents=True, exist_ok=True)
    parent.chmod(DIR_MODE)  # mkdir's mode is filtered by the umask; we want exactly 0755


def _existing_socket(path: Path) -> bool:
    """Whether a socket file is already at ``path``; refuse to touch anything else."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode):
        raise StatusServerError(f"{path} exists and is not a socket; refusing to replace it")
    return True


async def _is_served(path: Path) -> bool:
    """Whether someone accepts connections on the socket file at ``path``."""
    try:
        async with asyncio.timeout(1.0):
            _, writer = await asyncio.open_unix_connection(str(path))
    except (ConnectionRefusedError, FileNotFoundError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True


def _bind_private(path: Path) -> tuple[socket.socket, tuple[int, int]]:
    """Bind and listen on a socket that appears at ``path`` already 0600. See the docstring.

    Returns the socket and the (device, inode) of its file, to recognise it later.
    """
    private_dir = Path(tempfile.mkdtemp(prefix=".", dir=path.parent))  # mode 0700
    staging = private_dir / "s"
    if len(os.fsencode(staging)) > _MAX_SOCKET_PATH_BYTES:
        private_dir.rmdir()
        raise StatusServerError(f"{path.parent} is too deep for a unix socket path")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(staging))
        os.chmod(staging, SOCKET_MODE)
        sock.listen(64)
        st = os.stat(staging)  # rename keeps the inode
        os.replace(staging, path)
    except BaseException:
        sock.close()
        staging.unlink(missing_ok=True)
        raise
    finally:
        with contextlib.suppress(OSError):
            private_dir.rmdir()
    sock.setblocking(False)
    return sock, (st.st_dev, st.st_ino)
