"""Disk eviction decisions (pure): DiskPressure from the disk signals, which pod goes, and
which pods broke their own local-storage limits. ``diskeviction`` reads and acts.

Facts matched (upstream's eviction manager):

- signals ``nodefs.available`` and ``nodefs.inodesFree`` (the filesystem of the agent's state
  and pod logs) and ``imagefs.available`` (the runtime's images; here the same filesystem
  unless told otherwise, as the kubelet treats a runtime whose images share the node's
  disk), each against its ``--eviction-hard`` threshold, a quantity or a share;
- under pressure the node first reclaims (dead containers, unused images) and evicts only
  if that did not bring every signal back above its threshold; then one pod per pass:
  BestEffort first, then Burstable, then Guaranteed, and within each the largest local
  storage use first (upstream ranks by use above ephemeral-storage requests, which our pods
  do not state: every use is above a request of nothing, so QoS and use decide);
- an emptyDir whose use passes its ``sizeLimit``, or a container whose writable layer and
  logs pass its ``ephemeral-storage`` limit, evicts its pod at once, whatever the node's
  state, with upstream's messages ("Usage of EmptyDir volume ... exceeds the limit ...",
  "Container ... exceeded its local ephemeral storage limit ...").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from nodeagent.configparse import (
    IMAGEFS_AVAILABLE,
    NODEFS_AVAILABLE,
    NODEFS_INODES_FREE,
    DiskThreshold,
)
from nodeagent.kubelet.eviction import Candidate
from nodeagent.model.pod import EmptyDirSource, Pod, PodUID

_QOS_ORDER = {"BestEffort": 0, "Burstable": 1, "Guaranteed": 2}


@dataclass(frozen=True)
class FsReading:
    available_bytes: int
    capacity_bytes: int
    inodes_free: int
    inodes: int


@dataclass(frozen=True)
class DiskReading:
    nodefs: FsReading
    imagefs: FsReading


@dataclass(frozen=True)
class Breach:
    """One signal below its threshold."""

    signal: str
    threshold: int  # bytes, or inodes
    observed: int

    @property
    def message(self) -> str:
        if self.signal == NODEFS_INODES_FREE:
            return (
                f"The node was low on resource: inodes. Threshold quantity: {self.threshold}, "
                f"available: {self.observed}."
            )
        return (
            f"The node was low on resource: ephemeral-storage. Threshold quantity: "
            f"{quantity(self.threshold)}, available: {self.observed // 1024}Ki."
        )


def breaches(thresholds: Sequence[DiskThreshold], reading: DiskReading) -> list[Breach]:
    """The signals below their thresholds, in the order of ``thresholds``."""
    found = []
    for t in thresholds:
        observed, capacity = _signal(t.signal, reading)
        limit = int(capacity * t.percent / 100) if t.percent is not None else t.quantity or 0
        if observed < limit:
            found.append(Breach(t.signal, limit, observed))
    return found


def _signal(signal: str, reading: DiskReading) -> tuple[int, int]:
    if signal == NODEFS_AVAILABLE:
        return reading.nodefs.available_bytes, reading.nodefs.capacity_bytes
    if signal == NODEFS_INODES_FREE:
        return reading.nodefs.inodes_free, reading.nodefs.inodes
    if signal == IMAGEFS_AVAILABLE:
        return reading.imagefs.available_bytes, reading.imagefs.capacity_bytes
    raise ValueError(f"unknown disk signal {signal!r}")


def rank(pods: Sequence[Candidate], usage: Mapping[PodUID, int]) -> list[Candidate]:
    """Pods in disk eviction order, first to go first (``usage``: local storage bytes)."""
    return sorted(pods, key=lambda p: (_QOS_ORDER.get(p.qos, 0), -usage.get(p.uid, 0), p.key))


@dataclass(frozen=True)
class LimitBreach:
    uid: PodUID
    message: str


def size_limited_volumes(pod: Pod) -> dict[str, int]:
    """The pod's disk-backed emptyDirs that have a sizeLimit: name -> limit bytes. (A memory
    one is a tmpfs of that size: the kernel enforces it.)"""
    return {
        v.name: v.source.size_limit_bytes
        for v in pod.spec.volumes
        if isinstance(v.source, EmptyDirSource)
        and v.source.medium != "Memory"
        and v.source.size_limit_bytes
    }


def storage_limited_containers(pod: Pod) -> dict[str, int]:
    """The pod's containers with an ``ephemeral-storage`` limit: name -> limit bytes."""
    return {
        c.name: limit
        for c in pod.spec.containers
        if (limit := c.resources.ephemeral_storage_limit_bytes) is not None
    }


def over_limits(
    pods: Sequence[Pod],
    volume_use: Mapping[tuple[PodUID, str], int],
    container_use: Mapping[tuple[PodUID, str], int],
) -> list[LimitBreach]:
    """The pods with an emptyDir past its sizeLimit or a container past its ephemeral-storage
    limit (the uses: (uid, volume or container name) -> bytes), one breach per pod."""
    found = []
    for pod in pods:
        message = ""
        for name, limit in sorted(size_limited_volumes(pod).items()):
            if volume_use.get((pod.uid, name), 0) > limit:
                message = (
                    f'Usage of EmptyDir volume "{name}" exceeds the limit "{quantity(limit)}".'
                )
                break
        for name, limit in sorted(storage_limited_containers(pod).items()):
            if not message and container_use.get((pod.uid, name), 0) > limit:
                # Upstream's words, its trailing space too.
                message = (
                    f"Container {name} exceeded its local ephemeral storage limit "
                    f'"{quantity(limit)}". '
                )
        if message:
            found.append(LimitBreach(pod.uid, message))
    return found


def upper_dir(mountinfo: str) -> str | None:
    """The writable layer of a container: the ``upperdir`` of the overlay mounted at ``/``
    in its mount namespace (``/proc/<pid>/mountinfo``, as containerd's and Docker's overlay
    snapshotters mount it). None when the root is not an overlay."""
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 10 or fields[4] != "/":
            continue
        tail = fields[fields.index("-") + 1 :] if "-" in fields else []
        if len(tail) < 3 or tail[0] != "overlay":
            continue
        for option in tail[2].split(","):
            if option.startswith("upperdir="):
                return option[len("upperdir=") :]
    return None


def quantity(value: int) -> str:
    """Bytes as the API writes a quantity: the largest binary suffix that divides it."""
    for suffix, size in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if value and value % size == 0:
            return f"{value // size}{suffix}"
    return str(value)
