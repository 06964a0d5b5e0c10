"""The pods this node evicted: kept out of the desired set, and their final status told.

``eviction.py`` (memory) and ``diskeviction.py`` (disk, local storage limits) decide which
pod goes; this carries the decision out and keeps its record.
The victim's worker is terminated with no grace (a hard threshold), and the pod stays
evicted, shown with its final entry in the local status and never started again, until its
source drops it or replaces it (a new uid). Once its containers have stopped, the final
status (their exit codes, Failed/Evicted) is told to ``on_final`` (cluster mode: the API).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from nodeagent.kubelet import eviction
from nodeagent.kubelet.manager import PodManager
from nodeagent.kubelet.podstatus import qos_class, rfc3339
from nodeagent.kubelet.worker import MIN_KILL_GRACE_S, PodWorker, WorkerState
from nodeagent.model.pod import Pod, PodUID

FinalStatus = Callable[[PodUID, dict[str, Any]], None]


class EvictedPods:
    def __init__(
        self,
        manager: PodManager,
        *,
        on_evicted: Callable[[], None],
        on_final: FinalStatus | None = None,
    ) -> None:
        self._manager = manager
        self._on_evicted = on_evicted  # the pod left the serving set (the proxy follows)
        self._on_final = on_final
        self.entries: dict[PodUID, dict[str, Any]] = {}  # uid -> the pod's final entry
        self._reporting: set[asyncio.Task[None]] = set()  # evictions whose kill is awaited

    def __contains__(self, uid: object) -> bool:
        return uid in self.entries

    def keep(self, uids: set[PodUID]) -> None:
        """Forget the pods their source no longer names (dropped, or replaced: a new uid)."""
        self.entries = {u: e for u, e in self.entries.items() if u in uids}

    def candidates(self, pods: Iterable[Pod]) -> list[eviction.Candidate]:
        """The desired pods that run and may be chosen: not evicted already, not stopping."""
        found = []
        for pod in pods:
            worker = self._manager.worker_for(pod.uid)
            if pod.uid in self.entries or worker is None or worker.state is not WorkerState.SYNCING:
                continue
            found.append(eviction.candidate(pod, qos_class(pod)))
        return found

    def evict(self, victim: eviction.Candidate, message: str) -> Awaitable[None]:
        worker = self._manager.worker_for(victim.uid)
        if worker is None:
            return asyncio.sleep(0)
        pod = worker.pod
        entry: dict[str, Any] = {
            "metadata": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid},
            "status": eviction.evicted_status(worker.status, message, now=rfc3339(time.time())),
            "probes": [],
            "worker": WorkerState.TERMINATED.value,
        }
        self.entries[pod.uid] = entry
        stopping = self._manager.terminate(pod, MIN_KILL_GRACE_S)  # a hard threshold: no grace
        self._on_evicted()
        # The monitor stops waiting after a while; the final status is told all the same.
        task = asyncio.create_task(self._report(stopping, entry, message))
        self._reporting.add(task)
        task.add_done_callback(self._reporting.discard)
        return asyncio.shield(task)

    async def _report(self, worker: PodWorker, entry: dict[str, Any], message: str) -> None:
        """Once the evicted pod's containers have stopped: its final status locally and, as
        the kubelet tells it, to the API."""
        await worker.wait_terminated()
        status = eviction.evicted_status(worker.status, message, now=rfc3339(time.time()))
        entry["status"] = status
        if self._on_final is not None:
            self._on_final(worker.pod.uid, status)
