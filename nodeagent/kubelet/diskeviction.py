"""Disk eviction: read the disks and the pods' local storage, decide (``diskpressure``), act.

Each pass (every ``interval_s``, the eviction monitor's period):

1. pods whose disk emptyDir passed its ``sizeLimit`` are evicted, each of them;
2. the disk signals are read; below a threshold the node is under DiskPressure. It first
   reclaims (``reclaim``: the garbage collector's pass and, when there is one, image GC),
   reads again, and evicts one pod only if a signal is still below, then waits for it to go
   as the memory monitor does, so that what it frees is seen before another is chosen.

DiskPressure holds for the pressure transition period after the last reading below, as
MemoryPressure does. Local storage use is what a pod leaves on the node's disk: its disk
emptyDirs and its container logs, measured by walking the directories (in a thread), and
for a container with an ``ephemeral-storage`` limit its writable layer too: the overlay
``upperdir`` of its root, read from ``/proc/<pid>/mountinfo`` of one of its processes (found
by the cgroup path naming its id), as the runtime's stats would report it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import structlog

from nodeagent.configparse import EvictionThreshold
from nodeagent.kubelet import diskpressure, specs, volumes
from nodeagent.kubelet.diskpressure import DiskReading, FsReading
from nodeagent.kubelet.eviction import POD_CLEANUP_TIMEOUT_S, PRESSURE_TRANSITION_S, Candidate
from nodeagent.kubelet.runtimepod import RuntimePod
from nodeagent.model.pod import Pod, PodUID

log = structlog.get_logger("nodeagent.diskeviction")


def fs_reading(path: Path) -> FsReading:
    """The filesystem holding ``path`` (blocking)."""
    st = os.statvfs(path)
    return FsReading(
        available_bytes=st.f_bavail * st.f_frsize,
        capacity_bytes=st.f_blocks * st.f_frsize,
        inodes_free=st.f_favail,
        inodes=st.f_files,
    )


def tree_bytes(path: Path) -> int:
    """Bytes in files under ``path``, not crossing into other filesystems (a tmpfs emptyDir
    is memory, not disk). Blocking."""
    total = 0
    try:
        device = os.lstat(path).st_dev
    except OSError:
        return 0
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if _same_device(os.path.join(root, d), device)]
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue  # removed while we walked
            total += st.st_blocks * 512
    return total


def container_pids(ids: Iterable[str]) -> dict[str, int]:
    """A process of each running container, found by its cgroup path, which names the
    container's id on both runtimes and both cgroup drivers. Blocking."""
    wanted = set(ids)
    found: dict[str, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or len(found) == len(wanted):
            continue
        try:
            with open(f"/proc/{entry.name}/cgroup", encoding="utf-8") as f:
                text = f.read()
        except OSError:
            continue  # gone while we looked
        for cid in wanted - found.keys():
            if cid in text:
                found[cid] = int(entry.name)
    return found


def writable_layer_bytes(pid: int) -> int:
    """Bytes in the container's writable layer (0 when it cannot be found). Blocking."""
    try:
        with open(f"/proc/{pid}/mountinfo", encoding="utf-8") as f:
            upper = diskpressure.upper_dir(f.read())
    except OSError:
        return 0
    return tree_bytes(Path(upper)) if upper else 0


def _same_device(path: str, device: int) -> bool:
    try:
        return os.lstat(path).st_dev == device
    except OSError:
        return False


class DiskMonitor:
    """See the module docstring. ``pods`` are the desired pods; ``candidates`` those that may
    be evicted (running, not evicted already); ``evict`` as ``EvictedPods.evict``."""

    def __init__(
        self,
        threshold: EvictionThreshold,
        *,
        state_dir: Path,
        pod_log_dir: Path,
        pods: Callable[[], Iterable[Pod]],
        runtime_pods: Callable[[], Sequence[RuntimePod]],
        candidates: Callable[[Iterable[Pod]], Sequence[Candidate]],
        evict: Callable[[Candidate, str], Awaitable[None]],
        reclaim: Callable[[], Awaitable[int]],
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.thresholds = threshold.disk
        self._state_dir, self._pod_log_dir = state_dir, pod_log_dir
        self._pods, self._candidates = pods, candidates
        self._runtime_pods = runtime_pods
        self._evict, self._reclaim = evict, reclaim
        self.interval_s = interval_s
        self._clock = clock
        self._pressure_seen: float | None = None
        self.checked = False
        self.breaches: list[diskpressure.Breach] = []
        self.evictions = 0
        self.reclaims = 0

    @property
    def under_pressure(self) -> bool | None:
        """The DiskPressure condition; None until the first reading."""
        if not self.checked:
            return None
        seen = self._pressure_seen
        return seen is not None and self._clock() - seen < PRESSURE_TRANSITION_S

    def report(self) -> dict[str, Any]:
        return {
            "thresholds": [str(t) for t in self.thresholds],
            "below": [b.signal for b in self.breaches],
            "evictions": self.evictions,
            "reclaims": self.reclaims,
        }

    def read(self) -> DiskReading:
        """nodefs and imagefs (the same filesystem here, see ``diskpressure``). Blocking."""
        nodefs = fs_reading(self._state_dir)
        return DiskReading(nodefs=nodefs, imagefs=nodefs)

    async def check(self) -> None:
        pods = list(self._pods())
        await self._enforce_limits(pods)
        breaches = diskpressure.breaches(self.thresholds, await asyncio.to_thread(self.read))
        if breaches:
            self.reclaims += 1
            freed = await self._reclaim()
            log.info("disk_reclaimed", signals=[b.signal for b in breaches], image_bytes=freed)
            breaches = diskpressure.breaches(self.thresholds, await asyncio.to_thread(self.read))
        if bool(breaches) != bool(self.breaches) or not self.checked:
            log.info("disk_pressure" if breaches else "disk_sufficient", below=len(breaches))
        self.breaches, self.checked = breaches, True
        if not breaches:
            return
        self._pressure_seen = self._clock()
        candidates = self._candidates(pods)
        usage = await asyncio.to_thread(self._usage, candidates, pods)
        ranked = diskpressure.rank(candidates, usage)
        if ranked:
            await self._evict_one(ranked[0], breaches[0].message)

    async def _enforce_limits(self, pods: list[Pod]) -> None:
        limited = [
            p
            for p in pods
            if diskpressure.size_limited_volumes(p) or diskpressure.storage_limited_containers(p)
        ]
        if not limited:
            return
        volume_use = await asyncio.to_thread(self._volume_use, limited)
        container_use = await asyncio.to_thread(self._container_use, limited)
        running = {c.uid: c for c in self._candidates(limited)}
        for breach in diskpressure.over_limits(limited, volume_use, container_use):
            victim = running.get(breach.uid)
            if victim is not None:
                await self._evict_one(victim, breach.message)

    async def _evict_one(self, victim: Candidate, message: str) -> None:
        log.warning("pod_evicting", pod=victim.key, uid=victim.uid, message=message)
        self.evictions += 1
        try:
            async with asyncio.timeout(POD_CLEANUP_TIMEOUT_S):
                await self._evict(victim, message)
        except TimeoutError:
            log.warning("evicted_pod_not_cleaned_up", pod=victim.key, uid=victim.uid)

    def _volume_use(self, pods: Sequence[Pod]) -> dict[tuple[PodUID, str], int]:
        use = {}
        for pod in pods:
            base = volumes.pod_dir(self._state_dir, pod) / "volumes" / "empty-dir"
            for name in diskpressure.size_limited_volumes(pod):
                use[(pod.uid, name)] = tree_bytes(base / name)
        return use

    def _container_use(self, pods: Sequence[Pod]) -> dict[tuple[PodUID, str], int]:
        """Each limited container's writable layer and logs (its running instance's layer;
        the logs of all its instances, as they stay on the node)."""
        limited = {p.uid: (p, diskpressure.storage_limited_containers(p)) for p in pods}
        instances = {
            (c.uid, c.name): c.id
            for rp in self._runtime_pods()
            if rp.uid in limited
            for c in rp.running()
            if c.name in limited[rp.uid][1]
        }
        pids = container_pids(instances.values()) if instances else {}
        use = {}
        for (uid, name), cid in instances.items():
            pod = limited[uid][0]
            logs = Path(specs.log_directory(str(self._pod_log_dir), pod)) / name
            layer = writable_layer_bytes(pids[cid]) if cid in pids else 0
            use[(uid, name)] = layer + tree_bytes(logs)
        return use

    def _usage(self, candidates: Sequence[Candidate], pods: Sequence[Pod]) -> dict[PodUID, int]:
        by_uid = {p.uid: p for p in pods}
        usage = {}
        for c in candidates:
            pod = by_uid.get(c.uid)
            if pod is None:
                continue
            logs = Path(specs.log_directory(str(self._pod_log_dir), pod))
            usage[c.uid] = tree_bytes(volumes.pod_dir(self._state_dir, pod)) + tree_bytes(logs)
        return usage

    async def run(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self.interval_s)
