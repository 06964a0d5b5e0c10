"""The node's resource keepers, built from the config: log rotation, garbage collection and
disk eviction (``logrotation``, ``gc``, ``diskeviction``), with their loops.

The daemon hands in what they read (the relister's cache, the pod manager's wanted set, the
desired pods) and how a pod is evicted; they share the garbage collector, which is what
disk pressure reclaims with before it evicts. Docker rotates its own logs, so the rotator
runs for CRI runtimes only. ``image_gc`` (the image manager's ``reclaim``) lets disk
pressure free unused images too, before any pod is evicted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from nodeagent.config import Config
from nodeagent.kubelet.diskeviction import DiskMonitor
from nodeagent.kubelet.eviction import Candidate
from nodeagent.kubelet.gc import GarbageCollector, ImageGC
from nodeagent.kubelet.logplan import LogPolicy, live_logs
from nodeagent.kubelet.logrotation import LogRotator
from nodeagent.kubelet.pleg import RuntimeCache
from nodeagent.model.pod import Pod, PodUID
from nodeagent.runtime.base import Runtime


class NodeResources:
    def __init__(
        self,
        config: Config,
        runtime: Runtime,
        *,
        cache: RuntimeCache,
        wanted: Callable[[], frozenset[PodUID] | None],
        pods: Callable[[], Iterable[Pod]],
        candidates: Callable[[Iterable[Pod]], Sequence[Candidate]],
        evict: Callable[[Candidate, str], Awaitable[None]],
        image_gc: ImageGC | None = None,
    ) -> None:
        policy = LogPolicy(config.container_log_max_size, config.container_log_max_files)
        self.rotator = (
            LogRotator(
                runtime,
                policy,
                logs=lambda: live_logs(cache.pods(), str(config.pod_log_dir)),
                interval_s=config.container_log_monitor_interval_s,
            )
            if config.runtime == "cri"
            else None
        )
        self.gc = GarbageCollector(
            runtime,
            pods=cache.pods,
            wanted=lambda: wanted() if cache.healthy else None,
            state_dir=config.state_dir,
            pod_log_dir=config.pod_log_dir,
            interval_s=config.gc_interval_s,
            image_gc=image_gc,
        )
        self.disk = DiskMonitor(
            config.eviction_hard,
            state_dir=config.state_dir,
            pod_log_dir=config.pod_log_dir,
            pods=pods,
            runtime_pods=cache.pods,
            candidates=candidates,
            evict=evict,
            reclaim=self.gc.reclaim,
            interval_s=config.eviction_interval_s,
        )

    def report(self) -> dict[str, Any]:
        rotations = self.rotator.rotations if self.rotator is not None else None
        return {"disk": self.disk.report(), "gc": self.gc.report(), "logRotations": rotations}

    def loops(self) -> dict[str, Callable[[], Awaitable[None]]]:
        return {
            "gc": self.gc.run,
            "disk-eviction": self.disk.run,
            **({"log-rotation": self.rotator.run} if self.rotator is not None else {}),
        }
