"""Metrics: names by the Prometheus conventions, what each hook records, the endpoint."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nodeagent import metrics
from nodeagent.cli import build_parser
from nodeagent.config import ConfigError, load_config
from nodeagent.metrics import ClusterProbe, InstrumentedRuntime, Metrics, MetricsServer
from nodeagent.runtime.base import ContainerID, RuntimeUnavailable
from nodeagent.runtime.fake import FakeRuntime


@pytest.fixture
def installed() -> Iterator[Metrics]:
    m = Metrics()
    metrics.install(m)
    yield m
    metrics.install(None)


def sample(m: Metrics, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(m.exposition().decode()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def test_names_follow_prometheus_conventions() -> None:
    m = Metrics()
    m.probes.labels("liveness", "successful").inc()
    m.runtime_errors.labels("version").inc()
    m.watch_cluster(ClusterProbe(lambda: {"/api/v1/pods": 0}, lambda: time.time()))
    found = list(text_string_to_metric_families(m.exposition().decode()))
    kinds = {f.name: f.type for f in found}
    assert kinds["nodeagent_pod_start_duration_seconds"] == "histogram"
    assert kinds["nodeagent_runtime_operations_duration_seconds"] == "histogram"
    assert kinds["nodeagent_probe_results"] == "counter"
    assert kinds["nodeagent_heartbeat_age_seconds"] == "gauge"
    for family in found:
        assert family.name.startswith("nodeagent_") and family.name == family.name.lower()
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name  # base unit
        for s in family.samples:
            if family.type == "counter":
                assert s.name.endswith(("_total", "_created")), s.name
            assert not s.name.endswith("_total_total"), s.name


def test_each_agent_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.probes.labels("liveness", "failed").inc()
    assert sample(a, "nodeagent_probe_results_total", probe_type="liveness") == 1.0
    assert sample(b, "nodeagent_probe_results_total", probe_type="liveness") is None


def test_hooks_do_nothing_without_an_installed_registry() -> None:
    before = Metrics()
    metrics.install(before)
    metrics.install(None)
    assert metrics.installed() is None
    metrics.probe_result("readiness", True)
    metrics.pod_status("u", 0.0, {"containerStatuses": []})
    # The registry installed before saw nothing: the hooks went nowhere, without raising.
    count = "nodeagent_probe_results_total"
    assert sample(before, count, probe_type="readiness", result="successful") is None


def test_probe_results_by_type_and_result(installed: Metrics) -> None:
    metrics.probe_result("readiness", True)
    metrics.probe_result("readiness", True)
    metrics.probe_result("liveness", False)
    count = "nodeagent_probe_results_total"
    assert sample(installed, count, probe_type="readiness", result="successful") == 2.0
    assert sample(installed, count, probe_type="liveness", result="failed") == 1.0


@dataclass
class Stats:
    duration_s: float
    rules: int


def test_proxy_syncs_by_kind_rules_and_failures(installed: Metrics) -> None:
    metrics.proxy_synced(full=True, ok=True, stats=Stats(0.25, 57))
    metrics.proxy_synced(full=False, ok=True, stats=Stats(0.01, 60))
    metrics.proxy_synced(full=True, ok=False, stats=Stats(0.5, 0))
    name = "nodeagent_proxy_sync_duration_seconds_count"
    assert sample(installed, name, sync="full") == 2.0
    assert sample(installed, name, sync="partial") == 1.0
    assert sample(installed, "nodeagent_proxy_rules_programmed") == 60.0  # the failure kept it
    assert sample(installed, "nodeagent_proxy_restore_failures_total") == 1.0


def running(started: float) -> dict[str, object]:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))
    return {"name": "c", "started": True, "state": {"running": {"startedAt": stamp}}}


def test_pod_start_is_observed_once_when_all_containers_started(installed: Metrics) -> None:
    now = time.time()
    waiting = {"name": "w", "state": {"waiting": {"reason": "ContainerCreating"}}}
    metrics.pod_status("u1", now - 3, {"containerStatuses": [running(now), waiting]})
    assert sample(installed, "nodeagent_pod_start_duration_seconds_count") == 0.0
    metrics.pod_status("u1", now - 3, {"containerStatuses": [running(now), running(now)]})
    metrics.pod_status("u1", now - 3, {"containerStatuses": [running(now), running(now)]})
    assert sample(installed, "nodeagent_pod_start_duration_seconds_count") == 1.0
    total = sample(installed, "nodeagent_pod_start_duration_seconds_sum")
    assert total is not None and total >= 3.0


def test_a_start_within_the_first_second_is_timed(installed: Metrics) -> None:
    first_seen = math.floor(time.time()) + 0.9  # startedAt below has whole seconds only
    metrics.pod_status("quick", first_seen, {"containerStatuses": [running(first_seen)]})
    assert sample(installed, "nodeagent_pod_start_duration_seconds_count") == 1.0


def test_adopted_pods_are_not_timed(installed: Metrics) -> None:
    now = time.time()
    metrics.pod_status("old", now, {"containerStatuses": [running(now - 3600)]})
    assert sample(installed, "nodeagent_pod_start_duration_seconds_count") == 0.0


async def test_worker_operations_are_timed(installed: Metrics) -> None:
    async def work() -> int:
        return 7

    assert await metrics.timed_worker("sync", work()) == 7
    assert sample(installed, "nodeagent_pod_worker_duration_seconds_count", operation="sync") == 1


async def test_instrumented_runtime_times_calls_and_counts_failures() -> None:
    m = Metrics()
    fake = FakeRuntime()
    runtime = InstrumentedRuntime(fake, m)
    assert (await runtime.version()).name == fake.name
    await runtime.list_sandboxes()
    fake.fail_next("container_status", RuntimeUnavailable("down"))
    with pytest.raises(RuntimeUnavailable):
        await runtime.container_status(ContainerID("x"))
    ops = "nodeagent_runtime_operations_duration_seconds_count"
    assert sample(m, ops, operation="version") == 1.0
    assert sample(m, ops, operation="list_sandboxes") == 1.0
    assert sample(m, ops, operation="container_status") == 1.0
    errors = "nodeagent_runtime_operations_errors_total"
    assert sample(m, errors, operation="container_status") == 1.0
    assert sample(m, errors, operation="version") is None


def test_cluster_state_is_read_at_scrape_time() -> None:
    m = Metrics()
    assert sample(m, "nodeagent_heartbeat_age_seconds") is None  # standalone: no samples
    restarts = {"/api/v1/pods": 2}
    m.watch_cluster(ClusterProbe(lambda: restarts, lambda: time.time() - 30))
    assert sample(m, "nodeagent_api_watch_restarts_total", collection="/api/v1/pods") == 2.0
    restarts["/api/v1/pods"] = 3
    assert sample(m, "nodeagent_api_watch_restarts_total", collection="/api/v1/pods") == 3.0
    age = sample(m, "nodeagent_heartbeat_age_seconds")
    assert age is not None and age >= 30.0


# --- The endpoint ------------------------------------------------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[tuple[MetricsServer, Metrics, list[bool]]]:
    m = Metrics()
    health = [True]
    s = MetricsServer("127.0.0.1:0", m, healthy=lambda: health[0])
    await s.start()
    yield s, m, health
    await s.close()


async def get(s: MetricsServer, request: bytes) -> tuple[str, bytes]:
    reader, writer = await asyncio.open_connection(*s.address)
    writer.write(request)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode(), body


async def test_endpoint_serves_metrics_and_health(
    server: tuple[MetricsServer, Metrics, list[bool]],
) -> None:
    s, m, health = server
    m.probes.labels("startup", "successful").inc()
    status, body = await get(s, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == "HTTP/1.1 200 OK"
    assert b'nodeagent_probe_results_total{probe_type="startup",result="successful"} 1.0' in body
    status, body = await get(s, b"GET /healthz HTTP/1.1\r\n\r\n")
    assert (status, body) == ("HTTP/1.1 200 OK", b"ok\n")
    health[0] = False
    status, _ = await get(s, b"GET /healthz HTTP/1.1\r\n\r\n")
    assert status == "HTTP/1.1 503 Service Unavailable"


async def test_endpoint_rejects_what_it_does_not_serve(
    server: tuple[MetricsServer, Metrics, list[bool]],
) -> None:
    s, _, _ = server
    assert (await get(s, b"GET /other HTTP/1.1\r\n\r\n"))[0] == "HTTP/1.1 404 Not Found"
    assert (await get(s, b"POST /metrics HTTP/1.1\r\n\r\n"))[0].startswith("HTTP/1.1 405")
    assert (await get(s, b"nonsense\r\n\r\n"))[0] == "HTTP/1.1 400 Bad Request"
    # Still serving after all that.
    assert (await get(s, b"GET /healthz HTTP/1.1\r\n\r\n"))[0] == "HTTP/1.1 200 OK"


async def test_taken_address_is_a_clear_error(
    server: tuple[MetricsServer, Metrics, list[bool]],
) -> None:
    s, m, _ = server
    host, port = s.address
    other = MetricsServer(f"{host}:{port}", m)
    with pytest.raises(metrics.MetricsError, match="--metrics-bind"):
        await other.start()


# --- --metrics-bind ------------------------------------------------------------------------------


def bind_of(*flags: str) -> str:
    return load_config(build_parser().parse_args(["run", *flags])).metrics_bind


def test_metrics_bind_default_off_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NODEAGENT_METRICS_BIND", raising=False)
    assert bind_of() == "127.0.0.1:10255"
    assert bind_of("--metrics-bind", "0.0.0.0:9100") == "0.0.0.0:9100"
    assert bind_of("--metrics-bind", "[::1]:9100") == "[::1]:9100"
    assert bind_of("--metrics-bind", "") == ""  # switched off
    monkeypatch.setenv("NODEAGENT_METRICS_BIND", "")
    assert bind_of() == ""
    for bad in ("9100", "host:", "host:99999", ":80"):
        with pytest.raises(ConfigError, match="is not host:port"):
            bind_of("--metrics-bind", bad)
