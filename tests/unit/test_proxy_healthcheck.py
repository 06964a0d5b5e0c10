"""The proxy's health answers (nodeagent.proxy.healthcheck): pure decisions, then the servers."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

from nodeagent.httplistener import HttpListener
from nodeagent.model.validate import parse_service
from nodeagent.proxy.healthcheck import (
    HealthCheckServers,
    HealthCheckService,
    ProxyHealth,
    health_check_services,
    service_answer,
)
from nodeagent.proxy.state import Endpoint, ServicePortName


def lb(name: str, **spec: Any) -> Any:
    spec.setdefault("type", "LoadBalancer")
    spec.setdefault("externalTrafficPolicy", "Local")
    spec.setdefault("ports", [{"name": "a", "port": 80}, {"name": "b", "port": 81}])
    doc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}
    return parse_service(doc, source="s")


def test_service_answer_is_kube_proxys() -> None:
    status, headers, body = service_answer(
        HealthCheckService("default", "lb", 1), proxy_healthy=True
    )
    assert status == 200 and headers["X-Load-Balancing-Endpoint-Weight"] == "1"
    assert body == (
        b'{"service":{"namespace":"default","name":"lb"},"localEndpoints":1,'
        b'"serviceProxyHealthy":true}'
    )
    assert service_answer(HealthCheckService("default", "lb", 0), proxy_healthy=True)[0] == 503
    assert service_answer(HealthCheckService("default", "lb", 2), proxy_healthy=False)[0] == 503


def test_local_ready_endpoints_are_counted_by_ip() -> None:
    a, b = (ServicePortName("default", "web", p, "TCP") for p in ("a", "b"))
    endpoints = {
        "default/web": {
            a: (Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 80, local=False)),
            b: (
                Endpoint("10.0.0.1", 81),  # the same pod on another port: counted once
                Endpoint("10.0.0.3", 81, ready=False, terminating=True),
            ),
        }
    }
    services = {"default/web": lb("web"), "default/cluster": lb("cluster")}
    ports = {"default/web": 32000, "default/cluster": 0}
    assert health_check_services(services, ports, endpoints) == {
        32000: HealthCheckService("default", "web", 1)
    }
    assert health_check_services(services, ports, {}) == {
        32000: HealthCheckService("default", "web", 0)
    }


def test_proxy_health_follows_syncs() -> None:
    health = ProxyHealth(timeout_s=60)
    assert health.answer("/healthz", 1000.0)[0] == 200  # nothing to do yet
    health.queued(1000.0)
    assert health.answer("/healthz", 1059.0)[0] == 200
    assert health.answer("/livez", 1061.0)[0] == 503  # a change waited too long
    health.synced(1062.0, ok=True)
    status, _, body = health.answer("/healthz", 1063.0)
    assert status == 200
    assert json.loads(body) == {
        "lastUpdated": "1970-01-01T00:17:42Z",
        "currentTime": "1970-01-01T00:17:43Z",
        "nodeEligible": True,
    }
    health.synced(1064.0, ok=False)
    assert health.answer("/healthz", 1064.0)[0] == 503  # stale rules at once
    health.synced(1065.0, ok=True)
    health.node_deleting = True
    assert health.answer("/healthz", 1065.0)[0] == 503
    assert health.answer("/livez", 1065.0)[0] == 200  # alive, only not eligible
    assert health.answer("/metrics", 1065.0)[0] == 404


def get(port: int, path: str = "/") -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_listener_answers_and_health_check_ports_open_and_close() -> None:
    listener = HttpListener("127.0.0.1", 0, lambda method, path: (200, {}, path.encode()), name="t")
    await listener.start()
    try:
        port = listener.address[1]
        assert await asyncio.to_thread(get, port, "/livez?verbose") == (200, b"/livez")
    finally:
        await listener.close()

    healthy = True
    servers = HealthCheckServers(lambda: healthy, host="127.0.0.1")
    port = free_port()
    await servers.update({port: HealthCheckService("default", "lb", 1)})
    try:
        status, body = await asyncio.to_thread(get, port)
        assert status == 200 and json.loads(body)["localEndpoints"] == 1
        await servers.update({port: HealthCheckService("default", "lb", 0)})
        assert (await asyncio.to_thread(get, port))[0] == 503  # the same port, new counts
        await servers.update({})
        try:
            await asyncio.to_thread(get, port)
            raise AssertionError("the port is still open")
        except ConnectionRefusedError:
            pass
        with socket.socket() as taken:  # a taken port is a problem, not a crash
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
            taken.bind(("127.0.0.1", port))
            taken.listen()
            await servers.update({port: HealthCheckService("default", "lb", 1)})
            assert "cannot listen" in servers.problems[port]
        await servers.update({port: HealthCheckService("default", "lb", 1)})  # retried
        assert servers.problems == {}
        assert (await asyncio.to_thread(get, port))[0] == 200
    finally:
        await servers.close()
