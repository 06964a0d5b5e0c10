"""The kubelet's cgroup decisions, as pure functions: nothing here touches a file.

- ``pod_requests``/``pod_limits``: a pod's effective cpu and memory (upstream's PodRequests
  and PodLimits): app containers and sidecars add up, an init container that runs alone
  counts with the sidecars started before it, and the larger of the two wins.
- ``pod_resource_config``: the pod cgroup's limits (upstream's ResourceConfigForPod): cpu
  shares from the summed requests for every class (2 for BestEffort), cpu quota and memory
  limit from the summed limits only where every container declares one.
- ``qos_cpu_shares``: the burstable and besteffort cgroups' shares, kept in step with the
  pods (upstream's qos_container_manager).
- ``oom_score_adj``: a container's score by its pod's class (upstream's
  GetContainerOOMScoreAdjust).
- ``CgroupLayout``: the names of kubepods, the QoS cgroups and the pod cgroups for the
  cgroupfs and systemd drivers (``/kubepods/burstable/pod<uid>`` or
  ``/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice``).
- ``node_allocatable`` and ``kubepods_config``: what status.allocatable reports (capacity less
  kube-reserved, system-reserved and the hard eviction threshold) and what
  ``--enforce-node-allocatable=pods`` caps kubepods at (capacity less the reservations only:
  the eviction threshold is headroom the kubelet keeps to act in, not a cap, as upstream's
  getNodeAllocatableAbsolute).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from nodeagent.configparse import Reserved
from nodeagent.kubelet import podstatus
from nodeagent.model.pod import Container, Pod, PodUID

MIN_SHARES = 2
MAX_SHARES = 262_144
SHARES_PER_CPU = 1024
CPU_PERIOD_US = 100_000
MIN_QUOTA_US = 1_000
GUARANTEED_OOM_SCORE_ADJ = -997
BESTEFFORT_OOM_SCORE_ADJ = 1000
# system-node-critical's priority: the model keeps the priority, not the class's name.
NODE_CRITICAL_PRIORITY = 2_000_001_000


class QOSClass(enum.Enum):
    GUARANTEED = "Guaranteed"  # limits equal requests for cpu and memory in every container
    BURSTABLE = "Burstable"  # some request or limit, not Guaranteed
    BESTEFFORT = "BestEffort"  # no cpu or memory request or limit anywhere


class CgroupDriver(enum.Enum):
    CGROUPFS = "cgroupfs"  # plain directories, /kubepods/burstable/pod<uid>
    SYSTEMD = "systemd"  # slices, kubepods-burstable-pod<uid>.slice


@dataclass(frozen=True)
class PodTotals:
    """A pod's effective cpu (millicores) and memory (bytes); 0 is none."""

    cpu_millis: int = 0
    memory_bytes: int = 0


@dataclass(frozen=True)
class ResourceConfig:
    """One cgroup's limits; None leaves a limit unlimited (the cgroup's default)."""

    cpu_shares: int | None = None
    cpu_quota_us: int | None = None  # with cpu_period_us
    cpu_period_us: int | None = None
    memory_bytes: int | None = None
    pids_max: int | None = None


def milli_cpu_to_shares(millis: int) -> int:
    if millis <= 0:
        return MIN_SHARES
    return min(MAX_SHARES, max(MIN_SHARES, millis * SHARES_PER_CPU // 1000))


def milli_cpu_to_quota(millis: int, period_us: int = CPU_PERIOD_US) -> int:
    if millis <= 0:
        return 0
    return max(MIN_QUOTA_US, millis * period_us // 1000)


def shares_to_weight(shares: int) -> int:
    """cgroup v2 cpu.weight (1-10000) for v1 cpu.shares (2-262144), as runc converts."""
    return 1 + ((shares - MIN_SHARES) * 9999) // (MAX_SHARES - MIN_SHARES)


# --- a pod's totals and class --------------------------------------------------------------


def _requests(c: Container) -> PodTotals:
    """An unset request is the limit, as the API server defaults it."""
    r = c.resources
    cpu = r.cpu_request_millis if r.cpu_request_millis is not None else r.cpu_limit_millis
    mem = r.memory_request_bytes if r.memory_request_bytes is not None else r.memory_limit_bytes
    return PodTotals(cpu or 0, mem or 0)


def _limits(c: Container) -> PodTotals:
    return PodTotals(c.resources.cpu_limit_millis or 0, c.resources.memory_limit_bytes or 0)


def _totals(pod: Pod, *, limits: bool) -> PodTotals:
    pick = _limits if limits else _requests
    cpu = mem = 0
    for c in pod.spec.containers:
        cpu, mem = cpu + pick(c).cpu_millis, mem + pick(c).memory_bytes
    init_cpu = init_mem = 0
    side_cpu = side_mem = 0
    for c in pod.spec.init_containers:
        own = pick(c)
        if c.sidecar:
            side_cpu, side_mem = side_cpu + own.cpu_millis, side_mem + own.memory_bytes
            cpu, mem = cpu + own.cpu_millis, mem + own.memory_bytes
            continue
        init_cpu = max(init_cpu, side_cpu + own.cpu_millis)
        init_mem = max(init_mem, side_mem + own.memory_bytes)
    return PodTotals(max(cpu, init_cpu), max(mem, init_mem))


def pod_requests(pod: Pod) -> PodTotals:
    return _totals(pod, limits=False)


def pod_limits(pod: Pod) -> PodTotals:
    return _totals(pod, limits=True)


def qos_class(pod: Pod) -> QOSClass:
    """Upstream's ComputePodQOS; the one rule lives in podstatus.qos_class."""
    return QOSClass(podstatus.qos_class(pod))


# --- pod and QoS cgroup limits -------------------------------------------------------------


def pod_resource_config(pod: Pod, *, pids_max: int | None = None) -> ResourceConfig:
    """ResourceConfigForPod, plus ``--pod-max-pids`` (None or negative: unlimited)."""
    pids = pids_max if pids_max is not None and pids_max > 0 else None
    qos = qos_class(pod)
    if qos is QOSClass.BESTEFFORT:
        return ResourceConfig(cpu_shares=MIN_SHARES, pids_max=pids)
    requests, limits = pod_requests(pod), pod_limits(pod)
    containers = pod.all_containers()
    cpu_declared = all(c.resources.cpu_limit_millis for c in containers)
    memory_declared = all(c.resources.memory_limit_bytes for c in containers)
    guaranteed = qos is QOSClass.GUARANTEED
    quota = milli_cpu_to_quota(limits.cpu_millis)
    return ResourceConfig(
        cpu_shares=milli_cpu_to_shares(requests.cpu_millis),
        cpu_quota_us=quota if guaranteed or cpu_declared else None,
        cpu_period_us=CPU_PERIOD_US if guaranteed or cpu_declared else None,
        memory_bytes=limits.memory_bytes if guaranteed or memory_declared else None,
        pids_max=pids,
    )


def qos_cpu_shares(pods: Iterable[Pod]) -> Mapping[QOSClass, int]:
    """The burstable cgroup's shares (its pods' summed cpu requests) and besteffort's."""
    burstable = sum(pod_requests(p).cpu_millis for p in pods if qos_class(p) is QOSClass.BURSTABLE)
    return {
        QOSClass.BURSTABLE: milli_cpu_to_shares(burstable),
        QOSClass.BESTEFFORT: MIN_SHARES,
    }


def oom_score_adj(pod: Pod, container: Container, memory_capacity_bytes: int) -> int:
    """GetContainerOOMScoreAdjust: Guaranteed and node-critical -997, BestEffort 1000,
    Burstable by the container's share of the node's memory, kept within 3..999."""
    if (pod.spec.priority or 0) >= NODE_CRITICAL_PRIORITY:
        return GUARANTEED_OOM_SCORE_ADJ
    qos = qos_class(pod)
    if qos is QOSClass.GUARANTEED:
        return GUARANTEED_OOM_SCORE_ADJ
    if qos is QOSClass.BESTEFFORT:
        return BESTEFFORT_OOM_SCORE_ADJ
    request = _requests(container).memory_bytes
    adj = 1000 - (1000 * request) // max(1, memory_capacity_bytes)
    if adj < 1000 + GUARANTEED_OOM_SCORE_ADJ:
        return 1000 + GUARANTEED_OOM_SCORE_ADJ
    return adj - 1 if adj == BESTEFFORT_OOM_SCORE_ADJ else adj


# --- names ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CgroupLayout:
    """Where kubepods, its QoS cgroups and the pod cgroups live, for one driver.

    A name is a tuple of components under ``root`` (``--cgroup-root``, itself components:
    "/" is none); ``path`` renders it as the cgroup's path below a hierarchy's mount and
    ``parent`` as the runtime wants it for a sandbox's cgroup parent.
    """

    driver: CgroupDriver = CgroupDriver.CGROUPFS
    root: tuple[str, ...] = ()

    def kubepods(self) -> tuple[str, ...]:
        return (*self.root, "kubepods")

    def qos(self, qos: QOSClass) -> tuple[str, ...]:
        if qos is QOSClass.GUARANTEED:
            return self.kubepods()
        return (*self.kubepods(), qos.value.lower())

    def pod(self, uid: PodUID, qos: QOSClass) -> tuple[str, ...]:
        return (*self.qos(qos), f"pod{uid}")

    def path(self, name: tuple[str, ...]) -> str:
        if self.driver is CgroupDriver.CGROUPFS:
            return "/" + "/".join(name)
        escaped = [part.replace("-", "_") for part in name]
        return "/" + "/".join("-".join(escaped[: i + 1]) + ".slice" for i in range(len(escaped)))

    def parent(self, name: tuple[str, ...], *, leaf_only: bool = False) -> str:
        """A sandbox's cgroup parent: the path, or for systemd on Docker the slice alone."""
        path = self.path(name)
        return (
            path.rsplit("/", 1)[-1] if leaf_only and self.driver is CgroupDriver.SYSTEMD else path
        )

    def pod_uid(self, leaf: str) -> PodUID | None:
        """The uid in a pod cgroup's last path element; None for anything else."""
        if self.driver is CgroupDriver.SYSTEMD:
            if not leaf.endswith(".slice"):
                return None
            leaf = leaf.removesuffix(".slice").rsplit("-", 1)[-1].replace("_", "-")
        return PodUID(leaf[3:]) if leaf.startswith("pod") and len(leaf) > 3 else None


def parse_cgroup_root(text: str) -> tuple[str, ...]:
    """``--cgroup-root``: "/" or "/a/b" (cgroupfs), or a slice "a.slice" or "/a.slice"."""
    parts = [p for p in text.strip().split("/") if p]
    if len(parts) == 1 and parts[0].endswith(".slice"):
        return tuple(parts[0].removesuffix(".slice").split("-"))
    return tuple(parts)


# --- node allocatable ----------------------------------------------------------------------


@dataclass(frozen=True)
class NodeResources:
    cpu_millis: int
    memory_bytes: int


def node_allocatable(
    capacity: NodeResources, reserved: Iterable[Reserved], eviction_memory_bytes: int
) -> NodeResources:
    """status.allocatable: capacity less every reservation and the hard eviction threshold."""
    held = list(reserved)
    return NodeResources(
        cpu_millis=max(0, capacity.cpu_millis - sum(r.cpu_millis for r in held)),
        memory_bytes=max(
            0, capacity.memory_bytes - sum(r.memory_bytes for r in held) - eviction_memory_bytes
        ),
    )


def kubepods_config(
    capacity: NodeResources, reserved: Iterable[Reserved], *, enforce: bool
) -> ResourceConfig:
    """kubepods' limits: the node's capacity, or with enforcement capacity less reservations."""
    held = list(reserved) if enforce else []
    cpu = max(0, capacity.cpu_millis - sum(r.cpu_millis for r in held))
    memory = max(0, capacity.memory_bytes - sum(r.memory_bytes for r in held))
    return ResourceConfig(
        cpu_shares=milli_cpu_to_shares(cpu), memory_bytes=memory if enforce else None
    )


def cpu_quantity(millis: int) -> str:
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"
