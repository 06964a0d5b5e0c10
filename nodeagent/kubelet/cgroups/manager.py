"""Pod cgroups on the node: the kubelet's QoS and pod container managers, in one object.

``ensure_pod`` runs before a pod's sandbox: it makes kubepods and the QoS cgroups on first
use, brings the QoS cgroups' cpu shares in step with the pods including the new one (so a
burstable pod never starts in a cgroup weighted without it), makes the pod's cgroup with
its limits, and returns the sandbox's cgroup parent. ``run`` is housekeeping: every few
seconds it keeps the QoS shares in step with the desired pods and removes the cgroups of
pods that are gone, once the runtime holds nothing of theirs (after a restart too: the
cgroups are found by listing the QoS directories, not remembered).

Removal waits for ``ready`` (the runtime listed and the desired pods known), so an agent
that just started never mistakes a running pod it has not yet seen for a gone one. A pod
cgroup that still holds processes is kept (rmdir fails with EBUSY) and tried again.

The filesystem work blocks, so it runs in a thread; decisions come from ``policy``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog

from nodeagent.kubelet.cgroups import policy
from nodeagent.kubelet.cgroups.fs import CgroupError, CgroupFS
from nodeagent.kubelet.cgroups.policy import CgroupLayout, QOSClass, ResourceConfig
from nodeagent.model.pod import Container, Pod, PodUID

log = structlog.get_logger(__name__)

HOUSEKEEPING_INTERVAL_S = 5.0


@dataclass(frozen=True)
class CgroupSettings:
    layout: CgroupLayout
    kubepods: ResourceConfig  # kubepods' own limits (node allocatable, when enforced)
    memory_capacity_bytes: int  # for Burstable containers' oom_score_adj
    pids_max: int | None = None  # --pod-max-pids; None: unlimited
    # The least oom_score_adj the runtime may give (its own, without CAP_SYS_RESOURCE, as
    # containerd's restrict_oom_score_adj); None: any.
    oom_score_floor: int | None = None
    slice_parent: bool = False  # the runtime takes a systemd parent as the slice alone (Docker)


class PodCgroups:
    def __init__(
        self,
        settings: CgroupSettings,
        *,
        pods: Callable[[], Iterable[Pod]],
        live: Callable[[], set[PodUID]],
        ready: Callable[[], bool],
        fs: CgroupFS | None = None,
        interval_s: float = HOUSEKEEPING_INTERVAL_S,
    ) -> None:
        self.settings = settings
        self._pods, self._live, self._ready = pods, live, ready
        self._fs = fs or CgroupFS()
        self._interval_s = interval_s
        self._lock = asyncio.Lock()  # one writer of the QoS cgroups at a time
        self._set_up = False

    @property
    def layout(self) -> CgroupLayout:
        return self.settings.layout

    def parent(self, pod: Pod) -> str:
        """The sandbox's cgroup parent (a name only: ``ensure_pod`` makes it)."""
        name = self.layout.pod(pod.uid, policy.qos_class(pod))
        return self.layout.parent(name, leaf_only=self.settings.slice_parent)

    def oom_score_adj(self, pod: Pod, container: Container) -> int:
        adj = policy.oom_score_adj(pod, container, self.settings.memory_capacity_bytes)
        floor = self.settings.oom_score_floor
        return adj if floor is None else max(adj, floor)

    async def ensure_pod(self, pod: Pod) -> str:
        qos = policy.qos_class(pod)
        path = self.layout.path(self.layout.pod(pod.uid, qos))
        config = policy.pod_resource_config(pod, pids_max=self.settings.pids_max)
        async with self._lock:
            await self._setup()
            await self._update_qos([*self._others(pod), pod])
            await asyncio.to_thread(self._fs.ensure, path, config)
        log.debug("pod_cgroup_ready", pod=pod.key, cgroup=path, qos=qos.value)
        return self.parent(pod)

    def _others(self, pod: Pod) -> list[Pod]:
        return [p for p in self._pods() if p.uid != pod.uid]

    async def _setup(self) -> None:
        if self._set_up:
            return
        layout = self.layout
        await asyncio.to_thread(
            self._fs.ensure, layout.path(layout.kubepods()), self.settings.kubepods
        )
        for qos in (QOSClass.BURSTABLE, QOSClass.BESTEFFORT):
            await asyncio.to_thread(self._fs.ensure, layout.path(layout.qos(qos)), ResourceConfig())
        self._set_up = True
        log.info("qos_cgroups_ready", kubepods=layout.path(layout.kubepods()))

    async def _update_qos(self, pods: Iterable[Pod]) -> None:
        for qos, shares in policy.qos_cpu_shares(pods).items():
            path = self.layout.path(self.layout.qos(qos))
            await asyncio.to_thread(self._fs.ensure, path, ResourceConfig(cpu_shares=shares))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            if not self._ready():
                continue
            try:
                await self.housekeep()
            except CgroupError as exc:
                log.warning("cgroup_housekeeping_failed", error=str(exc))

    async def housekeep(self) -> None:
        """QoS shares in step with the desired pods; the cgroups of gone pods removed."""
        pods = list(self._pods())
        keep = {p.uid for p in pods} | self._live()
        async with self._lock:
            await self._setup()
            await self._update_qos(pods)
            for path in await asyncio.to_thread(self._pod_cgroups):
                uid = self.layout.pod_uid(path.rsplit("/", 1)[-1])
                if uid is None or uid in keep:
                    continue
                removed = await asyncio.to_thread(self._fs.remove, path)
                log.info("pod_cgroup_removed" if removed else "pod_cgroup_busy", cgroup=path)

    def _pod_cgroups(self) -> list[str]:
        found = []
        for qos in QOSClass:
            base = self.layout.path(self.layout.qos(qos))
            for name in self._fs.children(base):
                if self.layout.pod_uid(name) is not None:
                    found.append(f"{base.rstrip('/')}/{name}")
        return found


def read_oom_score_floor() -> int | None:
    """Our own oom_score_adj when we (and so the runtime we started beside) lack
    CAP_SYS_RESOURCE, which lowering a score needs; None when we have it."""
    with contextlib.suppress(OSError, ValueError):
        status = dict(
            line.split(":", 1) for line in _read("/proc/self/status").splitlines() if ":" in line
        )
        cap_sys_resource = 1 << 24
        if int(status["CapEff"].strip(), 16) & cap_sys_resource:
            return None
        return int(_read("/proc/self/oom_score_adj").strip())
    return None


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()
