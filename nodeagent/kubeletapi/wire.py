"""HTTP/1.1 over TLS for the kubelet API: one request per connection, bounded and timed.

Like ``nodeagent.httplistener`` (whose limits and reasons it shares) it is no framework: the
head is read within ``HEAD_TIMEOUT_S`` and ``MAX_REQUEST_BYTES`` (query and headers are kept
this time: tokens and log options live there), ``handle`` answers, the connection closes.
An answer is whole bytes or a stream of chunks (``kubectl logs -f``); each write waits for
the client at most ``WRITE_TIMEOUT_S``, so a client that stops reading is dropped and never
holds the agent's memory or a task for long. The TLS handshake has its own timeout
(asyncio's ``ssl_handshake_timeout``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from nodeagent.httplistener import MAX_REQUEST_BYTES, REASONS
from nodeagent.log import get_logger

log = get_logger("nodeagent.kubeletapi")

HEAD_TIMEOUT_S = 10.0
WRITE_TIMEOUT_S = 30.0
HANDSHAKE_TIMEOUT_S = 10.0
_MORE_REASONS = {401: "Unauthorized", 403: "Forbidden", 500: "Internal Server Error"}
_MORE_REASONS[501] = "Not Implemented"
_MORE_REASONS[502] = "Bad Gateway"


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # percent-decoded
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]  # names lower-cased
    peer_cert: Mapping[str, Any] | None  # ssl's getpeercert(): verified against the client CA
    raw_query: str = ""  # as sent, for relaying
    # Every header line as sent (name, value), repeated ones too: SPDY's
    # X-Stream-Protocol-Version is one line per protocol, and a relay must keep them apart.
    header_lines: tuple[tuple[str, str], ...] = ()

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    # A streamed body (chunked); ``body`` is ignored when it is set.
    stream: AsyncIterator[bytes] | None = field(default=None, compare=False)
    # The connection itself, for an upgrade (exec, attach, port-forward): it answers alone.
    takeover: Takeover | None = field(default=None, compare=False)


Takeover = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


Handler = Callable[[Request], Awaitable[Response]]


class BadRequest(Exception):
    """The head is malformed or too large."""


class HttpsServer:
    """Listens on ``host:port`` with ``context`` and answers each request with ``handle``."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, handle: Handler) -> None:
        self.host, self.port = host, port
        self._context = context
        self._handle = handle
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None or not self._server.sockets:
            return self.host, self.port
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._on_connection,
            self.host or None,
            self.port,
            ssl=self._context,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S,
            limit=MAX_REQUEST_BYTES,
        )

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._connections):
            task.cancel()  # a follower streams forever otherwise
        await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError, ssl.SSLError):
            pass  # the client went away, stalled or broke TLS: nobody left to answer
        except Exception:
            log.exception("kubelet_api_request_failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if task is not None:
                self._connections.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(HEAD_TIMEOUT_S):
                method, target, lines = await read_head(reader)
        except BadRequest as exc:
            await _write(writer, Response(400, f"{exc}\n".encode()))
            return
        split = urlsplit(target)
        request = Request(
            method=method,
            path=unquote(split.path),
            query=parse_qs(split.query, keep_blank_values=True),
            headers={name.lower(): value for name, value in lines},
            peer_cert=writer.get_extra_info("peercert"),
            raw_query=split.query,
            header_lines=tuple(lines),
        )
        try:
            response = await self._handle(request)
        except Exception:
            # A bug behind one route costs that answer, not the server.
            log.exception("kubelet_api_request_failed", path=request.path)
            response = Response(500, b"internal error; see the agent's log\n")
        if response.takeover is not None:
            await response.takeover(reader, writer)
            return
        await _write(writer, response)


async def read_head(reader: asyncio.StreamReader) -> tuple[str, str, list[tuple[str, str]]]:
    """(method, target, header lines); BadRequest when malformed or over the size limit."""
    lines: list[str] = []
    total = 0
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            raise BadRequest("request head too large") from None
        total += len(line)
        if total > MAX_REQUEST_BYTES:
            raise BadRequest("request head too large")
        if line in (b"\r\n", b"\n"):
            if lines:
                break
            continue  # RFC 9112 2.2: empty lines before the request line are ignored
        lines.append(line.decode("latin-1").rstrip("\r\n"))
    parts = lines[0].split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        raise BadRequest("malformed request line")
    headers: list[tuple[str, str]] = []
    for header in lines[1:]:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            raise BadRequest(f"malformed header line {header[:40]!r}")
        headers.append((name.strip(), value.strip()))
    return parts[0], parts[1], headers


async def _write(writer: asyncio.StreamWriter, response: Response) -> None:
    reason = REASONS.get(response.status) or _MORE_REASONS.get(response.status, "")
    head = [f"HTTP/1.1 {response.status} {reason}", f"Content-Type: {response.content_type}"]
    head.append("Connection: close")
    if response.stream is None:
        head.append(f"Content-Length: {len(response.body)}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.body)
        await _drain(writer)
        return
    head.append("Transfer-Encoding: chunked")
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
    try:
        async for chunk in response.stream:
            if chunk:
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await _drain(writer)
    finally:
        # The stream's own cleanup (closing its file) runs whether or not the client stayed.
        aclose = getattr(response.stream, "aclose", None)
        if aclose is not None:
            await aclose()
    writer.write(b"0\r\n\r\n")
    await _drain(writer)


async def _drain(writer: asyncio.StreamWriter) -> None:
    async with asyncio.timeout(WRITE_TIMEOUT_S):
        await writer.drain()
