"""The pod manager: desired pods in, one worker per pod incarnation out.

It owns the map ``namespace/name -> PodWorker``, and keeps what the pod sources tell it
through its ``set_*`` methods: the pods they hold back, whether they have all listed once,
and where containers' env is read again. A new uid under the same
name (a static pod's edited manifest, an API pod deleted and created again) replaces the
pod: the old worker terminates first, and only then does the new one start, so two
incarnations of a pod never run side by side. A changed spec under the same uid (the
updates the API allows: an image, activeDeadlineSeconds, ephemeral containers) goes to the
running worker, whose next plan acts on it in the same sandbox, as the kubelet's
``computePodActions`` does. Runtime pods that no worker owns
(orphans: manifests removed while the agent was down, leftovers of a crash) are torn down
once the first relist has shown what the runtime holds; so, once after a start, are the CSI
volumes of pods that left nothing in the runtime.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from nodeagent.csi.mounter import pods_with_records
from nodeagent.kubelet.context import KubeletContext
from nodeagent.kubelet.worker import MIN_KILL_GRACE_S, EnvSource, PodWorker, WorkerState
from nodeagent.model.pod import Pod, PodSpec, PodUID

log = structlog.get_logger("nodeagent.manager")


class PodManager:
    def __init__(self, ctx: KubeletContext) -> None:
        self.ctx = ctx
        self._desired: dict[str, Pod] = {}
        self._workers: dict[str, PodWorker] = {}  # current incarnation per key
        self._retiring: dict[PodUID, PodWorker] = {}  # replaced or removed, still stopping
        # uid -> key of the worker spawned for it, so that finding a pod's worker (on every
        # runtime change, per pod in every status snapshot) is not a scan of all workers.
        # An entry may be stale; worker_for checks the uid.
        self._keys: dict[PodUID, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # False until every pod source has listed once (upstream's "sources ready"): until
        # then a pod nothing claims may yet be claimed, so no orphan is removed.
        self._sources_ready = True
        # Pods a source claims but does not hand over yet (waiting for their ConfigMaps,
        # say): whatever of them runs is not an orphan.
        self._held: set[PodUID] = set()
        # Called when a pod's IP, readiness or phase changes (the daemon wakes the proxy).
        self.on_serving_change: Callable[[], None] = _nothing
        # Where a container's env is read again at each creation (the API's or the manifest
        # directory's ConfigMaps and Secrets); None: the spec's env as it is.
        self._env_source: EnvSource | None = None
        self._volumes_swept = False  # CSI volumes left by pods the runtime no longer has

    # -- what the sources tell it -----------------------------------------------------------

    def set_env_source(self, source: EnvSource | None) -> None:
        self._env_source = source

    def set_sources_ready(self, ready: bool) -> None:
        """False until every pod source has listed once: no orphan is removed before."""
        self._sources_ready = ready

    @property
    def sources_ready(self) -> bool:
        return self._sources_ready

    def set_held(self, uids: set[PodUID]) -> None:
        """The pods a source claims but does not hand over yet: not orphans."""
        self._held = set(uids)

    # -- inputs -----------------------------------------------------------------------------

    def update(self, desired: Mapping[str, Pod]) -> None:
        """Take the full desired set (a snapshot, not a delta) and converge workers to it."""
        self._desired = dict(desired)
        for key in list(self._workers):
            worker = self._workers[key]
            pod = self._desired.get(key)
            if pod is None or pod.uid != worker.pod.uid:
                self._retire(key)
            elif pod != worker.pod:
                worker.update(pod)
        if self.ctx.cache.synced.is_set():
            self.cleanup_orphans()
        for key, pod in self._desired.items():
            if key not in self._workers and not self._waiting_for_retirement(pod):
                self._spawn(pod)

    def on_runtime_change(self, uid: PodUID) -> None:
        worker = self.worker_for(uid)
        if worker is not None:
            worker.wake()

    def wake_all(self) -> None:
        """Every worker syncs now (what they waited for, the pod network say, is there)."""
        for worker in self._all_workers():
            worker.wake()

    def worker_for(self, uid: PodUID) -> PodWorker | None:
        worker = self._retiring.get(uid)
        if worker is None and (key := self._keys.get(uid)) is not None:
            worker = self._workers.get(key)
        return worker if worker is not None and worker.pod.uid == uid else None

    def terminate(self, pod: Pod, grace_s: int) -> PodWorker:
        """Stop ``pod`` (this uid) with ``grace_s``, whether or not a worker runs it yet (a
        pod deleted in the API); returns the worker doing it. Idempotent. The pod leaves the
        desired set; the caller keeps it out of later ``update`` calls."""
        if (wanted := self._desired.get(pod.key)) is not None and wanted.uid == pod.uid:
            del self._desired[pod.key]
        worker = self.worker_for(pod.uid)
        if worker is not None and self._workers.get(worker.pod.key) is worker:
            del self._workers[worker.pod.key]
        elif worker is not None:
            worker.terminate(grace_s)  # retiring already
            return worker
        else:
            worker = PodWorker(pod, self.ctx)
        self._retiring[pod.uid] = worker
        worker.terminate(grace_s)
        worker.start()
        self._track(self._after_retirement(worker))
        return worker

    def _serving_changed(self) -> None:
        self.on_serving_change()

    # -- worker lifecycle -------------------------------------------------------------------

    def _spawn(self, pod: Pod) -> None:
        worker = PodWorker(pod, self.ctx)
        worker.on_serving_change = self._serving_changed
        worker.env_source = self._env_source
        self._workers[pod.key] = worker
        self._keys[pod.uid] = pod.key
        worker.start()

    def _retire(self, key: str) -> None:
        worker = self._workers.pop(key)
        self._retiring[worker.pod.uid] = worker
        worker.terminate()
        self._track(self._after_retirement(worker))

    def _waiting_for_retirement(self, pod: Pod) -> bool:
        return any(w.pod.key == pod.key for w in self._retiring.values())

    async def _after_retirement(self, worker: PodWorker) -> None:
        await worker.wait_terminated()
        self._retiring.pop(worker.pod.uid, None)
        self._keys.pop(worker.pod.uid, None)
        pod = self._desired.get(worker.pod.key)
        ready = pod is not None and pod.key not in self._workers
        if ready and pod is not None and not self._waiting_for_retirement(pod):
            self._spawn(pod)

    def _track(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("manager_task_failed", error=repr(task.exception()))

    def _all_workers(self) -> list[PodWorker]:
        return [*self._workers.values(), *self._retiring.values()]

    # -- orphans ----------------------------------------------------------------------------

    def wanted(self) -> frozenset[PodUID] | None:
        """Pods whose runtime state and files must stay: desired, held, or with a worker
        still stopping them. None until every source is ready (the view is partial)."""
        if not self._sources_ready:
            return None
        owned = {w.pod.uid for w in self._all_workers()} | {p.uid for p in self._desired.values()}
        return frozenset(owned | self._held)

    def cleanup_orphans(self) -> None:
        """Tear down runtime pods that are neither desired nor owned by a worker."""
        owned = self.wanted()
        if owned is None:
            return
        for runtime_pod in self.ctx.cache.pods():
            if runtime_pod.uid in owned:
                continue
            sandbox = runtime_pod.latest_sandbox()
            first = sandbox or next(iter(runtime_pod.containers), None)
            if first is None:
                continue
            name = sandbox.name if sandbox is not None else "unknown"
            namespace = sandbox.namespace if sandbox is not None else "unknown"
            self._remove_orphan(_orphan_pod(runtime_pod.uid, name, namespace))
        if not self._volumes_swept and self.ctx.csi is not None:
            # Once after a start: CSI volumes of pods that left no trace in the runtime (an
            # agent killed between removing the containers and unpublishing).
            self._volumes_swept = True
            for uid in pods_with_records(self.ctx.state_dir) - owned - self._all_uids():
                self._remove_orphan(_orphan_pod(PodUID(uid), "unknown", "unknown"))

    def _all_uids(self) -> set[PodUID]:
        return {p.uid for p in self.ctx.cache.pods()} | set(self._retiring)

    def _remove_orphan(self, orphan: Pod) -> None:
        log.info("orphan_removing", pod=orphan.name, namespace=orphan.namespace, uid=orphan.uid)
        worker = PodWorker(orphan, self.ctx)
        worker.terminate(MIN_KILL_GRACE_S)  # the spec is gone: the kubelet's minimum grace
        self._retiring[orphan.uid] = worker
        worker.start()
        self._track(self._after_retirement(worker))

    # -- outputs ----------------------------------------------------------------------------

    def snapshot(self) -> list[dict[str, Any]]:
        """Pods as the API shows them: metadata plus PodStatus, sorted by namespace/name.

        ``status`` is a pure PodStatus; ``probes`` lists each probe of the spec with its latest
        result, consecutive counts and message (Kubernetes has no place for these in a Pod).

        Pods still terminating are listed too (``worker: terminating``) until they are gone.
        """
        result = []
        workers = sorted(self._all_workers(), key=lambda w: (w.pod.key, w.state.value))
        for worker in workers:
            pod = worker.pod
            metadata: dict[str, Any] = {
                "name": pod.name,
                "namespace": pod.namespace,
                "uid": pod.uid,
            }
            if pod.labels:
                metadata["labels"] = dict(pod.labels)
            if pod.annotations:
                metadata["annotations"] = dict(pod.annotations)
            status = worker.status or {"phase": "Pending"}
            probes = (
                self.ctx.prober.report(pod, id_prefix=self.ctx.runtime_name)
                if worker.state is WorkerState.SYNCING
                else []  # a terminating pod is probed no more
            )
            result.append(
                {
                    "metadata": metadata,
                    "status": status,
                    "probes": probes,
                    "worker": worker.state.value,
                }
            )
        return result

    def counts(self) -> dict[str, int]:
        states = [w.state for w in self._all_workers()]
        return {s.value: states.count(s) for s in WorkerState}

    async def detach_all(self) -> None:
        """Agent shutdown: stop every worker and leave every pod running."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*(w.detach() for w in self._all_workers()))
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.ctx.prober.close()


def _nothing() -> None:
    pass


def _orphan_pod(uid: PodUID, name: str, namespace: str) -> Pod:
    """A stand-in spec for a runtime pod we no longer know: enough to tear it down."""
    return Pod(uid=uid, name=name, namespace=namespace, spec=PodSpec(containers=()))
