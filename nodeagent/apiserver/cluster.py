"""The cluster link: every cluster-mode part, built and connected in one place.

The daemon builds one ``ClusterLink`` when it has a kubeconfig, runs its ``loops()`` under
supervision, and routes the manifest directory's updates through ``file_changed``. The link
then owns what the pod manager is told:

    FileSource --file_changed--+
                               +--> merge (pods.py) --on_desired--> daemon --> PodManager
    pods Reflector --changed---+
                                         PodManager --worker statuses--> PodStatusWriter

Start-up and outages, as the kubelet's "sources ready" rule has it: the manager learns the
static pods as soon as the directory is read, but does not remove pods that nothing claims
(orphans) until the API's pods have been listed once. An agent restarted while the API is
down therefore keeps every pod running; so does a running agent, because the reflector
keeps its last state through an outage.

Admission (``admission.py``) reads the node as its own Node object shows it, watched
(``fieldSelector=metadata.name=<node>``): labels an operator adds with ``kubectl label`` and
taints count at once. A pod refused for node affinity alone waits while the Node is read
again (a GET: the watch may lag a label added just before the pod), then is judged once more,
as upstream's predicate admit handler does. A pod the runtime already runs when the agent
starts (an agent restart) counts as admitted and is never judged again.

Its parts, by role: deletions (``deletion.py``: terminate, final status, DELETE), the
statuses the writer is told (``podstatuses.py``), the pods' Events (``podevents.py``, sent
by ``eventsender.py``), node registration and the Lease (``node.py``), mirror pods and the
pods' references. The pod manager and the image manager are handed what the link provides
through their methods (``set_env_source``, ``set_sources_ready``, ``set_held``, ``listen``);
the API's Services reach the proxy in the desired state, their EndpointSlices' endpoints
through ``endpoints``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import structlog

from nodeagent.apiserver import admission
from nodeagent.apiserver.client import ApiClient
from nodeagent.apiserver.deletion import PodDeletions
from nodeagent.apiserver.events import pull_event
from nodeagent.apiserver.eventsender import EventRecorder
from nodeagent.apiserver.mirror import MirrorPods
from nodeagent.apiserver.node import LeaseHeartbeat, NodeRegistration, node_labels
from nodeagent.apiserver.ownnode import OwnNode
from nodeagent.apiserver.podevents import PodEvents
from nodeagent.apiserver.podrefs import PodReferences
from nodeagent.apiserver.pods import (
    ApiPods,
    Hold,
    ParseCache,
    Rejection,
    RuntimeClasses,
    is_mirror,
    merge,
    read_pods,
    static_pod,
)
from nodeagent.apiserver.podstatuses import wanted_statuses
from nodeagent.apiserver.reflector import NODE_PROXIER, Collection, Reflector
from nodeagent.apiserver.services import Endpoints, read_services, slice_endpoints
from nodeagent.apiserver.statuswriter import PodStatusWriter, Wanted
from nodeagent.kubelet import nodestatus
from nodeagent.kubelet.images import ImageManager
from nodeagent.kubelet.manager import PodManager
from nodeagent.kubelet.nodestatus import NodeFacts
from nodeagent.kubelet.pleg import RuntimeCache
from nodeagent.kubelet.podstatus import rfc3339
from nodeagent.model.pod import Pod, PodUID
from nodeagent.model.service import Service
from nodeagent.sources.file import DesiredState, SourceError

log = structlog.get_logger("nodeagent.apiserver.cluster")

Obj = dict[str, Any]
Loop = Callable[[], Awaitable[None]]

NO_PODS = ApiPods(run={}, delete={}, reject={}, objects={})


class ClusterLink:
    def __init__(
        self,
        client: ApiClient,
        *,
        node_name: str,
        manager: PodManager,
        facts: Callable[[], NodeFacts],
        on_desired: Callable[[DesiredState], None],
        on_pod_cidr: Callable[[str], None],
        on_node_deleting: Callable[[bool], None] = lambda deleting: None,
        with_files: bool,
        runtime_synced: asyncio.Event,
        state_dir: Path,
        cache: RuntimeCache,
        images: ImageManager,
        probes: Callable[[Pod], list[dict[str, Any]]],
    ) -> None:
        self.client = client
        self.node_name = node_name
        self.manager = manager
        self._cache = cache  # what the runtime runs: a restarted agent's pods count as admitted
        self._facts = facts
        self._rejected: dict[PodUID, Rejection] = {}  # final: a rejected pod stays rejected
        self._warned_future: set[PodUID] = set()  # pods whose ignored fields were logged
        self._on_desired = on_desired
        self._files: DesiredState | None = None if with_files else DesiredState()
        self.api = NO_PODS
        self._parsed = ParseCache()
        self.pods = Reflector(
            client,
            Collection("/api/v1/pods", field_selector=f"spec.nodeName={node_name}"),
            on_change=self._pods_changed,
        )
        self.service_objects = Reflector(
            client,
            Collection("/api/v1/services", needs=NODE_PROXIER),
            on_change=self._services_changed,
        )
        self.slice_objects = Reflector(
            client,
            Collection("/apis/discovery.k8s.io/v1/endpointslices", needs=NODE_PROXIER),
            on_change=self._services_changed,
        )
        # The handler a pod's runtimeClassName names, as the kubelet's RuntimeClass manager.
        self.runtime_class_objects = Reflector(
            client, Collection("/apis/node.k8s.io/v1/runtimeclasses"), on_change=self._pods_changed
        )
        self.services: dict[str, Service] = {}
        self.endpoints: dict[str, Endpoints] = {}
        self._service_errors: list[SourceError] = []
        self.registration = NodeRegistration(
            client,
            name=node_name,
            facts=facts,
            on_pod_cidr=on_pod_cidr,
            on_deleting=on_node_deleting,
            volumes_in_use=lambda: self.refs.volumes_in_use(),
        )
        self.lease = LeaseHeartbeat(client, self.registration)
        # Our own Node, fresh: its labels and taints are what admission judges by.
        self.own_node = OwnNode(
            client,
            node_name=node_name,
            watched=self.registration.own,
            registered=lambda: self.registration.node,
            on_read=self._pods_changed,
        )
        self.status = PodStatusWriter(client, wanted=self._wanted)
        self.events = EventRecorder(client, node_name=node_name)
        images.listen(lambda note: self.events.record([pull_event(note)]))
        self.pod_events = PodEvents(
            self.events,
            worker_for=manager.worker_for,
            probes=probes,
            static_pods=lambda: [p for p, _ in (self._static_pods() or {}).values()],
        )
        self.refs = PodReferences(
            client,
            state_dir=state_dir,
            on_change=self._pods_changed,
            active=lambda uid: self.manager.worker_for(PodUID(uid)) is not None,
            node=lambda: admission.NodeView.from_allocatable(node_name, self.own_node.labels(), {}),
            csi=manager.ctx.csi,
        )
        manager.set_env_source(self.refs.container_env)
        images.set_secret_source(self.refs.secret)
        self.mirrors = MirrorPods(
            client,
            node_name=node_name,
            static_pods=self._static_pods,
            mirrors=self._mirror_objects,
            node_uid=lambda: self.registration.uid,
            ready=lambda: self.registration.registered.is_set() and self.pods.synced.is_set(),
        )
        self.deletions = PodDeletions(
            client, manager=manager, status=self.status, events=self.events
        )
        self._runtime_synced = runtime_synced
        manager.set_sources_ready(False)  # no orphan removal before the first list

    def loops(self) -> dict[str, Loop]:
        return {
            "api-pods": self._run_pods,
            "api-services": self.service_objects.run,
            "api-endpointslices": self.slice_objects.run,
            "api-runtimeclasses": self.runtime_class_objects.run,
            "node-status": self.registration.run,
            "node-watch": self.registration.watch,
            "node-lease": self.lease.run,
            "pod-status": self.status.run,
            "mirror-pods": self.mirrors.run,
            "pod-references": self.refs.run,
            "pod-events": self.pod_events.run,
            "event-sender": self.events.run,
        }

    async def _run_pods(self) -> None:
        await self._runtime_synced.wait()  # adopt what runs before deciding anything
        await self.pods.run()

    async def close(self) -> None:
        await self.deletions.close()
        await self.own_node.close()
        await self.refs.close()
        await self.client.close()

    # -- inputs -----------------------------------------------------------------------------

    def file_changed(self, state: DesiredState) -> None:
        self._files = state
        self._publish()
        self.mirrors.wake()

    def _pods_changed(self) -> None:
        self.api = read_pods(
            self.pods.objects.values(),
            node_name=self.node_name,
            running=self._running,
            admit=self._admit,
            rejected=self._rejected,
            preparer=self.refs,
            cache=self._parsed,
            runtime_classes=RuntimeClasses.read(
                self.runtime_class_objects.objects.values(),
                listed=self.runtime_class_objects.synced.is_set(),
            ),
        )
        self._rejected = {u: r for u, r in self.api.reject.items() if u in self.api.objects}
        self.own_node.keep(set(self.api.objects))
        self._warn_future_fields()
        self.pod_events.pods_read(self.api)
        self.refs.keep(set(self.api.objects))
        self.manager.set_held(set(self.api.hold))
        self.deletions.follow(self.api)
        self._publish()
        self.status.wake()
        self.mirrors.wake()

    def _warn_future_fields(self) -> None:
        """Fields newer than the API we track are ignored, as the kubelet's lenient decoding
        drops them: said once per pod, not at every event of it."""
        for pod in self.api.run.values():
            if pod.future_fields and pod.uid not in self._warned_future:
                self._warned_future.add(pod.uid)
                log.warning("pod_fields_ignored", pod=pod.key, fields=list(pod.future_fields))
        self._warned_future &= set(self.api.objects)

    def _services_changed(self) -> None:
        self.services, self._service_errors = read_services(self.service_objects.objects.values())
        self.endpoints = slice_endpoints(
            self.slice_objects.objects.values(), self.services, node_name=self.node_name
        )
        self._publish()

    @property
    def services_ready(self) -> bool:
        """Services and EndpointSlices listed once, or refused (403): the proxy may write
        rules. A refusal is an answer: the manifest directory's Services must not wait for a
        ClusterRole nobody may ever bind (the API's Services then get no endpoints)."""
        return all(
            r.synced.is_set() or bool(r.forbidden)
            for r in (self.service_objects, self.slice_objects)
        )

    def _publish(self) -> None:
        if self._files is None:
            return  # the manifest directory has not been read yet
        synced = self.pods.synced.is_set()
        desired = merge(
            self._files,
            self.api if synced else NO_PODS,
            node_name=self.node_name,
            services=self.services,
            errors=self._service_errors,
        )
        self.manager.set_sources_ready(synced)
        self._on_desired(desired)

    def _running(self, uid: PodUID) -> bool:
        """A worker has the pod, or the runtime runs it (found there at an agent restart,
        before any worker): either way it was admitted once, and is never judged again."""
        if self.manager.worker_for(uid) is not None:
            return True
        found = self._cache.get(uid)
        return found.ready_sandbox() is not None or bool(found.running())

    def _node_view(self) -> admission.NodeView:
        return admission.NodeView.from_node(
            self.node_name,
            self.own_node.current(),
            default_labels=node_labels(self.node_name, self.registration.host),
            allocatable=nodestatus.allocatable(self._facts().max_pods, self._facts().reservation),
        )

    def _admit(self, pod: Pod, obj: Obj, admitted: Sequence[Pod]) -> Rejection | Hold | None:
        node = self._node_view()
        statics = [p for p, _ in (self._static_pods() or {}).values()]
        refusal = admission.check(pod, obj, node, [*statics, *admitted])
        affinity = refusal is not None and refusal.reason == admission.AFFINITY_REASON
        if affinity and self.own_node.recheck(pod.uid):
            return Hold(admission.AFFINITY_REASON, "reading the Node again", error=False)
        if refusal is not None:
            log.warning("pod_rejected", pod=pod.key, reason=refusal.reason, message=refusal.message)
        return refusal

    def record_final(self, uid: PodUID, status: Obj) -> None:
        """A pod this node ended on its own (evicted): see ``PodDeletions.record_final``."""
        self.deletions.record_final(uid, status)

    # -- static pods and their mirrors ------------------------------------------------------

    def _static_pods(self) -> dict[str, tuple[Pod, str]] | None:
        """The static pods that run (under their cluster names), with their manifest names."""
        if self._files is None:
            return None
        taken = self.api.keys
        pods = ((static_pod(p, self.node_name), p.name) for p in self._files.pods.values())
        return {pod.key: (pod, name) for pod, name in pods if pod.key not in taken}

    def _mirror_objects(self) -> dict[str, Obj]:
        return {key: obj for key, obj in self.pods.objects.items() if is_mirror(obj)}

    # -- outputs ----------------------------------------------------------------------------

    def _wanted(self) -> dict[str, Wanted]:
        return wanted_statuses(
            self.api,
            final=self.deletions.final,
            status_of=self._worker_status,
            static=self._static_pods() or {},
            mirrors=self._mirror_objects(),
        )

    def _worker_status(self, uid: PodUID) -> Obj | None:
        worker = self.manager.worker_for(uid)
        return worker.status if worker is not None else None

    def report(self) -> dict[str, Any]:
        """For the status endpoint: how the link to the control plane is doing."""
        return {
            "server": self.client.server,
            "registered": self.registration.registered.is_set(),
            "nodeLabels": self.own_node.labels(),
            "podCIDR": self.registration.pod_cidr,
            "watching": self.pods.connected,
            "podsListed": self.pods.synced.is_set(),
            "podRelists": self.pods.relists,
            "resourceVersion": self.pods.resource_version,
            "leaseRenewals": self.lease.renewals,
            "statusPatches": self.status.patches,
            "mirrorPods": len(self._mirror_objects()),
            "eventsSent": self.events.sent,
            "eventsDropped": self.events.dropped,
            "lastHeartbeat": rfc3339(self.lease.last_renewed) if self.lease.last_renewed else None,
            "watchRestarts": self.watch_restarts(),
            "forbidden": self.forbidden(),
        }

    def forbidden(self) -> list[dict[str, str]]:
        """The collections the API refuses this node (403), with the ClusterRole they need."""
        reflectors = (self.pods, self.service_objects, self.slice_objects)
        return [r.report() for r in reflectors if r.forbidden]

    def watch_restarts(self) -> dict[str, int]:
        """Per collection, the watches opened again after the first (metrics, status)."""
        reflectors = (self.pods, self.service_objects, self.slice_objects)
        return {r.collection.path: max(0, r.watches - 1) for r in reflectors}
