"""Node capacity, allocatable and conditions, from psutil and the runtime's health.

MemoryPressure comes from the eviction monitor when one runs (``NodeFacts.memory_pressure``:
the same threshold that evicts pods), and from the upstream default threshold otherwise;
DiskPressure likewise from the disk monitor (``NodeFacts.disk_pressure``).

Ready is False with reason ``KubeletNotReady`` while the runtime is down or the pod network is
not ready (``NodeFacts.pod_network``: no podCIDR yet; or the runtime's own RuntimeReady or
NetworkReady, CRI ``Status``, is false), with the kubelet's messages ("container
runtime is down", "container runtime network not ready: NetworkReady=false reason:... message:
..."), several joined as upstream's error aggregate does. Where the agent is the node's pod
network (``pod_network`` given) it also reports NetworkUnavailable, as a CNI daemon does: True
only while a changed podCIDR waits for the pods of the old range to go (see network/podnet.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psutil

from nodeagent.configparse import EvictionThreshold, Reserved
from nodeagent.kubelet.cgroups.policy import NodeResources, cpu_quantity, node_allocatable
from nodeagent.kubelet.eviction import MemoryReading, threshold_bytes
from nodeagent.kubelet.imagegc import FsUsage
from nodeagent.kubelet.podstatus import rfc3339
from nodeagent.network.podnet import PodNetworkStatus
from nodeagent.runtime.base import ImageInfo, RuntimeStatus

MAX_NODE_IMAGES = 50  # the kubelet's nodeStatusMaxImages

MEMORY_PRESSURE_BYTES = 100 * 1024 * 1024
DISK_PRESSURE_FRACTION = 0.10
PID_PRESSURE_FRACTION = 0.05


@dataclass(frozen=True)
class Reservation:
    """What allocatable keeps back: --kube-reserved, --system-reserved and the memory part
    of --eviction-hard (upstream's GetNodeAllocatableReservation)."""

    kube: Reserved = field(default_factory=Reserved)
    system: Reserved = field(default_factory=Reserved)
    eviction: EvictionThreshold = field(default_factory=EvictionThreshold)


@dataclass(frozen=True)
class NodeFacts:
    name: str
    max_pods: int
    runtime_name: str
    runtime_version: str
    runtime_healthy: bool
    runtime_error: str
    state_dir: str
    now: float
    memory_pressure: bool | None = None  # the eviction monitor's verdict; None: not known yet
    disk_pressure: bool | None = None  # the disk monitor's verdict; None: not known yet
    pod_network: PodNetworkStatus | None = None  # None: not the agent's to report
    node_ip: str = ""  # the InternalIP (--node-ip, or as network/nodeip.py chooses)
    runtime_status: RuntimeStatus | None = None  # CRI Status; None: not asked yet
    reservation: Reservation = field(default_factory=Reservation)
    kubelet_port: int = 0  # the kubelet API's port (daemonEndpoints); 0: not served
    images: tuple[ImageInfo, ...] = ()  # the runtime's images, as last listed
    image_fs: FsUsage | None = None  # the filesystem holding them; None: not known


def memory_reading() -> MemoryReading:
    """``memory.available`` as the eviction signal reads it (blocking: run in a thread)."""
    memory = psutil.virtual_memory()
    return MemoryReading(available_bytes=memory.available, total_bytes=memory.total)


def capacity(max_pods: int) -> dict[str, str]:
    memory = psutil.virtual_memory().total
    return {
        "cpu": str(psutil.cpu_count() or 1),
        "memory": f"{memory // 1024}Ki",
        "pods": str(max_pods),
    }


def node_capacity() -> NodeResources:
    return NodeResources(
        cpu_millis=(psutil.cpu_count() or 1) * 1000,
        memory_bytes=psutil.virtual_memory().total,
    )


def allocatable(max_pods: int, reservation: Reservation | None = None) -> dict[str, str]:
    reservation = reservation or Reservation()
    total = node_capacity()
    left = node_allocatable(
        total,
        (reservation.kube, reservation.system),
        threshold_bytes(reservation.eviction, total.memory_bytes),
    )
    return {
        "cpu": cpu_quantity(left.cpu_millis),
        "memory": f"{left.memory_bytes // 1024}Ki",
        "pods": str(max_pods),
    }


def _condition(kind: str, ok: bool, reason: str, message: str, now: float) -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "lastHeartbeatTime": rfc3339(now),
    }


def conditions(facts: NodeFacts) -> list[dict[str, Any]]:
    memory = psutil.virtual_memory()
    disk = psutil.disk_usage(facts.state_dir)
    pids = len(psutil.pids())
    pid_max = _pid_max()
    problems = ready_problems(facts)
    ready = not problems
    ready_message = "nodeagent is posting ready status" if ready else _aggregate(problems)
    low_memory = (
        memory.available < MEMORY_PRESSURE_BYTES
        if facts.memory_pressure is None
        else facts.memory_pressure
    )
    low_disk = (
        disk.free < disk.total * DISK_PRESSURE_FRACTION
        if facts.disk_pressure is None
        else facts.disk_pressure
    )
    low_pids = pid_max - pids < pid_max * PID_PRESSURE_FRACTION
    found = [
        _condition(
            "Ready",
            ready,
            "KubeletReady" if ready else "KubeletNotReady",
            ready_message,
            facts.now,
        ),
        _condition(
            "MemoryPressure",
            low_memory,
            "KubeletHasInsufficientMemory" if low_memory else "KubeletHasSufficientMemory",
            f"{memory.available // 2**20} MiB available",
            facts.now,
        ),
        _condition(
            "DiskPressure",
            low_disk,
            "KubeletHasDiskPressure" if low_disk else "KubeletHasNoDiskPressure",
            f"{disk.free // 2**20} MiB free on {facts.state_dir}",
            facts.now,
        ),
        _condition(
            "PIDPressure",
            low_pids,
            "KubeletHasInsufficientPID" if low_pids else "KubeletHasSufficientPID",
            f"{pids} of {pid_max} pids in use",
            facts.now,
        ),
    ]
    if facts.pod_network is not None:
        found.append(network_condition(facts.pod_network, facts.now))
    return found


def ready_problems(facts: NodeFacts) -> list[str]:
    """Why the node is not Ready, in the kubelet's words; empty when it is."""
    problems = []
    if not facts.runtime_healthy:
        problems.append(f"container runtime is down: {facts.runtime_error}")
    if facts.pod_network is not None and facts.pod_network.error:
        problems.append(facts.pod_network.error)  # it says why the runtime's network waits
    elif facts.runtime_healthy and (status := runtime_problem(facts.runtime_status)):
        problems.append(status)
    return problems


def runtime_problem(status: RuntimeStatus | None) -> str:
    """The runtime's own RuntimeReady/NetworkReady, worded as the kubelet words them."""
    if status is None or (status.runtime_ready and status.network_ready):
        return ""
    if not status.runtime_ready:
        kind, what = "RuntimeReady", "container runtime not ready"
    else:
        kind, what = "NetworkReady", "container runtime network not ready"
    return f"{what}: {kind}=false reason:{status.reason} message:{status.message}"


def _aggregate(problems: list[str]) -> str:
    return problems[0] if len(problems) == 1 else "[" + ", ".join(problems) + "]"


def network_condition(network: PodNetworkStatus, now: float) -> dict[str, Any]:
    """NetworkUnavailable, True (a problem) only while a podCIDR change is deferred."""
    cond = _condition(
        "NetworkUnavailable", False, "PodNetworkReady", "the node's pod network is up", now
    )
    if network.change_pending:
        message = (
            f"spec.podCIDR changed to {network.wanted_cidr}; pods still use "
            f"{network.pod_cidr}, which new pods get until they are gone (drain the node)"
        )
        cond.update(status="True", reason="PodCIDRChangePending", message=message)
    return cond


def _pid_max() -> int:
    try:
        with open("/proc/sys/kernel/pid_max", encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 32768


def node_images(images: tuple[ImageInfo, ...]) -> list[dict[str, Any]]:
    """The Node's status.images: the largest MAX_NODE_IMAGES images first, each with its
    repo digests and tags (an image with no name is left out, as the API wants names)."""
    named = sorted((i for i in images if i.names), key=lambda i: i.size, reverse=True)
    return [{"names": list(i.names), "sizeBytes": i.size} for i in named[:MAX_NODE_IMAGES]]


def _images(facts: NodeFacts) -> dict[str, Any]:
    """The image count and size, and the image filesystem's use, for the node view."""
    out: dict[str, Any] = {"count": len(facts.images), "bytes": sum(i.size for i in facts.images)}
    fs = facts.image_fs
    if fs is not None:
        out["fs"] = {"path": fs.path, "percent": fs.percent, "totalBytes": fs.capacity_bytes}
    return out


def node_status(facts: NodeFacts) -> dict[str, Any]:
    return {
        "name": facts.name,
        "runtime": {"name": facts.runtime_name, "version": facts.runtime_version},
        "conditions": conditions(facts),
        "capacity": capacity(facts.max_pods),
        "allocatable": allocatable(facts.max_pods, facts.reservation),
        "usage": {
            "cpuPercent": psutil.cpu_percent(interval=None),
            "memoryPercent": psutil.virtual_memory().percent,
            "pids": len(psutil.pids()),
        },
        "addresses": [{"type": "Hostname", "address": facts.name}]
        + ([{"type": "InternalIP", "address": ip}] if (ip := facts.node_ip) else []),
        **({"podNetwork": facts.pod_network.to_json()} if facts.pod_network else {}),
        "images": _images(facts),
    }
