"""``/exec``, ``/attach`` and ``/portForward``: sessions relayed to the runtime's streaming server.

As the kubelet with a CRI runtime: the request names the pod and container (and, in the
query, the command and which of stdin, stdout, stderr and tty); the runtime is asked for a
session (CRI Exec, Attach or PortForward) and answers with the URL of its own streaming
server; the client's request, upgrade headers and all (SPDY/3.1 or WebSocket, whatever the
client and that server agree on), is sent there and from then on the bytes are copied both
ways until either side closes. The protocols themselves (channels, resize, the exit status
on the error channel) are the streaming server's; nothing here parses them.

``session`` is the pure part: the path and query -> the runtime's request, or the 400/404
naming what is wrong. A runtime without a streaming server (Docker) gets 501.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from nodeagent.runtime.base import SandboxInfo, SandboxState, StreamKind, StreamRequest

CONNECT_TIMEOUT_S = 10.0
WRITE_TIMEOUT_S = 30.0
_KINDS = {"exec": StreamKind.EXEC, "attach": StreamKind.ATTACH}
_KINDS["portForward"] = StreamKind.PORT_FORWARD
_DROPPED = ("host", "authorization")  # ours to check, not the streaming server's


@dataclass(frozen=True)
class Refusal:
    code: int
    message: str


def _flag(query: Mapping[str, list[str]], name: str) -> bool:
    return (query.get(name) or ["false"])[0].lower() in ("1", "true", "t", "yes", "y")


def session(
    parts: Sequence[str],
    query: Mapping[str, list[str]],
    pods: list[dict[str, Any]],
    sandboxes: Sequence[SandboxInfo],
) -> StreamRequest | Refusal:
    """``parts``: the path's segments, ``["exec", ns, pod, container]`` and the like."""
    kind = _KINDS.get(parts[0]) if parts else None
    wanted = 3 if kind is StreamKind.PORT_FORWARD else 4
    if kind is None or len(parts) != wanted or not all(parts):
        return Refusal(
            400, f"expected /{parts[0]}/{{namespace}}/{{pod}}" + "/{container}" * (wanted == 4)
        )
    namespace, name = parts[1], parts[2]
    pod = next(
        (
            p
            for p in pods
            if (p["metadata"]["namespace"], p["metadata"]["name"]) == (namespace, name)
        ),
        None,
    )
    if pod is None:
        return Refusal(404, f"pod {namespace}/{name} not found on this node")
    if kind is StreamKind.PORT_FORWARD:
        return _port_forward(pod, query, sandboxes)
    container = parts[3]
    statuses = [
        s
        for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses")
        for s in pod["status"].get(key) or []
    ]
    status = next((s for s in statuses if s["name"] == container), None)
    if status is None or not status.get("containerID"):
        return Refusal(404, f"container {container!r} not found in pod {namespace}/{name}")
    if "running" not in (status.get("state") or {}):
        return Refusal(400, f"container {container!r} in pod {namespace}/{name} is not running")
    stdin, stdout, stderr = (_flag(query, n) for n in ("stdin", "stdout", "stderr"))
    if not (stdin or stdout or stderr):
        return Refusal(400, "at least one of stdin, stdout, stderr must be true")
    command = tuple(query.get("command") or ())
    if kind is StreamKind.EXEC and not command:
        return Refusal(400, "you must specify at least 1 command")
    return StreamRequest(
        kind,
        str(status["containerID"]).partition("://")[2],
        command=command,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        tty=_flag(query, "tty"),
    )


def _port_forward(
    pod: dict[str, Any], query: Mapping[str, list[str]], sandboxes: Sequence[SandboxInfo]
) -> StreamRequest | Refusal:
    meta = pod["metadata"]
    sandbox = next(
        (s for s in sandboxes if s.uid == meta["uid"] and s.state is SandboxState.READY), None
    )
    if sandbox is None:
        return Refusal(400, f"pod {meta['namespace']}/{meta['name']} has no running sandbox")
    ports = []
    for value in query.get("port") or ():
        if not value.isdigit() or not 0 < int(value) < 65536:
            return Refusal(400, f"port: {value!r} is not a port number")
        ports.append(int(value))
    return StreamRequest(StreamKind.PORT_FORWARD, sandbox.id, ports=tuple(ports))


def relay_head(method: str, url: str, raw_query: str, headers: Sequence[tuple[str, str]]) -> bytes:
    """The client's request, re-addressed to the streaming server's ``url``."""
    target = urlsplit(url)
    path = target.path or "/"
    query = "&".join(q for q in (target.query, raw_query) if q)
    lines = [f"{method} {path}{'?' + query if query else ''} HTTP/1.1", f"Host: {target.netloc}"]
    lines += [f"{k}: {v}" for k, v in headers if k.lower() not in _DROPPED]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def relay(
    url: str,
    head: bytes,
    client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    """Send ``head`` to the streaming server, then copy bytes both ways until one side ends."""
    target = urlsplit(url)
    tls = None
    if target.scheme == "https":  # the runtime's own self-signed server (TLS streaming)
        import ssl

        tls = ssl.create_default_context()
        tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
    async with asyncio.timeout(CONNECT_TIMEOUT_S):
        up_reader, up_writer = await asyncio.open_connection(
            target.hostname, target.port or (443 if tls else 80), ssl=tls
        )
    reader, writer = client
    try:
        up_writer.write(head)
        await up_writer.drain()
        upstream = asyncio.create_task(_pump(reader, up_writer))
        try:
            await _pump(up_reader, writer)
        finally:
            upstream.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await upstream
    finally:
        up_writer.close()
        with contextlib.suppress(Exception):
            await up_writer.wait_closed()


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await source.read(64 * 1024):
            sink.write(data)
            async with asyncio.timeout(WRITE_TIMEOUT_S):  # a reader that stopped reading
                await sink.drain()
    if sink.can_write_eof():
        with contextlib.suppress(Exception):
            sink.write_eof()  # the client closed its side: the session's stdin ends
