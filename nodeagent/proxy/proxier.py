"""The service proxy loop: desired Services and local pods in, iptables rules out.

``ServiceProxy.run`` is one long-lived task (the daemon supervises it). Each turn it:

1. reads its inputs (``ProxyInputs``: the Services of the manifest directory and a view of
   the local pods), allocates cluster IPs and NodePorts when the Services changed (persisted
   in the state dir), and feeds service ports and endpoints to the change trackers;
2. syncs when something changed, rate-limited: two syncs never start less than
   ``min_sync_period_s`` apart, so a burst of changes costs one sync;
3. checks the canary every ``CANARY_INTERVAL_S`` and does a full sync every
   ``FULL_SYNC_PERIOD_S`` (and after any failure), partial syncs otherwise.

It wakes on ``wake()``: the daemon calls it when the desired state changes, when the
runtime shows a pod changed, and when a pod worker publishes a status whose IP, Ready
condition or phase changed (readiness changes with no runtime event at all: a probe). It
also looks every ``POLL_S`` as a safety net; no input depends on that poll.

Before the first sync it waits until its inputs are known (the manifest directory has been
read and the runtime listed) and settled (every pod has a status) or ``INITIAL_GRACE_S``
passed: an agent restarting on a busy node must not replace working rules with rules that
reject everything because the pod statuses are not back yet.

A Service whose clusterIP or nodePort cannot be allocated gets no rules; its problem is in
``errors()`` (the status ``errors`` list, like manifest errors). Cluster-mode Services (those
the inputs give EndpointSlice endpoints for) are not allocated here: the API server did it.

Health (``nodeagent.proxy.healthcheck``): every turn feeds ``ProxyHealth`` (a change pending,
a sync done or failed), which ``/healthz`` and ``/livez`` on ``healthz_bind`` answer from, and
opens or closes the health check node ports of Local-policy LoadBalancer Services with their
local endpoint counts. A port that cannot be opened costs that port, never the proxy.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nodeagent import metrics
from nodeagent.httplistener import HttpListener
from nodeagent.log import get_logger
from nodeagent.model.pod import Pod
from nodeagent.model.service import HEADLESS, Service
from nodeagent.proxy import allocator, host
from nodeagent.proxy.allocator import Allocation, AllocationError, Ranges
from nodeagent.proxy.conntrack import Conntrack
from nodeagent.proxy.endpoints import PortMemory, service_endpoints, service_ports, settled
from nodeagent.proxy.healthcheck import HealthCheckServers, ProxyHealth, health_check_services
from nodeagent.proxy.iptables.runner import Iptables, IptablesError, remove_rules
from nodeagent.proxy.iptables.sync import RuleWriter, Syncer
from nodeagent.proxy.nftables.runner import Nftables, NftablesError, remove_table
from nodeagent.proxy.nftables.sync import NftSyncer
from nodeagent.proxy.nodeports import nodeport_ips, primary_ip
from nodeagent.proxy.ruleconfig import RulesConfig
from nodeagent.proxy.state import Endpoint, ServicePortInfo, ServicePortName

log = get_logger(__name__)

POLL_S = 10.0
CANARY_INTERVAL_S = 10.0
FULL_SYNC_PERIOD_S = 3600.0
INITIAL_GRACE_S = 5.0
MAX_RETRY_S = 30.0
ALLOCATIONS_FILE = "proxy/allocations.json"


@dataclass(frozen=True)
class ProxySettings:
    service_cidr: ipaddress.IPv4Network
    node_port_range: tuple[int, int]
    min_sync_period_s: float
    cluster_cidr: str  # the pod CIDR: traffic from elsewhere to a service IP is masqueraded
    state_dir: Path
    pod_egress_masquerade: bool = False  # multi-node: see RulesConfig.pod_egress_masquerade
    mode: str = "iptables"  # or "nftables"
    healthz_bind: str = ""  # host:port of /healthz and /livez; "": none
    nodeport_addresses: tuple[str, ...] = ()  # CIDRs or "primary"; (): every local address
    node_ip: str = ""  # "primary" in nodeport_addresses; "": the lowest non-loopback IPv4

    @property
    def allocations_path(self) -> Path:
        return self.state_dir / ALLOCATIONS_FILE


@dataclass(frozen=True)
class ProxyInputs:
    services: Mapping[str, Service]
    # The kubelet's pod list as in the status snapshot (metadata, status, worker state) ...
    pods: Sequence[Mapping[str, Any]] = ()
    # ... and the desired pods by namespace/name, for their container ports.
    specs: Mapping[str, Pod] = field(default_factory=dict)
    # Cluster mode: endpoints per Service from its EndpointSlices; a Service listed here
    # takes these instead of endpoints derived from this node's pods.
    endpoints: Mapping[str, Mapping[ServicePortName, tuple[Endpoint, ...]]] = field(
        default_factory=dict
    )


@dataclass(frozen=True)
class Connection:
    """The proxy's effects on this node: the rule writer and what the host allows."""

    writer: RuleWriter | Nftables
    conntrack: Conntrack | None
    local_addresses: Callable[[], Iterable[str]]
    localhost_nodeports: bool = True
    warnings: tuple[str, ...] = ()


async def connect_host(mode: str = "iptables") -> Connection:
    """Production wiring: set the sysctls, detect the iptables backend (or nft), find
    conntrack, and remove what the other mode may have left from an earlier run."""
    localhost_nodeports, warnings = await asyncio.to_thread(host.prepare)
    writer: RuleWriter | Nftables
    if mode == "nftables":
        writer = await Nftables.detect()
        await remove_rules()
    else:
        writer = await Iptables.detect()
        await remove_table()
    return Connection(
        writer=writer,
        conntrack=Conntrack(),
        local_addresses=host.local_addresses,
        localhost_nodeports=localhost_nodeports,
        warnings=tuple(warnings),
    )


class ServiceProxy:
    def __init__(
        self,
        settings: ProxySettings,
        *,
        inputs: Callable[[], ProxyInputs | None],
        connect: Callable[[], Awaitable[Connection]],
    ) -> None:
        self.settings = settings
        self._inputs = inputs
        self._connect = connect
        self._ranges = Ranges(settings.service_cidr, settings.node_port_range)
        self._wake = asyncio.Event()
        self._syncer: Syncer | NftSyncer | None = None
        self._warnings: tuple[str, ...] = ()
        self._connect_error: str | None = None
        self._services: Mapping[str, Service] = {}
        self._allocations: dict[str, Allocation] = {}  # every Service's
        self._local_allocations: dict[str, Allocation] = {}  # those the allocator made
        self._cluster_ips: dict[str, str] = {}  # the allocations' IPs, for cluster_ips()
        self._allocation_errors: list[AllocationError] = []
        self._ports: dict[ServicePortName, ServicePortInfo] = {}
        self._endpoints: dict[str, dict[ServicePortName, tuple[Endpoint, ...]]] = {}
        self._pod_ports = PortMemory()
        self.health = ProxyHealth()
        self._health_checks = HealthCheckServers(lambda: self.health.healthy(time.time()))
        self._health_check_ports: dict[str, int] = {}  # Services needing one -> the port
        self._healthz_problem: str | None = None

    # -- control -----------------------------------------------------------------------------

    def wake(self) -> None:
        """Something changed: look at the inputs now (a sync still respects the rate limit)."""
        self._wake.set()

    def set_cluster_cidr(self, cidr: str) -> None:
        """A new cluster CIDR (with no ``--cluster-cidr``, the node's pod CIDR, which the
        controller-manager may assign after start): every service's masquerade rule
        changes, so the next sync is a full one."""
        if cidr == self.settings.cluster_cidr:
            return
        log.info("proxy_cluster_cidr", cidr=cidr, previous=self.settings.cluster_cidr)
        self.settings = replace(self.settings, cluster_cidr=cidr)
        if self._syncer is not None:
            self._syncer.config = replace(self._syncer.config, cluster_cidr=cidr)
            self._syncer.need_full = True
        self._wake.set()

    def set_node_deleting(self, deleting: bool) -> None:
        """The Node is being deleted: /healthz fails so that balancers drain this node."""
        self.health.node_deleting = deleting

    async def run(self) -> None:
        healthz = await self._serve_healthz()
        try:
            await self._run()
        finally:
            await self._health_checks.close()
            if healthz is not None:
                await healthz.close()

    async def _serve_healthz(self) -> HttpListener | None:
        if not self.settings.healthz_bind:
            return None
        host, _, port = self.settings.healthz_bind.rpartition(":")
        listener = HttpListener(
            host.strip("[]"),
            int(port),
            lambda method, path: self.health.answer(path, time.time()),
            name="proxy healthz",
        )
        try:
            await listener.start()
        except OSError as exc:
            self._healthz_problem = (
                f"cannot listen on {self.settings.healthz_bind} (--proxy-healthz-bind): "
                f"{exc.strerror}"
            )
            log.error("proxy_healthz_unavailable", error=self._healthz_problem)
            return None
        host, port_number = listener.address
        log.info("proxy_healthz_listening", address=f"{host}:{port_number}")
        return listener

    async def _run(self) -> None:
        connection = await self._connect_until_done()
        writer, self._warnings = connection.writer, connection.warnings
        config = RulesConfig(
            cluster_cidr=self.settings.cluster_cidr,
            localhost_nodeports=connection.localhost_nodeports,
            pod_egress_masquerade=self.settings.pod_egress_masquerade,
        )
        conntrack, local = connection.conntrack, connection.local_addresses
        config = replace(config, nodeport_ips=self._nodeport_ips(local))
        syncer: Syncer | NftSyncer
        if isinstance(writer, Nftables):
            syncer = NftSyncer(writer, config, conntrack=conntrack, local_addresses=local)
        else:
            syncer = Syncer(writer, config, conntrack=conntrack, local_addresses=local)
        self._syncer = syncer
        self._local_allocations = await asyncio.to_thread(
            allocator.load, self.settings.allocations_path
        )
        loop = asyncio.get_running_loop()
        first_inputs: float | None = None
        last_start = -1e9
        last_full = last_canary = loop.time()
        failures = 0
        while True:
            inputs = self._inputs()
            if inputs is not None:
                await self._refresh(inputs)
                if first_inputs is None:
                    first_inputs = loop.time()
            now = loop.time()
            initialized = syncer.stats.last_sync is not None or (
                inputs is not None
                and first_inputs is not None
                and (settled(inputs.pods) or now - first_inputs >= INITIAL_GRACE_S)
            )
            if initialized and syncer.stats.last_sync is not None:
                if now - last_full >= FULL_SYNC_PERIOD_S:
                    syncer.need_full = True
                if now - last_canary >= CANARY_INTERVAL_S:
                    last_canary = now
                    self._follow_nodeport_ips(syncer, local)
                    if not await writer.canary_ok():
                        log.warning("proxy_canary_gone", effect="full resync")
                        syncer.need_full = True
            gap = self.settings.min_sync_period_s * (2 ** min(failures, 5))
            gap = min(gap, max(MAX_RETRY_S, self.settings.min_sync_period_s))
            wait = POLL_S
            if not initialized and first_inputs is not None:
                wait = min(wait, first_inputs + INITIAL_GRACE_S - now)  # the grace's end
            if syncer.pending():
                self.health.queued(time.time())
            if initialized and syncer.pending():
                due = last_start + gap
                if now >= due:
                    last_start = now
                    full = syncer.need_full
                    ok = await syncer.sync()
                    self.health.synced(time.time(), ok=ok)
                    metrics.proxy_synced(full=full, ok=ok, stats=syncer.stats)
                    if ok:
                        failures = 0
                        if full:
                            last_full = last_canary = loop.time()
                    else:
                        failures += 1
                    continue
                wait = min(wait, due - now)
            self._wake.clear()
            try:
                async with asyncio.timeout(max(wait, 0.01)):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _nodeport_ips(self, local: Callable[[], Iterable[str]]) -> tuple[str, ...] | None:
        wanted = self.settings.nodeport_addresses
        if not wanted:
            return None  # every local address: no need to look at them
        addresses = list(local())
        return nodeport_ips(wanted, addresses, self.settings.node_ip or primary_ip(addresses))

    def _follow_nodeport_ips(
        self, syncer: Syncer | NftSyncer, local: Callable[[], Iterable[str]]
    ) -> None:
        """The node's addresses changed under --nodeport-addresses: a full resync."""
        ips = self._nodeport_ips(local)
        if ips != syncer.config.nodeport_ips:
            log.info("proxy_nodeport_addresses", addresses=ips)
            syncer.config = replace(syncer.config, nodeport_ips=ips)
            syncer.need_full = True

    async def _connect_until_done(self) -> Connection:
        """Connect, retrying with backoff; meanwhile the failure is the status' lastError."""
        delay = 1.0
        while True:
            try:
                return await self._connect()
            except (IptablesError, NftablesError, OSError) as exc:
                self._connect_error = f"cannot set up {self.settings.mode}: {exc}"
                log.error("proxy_unavailable", error=str(exc), retry_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_S)

    async def _refresh(self, inputs: ProxyInputs) -> None:
        if inputs.services is not self._services and inputs.services != self._services:
            # Cluster mode: API Services (those with slice endpoints) come allocated.
            local = {k: s for k, s in inputs.services.items() if k not in inputs.endpoints}
            allocations, errors = allocator.allocate(local, self._local_allocations, self._ranges)
            if allocations != self._local_allocations:
                await asyncio.to_thread(allocator.save, self.settings.allocations_path, allocations)
            self._local_allocations = allocations
            allocations = {
                **allocations,
                **{k: allocator.assigned(s) for k, s in inputs.services.items() if k not in local},
            }
            self._allocations, self._allocation_errors = allocations, errors
            self._cluster_ips = {k: a.cluster_ip for k, a in allocations.items() if a.cluster_ip}
            for error in errors:
                log.warning(
                    "service_allocation_failed",
                    service=error.service,
                    field=error.field,
                    message=error.message,
                )
            self._health_check_ports = {
                key: allocations[key].health_check_node_port
                for key, service in inputs.services.items()
                if key in allocations and service.spec.needs_health_check
            }
            self._ports = {
                key: info
                for name, service in inputs.services.items()
                if name in allocations
                for key, info in service_ports(service, allocations[name]).items()
            }
        self._services = inputs.services
        pods = self._pod_ports.views(inputs.pods, inputs.specs)
        self._endpoints = {
            name: dict(inputs.endpoints[name])
            if name in inputs.endpoints
            else service_endpoints(service, pods)
            for name, service in inputs.services.items()
        }
        await self._health_checks.update(
            health_check_services(
                {k: inputs.services[k] for k in self._health_check_ports},
                self._health_check_ports,
                self._endpoints,
            )
        )
        if self._syncer is not None:
            self._syncer.services.replace(self._ports)
            self._syncer.endpoints.replace(
                {
                    k: v
                    for eps in self._endpoints.values()
                    for k, v in eps.items()
                    if k in self._ports
                }
            )

    def cluster_ips(self) -> Mapping[str, str]:
        """``namespace/name`` -> the cluster IP allocated (standalone) or checked (API)."""
        return self._cluster_ips

    # -- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The ``proxy`` object of the status snapshot."""
        if self._syncer is None:
            return {
                "lastSync": None,
                "backend": None,
                "lastError": self._connect_error,
                "warnings": self._health_problems(),
            }
        doc: dict[str, Any] = self._syncer.stats.to_json(self._syncer.writer.backend_name)
        doc["warnings"] = [*self._warnings, *self._health_problems()]
        return doc

    def _health_problems(self) -> list[str]:
        found = [self._healthz_problem] if self._healthz_problem else []
        return found + [why for _, why in sorted(self._health_checks.problems.items())]

    def errors(self) -> list[dict[str, str]]:
        """Allocation errors, in the shape of manifest errors."""
        return [
            {
                "source": _source(self._services.get(e.service)),
                "object": f"Service {e.service}",
                "field": e.field,
                "message": e.message,
            }
            for e in self._allocation_errors
        ]

    def services(self) -> list[dict[str, Any]]:
        """Every desired Service as an API object, allocations filled in, with endpoints."""
        return [
            service_object(
                service,
                self._allocations.get(key),
                self._endpoints.get(key, {}),
            )
            for key, service in sorted(self._services.items())
        ]


def _source(service: Service | None) -> str:
    return service.source if service is not None else ""


def service_object(
    service: Service,
    allocation: Allocation | None,
    endpoints: Mapping[ServicePortName, tuple[Endpoint, ...]],
) -> dict[str, Any]:
    """A Service as the API would show it once allocated; plus its endpoint addresses."""
    metadata: dict[str, Any] = {"name": service.name, "namespace": service.namespace}
    if service.labels:
        metadata["labels"] = dict(service.labels)
    if service.annotations:
        metadata["annotations"] = dict(service.annotations)
    raw_spec = service.raw.get("spec")
    spec: dict[str, Any] = dict(raw_spec) if isinstance(raw_spec, Mapping) else {}
    spec["type"] = service.spec.type.value
    if service.spec.headless:
        spec["clusterIP"], spec["clusterIPs"] = HEADLESS, [HEADLESS]
    elif allocation is not None and allocation.cluster_ip:
        spec["clusterIP"] = spec.get("clusterIP") or allocation.cluster_ip
        if not service.spec.ipv6_cluster_ip:
            spec["clusterIPs"], spec["ipFamilies"] = [allocation.cluster_ip], ["IPv4"]
        if allocation.health_check_node_port:
            spec["healthCheckNodePort"] = allocation.health_check_node_port
    raw_ports = spec.get("ports")
    if isinstance(raw_ports, list) and allocation is not None:
        ports = []
        for raw, port in zip(raw_ports, service.spec.ports, strict=False):
            entry = dict(raw) if isinstance(raw, Mapping) else {}
            entry.setdefault("protocol", port.protocol.value)
            entry.setdefault("targetPort", port.target_port)
            node_port = allocation.node_ports.get(port.key)
            if node_port:
                entry["nodePort"] = node_port
            ports.append(entry)
        spec["ports"] = ports
    ready = sorted({str(e) for eps in endpoints.values() for e in eps if e.ready}, key=_addr_key)
    not_ready = sorted(
        {str(e) for eps in endpoints.values() for e in eps if not e.ready}, key=_addr_key
    )
    raw_status = service.raw.get("status")
    return {
        "metadata": metadata,
        "spec": spec,
        "status": dict(raw_status) if isinstance(raw_status, Mapping) else {"loadBalancer": {}},
        "endpoints": ready,
        "notReadyEndpoints": not_ready,
        "proxied": allocation is not None and service.proxied,
        "notProgrammed": list(service.spec.not_programmed),
    }


def _addr_key(address: str) -> tuple[int, int]:
    ip, _, port = address.rpartition(":")
    try:
        return int(ipaddress.IPv4Address(ip)), int(port)
    except ValueError:
        return 0, 0
