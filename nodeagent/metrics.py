"""Prometheus metrics: what the agent measures, and the tiny HTTP endpoint that serves them.

One ``Metrics`` object per agent owns a private ``CollectorRegistry`` (never the library's
global one), so two agents in one process, or a test, never see each other's numbers.

How the numbers get in:

- The runtime seam is wrapped, not edited: ``InstrumentedRuntime`` times every call of the
  Runtime protocol by operation and counts the failures, for whichever backend it wraps.
- A few places observe one thing each (a pod worker's sync, a probe's outcome, a proxy sync,
  a pod's containers all started). They call the module functions below (``probe_result``,
  ``proxy_synced``, ...), one line each, instead of carrying a metrics parameter through every
  constructor. Those functions go to the ``Metrics`` the daemon ``install``-ed and do nothing
  when none is (unit tests, tools).
- State that already exists elsewhere (the API watches' restarts, the last lease renewal) is
  read at scrape time through ``ClusterProbe``, so it can never drift from what the status
  shows.

Names follow the Prometheus conventions (base units, ``_total`` counters, ``_seconds``) with the
``nodeagent_`` prefix, and mirror the kubelet's and kube-proxy's where one exists
(``kubelet_pod_start_duration_seconds`` -> ``nodeagent_pod_start_duration_seconds``).

``MetricsServer`` answers ``GET /metrics`` and ``GET /healthz`` with asyncio streams (one
request per connection, bounded head, deadline): enough for a Prometheus scraper and curl,
with no web framework in the agent.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from nodeagent.httplistener import Answer, HttpListener
from nodeagent.log import get_logger
from nodeagent.model.pod import PodUID
from nodeagent.runtime.base import (
    ContainerConfig,
    ContainerID,
    ContainerInfo,
    ExecResult,
    ImageInfo,
    RegistryAuth,
    Runtime,
    RuntimeStatus,
    RuntimeVersion,
    SandboxConfig,
    SandboxID,
    SandboxInfo,
)

log = get_logger(__name__)

T = TypeVar("T")

PREFIX = "nodeagent_"
# The kubelet's pod start buckets (seconds), cut at ten minutes.
POD_START_BUCKETS = (0.5, 1, 2, 3, 4, 5, 6, 8, 10, 20, 30, 45, 60, 120, 180, 240, 300, 600)
# Exponential from 1 ms: runtime calls, worker syncs and proxy syncs span 1 ms .. tens of s.
DURATION_BUCKETS = tuple(0.001 * 2**i for i in range(16))
_STARTED_MEMORY = 10_000  # pods whose start was recorded, remembered so it counts once


class SyncFacts(Protocol):
    """What a proxy sync reports (nodeagent.proxy.tracked.SyncStats has these)."""

    @property
    def duration_s(self) -> float: ...

    @property
    def rules(self) -> int: ...


@dataclass(frozen=True)
class ClusterProbe:
    """Read at scrape time: what the cluster link knows (absent on a standalone node)."""

    watch_restarts: Callable[[], Mapping[str, int]]  # collection path -> restarts
    last_heartbeat: Callable[[], float]  # wall-clock of the last accepted lease renewal; 0: none


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.pod_start = Histogram(
            PREFIX + "pod_start_duration_seconds",
            "Time from the agent first seeing a pod to all of its containers started.",
            buckets=POD_START_BUCKETS,
            registry=r,
        )
        self.pod_worker = Histogram(
            PREFIX + "pod_worker_duration_seconds",
            "Duration of one pod worker operation (sync, terminate).",
            ["operation"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.runtime_ops = Histogram(
            PREFIX + "runtime_operations_duration_seconds",
            "Duration of container runtime calls, by Runtime protocol operation.",
            ["operation"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.runtime_errors = Counter(
            PREFIX + "runtime_operations_errors",
            "Container runtime calls that failed, by operation.",
            ["operation"],
            registry=r,
        )
        self.probes = Counter(
            PREFIX + "probe_results",
            "Probe runs by probe type (liveness, readiness, startup) and result.",
            ["probe_type", "result"],
            registry=r,
        )
        self.proxy_sync = Histogram(
            PREFIX + "proxy_sync_duration_seconds",
            "Duration of a proxy rule sync, full or partial (failed ones too).",
            ["sync"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.proxy_rules = Gauge(
            PREFIX + "proxy_rules_programmed",
            "iptables rules the proxy owns in the kernel after its last successful sync.",
            registry=r,
        )
        self.proxy_failures = Counter(
            PREFIX + "proxy_restore_failures",
            "Proxy syncs whose iptables-save/iptables-restore failed.",
            registry=r,
        )
        self.node_conditions = Counter(
            PREFIX + "node_condition_transitions",
            "Node condition changes (first statuses included), by condition and new status.",
            ["condition", "status"],
            registry=r,
        )
        self._started: OrderedDict[str, None] = OrderedDict()
        self._cluster: ClusterProbe | None = None
        r.register(_ClusterCollector(self))

    def watch_cluster(self, probe: ClusterProbe) -> None:
        self._cluster = probe

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # -- observations ---------------------------------------------------------------------------

    def pod_status(self, uid: str, first_seen: float, status: Mapping[str, Any]) -> None:
        """Once per pod: the start duration, when every container has started."""
        if uid in self._started:
            return
        containers = status.get("containerStatuses") or []
        if not containers or not all(_running(c) for c in containers):
            return
        self._started[uid] = None
        while len(self._started) > _STARTED_MEMORY:
            self._started.popitem(last=False)
        latest = max(_started_at(c) for c in containers)
        if latest < math.floor(first_seen):  # startedAt has whole seconds
            return  # adopted after an agent restart: its start was not ours to time
        self.pod_start.observe(max(0.0, time.time() - first_seen))


def _running(container: Mapping[str, Any]) -> bool:
    return bool((container.get("state") or {}).get("running")) and container.get("started", True)


def _started_at(container: Mapping[str, Any]) -> float:
    stamp = ((container.get("state") or {}).get("running") or {}).get("startedAt")
    try:
        return datetime.fromisoformat(str(stamp)).timestamp()
    except ValueError:
        return float("inf")


class _ClusterCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        restarts = CounterMetricFamily(
            PREFIX + "api_watch_restarts",
            "Watches of the Kubernetes API opened again after the first, by collection.",
            labels=["collection"],
        )
        age = GaugeMetricFamily(
            PREFIX + "heartbeat_age_seconds",
            "Seconds since the API last accepted this node's lease renewal.",
        )
        probe = self._metrics._cluster
        if probe is not None:
            for collection, count in sorted(probe.watch_restarts().items()):
                restarts.add_metric([collection], count)
            last = probe.last_heartbeat()
            if last > 0:
                age.add_metric([], max(0.0, time.time() - last))
        yield restarts
        yield age

    def describe(self) -> Iterator[Metric]:
        return iter(())  # collected lazily: nothing to check at registration


# --- The hooks (one line each at the observed place) ------------------------------------------

_installed: Metrics | None = None


def install(metrics: Metrics | None) -> None:
    """Make ``metrics`` the target of the module hooks (None: back to no-ops)."""
    global _installed
    _installed = metrics


def installed() -> Metrics | None:
    return _installed


async def timed_worker(operation: str, work: Awaitable[T]) -> T:
    """Await ``work``, recording its duration as a pod worker ``operation``."""
    metrics = _installed
    if metrics is None:
        return await work
    with metrics.pod_worker.labels(operation).time():
        return await work


def probe_result(probe_type: str, ok: bool) -> None:
    if _installed is not None:
        _installed.probes.labels(probe_type, "successful" if ok else "failed").inc()


def proxy_synced(*, full: bool, ok: bool, stats: SyncFacts) -> None:
    if _installed is None:
        return
    _installed.proxy_sync.labels("full" if full else "partial").observe(stats.duration_s)
    if ok:
        _installed.proxy_rules.set(stats.rules)
    else:
        _installed.proxy_failures.inc()


def node_condition_transition(condition: str, status: str) -> None:
    if _installed is not None:
        _installed.node_conditions.labels(condition, status).inc()


def pod_status(uid: str, first_seen: float, status: Mapping[str, Any] | None) -> None:
    if _installed is not None and status is not None:
        _installed.pod_status(uid, first_seen, status)


# --- The runtime seam, instrumented -----------------------------------------------------------


class InstrumentedRuntime:
    """A Runtime that times each call of the one it wraps, by operation, and counts failures."""

    def __init__(self, inner: Runtime, metrics: Metrics) -> None:
        self.inner = inner
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        # A protocol method added after this wrapper was written still works, untimed,
        # until it gets its own timed method below.
        return getattr(self.inner, name)

    async def _timed(self, operation: str, call: Awaitable[T]) -> T:
        started = time.monotonic()
        try:
            return await call
        except Exception:
            self._metrics.runtime_errors.labels(operation).inc()
            raise
        finally:
            self._metrics.runtime_ops.labels(operation).observe(time.monotonic() - started)

    async def version(self) -> RuntimeVersion:
        return await self._timed("version", self.inner.version())

    async def status(self) -> RuntimeStatus:
        return await self._timed("status", self.inner.status())

    async def cgroup_driver(self) -> str:
        return await self._timed("cgroup_driver", self.inner.cgroup_driver())

    async def run_sandbox(self, config: SandboxConfig) -> SandboxID:
        return await self._timed("run_sandbox", self.inner.run_sandbox(config))

    async def stop_sandbox(self, sandbox_id: SandboxID) -> None:
        await self._timed("stop_sandbox", self.inner.stop_sandbox(sandbox_id))

    async def remove_sandbox(self, sandbox_id: SandboxID) -> None:
        await self._timed("remove_sandbox", self.inner.remove_sandbox(sandbox_id))

    async def sandbox_status(self, sandbox_id: SandboxID) -> SandboxInfo:
        return await self._timed("sandbox_status", self.inner.sandbox_status(sandbox_id))

    async def list_sandboxes(self, uid: PodUID | None = None) -> Sequence[SandboxInfo]:
        return await self._timed("list_sandboxes", self.inner.list_sandboxes(uid))

    async def create_container(
        self, sandbox_id: SandboxID, config: ContainerConfig, sandbox: SandboxConfig
    ) -> ContainerID:
        call = self.inner.create_container(sandbox_id, config, sandbox)
        return await self._timed("create_container", call)

    async def start_container(self, container_id: ContainerID) -> None:
        await self._timed("start_container", self.inner.start_container(container_id))

    async def stop_container(self, container_id: ContainerID, timeout_s: int) -> None:
        await self._timed("stop_container", self.inner.stop_container(container_id, timeout_s))

    async def remove_container(self, container_id: ContainerID) -> None:
        await self._timed("remove_container", self.inner.remove_container(container_id))

    async def reopen_container_log(self, container_id: ContainerID) -> None:
        await self._timed("reopen_container_log", self.inner.reopen_container_log(container_id))

    async def container_status(self, container_id: ContainerID) -> ContainerInfo:
        return await self._timed("container_status", self.inner.container_status(container_id))

    async def list_containers(self, uid: PodUID | None = None) -> Sequence[ContainerInfo]:
        return await self._timed("list_containers", self.inner.list_containers(uid))

    async def exec_sync(
        self, container_id: ContainerID, command: Sequence[str], timeout_s: float
    ) -> ExecResult:
        call = self.inner.exec_sync(container_id, command, timeout_s)
        return await self._timed("exec_sync", call)

    async def image_present(self, image: str) -> bool:
        return await self._timed("image_present", self.inner.image_present(image))

    async def image_user(self, image: str) -> str:
        return await self._timed("image_user", self.inner.image_user(image))

    async def list_images(self) -> Sequence[ImageInfo]:
        return await self._timed("list_images", self.inner.list_images())

    async def remove_image(self, image_id: str) -> None:
        await self._timed("remove_image", self.inner.remove_image(image_id))

    async def image_fs_path(self) -> str:
        return await self.inner.image_fs_path()

    async def pull_image(self, image: str, auth: RegistryAuth | None = None) -> int:
        return await self._timed("pull_image", self.inner.pull_image(image, auth))

    async def close(self) -> None:
        await self.inner.close()


# --- The endpoint -----------------------------------------------------------------------------

EXPOSITION_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsError(RuntimeError):
    """The metrics address could not be listened on."""


class MetricsServer:
    """``GET /metrics`` and ``GET /healthz`` on ``bind`` (host:port)."""

    def __init__(
        self, bind: str, metrics: Metrics, *, healthy: Callable[[], bool] = lambda: True
    ) -> None:
        host, _, port = bind.rpartition(":")
        self._metrics = metrics
        self._healthy = healthy
        self._listener = HttpListener(host.strip("[]"), int(port), self._answer, name="metrics")

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens (the real port when bound to port 0)."""
        return self._listener.address

    async def start(self) -> None:
        try:
            await self._listener.start()
        except OSError as exc:
            host, port = self._listener.address
            raise MetricsError(
                f"cannot listen on {host}:{port} (--metrics-bind): {exc.strerror}"
            ) from None
        host, port = self.address
        log.info("metrics_listening", address=f"{host}:{port}")

    async def close(self) -> None:
        await self._listener.close()

    def _answer(self, method: str, route: str) -> Answer:
        text = {"Content-Type": "text/plain"}
        if route not in ("/metrics", "/healthz"):
            return 404, text, b"not found\n"
        if method != "GET":
            return 405, text, b"only GET is supported\n"
        if route == "/healthz":
            if self._healthy():
                return 200, text, b"ok\n"
            return 503, text, b"unhealthy\n"
        return 200, {"Content-Type": EXPOSITION_TYPE}, self._metrics.exposition()
