"""Daemon wiring: build the components and connect them (``nodeagent.agent`` runs them).

Data flows one way::

    FileSource --DesiredState--> PodManager --> PodWorker (one per pod) --> Runtime
        |                             ^                                        |
        |                             +------ RuntimeCache (relist) <----------+
        +--Services--> ServiceProxy <--pod statuses-- PodManager
                            +--> iptables (nat, filter), conntrack

Policy lives in the parts; ``Node`` holds them and passes each what it reads. The parts it
connects, by role: evicted pods (``kubelet/evicted.py``, chosen by ``kubelet/eviction.py``
for memory, by ``kubelet/noderesources.py`` for disk, beside log rotation and GC),
the proxy's inputs and when they are known (``proxy/nodeinputs.py``), the status snapshot
(``server/snapshot.py``), the runtime, node IP, DNS, cgroup settings and loop supervision
(``startup.py``), pod cgroups (``kubelet/cgroups/``: made before each sandbox, removed after
the pod by their own loop), and in cluster mode the link to the API (``apiserver/cluster.py``).

The pod network (network/podnet.py) decides when pods may get addresses: at once with
``--pod-cidr`` or standalone, and in cluster mode once the Node's ``spec.podCIDR`` arrives;
then the runtime must say NetworkReady too (CRI ``Status``, asked every few seconds, at once
after a new CNI config). The workers ask both before each pod-network sandbox and are woken
when they turn ready.

Every long-lived task runs under ``startup.supervised``: an unexpected exit is logged and the
task restarted after a short delay, so one broken loop never silently stops the node.
Shutdown (SIGTERM/SIGINT) detaches the pod workers without touching any pod, as the kubelet
does: the next start adopts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from nodeagent import startup
from nodeagent.config import DEFAULT_POD_CIDR, Config
from nodeagent.events import EventRing, PodEventFeed, node_event_recorder, record_api_event
from nodeagent.kubelet import eviction, nodestatus
from nodeagent.kubelet.cgroups.manager import CgroupSettings, PodCgroups
from nodeagent.kubelet.context import KubeletContext
from nodeagent.kubelet.envvars import ServiceView
from nodeagent.kubelet.evicted import EvictedPods
from nodeagent.kubelet.images import ImageManager
from nodeagent.kubelet.manager import PodManager
from nodeagent.kubelet.nodeconditions import Condition, NodeConditionTracker
from nodeagent.kubelet.noderesources import NodeResources
from nodeagent.kubelet.pleg import RuntimeCache
from nodeagent.kubelet.prober import ProbeManager
from nodeagent.kubelet.staticrefs import Resolution, StaticReferences, held_statuses
from nodeagent.model.pod import PodUID
from nodeagent.model.security import PrivilegePolicy
from nodeagent.network import podnet
from nodeagent.proxy.nodeinputs import NodeInputs
from nodeagent.proxy.proxier import ProxySettings, ServiceProxy, connect_host
from nodeagent.runtime.base import Runtime, RuntimeFailure, RuntimeStatus
from nodeagent.sdnotify import Notifier, Watchdog
from nodeagent.server import snapshot, usage
from nodeagent.sources.file import DesiredState, FileSource

if TYPE_CHECKING:
    from nodeagent.apiserver.client import ApiClient
    from nodeagent.apiserver.cluster import ClusterLink
    from nodeagent.apiserver.nodes import NodeRoutes

log = structlog.get_logger("nodeagent.daemon")

NODE_STATUS_INTERVAL_S = 10.0
RUNTIME_STATUS_S = 5.0  # how often the runtime's Status is asked (the kubelet's 5 s)
RUNTIME_STATUS_NOT_READY_S = 1.0  # and while its network is not ready
ORPHAN_SWEEP_INTERVAL_S = 10.0
READY_WAIT_S = 10.0  # how long READY=1 waits for a first desired state (see notify_ready)


class Node:
    """The running agent's parts, and the status snapshot they add up to."""

    def __init__(
        self,
        config: Config,
        runtime: Runtime,
        client: ApiClient | None = None,
        cgroups: CgroupSettings | None = None,
    ) -> None:
        self.config = config
        self.runtime = runtime
        self.runtime_version = ""
        self.runtime_name: str = "containerd" if config.runtime == "cri" else config.runtime
        self.desired = DesiredState()
        self.runtime_status: RuntimeStatus | None = None  # CRI Status; None: not known
        self._status_wake = asyncio.Event()
        self.pod_network = podnet.PodNetwork(
            conf_dir=config.cni_conf_dir,
            ipam_dir=config.state_dir / "ipam",
            pod_ips=self._pod_ips,
            pods_known=lambda: self.cache.synced.is_set() and self._desired_loaded,
            on_applied=self._pod_cidr_applied,
        )
        self.cache = RuntimeCache(
            runtime, on_change=self._runtime_changed, interval_s=config.relist_interval_s
        )
        self.csi_plugins, csi = startup.csi_volumes(config, client)
        self.cgroups = (
            None
            if cgroups is None
            else PodCgroups(
                cgroups,
                pods=lambda: self.desired.pods.values(),
                live=self.cache.uids,
                ready=lambda: self.cache.synced.is_set() and self._desired_loaded,
            )
        )
        self.ctx = KubeletContext(
            node_name=config.node_name,
            host_ip=config.node_ip,
            state_dir=config.state_dir,
            pod_log_dir=str(config.pod_log_dir),
            runtime=runtime,
            runtime_name=self.runtime_name,
            cache=self.cache,
            images=ImageManager(runtime, startup.image_settings(config)),
            prober=ProbeManager(runtime),
            dns=startup.dns_settings(config),
            privilege=PrivilegePolicy(
                allow_privileged=config.allow_privileged,
                protected_paths=(str(config.state_dir), str(config.status_socket)),
            ),
            services=self._service_view,
            network_problem=self._network_problem,
            csi=csi,
            cgroups=self.cgroups,
        )
        self.manager = PodManager(self.ctx)
        self.static_refs = StaticReferences(config.state_dir)  # pods using ConfigMaps, ...
        self.evicted = EvictedPods(
            self.manager, on_evicted=self._evicted, on_final=self._record_final
        )
        self.eviction = eviction.EvictionMonitor(
            config.eviction_hard,
            read=nodestatus.memory_reading,
            pods=lambda: self.evicted.candidates(self.desired.pods.values()),
            evict=self.evicted.evict,
            interval_s=config.eviction_interval_s,
        )
        self.resources = NodeResources(  # log rotation, garbage collection, disk eviction
            config,
            runtime,
            cache=self.cache,
            wanted=self.manager.wanted,
            pods=lambda: self.desired.pods.values(),
            candidates=self.evicted.candidates,
            evict=self.evicted.evict,
            image_gc=self.ctx.images.reclaim,
        )
        self._desired_loaded = config.manifests is None and client is None
        self.cluster: ClusterLink | None = None if client is None else self._cluster_link(client)
        if self.cluster is None:  # env from the directory's ConfigMaps, at each creation
            self.manager.set_env_source(self.static_refs.container_env)
            self.ctx.images.set_secret_source(self._file_secret)
        self.events = EventRing()  # what describe shows; in cluster mode the API gets them too
        self.event_feed = PodEventFeed(self.events, self.manager.snapshot)
        if self.cluster is not None:
            self.cluster.events.sink = lambda event: record_api_event(self.events, event)
        else:
            self.ctx.images.listen(self.event_feed.on_pull)
        self.conditions = NodeConditionTracker(
            self._sample_conditions,
            on_transition=node_event_recorder(
                self.events,
                config.node_name,
                send=self.cluster.events.record if self.cluster is not None else None,
            ),
        )
        self.desired_applied = asyncio.Event()  # the first desired state reached the manager
        self.routes: NodeRoutes | None = None
        self.sysctl_problems: list[str] = []
        if client is not None and config.cluster_cidr is not None:
            from nodeagent.apiserver.nodes import NodeRoutes

            self.routes = NodeRoutes(client, node_name=config.node_name)
        if self.cluster is not None:
            self.cluster.registration.node_ip = config.node_ip
        self.proxy = ServiceProxy(
            ProxySettings(
                service_cidr=config.service_cidr,
                node_port_range=config.node_port_range,
                min_sync_period_s=config.proxy_min_sync_period,
                cluster_cidr=str(config.cluster_cidr or ""),
                state_dir=config.state_dir,
                pod_egress_masquerade=config.cluster_cidr is not None,
                mode=config.proxy_mode,
                healthz_bind=config.proxy_healthz_bind,
                nodeport_addresses=config.nodeport_addresses,
                node_ip=config.node_ip,
            ),
            inputs=NodeInputs(
                ready=self._proxy_ready,
                services=lambda: self.desired.services,
                pods=self.manager.snapshot,
                specs=lambda: self.desired.pods,
                endpoints=lambda: self.cluster.endpoints if self.cluster is not None else {},
            ),
            connect=functools.partial(connect_host, config.proxy_mode),
        )
        self.snapshot = self._snapshot()  # what the status socket serves
        self.manager.on_serving_change = self._serving_changed
        # Standalone pods use the flag's range or the default; a cluster's, the Node's.
        static_cidr = config.pod_cidr or (None if client is not None else DEFAULT_POD_CIDR)
        self.pod_network.start(str(static_cidr or ""))
        self.source = (
            FileSource(
                config.manifests,
                node_name=config.node_name,
                on_update=self._file_changed,
                interval_s=config.file_check_interval_s,
                max_file_bytes=config.max_manifest_bytes,
            )
            if config.manifests is not None
            else None
        )

    def _serving_changed(self) -> None:
        """A pod's IP, readiness or phase changed: the proxy's rules follow at once, and in
        cluster mode so does the pod's status in the API, as the kubelet's status manager
        syncs on each change (the writer's periodic pass stays as the safety net)."""
        self.proxy.wake()
        if self.cluster is not None:
            self.cluster.status.wake()

    def _cluster_link(self, client: ApiClient) -> ClusterLink:
        """Cluster mode: the API's pods join the manifests' (the link merges both)."""
        from nodeagent.apiserver.cluster import ClusterLink

        return ClusterLink(
            client,
            node_name=self.config.node_name,
            manager=self.manager,
            facts=self._node_facts,
            on_desired=self._desired_changed,
            on_pod_cidr=self._pod_cidr_changed,
            on_node_deleting=lambda deleting: self.proxy.set_node_deleting(deleting),
            with_files=self.config.manifests is not None,
            runtime_synced=self.cache.synced,
            state_dir=self.config.state_dir,
            cache=self.cache,
            images=self.ctx.images,
            probes=functools.partial(self.ctx.prober.report, id_prefix=""),
        )

    def _pod_cidr_changed(self, pod_cidr: str) -> None:
        self.pod_network.set_pod_cidr(pod_cidr)

    def _pod_cidr_applied(self, pod_cidr: str) -> None:
        """The CNI config serves ``pod_cidr`` now: pods that waited for it start."""
        if self.config.cluster_cidr is None:  # the proxy's cluster is this node's pods
            self.proxy.set_cluster_cidr(pod_cidr)
        self._status_wake.set()  # the runtime loads the config: ask it at once
        self.manager.wake_all()

    def _network_problem(self) -> str:
        """Why a pod-network sandbox may not start now ("" when it may)."""
        problem = self.pod_network.problem()
        status = self.runtime_status
        if problem or status is None or status.network_ready:
            return problem
        return nodestatus.runtime_problem(status)

    async def watch_runtime_status(self) -> None:
        """Ask the runtime's Status; pods that waited for its network are woken when it is
        ready. A runtime that does not answer is the relister's to report."""
        while True:
            before = self._network_problem()
            try:
                self.runtime_status = await self.runtime.status()
            except RuntimeFailure as exc:
                log.debug("runtime_status_failed", error=str(exc))
                self.runtime_status = None
            if before and not self._network_problem():
                self.manager.wake_all()
            ready = self.runtime_status is None or self.runtime_status.network_ready
            self._status_wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._status_wake.wait(),
                    RUNTIME_STATUS_S if ready else RUNTIME_STATUS_NOT_READY_S,
                )

    def _pod_ips(self) -> list[str]:
        return [str(p["status"].get("podIP") or "") for p in self.manager.snapshot()]

    def _service_view(self) -> ServiceView:
        """The Services the proxy is given, for the pods' Service variables: one view, no
        second watch (a Service the proxy has not allocated an IP for yet has none here)."""
        return ServiceView(self.desired.services, self.proxy.cluster_ips())

    async def _file_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A pod's pull secret, standalone: the manifest directory's, as the API would serve."""
        found = self.desired.secrets.get(f"{namespace}/{name}")
        return None if found is None else found.obj

    def _runtime_changed(self, uid: PodUID) -> None:
        self.manager.on_runtime_change(uid)
        self.proxy.wake()

    def _file_changed(self, state: DesiredState) -> None:
        """The manifest directory's state; its pods that use the directory's ConfigMaps and
        Secrets (or the downward API) join the others once resolved, in either mode."""
        deliver = self._desired_changed if self.cluster is None else self.cluster.file_changed
        if not (state.templates or self.static_refs.active):
            deliver(state)
            return

        def then(result: Resolution) -> None:
            if self.cluster is None:  # the cluster link keeps its own held set
                self.manager.set_held({h.pod.uid for h in result.held.values()})
            pods = {**state.pods, **result.pods}
            deliver(dataclasses.replace(state, pods=pods, templates={}))

        self.static_refs.submit(state.templates, state.config_maps, state.secrets, then)

    def _desired_changed(self, state: DesiredState) -> None:
        self.desired = state
        self._desired_loaded = True
        self.desired_applied.set()
        # An evicted pod stays evicted until its source drops it or changes it (a new uid).
        uids = {p.uid for p in state.pods.values()}
        self.evicted.keep(uids)
        self.manager.update({k: p for k, p in state.pods.items() if p.uid not in self.evicted})
        self.proxy.wake()

    def _evicted(self) -> None:
        self.proxy.wake()

    def _record_final(self, uid: PodUID, status: dict[str, Any]) -> None:
        if self.cluster is not None:
            self.cluster.record_final(uid, status)

    def _proxy_ready(self) -> bool:
        """The proxy must not sync an empty world: the desired state, the runtime and, in
        cluster mode, the API's Services known."""
        if not (self._desired_loaded and self.cache.synced.is_set()):
            return False
        return self.cluster is None or self.cluster.services_ready

    async def run_source(self) -> None:
        await self.cache.synced.wait()  # adopt what runs before deciding anything
        if self.source is None:
            if self.cluster is None:
                self.manager.update({})
            await asyncio.Event().wait()
        else:
            await self.source.run()

    async def sweep_orphans(self) -> None:
        while True:
            await asyncio.sleep(ORPHAN_SWEEP_INTERVAL_S)
            if self.cache.healthy:
                self.manager.cleanup_orphans()

    async def learn_runtime_version(self) -> None:
        while not self.runtime_version:
            try:
                version = await self.runtime.version()
            except RuntimeFailure as exc:
                log.warning("runtime_version_failed", error=str(exc))
                await asyncio.sleep(NODE_STATUS_INTERVAL_S)
                continue
            self.runtime_name, self.runtime_version = version.name, version.version
        await asyncio.Event().wait()

    def _node_facts(self) -> nodestatus.NodeFacts:
        return nodestatus.NodeFacts(
            name=self.config.node_name,
            max_pods=self.config.max_pods,
            runtime_name=self.runtime_name,
            runtime_version=self.runtime_version,
            runtime_healthy=self.cache.healthy,
            runtime_error=self.cache.last_error,
            state_dir=str(self.config.state_dir),
            now=time.time(),
            memory_pressure=self.eviction.under_pressure,
            reservation=nodestatus.Reservation(
                kube=self.config.kube_reserved,
                system=self.config.system_reserved,
                eviction=self.config.eviction_hard,
            ),
            disk_pressure=self.resources.disk.under_pressure,
            pod_network=self.pod_network.status(),
            runtime_status=self.runtime_status,
            node_ip=self.config.node_ip,
            kubelet_port=int(self.config.kubelet_api_bind.rpartition(":")[2] or 0),
            images=self.ctx.images.images,
            image_fs=self.ctx.images.image_fs,
        )

    def _sample_conditions(self) -> Sequence[Condition]:
        return nodestatus.conditions(self._node_facts())

    def _node_status(self) -> dict[str, Any]:
        status = nodestatus.node_status(self._node_facts())
        status["conditions"] = self.conditions.observe(status["conditions"])
        status["eviction"] = {**self.eviction.report(), **self.resources.report()}
        status["usage"] = {**status.get("usage", {}), **usage.usage(self.config.state_dir)}
        return status

    def _snapshot(self) -> snapshot.Snapshot:
        cluster = self.cluster
        config = self.config
        return snapshot.Snapshot(
            snapshot.Parts(
                agent=snapshot.Agent(
                    pod_log_dir=str(config.pod_log_dir),
                    mode="standalone" if cluster is None else "cluster",
                    metrics_bind=config.metrics_bind,
                ),
                node=self._node_status,
                pods=self._pods,
                extras=self._pod_extras,
                services=self.proxy.services,
                proxy=self.proxy.status,
                errors=lambda: [e.to_json() for e in self.desired.errors] + self.proxy.errors(),
                events=self.events.to_json,
                cluster=cluster.report if cluster is not None else None,
                network=self._network if config.cluster_cidr is not None else None,
            )
        )

    def _pod_extras(self, uid: PodUID) -> snapshot.PodExtras | None:
        worker = self.manager.worker_for(uid)
        if worker is None:
            return None
        return snapshot.PodExtras(worker.pod, worker.backoff_until)

    def _network(self) -> dict[str, Any]:
        routes = self.routes.report() if self.routes is not None else {}
        return {
            "clusterCIDR": str(self.config.cluster_cidr),
            "sysctlProblems": self.sysctl_problems,
            **routes,
        }

    async def notify_ready(self, notifier: Notifier) -> None:
        """READY=1 to systemd once the runtime is listed and the running pods adopted.

        Adopted means the first desired state reached the manager, which then holds a worker
        for each running pod. A desired state that needs the API (cluster mode without a
        manifest directory) is waited for only READY_WAIT_S: an agent started during an API
        outage is ready all the same (nothing it runs is touched until the API answers).
        """
        await self.cache.synced.wait()
        try:
            await asyncio.wait_for(self.desired_applied.wait(), READY_WAIT_S)
            status = f"{len(self.manager.snapshot())} pods adopted"
        except TimeoutError:
            status = "running pods kept; waiting for the control plane's pod list"
        notifier.ready(status=status)
        await asyncio.Event().wait()

    def _pods(self) -> list[dict[str, Any]]:
        evicted = list(self.evicted.entries.values())
        held = held_statuses(self.static_refs.held)
        return snapshot.sorted_pods(self.manager.snapshot(), evicted, held)

    def loops(self, notifier: Notifier) -> dict[str, Callable[[], Awaitable[None]]]:
        """Every long-lived task of the node, by name (each runs under ``supervised``)."""
        return {
            "relist": self.cache.run,
            "source": self.run_source,
            "orphans": self.sweep_orphans,
            "csi-plugins": self.csi_plugins.run,
            "runtime-version": self.learn_runtime_version,
            "proxy": self.proxy.run,
            "pod-network": self.pod_network.run,
            "runtime-status": self.watch_runtime_status,
            **({"pod-events": self.event_feed.run} if self.cluster is None else {}),
            "eviction": self.eviction.run,
            "images": self.ctx.images.run,
            **({"cgroups": self.cgroups.run} if self.cgroups is not None else {}),
            **self.resources.loops(),
            "node-conditions": self.conditions.run,
            **(self.cluster.loops() if self.cluster is not None else {}),
            **(self.routes.loops() if self.routes is not None else {}),
            "sd-ready": lambda: self.notify_ready(notifier),
            "sd-watchdog": Watchdog(notifier).run,
        }
