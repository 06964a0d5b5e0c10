"""Running a Handler (exec, httpGet, tcpSocket, grpc) against a container.

Shared by lifecycle hooks and probes, so both mean the same thing by "success": exit code 0,
HTTP 200-399, a TCP connect, a SERVING health reply. Every check is bounded by its timeout.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from nodeagent.model.pod import (
    Container,
    ExecAction,
    GRPCAction,
    Handler,
    HTTPGetAction,
    TCPSocketAction,
)
from nodeagent.runtime.base import ContainerID, Runtime, RuntimeFailure

USER_AGENT = "kube-probe/1.30"
_MAX_RESPONSE_HEAD = 16 * 1024


@dataclass(frozen=True)
class Outcome:
    ok: bool
    message: str = ""


@dataclass(frozen=True)
class Target:
    """Where a handler runs: the container (for exec) and the pod's address (for network)."""

    runtime: Runtime
    container_id: ContainerID
    container: Container
    pod_ip: str


def resolve_port(container: Container, port: int | str) -> int | None:
    if isinstance(port, int):
        return port
    for p in container.ports:
        if p.name == port:
            return p.container_port
    return None


async def run_handler(handler: Handler, target: Target, *, timeout_s: float) -> Outcome:
    try:
        if isinstance(handler, ExecAction):
            return await _exec(handler, target, timeout_s)
        if isinstance(handler, GRPCAction):
            return Outcome(False, "grpc handlers are not supported yet")
        port = resolve_port(target.container, handler.port)
        if port is None:
            return Outcome(False, f"no container port named {handler.port!r}")
        host = handler.host or target.pod_ip or "127.0.0.1"
        if isinstance(handler, TCPSocketAction):
            return await asyncio.wait_for(_tcp(host, port), timeout_s)
        return await asyncio.wait_for(_http(handler, host, port), timeout_s)
    except TimeoutError:
        return Outcome(False, f"timed out after {timeout_s:g}s")
    except OSError as exc:
        return Outcome(False, str(exc) or type(exc).__name__)


async def _exec(handler: ExecAction, target: Target, timeout_s: float) -> Outcome:
    try:
        result = await target.runtime.exec_sync(target.container_id, handler.command, timeout_s)
    except RuntimeFailure as exc:
        return Outcome(False, f"exec failed: {exc}")
    if result.exit_code == 0:
        return Outcome(True)
    output = (result.stdout + result.stderr).decode(errors="replace").strip()[:256]
    return Outcome(False, f"command exited with {result.exit_code}: {output}")


async def _tcp(host: str, port: int) -> Outcome:
    _, writer = await asyncio.open_connection(host, port)
    writer.close()
    return Outcome(True)


async def _http(handler: HTTPGetAction, host: str, port: int) -> Outcome:
    if handler.scheme == "HTTPS":
        import ssl

        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the kubelet does not verify probe certificates
        reader, writer = await asyncio.open_connection(host, port, ssl=context)
    else:
        reader, writer = await asyncio.open_connection(host, port)
    try:
        headers = {"Host": f"{host}:{port}", "User-Agent": USER_AGENT, "Accept": "*/*"}
        headers.update(dict(handler.headers))
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        path = handler.path if handler.path.startswith("/") else "/" + handler.path
        writer.write(f"GET {path} HTTP/1.1\r\n{head}Connection: close\r\n\r\n".encode())
        await writer.drain()
        line = await reader.readline()
    finally:
        writer.close()
    parts = line.decode("latin-1", errors="replace").split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        return Outcome(False, f"malformed HTTP response: {line[:80]!r}")
    code = int(parts[1])
    if 200 <= code < 400:
        return Outcome(True, f"HTTP {code}")
    return Outcome(False, f"HTTP probe failed with statuscode: {code}")
