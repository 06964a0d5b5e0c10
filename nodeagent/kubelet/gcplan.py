"""Garbage collection decisions (pure): which dead containers and sandboxes, and which
leftover pod and log directories, go. ``gc`` carries them out; the rules are the kubelet's
container GC (``kuberuntime_gc.go``) with its default policy:

- a dead (exited) container goes unless it is the newest dead instance of its container in a
  pod that is still wanted (MaxPerPodContainer=1: it is the container's ``lastState``); of a
  pod no longer wanted every dead container goes. Running and created containers stay;
- a sandbox that is not ready goes once no container of it is left, unless it is the newest
  sandbox of a wanted pod (its worker may be about to replace it and reads its attempt);
- a pod's log directory (``<namespace>_<name>_<uid>``) and its directory under the state
  dir (``pods/<uid>``) go once the pod is neither wanted nor held by the runtime.

"Wanted" is the pod manager's view (desired, or with a worker still stopping it). Until
every source has said what it wants that view is partial, so nothing of an unwanted pod is
touched then (``wanted`` is None), as the kubelet waits for ``sourcesReady``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from nodeagent.kubelet.runtimepod import RuntimePod
from nodeagent.model.pod import PodUID
from nodeagent.runtime.base import ContainerInfo, ContainerState, SandboxInfo, SandboxState


@dataclass(frozen=True)
class GCInput:
    pods: Sequence[RuntimePod]  # what the runtime holds, per pod
    wanted: frozenset[PodUID] | None  # None: the sources are not all ready yet
    log_dirs: Sequence[str] = ()  # the entries of the pod log directory
    pod_dirs: Sequence[str] = ()  # the entries of <state_dir>/pods (pod uids)


@dataclass(frozen=True)
class GCPlan:
    containers: tuple[ContainerInfo, ...] = ()
    sandboxes: tuple[SandboxInfo, ...] = ()
    log_dirs: tuple[str, ...] = ()  # entry names under the pod log directory
    pod_dirs: tuple[str, ...] = ()  # uids under <state_dir>/pods

    @property
    def empty(self) -> bool:
        return not (self.containers or self.sandboxes or self.log_dirs or self.pod_dirs)


def plan_gc(inp: GCInput) -> GCPlan:
    containers: list[ContainerInfo] = []
    sandboxes: list[SandboxInfo] = []
    for pod in inp.pods:
        wanted = inp.wanted is None or pod.uid in inp.wanted
        doomed = dead_containers(pod, keep=1 if wanted else 0)
        containers.extend(doomed)
        sandboxes.extend(dead_sandboxes(pod, doomed, keep_newest=wanted))
    if inp.wanted is None:
        return GCPlan(tuple(containers), tuple(sandboxes))
    held = inp.wanted | {p.uid for p in inp.pods}
    return GCPlan(
        tuple(containers),
        tuple(sandboxes),
        log_dirs=tuple(d for d in inp.log_dirs if (uid := log_dir_uid(d)) and uid not in held),
        pod_dirs=tuple(d for d in inp.pod_dirs if d not in held),
    )


def dead_containers(pod: RuntimePod, *, keep: int) -> list[ContainerInfo]:
    doomed = []
    for name in sorted({c.name for c in pod.containers}):
        dead = [c for c in pod.instances(name) if c.state is ContainerState.EXITED]
        doomed.extend(dead[keep:])  # instances() is newest first
    return doomed


def dead_sandboxes(
    pod: RuntimePod, doomed: Iterable[ContainerInfo], *, keep_newest: bool
) -> list[SandboxInfo]:
    going = {c.id for c in doomed}
    used = {c.sandbox_id for c in pod.containers if c.id not in going}
    newest = pod.latest_sandbox() if keep_newest else None
    return [
        s
        for s in pod.sandboxes
        if s.state is not SandboxState.READY and s.id not in used and s is not newest
    ]


def log_dir_uid(name: str) -> PodUID | None:
    """The pod uid in a log directory's name ``<namespace>_<name>_<uid>`` (None: not one)."""
    parts = name.split("_")
    return PodUID(parts[-1]) if len(parts) == 3 and all(parts) else None
