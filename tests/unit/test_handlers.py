"""Handlers against in-process servers: HTTP, TCP, gRPC health v1, and exec via a fake runtime."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

from nodeagent.kubelet import grpchealth
from nodeagent.kubelet.handlers import USER_AGENT, Target, run_handler
from nodeagent.model.pod import (
    Container,
    ContainerPort,
    ExecAction,
    GRPCAction,
    HTTPGetAction,
    TCPSocketAction,
)
from nodeagent.runtime.base import ContainerID, ExecResult, RuntimeFailure
from nodeagent.runtime.cri.client import EXEC_TIMEOUT_EXIT_CODE
from nodeagent.runtime.fake import FakeRuntime

LOCAL = "127.0.0.1"


def target(runtime: Any = None, ports: tuple[ContainerPort, ...] = ()) -> Target:
    container = Container("app", "busybox", ports=ports)
    return Target(runtime or FakeRuntime(), ContainerID("c1"), container, LOCAL)


class HTTPServer:
    """Answers every request with ``status``; remembers request heads."""

    def __init__(self) -> None:
        self.status = 200
        self.stall = False
        self.requests: list[list[str]] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
        self.requests.append(head)
        if self.stall:
            await asyncio.sleep(10)
        writer.write(f"HTTP/1.1 {self.status} X\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    def header(self, name: str) -> str:
        for line in self.requests[-1][1:]:
            key, _, value = line.partition(": ")
            if key.lower() == name.lower():
                return value
        return ""


@pytest.fixture
async def http() -> AsyncIterator[HTTPServer]:
    srv = HTTPServer()
    srv.server = await asyncio.start_server(srv.handle, LOCAL, 0)
    srv.port = srv.server.sockets[0].getsockname()[1]
    try:
        yield srv
    finally:
        srv.server.close()


async def test_http_success_range_headers_and_path(http: HTTPServer) -> None:
    action = HTTPGetAction(port=http.port, path="healthz", headers=(("X-Probe", "yes"),))
    for status, ok in [(200, True), (302, True), (399, True), (404, False), (500, False)]:
        http.status = status
        outcome = await run_handler(action, target(), timeout_s=2)
        assert outcome.ok is ok, status
    assert outcome.message == "HTTP probe failed with statuscode: 500"
    assert http.requests[-1][0] == "GET /healthz HTTP/1.1"
    assert http.header("User-Agent") == USER_AGENT
    assert USER_AGENT.startswith("kube-probe/")
    assert http.header("X-Probe") == "yes"
    assert http.header("Host") == f"{LOCAL}:{http.port}"


async def test_http_headers_override_ours_case_insensitively(http: HTTPServer) -> None:
    headers = (("user-agent", "custom/1"), ("HOST", "example.test"))
    assert (
        await run_handler(HTTPGetAction(port=http.port, headers=headers), target(), timeout_s=2)
    ).ok
    assert [line for line in http.requests[-1] if "agent" in line.lower()] == [
        "user-agent: custom/1"
    ]
    assert http.header("Host") == "example.test"


async def test_http_named_port(http: HTTPServer) -> None:
    ports = (ContainerPort(http.port, name="http"),)
    assert (await run_handler(HTTPGetAction(port="http"), target(ports=ports), timeout_s=2)).ok
    missing = await run_handler(HTTPGetAction(port="admin"), target(ports=ports), timeout_s=2)
    assert not missing.ok and "admin" in missing.message


async def test_http_timeout_is_honored(http: HTTPServer) -> None:
    http.stall = True
    started = time.monotonic()
    outcome = await run_handler(HTTPGetAction(port=http.port), target(), timeout_s=0.3)
    assert not outcome.ok and outcome.message == "timed out after 0.3s"
    assert time.monotonic() - started < 1.5


async def test_tcp_connect_and_refused(http: HTTPServer) -> None:
    assert (await run_handler(TCPSocketAction(port=http.port), target(), timeout_s=2)).ok
    assert http.server is not None
    http.server.close()
    await http.server.wait_closed()
    refused = await run_handler(TCPSocketAction(port=http.port), target(), timeout_s=2)
    assert not refused.ok and refused.message


class ExecOnly:
    """Just enough of a runtime for exec handlers: canned results per command."""

    async def exec_sync(
        self, container_id: ContainerID, command: tuple[str, ...], timeout_s: float
    ) -> ExecResult:
        if command[0] == "fail":
            return ExecResult(2, b"out ", b"err")
        if command[0] == "slow":  # what the CRI client reports for a command it timed out
            return ExecResult(EXEC_TIMEOUT_EXIT_CODE, b"", b"command timed out after 1s")
        if command[0] == "broken":
            raise RuntimeFailure("ExecSync: container is not running")
        return ExecResult(0, b"", b"")


async def test_exec_outcomes_and_timeout_report() -> None:
    runtime = ExecOnly()
    assert (await run_handler(ExecAction(("ok",)), target(runtime), timeout_s=1)).ok
    failed = await run_handler(ExecAction(("fail",)), target(runtime), timeout_s=1)
    assert not failed.ok and failed.message == "command exited with 2: out err"
    slow = await run_handler(ExecAction(("slow",)), target(runtime), timeout_s=1)
    assert not slow.ok and "timed out after 1s" in slow.message
    broken = await run_handler(ExecAction(("broken",)), target(runtime), timeout_s=1)
    assert not broken.ok and broken.message.startswith("exec failed:")


# --- gRPC health v1 ---------------------------------------------------------------------------


def test_health_messages_encode_and_decode() -> None:
    assert grpchealth.encode_request("") == b""
    assert grpchealth.encode_request("svc") == b"\x0a\x03svc"
    long = "s" * 200
    assert grpchealth.encode_request(long)[:3] == b"\x0a\xc8\x01"
    assert grpchealth.decode_status(b"") == 0
    assert grpchealth.decode_status(b"\x08\x01") == 1
    # Unknown fields of every wire type are skipped.
    extra = b"\x12\x02hi" + b"\x19" + bytes(8) + b"\x25" + bytes(4) + b"\x08\x02"
    assert grpchealth.decode_status(extra) == 2
    with pytest.raises(grpchealth.MalformedResponse):
        grpchealth.decode_status(b"\x08")
    with pytest.raises(grpchealth.MalformedResponse):
        grpchealth.decode_status(b"\x12\x05hi")


class HealthServer:
    """grpc.health.v1.Health/Check served from a dict: service name -> status (or delay)."""

    def __init__(self) -> None:
        self.statuses: dict[str, int] = {"": 1, "down": 2}
        self.delay = 0.0
        self.seen: list[bytes] = []

    async def check(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.seen.append(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        service = request[2:].decode() if request else ""
        if service not in self.statuses:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return b"\x08" + bytes([self.statuses[service]])


async def start_grpc(health: HealthServer | None) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    if health is not None:
        handler = grpc.unary_unary_rpc_method_handler(health.check)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("grpc.health.v1.Health", {"Check": handler}),)
        )
    port = server.add_insecure_port(f"{LOCAL}:0")
    await server.start()
    return server, port


async def test_grpc_health_serving_not_serving_and_unknown() -> None:
    health = HealthServer()
    server, port = await start_grpc(health)
    try:
        ok = await run_handler(GRPCAction(port=port), target(), timeout_s=2)
        assert ok.ok and ok.message == "SERVING"
        down = await run_handler(GRPCAction(port=port, service="down"), target(), timeout_s=2)
        assert not down.ok
        assert down.message == 'service unhealthy (responded with "NOT_SERVING")'
        assert health.seen[-1] == b"\x0a\x04down"
        unknown = await run_handler(GRPCAction(port=port, service="x"), target(), timeout_s=2)
        assert not unknown.ok and "NOT_FOUND" in unknown.message
        health.delay = 1.0
        started = time.monotonic()
        slow = await run_handler(GRPCAction(port=port), target(), timeout_s=0.3)
        assert not slow.ok and slow.message == "timeout: health rpc did not complete within 0.3s"
        assert time.monotonic() - started < 1.0
    finally:
        await server.stop(None)


async def test_grpc_without_health_service_and_without_server() -> None:
    server, port = await start_grpc(None)
    try:
        outcome = await run_handler(GRPCAction(port=port), target(), timeout_s=2)
        assert not outcome.ok
        assert outcome.message.startswith("this server does not implement the grpc health")
    finally:
        await server.stop(None)
    refused = await run_handler(GRPCAction(port=port), target(), timeout_s=2)
    assert not refused.ok and "UNAVAILABLE" in refused.message
