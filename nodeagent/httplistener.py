"""A tiny HTTP/1.1 listener for the agent's plain-text endpoints (metrics, health checks).

The endpoints answer a handful of fixed paths with small bodies, to Prometheus, load
balancers and curl; one request per connection, answered and closed. That needs no HTTP
framework: the request line is read (the headers are read, bounded, and ignored), the
``respond`` callback gives status, headers and body, and the connection closes. A client
that stalls past ``REQUEST_TIMEOUT_S``, sends more than ``MAX_REQUEST_BYTES`` of head or
garbage is dropped without an answer, and never disturbs the other connections.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping

from nodeagent.log import get_logger

log = get_logger("nodeagent.http")

MAX_REQUEST_BYTES = 8 * 1024
REQUEST_TIMEOUT_S = 5.0
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}

# (status, extra headers, body)
Answer = tuple[int, Mapping[str, str], bytes]
# (method, path without the query) -> the answer
Responder = Callable[[str, str], Answer]


class HttpListener:
    """One listening socket answering every request with ``respond(method, path)``."""

    def __init__(self, host: str, port: int, respond: Responder, *, name: str) -> None:
        """``name`` tells the log which endpoint failed."""
        self.host, self.port = host, port
        self._respond = respond
        self._name = name
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens (the real port when bound to port 0)."""
        if self._server is None or not self._server.sockets:
            return self.host, self.port
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def start(self) -> None:
        """Listen; OSError (a taken port, say) goes to the caller."""
        self._server = await asyncio.start_server(
            self._on_connection, self.host or None, self.port, limit=MAX_REQUEST_BYTES
        )

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                parts = (await _request_line(reader)).split()
                answer: Answer = (400, {}, b"malformed request line\n")
                if len(parts) == 3 and parts[2].startswith("HTTP/1."):
                    answer = self._respond(parts[0], parts[1].split("?", 1)[0])
                status, headers, body = answer
                head = f"HTTP/1.1 {status} {REASONS.get(status, '')}\r\n"
                head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                writer.write(head.encode("latin-1") + body)
                await writer.drain()
        except (
            ConnectionError,
            TimeoutError,
            ValueError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            pass  # a client that went away, stalled or sent garbage: nobody to answer
        except Exception:
            log.exception("http_request_failed", endpoint=self._name)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _request_line(reader: asyncio.StreamReader) -> str:
    """The request line; the headers are read (bounded) and ignored."""
    first = ""
    total = 0
    while True:
        line = await reader.readuntil(b"\n")  # ValueError past the limit
        total += len(line)
        if total > MAX_REQUEST_BYTES:
            raise ValueError("request head too large")
        if line in (b"\r\n", b"\n"):
            if first:
                return first
            continue  # blank lines before a request line are tolerated (RFC 9112 2.2)
        if not first:
            first = line.decode("latin-1").strip()
