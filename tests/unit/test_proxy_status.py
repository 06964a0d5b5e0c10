"""The proxy loop (inputs, allocation, rate limit) and what status shows of services."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from nodeagent.model.service import Service
from nodeagent.model.validate import parse_service
from nodeagent.proxy import allocator
from nodeagent.proxy.allocator import Allocation
from nodeagent.proxy.iptables.runner import IptablesError
from nodeagent.proxy.proxier import (
    Connection,
    ProxyInputs,
    ProxySettings,
    ServiceProxy,
    service_object,
)
from nodeagent.proxy.state import Endpoint, ServicePortName
from nodeagent.server.render import render_status
from tests.harness import async_wait_for
from tests.unit.test_proxy_sync import split_tables


def svc(name: str, **spec: Any) -> Service:
    spec.setdefault("selector", {"app": name})
    spec.setdefault("ports", [{"name": "http", "port": 80, "targetPort": 8080}])
    doc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}
    return parse_service(doc, source=f"/manifests/{name}.yaml")


def pod_entry(name: str, ip: str, app: str, *, ready: bool = True) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "default", "uid": name, "labels": {"app": app}},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
        "worker": "syncing",
    }


class Recorder:
    backend_name = "fake"

    def __init__(self) -> None:
        self.times: list[float] = []
        self.restores: list[Mapping[str, str]] = []

    async def restore(self, tables: Mapping[str, str], *, chains: Mapping[str, int]) -> None:
        self.times.append(time.monotonic())
        self.restores.append(dict(tables))

    async def restore_stream(self, chunks: Iterable[str], *, chains: Mapping[str, int]) -> None:
        text = await asyncio.to_thread("".join, chunks)  # off the loop, as the runner does
        await self.restore(split_tables(text), chains=chains)

    async def save(self, table: str) -> str:
        return ""

    async def canary_ok(self) -> bool:
        return True


class World:
    def __init__(self) -> None:
        self.inputs: ProxyInputs | None = None

    def __call__(self) -> ProxyInputs | None:
        return self.inputs


@pytest.fixture
def writer() -> Recorder:
    return Recorder()


def proxy_for(tmp_path: Path, world: World, writer: Recorder, period: float) -> ServiceProxy:
    async def connect() -> Connection:
        return Connection(writer=writer, conntrack=None, local_addresses=lambda: ())

    settings = ProxySettings(
        service_cidr=ipaddress.IPv4Network("10.96.0.0/24"),
        node_port_range=(30000, 30010),
        min_sync_period_s=period,
        cluster_cidr="10.244.0.0/16",
        state_dir=tmp_path,
    )
    return ServiceProxy(settings, inputs=world, connect=connect)


async def test_loop_waits_for_inputs_allocates_and_rate_limits(
    tmp_path: Path, writer: Recorder
) -> None:
    world = World()
    proxy = proxy_for(tmp_path, world, writer, period=0.5)
    task = asyncio.create_task(proxy.run())
    try:
        await asyncio.sleep(0.3)
        assert writer.restores == []  # inputs unknown: no sync of an empty world
        services = {
            s.key: s
            for s in (
                svc("web"),
                svc("clash", clusterIP="10.96.0.1"),
                svc("dup", clusterIP="10.96.0.1"),
            )
        }
        world.inputs = ProxyInputs(services, [pod_entry("w1", "10.244.0.5", "web")])
        proxy.wake()
        await async_wait_for(lambda: len(writer.restores) == 1, 5, message="first sync")
        assert "DNAT --to-destination 10.244.0.5:8080" in writer.restores[0]["nat"]
        assert [s["metadata"]["name"] for s in proxy.services()] == ["clash", "dup", "web"]
        assert proxy.errors() == [
            {
                "source": "/manifests/dup.yaml",
                "object": "Service default/dup",
                "field": "spec.clusterIP",
                "message": "10.96.0.1 is already allocated to Service default/clash",
            }
        ]
        saved = allocator.load(tmp_path / "proxy" / "allocations.json")
        assert saved["default/clash"].cluster_ip == "10.96.0.1"

        # Two changes in a burst: one more sync, not before the period has passed.
        world.inputs = ProxyInputs(
            services,
            [pod_entry("w1", "10.244.0.5", "web"), pod_entry("w2", "10.244.0.6", "web")],
        )
        proxy.wake()
        await asyncio.sleep(0.05)
        world.inputs = ProxyInputs(
            services,
            [
                pod_entry("w1", "10.244.0.5", "web", ready=False),
                pod_entry("w2", "10.244.0.6", "web"),
            ],
        )
        proxy.wake()
        await async_wait_for(lambda: len(writer.restores) == 2, 5, message="second sync")
        assert writer.times[1] - writer.times[0] >= 0.45
        await asyncio.sleep(0.7)
        assert len(writer.restores) == 2
        status = proxy.status()
        assert (status["backend"], status["fullSyncs"], status["partialSyncs"]) == ("fake", 1, 1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_service_object_fills_in_allocations_and_endpoints() -> None:
    service = svc("web", type="NodePort")
    key = ServicePortName("default", "web", "http", "TCP")
    eps = {
        key: (
            Endpoint("10.244.0.10", 8080),
            Endpoint("10.244.0.9", 8080),
            Endpoint("10.244.0.11", 8080, ready=False, serving=False),
        )
    }
    obj = service_object(service, Allocation("10.96.0.7", {"http/TCP": 30001}), eps)
    assert obj["metadata"] == {"name": "web", "namespace": "default"}
    assert obj["spec"]["clusterIP"] == "10.96.0.7" and obj["spec"]["clusterIPs"] == ["10.96.0.7"]
    assert obj["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP", "nodePort": 30001}
    ]
    assert obj["endpoints"] == ["10.244.0.9:8080", "10.244.0.10:8080"]  # numeric order
    assert obj["notReadyEndpoints"] == ["10.244.0.11:8080"]
    assert obj["status"] == {"loadBalancer": {}} and obj["proxied"] is True
    alias = svc(
        "alias", type="ExternalName", externalName="db.example.com", ports=[], selector=None
    )
    assert service_object(alias, Allocation(), {})["proxied"] is False


NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)


def test_render_services_and_proxy_line() -> None:
    web_eps = {
        ServicePortName("default", "web", "http", "TCP"): (
            Endpoint("10.244.0.9", 8080),
            Endpoint("10.244.0.8", 8080, ready=False, serving=False),
        )
    }
    web = service_object(
        svc("web", type="NodePort"), Allocation("10.96.0.7", {"http/TCP": 30001}), web_eps
    )
    alias = svc(
        "alias", type="ExternalName", externalName="db.example.com", ports=[], selector=None
    )
    lb = svc("lb", type="LoadBalancer", externalIPs=["192.0.2.1"])
    snapshot = {
        "node": {"name": "n1"},
        "pods": [],
        "services": [web, service_object(alias, Allocation(), {}), service_object(lb, None, {})],
        "proxy": {
            "lastSync": "2026-11-25T11:59:57Z",
            "duration": 0.0421,
            "lastSyncKind": "partial",
            "rules": 57,
            "backend": "nft",
            "fullSyncs": 1,
            "partialSyncs": 4,
            "failedSyncs": 0,
            "lastError": None,
            "warnings": [],
        },
    }
    text = render_status(snapshot, NOW)
    assert text.split("\n\n", 2)[2] == (
        "SERVICES:\n"
        "NAMESPACE   NAME    TYPE           CLUSTER-IP   EXTERNAL-IP      "
        "PORT(S)        ENDPOINTS\n"
        "default     alias   ExternalName   <none>       db.example.com   <none>         -\n"
        "default     lb      LoadBalancer   <none>       192.0.2.1        80/TCP         -\n"
        "default     web     NodePort       10.96.0.7    <none>           80:30001/TCP   1/2\n"
        "\n"
        "PROXY: iptables (nft)   LAST SYNC: 3s ago (partial, 0.042 s)   RULES: 57"
        "   SYNCS: 1 full, 4 partial\n"
    )


def test_render_proxy_before_first_sync_and_after_failure() -> None:
    text = render_status({"proxy": {"backend": None}}, NOW)
    assert "PROXY: starting" in text
    failing = {"backend": "legacy", "failedSyncs": 2, "lastError": "iptables-restore: boom"}
    text = render_status({"proxy": failing}, NOW)
    assert (
        "PROXY: iptables (legacy)   LAST SYNC: never   FAILED: 2   ERROR: iptables-restore: boom"
        in text
    )


class Failing(Recorder):
    fail = False

    async def restore(self, tables: Mapping[str, str], *, chains: Mapping[str, int]) -> None:
        if self.fail:
            raise IptablesError("iptables-restore: line 3 failed")
        await super().restore(tables, chains=chains)


async def test_healthz_follows_syncs_and_api_services_keep_their_ips(tmp_path: Path) -> None:
    world, writer = World(), Failing()
    proxy = proxy_for(tmp_path, world, writer, period=0.05)
    task = asyncio.create_task(proxy.run())
    try:
        # An API Service outside --service-cidr (10.96.0.0/24 here), with slice endpoints.
        api = svc("k3s", clusterIP="10.43.0.20")
        key = ServicePortName("default", "k3s", "http", "TCP")
        world.inputs = ProxyInputs(
            {api.key: api}, endpoints={api.key: {key: (Endpoint("10.42.0.7", 8080),)}}
        )
        proxy.wake()
        await async_wait_for(lambda: writer.restores, 5, message="first sync")
        assert "-d 10.43.0.20/32 --dport 80" in writer.restores[0]["nat"]
        assert proxy.errors() == []
        assert proxy.health.answer("/healthz", time.time())[0] == 200

        writer.fail = True
        other = svc("k3s", clusterIP="10.43.0.21")
        world.inputs = ProxyInputs(
            {other.key: other}, endpoints={other.key: {key: (Endpoint("10.42.0.7", 8080),)}}
        )
        proxy.wake()
        await async_wait_for(
            lambda: proxy.health.answer("/livez", time.time())[0] == 503, 5, message="stale"
        )
        writer.fail = False
        await async_wait_for(
            lambda: proxy.health.answer("/healthz", time.time())[0] == 200, 10, message="fresh"
        )
        assert "-d 10.43.0.21/32 --dport 80" in writer.restores[-1]["nat"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
