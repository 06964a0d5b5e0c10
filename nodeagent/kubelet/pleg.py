"""The runtime cache and its relister (the kubelet's PLEG), shared by all pod workers.

One task lists every sandbox and container of ours each ``interval`` (two runtime calls,
however many pods), fetches details only for containers whose state changed, and wakes
the workers of exactly the pods that changed. Workers never poll the runtime on a timer;
after acting they ``refresh`` their own pod, so their status is current at once rather than
at the next relist.

Invariant: a ContainerInfo in the cache is ``detailed`` (exit code, times) whenever its
state is EXITED, because restart decisions depend on those fields.

Race (containerd 1.6): the task's OOM event may be handled after its exit event, so a
container the kernel OOM-killed can first read ``Error``/137 and only a moment later
``OOMKilled``. Details are otherwise fetched once per state change, which would keep the
first answer for good; so an exit that looks like a kill (137, not yet OOMKilled) is read
again at each relist for ``SETTLE_S`` after it was first seen, and a changed reason wakes
the pod like any other change.

Cost: a relist of an unchanged node reuses the objects of the previous one (the detailed
containers, the sandboxes with their IPs), so comparing each pod with its last state mostly
compares identities, and no task is made for a container whose state did not change. With
110 pods a relist is then a few milliseconds of Python besides the two list calls.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

import structlog

from nodeagent.kubelet.runtimepod import RuntimePod
from nodeagent.model.pod import PodUID
from nodeagent.runtime.base import (
    ContainerID,
    ContainerInfo,
    ContainerState,
    NotFound,
    Runtime,
    RuntimeFailure,
    SandboxID,
    SandboxInfo,
    SandboxState,
)

log = structlog.get_logger("nodeagent.pleg")

SETTLE_S = 5.0  # how long a SIGKILLed exit is read again, waiting for a late OOMKilled
_KILLED = 137  # 128 + SIGKILL
_clock = time.monotonic  # the settle window's clock (a module name, so tests can move it)


class RuntimeCache:
    def __init__(
        self, runtime: Runtime, *, on_change: Callable[[PodUID], None], interval_s: float = 1.0
    ) -> None:
        self._runtime = runtime
        self._on_change = on_change
        self._interval = interval_s
        self._pods: dict[PodUID, RuntimePod] = {}
        self._details: dict[ContainerID, ContainerInfo] = {}
        # Killed exits whose reason may still turn OOMKilled -> until when to read them again.
        self._unsettled: dict[ContainerID, float] = {}
        self._ips: dict[SandboxID, str] = {}
        # The last summary of each READY sandbox and the same with its IP: an unchanged
        # summary gets the very same object back.
        self._views: dict[SandboxID, tuple[SandboxInfo, SandboxInfo]] = {}
        self.healthy = False
        self.last_relist: float = 0.0
        self.last_error = ""
        self.synced = asyncio.Event()  # set after the first successful relist

    def get(self, uid: PodUID) -> RuntimePod:
        return self._pods.get(uid) or RuntimePod(uid)

    def uids(self) -> set[PodUID]:
        return set(self._pods)

    def pods(self) -> list[RuntimePod]:
        return list(self._pods.values())

    async def run(self) -> None:
        while True:
            try:
                await self.relist()
            except RuntimeFailure as exc:
                if self.healthy or str(exc) != self.last_error:
                    log.warning("relist_failed", error=str(exc))
                self.healthy = False
                self.last_error = str(exc)
            await asyncio.sleep(self._interval)

    async def relist(self) -> None:
        sandboxes, containers = await self._list(None)
        fresh = await self._assemble(sandboxes, containers, uids=None)
        changed = {uid for uid, pod in fresh.items() if self._pods.get(uid) != pod}
        changed |= set(self._pods) - set(fresh)
        self._pods = fresh
        self._forget_missing(sandboxes, containers)
        self.healthy = True
        self.last_error = ""
        self.last_relist = time.time()
        self.synced.set()
        for uid in changed:
            self._on_change(uid)

    async def refresh(self, uid: PodUID) -> RuntimePod:
        """Re-read one pod from the runtime now (after a worker acted on it)."""
        sandboxes, containers = await self._list(uid)
        pod = (await self._assemble(sandboxes, containers, uids={uid})).get(uid, RuntimePod(uid))
        if pod.empty:
            self._pods.pop(uid, None)
        else:
            self._pods[uid] = pod
        return pod

    async def _list(
        self, uid: PodUID | None
    ) -> tuple[Sequence[SandboxInfo], Sequence[ContainerInfo]]:
        """Both lists at once: one round trip to a busy runtime instead of two. (Listed one
        after the other they were no more a snapshot than this: either way a pod may change
        between the two answers, and the next relist or refresh sees the rest.)"""
        return await asyncio.gather(
            self._runtime.list_sandboxes(uid), self._runtime.list_containers(uid)
        )

    async def _assemble(
        self,
        sandboxes: Sequence[SandboxInfo],
        containers: Sequence[ContainerInfo],
        *,
        uids: set[PodUID] | None,
    ) -> dict[PodUID, RuntimePod]:
        found_sandboxes: dict[PodUID, list[SandboxInfo]] = {}
        found_containers: dict[PodUID, list[ContainerInfo]] = {}
        for sandbox in sandboxes:
            found_sandboxes.setdefault(sandbox.uid, []).append(await self._with_ip(sandbox))
        for container in await self._detailed_all(containers):
            if container is not None:
                found_containers.setdefault(container.uid, []).append(container)
        result = {}
        for uid in set(found_sandboxes) | set(found_containers) | (uids or set()):
            result[uid] = RuntimePod(
                uid,
                tuple(found_sandboxes.get(uid, ())),
                tuple(found_containers.get(uid, ())),
            )
        return result

    async def _with_ip(self, sandbox: SandboxInfo) -> SandboxInfo:
        if sandbox.state is not SandboxState.READY:
            return sandbox
        seen = self._views.get(sandbox.id)
        if seen is not None and seen[0] == sandbox:
            return seen[1]
        ip = self._ips.get(sandbox.id)
        if ip is None:
            try:
                ip = (await self._runtime.sandbox_status(sandbox.id)).ip
            except NotFound:
                return sandbox
            self._ips[sandbox.id] = ip
        view = replace(sandbox, ip=ip)
        self._views[sandbox.id] = (sandbox, view)
        return view

    async def _detailed_all(self, summaries: Sequence[ContainerInfo]) -> list[ContainerInfo | None]:
        """Each container detailed, in the listing's order (a pod's containers keep theirs,
        so an unchanged pod compares equal); only changed ones cost a runtime call."""
        result: list[ContainerInfo | None] = []
        missing: list[int] = []
        now = _clock()
        for summary in summaries:
            cached = self._details.get(summary.id)
            settled = self._unsettled.get(summary.id, 0.0) <= now
            if cached is not None and cached.state is summary.state and settled:
                result.append(cached)
            else:
                missing.append(len(result))
                result.append(None)
        fetched = await asyncio.gather(*(self._fetch_details(summaries[i]) for i in missing))
        for i, info in zip(missing, fetched, strict=True):
            result[i] = info
        return result

    async def _fetch_details(self, summary: ContainerInfo) -> ContainerInfo | None:
        """The runtime's details of a container ``_detailed_all`` found changed or unsettled."""
        cached = self._details.get(summary.id)
        try:
            info = await self._runtime.container_status(summary.id)
        except NotFound:
            return None  # removed between list and status
        self._note_settling(info)
        if cached is not None and cached == info:
            info = cached  # the same object: an unchanged pod compares by identity
        self._details[summary.id] = info
        return info

    def _note_settling(self, info: ContainerInfo) -> None:
        killed = (
            info.state is ContainerState.EXITED
            and info.exit_code == _KILLED
            and info.reason != "OOMKilled"
        )
        if not killed:
            self._unsettled.pop(info.id, None)
        elif info.id not in self._unsettled:
            self._unsettled[info.id] = _clock() + SETTLE_S

    def _forget_missing(
        self, sandboxes: Iterable[SandboxInfo], containers: Iterable[ContainerInfo]
    ) -> None:
        live_sandboxes = {s.id for s in sandboxes}
        live_containers = {c.id for c in containers}
        for sid in set(self._ips) - live_sandboxes:
            del self._ips[sid]
        for sid in set(self._views) - live_sandboxes:
            del self._views[sid]
        for cid in set(self._details) - live_containers:
            del self._details[cid]
        for cid in set(self._unsettled) - live_containers:
            del self._unsettled[cid]
