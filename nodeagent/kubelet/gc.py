"""Garbage collection: dead containers, dead sandboxes, orphaned pod and log directories.

Every ``interval_s`` (the kubelet's one minute) and whenever disk pressure asks for room
(``reclaim``), the collector reads what the runtime holds (the relister's cache: no extra
runtime calls) and the two directories, plans with ``gcplan.plan_gc`` and removes. A pod
directory goes through ``volumes.cleanup``, which unmounts a memory-backed emptyDir first.

``reclaim`` also calls the image garbage collector when one is given (``image_gc``: frees
unused images, returns the bytes freed), the seam where image GC plugs in; without one only
containers and directories are reclaimed. Failures are logged per object: one stuck
container never stops the rest.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import structlog

from nodeagent.kubelet import stopper, volumes
from nodeagent.kubelet.gcplan import GCInput, GCPlan, plan_gc
from nodeagent.kubelet.runtimepod import RuntimePod
from nodeagent.model.pod import PodUID
from nodeagent.runtime.base import Runtime, RuntimeFailure

log = structlog.get_logger("nodeagent.gc")

ImageGC = Callable[[], Awaitable[int]]  # frees unused images; returns the bytes freed


class GarbageCollector:
    def __init__(
        self,
        runtime: Runtime,
        *,
        pods: Callable[[], Sequence[RuntimePod]],
        wanted: Callable[[], frozenset[PodUID] | None],
        state_dir: Path,
        pod_log_dir: Path,
        interval_s: float,
        image_gc: ImageGC | None = None,
    ) -> None:
        self._runtime = runtime
        self._pods, self._wanted = pods, wanted
        self._state_dir, self._pod_log_dir = state_dir, pod_log_dir
        self.interval_s = interval_s
        self.image_gc = image_gc
        self.passes = 0
        self.removed = {"containers": 0, "sandboxes": 0, "logDirs": 0, "podDirs": 0}
        self._lock = asyncio.Lock()  # the loop and a reclaim never collect at once

    def report(self) -> dict[str, object]:
        return {"passes": self.passes, "removed": dict(self.removed)}

    async def collect(self) -> GCPlan:
        async with self._lock:
            pods, wanted = self._pods(), self._wanted()
            log_dirs, pod_dirs = await asyncio.to_thread(self._listings)
            plan = plan_gc(GCInput(pods, wanted, log_dirs, pod_dirs))
            await self._apply(plan)
            self.passes += 1
            return plan

    async def reclaim(self) -> int:
        """Free what can be freed now (disk pressure): a collection, then unused images."""
        await self.collect()
        if self.image_gc is None:
            return 0
        try:
            return await self.image_gc()
        except RuntimeFailure as exc:
            log.warning("image_gc_failed", error=str(exc))
            return 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.collect()

    def _listings(self) -> tuple[list[str], list[str]]:
        return _entries(self._pod_log_dir), _entries(self._state_dir / "pods")

    async def _apply(self, plan: GCPlan) -> None:
        for c in plan.containers:
            if await _quietly(stopper.remove_container(self._runtime, c), container=c.id):
                self.removed["containers"] += 1
        for s in plan.sandboxes:
            if await _quietly(stopper.ignore_missing(self._runtime.remove_sandbox(s.id)), sb=s.id):
                self.removed["sandboxes"] += 1
        for name in plan.log_dirs:
            await asyncio.to_thread(shutil.rmtree, self._pod_log_dir / name, True)
            self.removed["logDirs"] += 1
        for uid in plan.pod_dirs:
            if await _quietly(volumes.cleanup(self._state_dir, uid), pod_dir=uid):
                self.removed["podDirs"] += 1
        if not plan.empty:
            log.info(
                "garbage_collected",
                containers=len(plan.containers),
                sandboxes=len(plan.sandboxes),
                log_dirs=len(plan.log_dirs),
                pod_dirs=len(plan.pod_dirs),
            )


async def _quietly(step: Awaitable[None], **what: str) -> bool:
    try:
        await step
    except (RuntimeFailure, volumes.VolumeError, OSError) as exc:
        log.warning("gc_step_failed", error=str(exc), **what)
        return False
    return True


def _entries(directory: Path) -> list[str]:
    try:
        return [e for e in os.listdir(directory) if (directory / e).is_dir()]
    except FileNotFoundError:
        return []
