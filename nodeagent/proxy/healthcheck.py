"""The proxy's HTTP health answers, as kube-proxy's ``pkg/proxy/healthcheck``.

Two kinds of server, both plain HTTP/1.1 on asyncio streams:

- **Health check node ports.** A LoadBalancer Service with ``externalTrafficPolicy: Local``
  has a ``healthCheckNodePort``; a cloud balancer probes it on every node and sends traffic
  only to nodes answering 200. Any path answers: 200 when this node has a ready local
  endpoint and the proxy is healthy, else 503, with kube-proxy's JSON body
  (``{"service":{"namespace":..,"name":..},"localEndpoints":N,"serviceProxyHealthy":B}``)
  and the ``X-Load-Balancing-Endpoint-Weight`` header. ``HealthCheckServers.update`` opens
  and closes ports as Services come and go; a port that cannot be opened is logged and
  reported (``problems``), and tried again on the next update.
- **Proxy health** on ``--proxy-healthz-bind``: ``/healthz`` and ``/livez`` answer 200 with
  ``lastUpdated``/``currentTime`` while the rules are fresh, 503 when they are stale: the
  last sync failed, or a change has waited longer than ``HEALTH_TIMEOUT_S`` (kube-proxy: two
  sync periods) without a successful sync. ``/healthz`` is also 503 while the node is being
  deleted (kube-proxy's ``nodeEligible``), so balancers drain it; ``/livez`` is not.

What to answer is decided by pure functions (``service_answer``, ``ProxyHealth.answer``);
the servers only carry bytes.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from nodeagent.httplistener import Answer, HttpListener, Responder
from nodeagent.log import get_logger
from nodeagent.model.service import Service
from nodeagent.proxy.state import Endpoint, ServicePortName

log = get_logger(__name__)

HEALTH_TIMEOUT_S = 60.0  # kube-proxy: 2 x its 30 s sync period


@dataclass(frozen=True)
class HealthCheckService:
    """One health check node port: whose it is and how many local endpoints are ready."""

    namespace: str
    name: str
    local_endpoints: int = 0


def health_check_services(
    services: Mapping[str, Service],
    ports: Mapping[str, int],
    endpoints: Mapping[str, Mapping[ServicePortName, Sequence[Endpoint]]],
) -> dict[int, HealthCheckService]:
    """Health check node port -> its Service and local endpoint count. ``ports``: each
    Service's allocated health check node port (0: none). Local endpoints are counted by
    IP, ready ones only (a node with only terminating endpoints must fail the check), as
    kube-proxy's LocalReadyEndpoints."""
    found: dict[int, HealthCheckService] = {}
    for key, service in sorted(services.items()):
        port = ports.get(key, 0)
        if not port or not service.proxied or not service.spec.needs_health_check:
            continue
        ips = {e.ip for eps in endpoints.get(key, {}).values() for e in eps if e.local and e.ready}
        found.setdefault(port, HealthCheckService(service.namespace, service.name, len(ips)))
    return found


def service_answer(service: HealthCheckService, *, proxy_healthy: bool) -> Answer:
    """A health check node port's answer (kube-proxy's hcHandler)."""
    body = {
        "service": {"namespace": service.namespace, "name": service.name},
        "localEndpoints": service.local_endpoints,
        "serviceProxyHealthy": proxy_healthy,
    }
    status = 200 if service.local_endpoints and proxy_healthy else 503
    headers = {
        "Content-Type": "application/json",
        "X-Content-Type-Options": "nosniff",
        "X-Load-Balancing-Endpoint-Weight": str(service.local_endpoints),
    }
    return status, headers, json.dumps(body, separators=(",", ":")).encode()


@dataclass
class ProxyHealth:
    """The proxy's freshness, fed by the sync loop; ``answer`` is pure given ``now``."""

    timeout_s: float = HEALTH_TIMEOUT_S
    last_updated: float | None = None  # wall clock of the last successful sync
    pending_since: float | None = None  # wall clock of the oldest change not yet synced
    last_failed: bool = False
    node_deleting: bool = False

    def queued(self, now: float) -> None:
        """A change waits for a sync (the first one since the last success counts)."""
        if self.pending_since is None:
            self.pending_since = now

    def synced(self, now: float, *, ok: bool) -> None:
        self.last_failed = not ok
        if ok:
            self.last_updated, self.pending_since = now, None

    def healthy(self, now: float) -> bool:
        if self.last_failed:
            return False
        return self.pending_since is None or now - self.pending_since <= self.timeout_s

    def answer(self, path: str, now: float) -> Answer:
        if path not in ("/healthz", "/livez"):
            return 404, {"Content-Type": "text/plain"}, b"404 page not found\n"
        healthy = self.healthy(now)
        eligible = not self.node_deleting
        ok = healthy and (eligible or path == "/livez")
        body = {
            "lastUpdated": _stamp(self.last_updated),
            "currentTime": _stamp(now),
            "nodeEligible": eligible,
        }
        headers = {"Content-Type": "application/json", "X-Content-Type-Options": "nosniff"}
        return (200 if ok else 503), headers, json.dumps(body).encode()


def _stamp(when: float | None) -> str:
    if when is None:
        return ""
    return datetime.datetime.fromtimestamp(when, datetime.UTC).isoformat().replace("+00:00", "Z")


# --- The servers (effects) ---------------------------------------------------------------


class HealthCheckServers:
    """The health check node ports: one listener per port, opened and closed by ``update``."""

    def __init__(self, proxy_healthy: Callable[[], bool], *, host: str = "") -> None:
        self._proxy_healthy = proxy_healthy
        self._host = host
        self._services: dict[int, HealthCheckService] = {}
        self._listeners: dict[int, HttpListener] = {}
        self.problems: dict[int, str] = {}  # port -> why it is not served

    async def update(self, services: Mapping[int, HealthCheckService]) -> None:
        self._services = dict(services)
        for port in [p for p in self._listeners if p not in services]:
            await self._listeners.pop(port).close()
            log.info("health_check_port_closed", port=port)
        self.problems = {p: why for p, why in self.problems.items() if p in services}
        for port, service in sorted(services.items()):
            if port in self._listeners:
                continue
            listener = HttpListener(
                self._host, port, self._responder(port), name=f"health check port {port}"
            )
            try:
                await listener.start()
            except OSError as exc:
                why = f"cannot listen on health check node port {port}: {exc.strerror}"
                if self.problems.get(port) != why:
                    log.error("health_check_port_failed", port=port, service=_key(service))
                self.problems[port] = why
                continue
            self.problems.pop(port, None)
            self._listeners[port] = listener
            log.info("health_check_port_open", port=port, service=_key(service))

    def _responder(self, port: int) -> Responder:
        def respond(method: str, path: str) -> Answer:
            service = self._services.get(port)
            if service is None:  # closed meanwhile
                return 503, {}, b""
            return service_answer(service, proxy_healthy=self._proxy_healthy())

        return respond

    async def close(self) -> None:
        await self.update({})


def _key(service: HealthCheckService) -> str:
    return f"{service.namespace}/{service.name}"
