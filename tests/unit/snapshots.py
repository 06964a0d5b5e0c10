"""Runtime snapshots built by hand, for the pure decisions' tests (plan, sidecars, deadline).

Every object belongs to pod UID; the sandbox of attempt N was made at T0 + N (wall clock).
"""

from __future__ import annotations

from nodeagent.kubelet.plan import PodActions
from nodeagent.kubelet.runtimepod import RuntimePod
from nodeagent.model.pod import PodUID, RestartPolicy
from nodeagent.runtime.base import (
    ContainerID,
    ContainerInfo,
    ContainerState,
    SandboxID,
    SandboxInfo,
    SandboxState,
)

UID = PodUID("uid-1")
T0 = 1_700_000_000.0  # wall-clock seconds at which the pod's sandbox was made

RUNNING, EXITED, CREATED = ContainerState.RUNNING, ContainerState.EXITED, ContainerState.CREATED
ALWAYS, ON_FAILURE, NEVER = RestartPolicy.ALWAYS, RestartPolicy.ON_FAILURE, RestartPolicy.NEVER


def ns(seconds: float) -> int:
    return int(seconds * 1e9)


def sandbox(
    attempt: int = 0, state: SandboxState = SandboxState.READY, *, sid: str = ""
) -> SandboxInfo:
    return SandboxInfo(
        id=SandboxID(sid or f"sb{attempt}"),
        uid=UID,
        name="p",
        namespace="default",
        attempt=attempt,
        state=state,
        created_at_ns=ns(T0 + attempt),
        ip="10.88.0.2",
    )


def container(
    name: str,
    attempt: int = 0,
    state: ContainerState = RUNNING,
    *,
    sandbox_attempt: int = 0,
    started: float = T0 + 1,
    finished: float = 0.0,
    exit_code: int = 0,
    created: float | None = None,
) -> ContainerInfo:
    created = started - 0.5 if created is None else created
    return ContainerInfo(
        id=ContainerID(f"{name}-{attempt}"),
        sandbox_id=SandboxID(f"sb{sandbox_attempt}"),
        uid=UID,
        name=name,
        attempt=attempt,
        image="docker.io/library/busybox:1.36",
        state=state,
        created_at_ns=ns(created),
        started_at_ns=ns(started) if state is not CREATED else 0,
        finished_at_ns=ns(finished) if state is EXITED else 0,
        exit_code=exit_code,
        detailed=True,
    )


def exited(name: str, attempt: int = 0, code: int = 0, **kwargs: float) -> ContainerInfo:
    started = kwargs.get("started", T0 + 1)
    finished = kwargs.get("finished", started + 1)
    return container(name, attempt, EXITED, started=started, finished=finished, exit_code=code)


def runtime(*items: SandboxInfo | ContainerInfo) -> RuntimePod:
    return RuntimePod(
        UID,
        tuple(i for i in items if isinstance(i, SandboxInfo)),
        tuple(i for i in items if isinstance(i, ContainerInfo)),
    )


def started(actions: PodActions) -> list[tuple[str, int, bool]]:
    return [(s.container.name, s.attempt, s.init) for s in actions.start]
