"""The API's Events of this node's pods, derived from what their statuses show.

Every ``EVENT_POLL_S`` the statuses the workers publish are compared with the last ones seen
(``events.pod_events``, pure), the probes' failures added: the difference is what happened.
A pod's first look starts from the status the API showed when this agent first saw the pod,
so an agent restart does not tell again that containers were created long ago. Pods held for
a missing ConfigMap, Secret or token get their events once per distinct problem, and a pod
refused here one Warning event with its status's reason and message, as ``rejectPod`` does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from nodeagent.apiserver.events import (
    Event,
    PodRef,
    hold_events,
    pod_events,
    probe_events,
)
from nodeagent.apiserver.eventsender import EventRecorder
from nodeagent.apiserver.pods import ApiPods, Hold
from nodeagent.kubelet.worker import PodWorker, WorkerState
from nodeagent.model.pod import Pod, PodUID

Obj = dict[str, Any]

EVENT_POLL_S = 0.5


class PodEvents:
    def __init__(
        self,
        recorder: EventRecorder,
        *,
        worker_for: Callable[[PodUID], PodWorker | None],
        probes: Callable[[Pod], list[dict[str, Any]]],
        static_pods: Callable[[], list[Pod]],
    ) -> None:
        self._recorder = recorder
        self._worker_for = worker_for
        self._probes = probes  # the pod's probes with their current state
        self._static_pods = static_pods
        self._api: ApiPods | None = None
        self._seen_status: dict[str, Obj] = {}  # uid -> the status events were derived from
        # uid -> the pod's status when this agent first saw it: what happened before it.
        self._status_at_start: dict[str, Obj] = {}
        self._seen_probes: dict[str, set[str]] = {}
        self._seen_holds: dict[str, Hold] = {}  # uid -> the hold its events told
        self._rejection_events: set[PodUID] = set()  # pods whose rejection was told

    def pods_read(self, api: ApiPods) -> None:
        """The API's pods as last read: their first statuses kept, rejections told."""
        self._api = api
        for uid, obj in api.objects.items():
            self._status_at_start.setdefault(uid, obj.get("status") or {})
        for gone in set(self._status_at_start) - set(api.objects):
            del self._status_at_start[gone]
        self._record_rejections(api)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(EVENT_POLL_S)
            self.record()

    def record(self) -> None:
        """Events for what changed in the pods' statuses since the last look."""
        objects = self._api.objects if self._api is not None else {}
        pods: dict[str, tuple[PodRef, PodWorker, Obj | None]] = {}
        for uid, obj in objects.items():
            worker = self._worker_for(uid)
            if worker is not None:
                pods[uid] = (_ref(uid, obj), worker, self._status_at_start.get(uid))
        for pod in self._static_pods():
            worker = self._worker_for(pod.uid)
            if worker is not None:
                pods[pod.uid] = (PodRef(pod.namespace, pod.name, pod.uid), worker, None)
        for key, (ref, worker, observed) in pods.items():
            status = worker.status
            if status is None:
                continue
            # First look: what the API showed before this agent wrote (a restart adopts pods
            # whose containers were Created and Started long ago).
            before = self._seen_status.get(key, observed)
            images = {c.name: c.image for c in worker.pod.all_containers()}
            events = pod_events(ref, before, status, images=images)
            if worker.state is WorkerState.SYNCING:
                probes = self._probes(worker.pod)
                events += probe_events(ref, probes, self._seen_probes.setdefault(key, set()))
            self._seen_status[key] = status
            self._recorder.record(events)
        for gone in set(self._seen_status) - set(pods):
            del self._seen_status[gone]
            self._seen_probes.pop(gone, None)
        held = self._record_holds()
        self._recorder.forget(set(pods) | held)

    def _record_holds(self) -> set[str]:
        """Events for pods waiting on a missing ConfigMap, Secret or token, once per distinct
        problem (the pod's preparation retries with backoff meanwhile); the uids held."""
        api = self._api
        holds = {uid: h for uid, h in api.hold.items() if h.error} if api is not None else {}
        for uid, hold in holds.items():
            obj = api.objects.get(uid) if api is not None else None
            if obj is None or self._seen_holds.get(uid) == hold:
                continue
            self._seen_holds[uid] = hold
            spec = obj.get("spec") or {}
            containers = [
                (str(c.get("name")), group == "initContainers")
                for group in ("initContainers", "containers")
                for c in spec.get(group) or []
            ]
            self._recorder.record(
                hold_events(_ref(uid, obj), containers, reason=hold.reason, message=hold.message)
            )
        self._seen_holds = {u: h for u, h in self._seen_holds.items() if u in holds}
        return set(holds)

    def _record_rejections(self, api: ApiPods) -> None:
        """A pod refused here (a field it needs that this node lacks, admission) gets one
        Warning event with the reason and message its status shows, as rejectPod records.
        Told when refused: once its status says Failed, the pod is no longer sorted at all."""
        for uid, rejection in api.reject.items():
            obj = api.objects.get(uid)
            if obj is None or uid in self._rejection_events:
                continue
            self._rejection_events.add(uid)
            event = Event(_ref(uid, obj), "", "Warning", rejection.reason, rejection.message)
            self._recorder.record([event])
        self._rejection_events &= set(api.objects)


def _ref(uid: str, obj: Obj) -> PodRef:
    meta = obj.get("metadata") or {}
    return PodRef(str(meta.get("namespace") or "default"), str(meta.get("name")), uid)
