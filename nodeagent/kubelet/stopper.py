"""Stopping a pod's containers as the kubelet does: preStop hook, TERM, then KILL.

A module of its own because how a stop is paced is one concern, shared by a worker's kill
actions, its stop of a refused pod and its final termination: app containers together, then
the sidecars one by one, last one first, each in what is left of the grace period, and never
under the kubelet's 2 s floor (upstream ``minimumGracePeriodInSeconds``: even a grace period
of 0, or one a preStop hook used up, leaves a container 2 s between TERM and KILL). These
are runtime effects; which containers to stop, and in what order, is decided in plan.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import Any

from nodeagent.kubelet.handlers import Target, run_handler
from nodeagent.kubelet.plan import stop_order
from nodeagent.kubelet.runtimepod import RuntimePod
from nodeagent.model.pod import Container, Pod
from nodeagent.runtime.base import (
    ContainerID,
    ContainerInfo,
    ContainerState,
    NotFound,
    Runtime,
    SandboxState,
)

MIN_KILL_GRACE_S = 2  # the kubelet's floor between TERM and KILL


def spec_container(pod: Pod, name: str) -> Container | None:
    return next((c for c in pod.all_containers() if c.name == name), None)


async def ignore_missing(call: Awaitable[object]) -> None:
    with contextlib.suppress(NotFound):
        await call


async def stop_container(
    runtime: Runtime,
    container: Container | None,
    container_id: ContainerID,
    pod_ip: str,
    *,
    grace_s: int,
    log: Any,
) -> None:
    """preStop hook, then TERM, then KILL when the grace period is over."""
    started = time.monotonic()
    hook = container.lifecycle.pre_stop if container is not None else None
    if hook is not None and container is not None and grace_s > 0:
        target = Target(runtime, container_id, container, pod_ip)
        outcome = await run_handler(hook, target, timeout_s=grace_s)
        if not outcome.ok:
            log.warning("pre_stop_hook_failed", container=container.name, error=outcome.message)
    left = grace_s - int(time.monotonic() - started)
    with contextlib.suppress(NotFound):
        await runtime.stop_container(container_id, max(left, MIN_KILL_GRACE_S))


async def remove_container(runtime: Runtime, info: ContainerInfo) -> None:
    try:
        if info.state is not ContainerState.EXITED:
            # Also for CREATED: one whose start was cut short (an agent killed mid-call)
            # may still be "starting" in the runtime, which refuses to remove it unstopped.
            await runtime.stop_container(info.id, 0)
        await runtime.remove_container(info.id)
    except NotFound:
        pass


async def stop_pod(
    runtime: Runtime, pod: Pod, runtime_pod: RuntimePod, *, grace_s: int, remove: bool, log: Any
) -> None:
    """Stop every running container, then the ready sandboxes; with ``remove``, remove all."""
    await _stop_containers(runtime, pod, runtime_pod, grace_s=grace_s, log=log)
    for sb in runtime_pod.sandboxes:
        if sb.state is SandboxState.READY:
            await ignore_missing(runtime.stop_sandbox(sb.id))
    if not remove:
        return
    for c in runtime_pod.containers:
        await ignore_missing(runtime.remove_container(c.id))
    for sb in runtime_pod.sandboxes:
        await ignore_missing(runtime.remove_sandbox(sb.id))


async def _stop_containers(
    runtime: Runtime, pod: Pod, runtime_pod: RuntimePod, *, grace_s: int, log: Any
) -> None:
    sandbox = runtime_pod.ready_sandbox()
    ip = sandbox.ip if sandbox is not None else ""
    # App containers first, together; then the sidecars one by one, last one first, in
    # what is left of the grace period (the kubelet's floor of 2 s each).
    sidecars = {c.name for c in pod.sidecars()}
    running = runtime_pod.running()
    began = time.monotonic()
    await asyncio.gather(
        *(
            stop_container(runtime, spec_container(pod, c.name), c.id, ip, grace_s=grace_s, log=log)
            for c in running
            if c.name not in sidecars
        )
    )
    for name in stop_order(pod, sidecars):
        for c in (c for c in running if c.name == name):
            left = grace_s - int(time.monotonic() - began)
            await stop_container(
                runtime,
                spec_container(pod, c.name),
                c.id,
                ip,
                grace_s=max(left, min(grace_s, MIN_KILL_GRACE_S)),
                log=log,
            )
