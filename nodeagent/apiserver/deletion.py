"""Pods deleted through the API, as upstream's "Termination of Pods" has the kubelet end them.

A pod with a ``deletionTimestamp`` leaves the desired set and its worker terminates with the
pod's ``deletionGracePeriodSeconds``; a later, shorter period (a second DELETE) shortens the
termination under way. When the worker has stopped everything, its final status (phase
Succeeded or Failed, containers terminated with their exit codes) is written, then the pod is
deleted for good with ``gracePeriodSeconds: 0`` and a uid precondition (never a namesake
created meanwhile). A final status, this one or an evicted pod's (``record_final``), is kept
until the pod is gone so that no periodic pass writes the worker's older one over it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from nodeagent.apiserver.client import ApiClient, ApiFailure
from nodeagent.apiserver.events import PodRef, killing_events
from nodeagent.apiserver.eventsender import EventRecorder
from nodeagent.apiserver.pods import ApiPods, Deletion, shortened, terminal_status
from nodeagent.apiserver.podstatuses import wanted
from nodeagent.apiserver.reflector import Backoff
from nodeagent.apiserver.statuswriter import PodStatusWriter
from nodeagent.kubelet.manager import PodManager
from nodeagent.kubelet.podstatus import rfc3339
from nodeagent.kubelet.worker import PodWorker
from nodeagent.model.pod import Pod, PodUID

log = structlog.get_logger("nodeagent.apiserver.cluster")

Obj = dict[str, Any]

FINAL_STATUS_ATTEMPTS = 5


class PodDeletions:
    def __init__(
        self,
        client: ApiClient,
        *,
        manager: PodManager,
        status: PodStatusWriter,
        events: EventRecorder,
    ) -> None:
        self._client = client
        self._manager = manager
        self._status = status
        self._events = events
        self._api = ApiPods(run={}, delete={}, reject={}, objects={})
        self._deleting: dict[PodUID, asyncio.Task[None]] = {}
        self._grace: dict[PodUID, int] = {}  # uid -> the grace period it stops with
        self.final: dict[str, Obj] = {}  # uid -> terminal status of a pod ended here

    def follow(self, api: ApiPods) -> None:
        """The API's pods as last read: deletions started, shortened, and forgotten."""
        self._api = api
        for uid, deletion in shortened(self._grace, api.delete).items():
            log.info("pod_deletion_shortened", pod=deletion.pod.key, grace_s=deletion.grace_s)
            self._grace[uid] = deletion.grace_s
            self._manager.terminate(deletion.pod, deletion.grace_s)
        for uid, deletion in api.delete.items():
            if uid not in self._deleting:
                self._start(deletion)
        for uid in [u for u, t in self._deleting.items() if t.done()]:
            if uid not in api.objects:
                del self._deleting[uid]
                self._grace.pop(uid, None)
        self.final = {u: s for u, s in self.final.items() if u in api.objects}

    def record_final(self, uid: PodUID, status: Obj) -> None:
        """A pod this node ended on its own (evicted): that status reaches the API at once, and
        no later pass writes the worker's older one over it."""
        self.final[uid] = status
        self._status.wake()

    async def close(self) -> None:
        for task in self._deleting.values():
            task.cancel()
        await asyncio.gather(*self._deleting.values(), return_exceptions=True)

    def _start(self, deletion: Deletion) -> None:
        pod = deletion.pod
        log.info("pod_deleting", pod=pod.key, uid=pod.uid, grace_s=deletion.grace_s)
        self._grace[pod.uid] = deletion.grace_s
        ran = self._manager.worker_for(pod.uid) is not None
        worker = self._manager.terminate(pod, deletion.grace_s)
        if ran:
            names = [c.name for c in pod.spec.containers]
            self._events.record(killing_events(PodRef(pod.namespace, pod.name, pod.uid), names))
        task = asyncio.create_task(
            self._finish(deletion, worker, ran=ran), name=f"delete:{pod.key}"
        )
        self._deleting[pod.uid] = task

    async def _finish(self, deletion: Deletion, worker: PodWorker, *, ran: bool) -> None:
        pod = deletion.pod
        await worker.wait_terminated()
        if ran:
            await self._write_terminal_status(pod, worker)
        backoff = Backoff()
        while True:
            try:
                await self._client.delete_pod_now(pod.namespace, pod.name, pod.uid)
                log.info("pod_deleted", pod=pod.key, uid=pod.uid)
                return
            except ApiFailure as exc:
                if exc.not_found or exc.conflict:
                    return  # gone already, or the name belongs to another pod now
                if not exc.retryable:
                    log.error("pod_delete_refused", pod=pod.key, error=str(exc))
                    return
                delay = backoff.next_delay()
                log.warning("pod_delete_failed", pod=pod.key, error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)

    async def _write_terminal_status(self, pod: Pod, worker: PodWorker) -> None:
        """The final phase (Succeeded or Failed, containers terminated) before the DELETE, as
        the kubelet writes it, so controllers (Jobs, say) see how the pod ended. Best effort:
        an API that keeps refusing it does not hold the deletion back for ever."""
        obj = self._api.objects.get(pod.uid)
        if obj is None or worker.status is None:
            return  # never ran here: nothing to report
        final = terminal_status(worker.status, now=rfc3339(time.time()))
        self.final[pod.uid] = final  # the periodic pass must not write an older status
        backoff = Backoff()
        for _ in range(FINAL_STATUS_ATTEMPTS):
            try:
                await self._status.write_now(wanted(obj, final))
                log.info("pod_final_status", pod=pod.key, uid=pod.uid, phase=final["phase"])
                return
            except ApiFailure as exc:
                delay = backoff.next_delay()
                log.warning("pod_final_status_failed", pod=pod.key, error=str(exc))
                await asyncio.sleep(delay)
