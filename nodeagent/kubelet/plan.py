"""What to do next for one pod: a pure function of the spec and the runtime's snapshot.

This is the kubelet's ``computePodActions`` as a plain function. The pod worker calls it,
carries out what it returns, refreshes the snapshot and calls it again until it returns
nothing to do. Keeping it pure means every branch (init order, restart policy, backoff,
liveness kills, pruning) is unit-tested without a runtime.

Order of business:
0. past ``activeDeadlineSeconds`` since the pod's start: kill everything, the pod is done;
1. no ready sandbox -> create one (after killing what is left of the old one), unless the
   pod has already finished under restartPolicy Never/OnFailure;
2. init containers, one at a time, each to a clean exit; a native sidecar (an init
   container with restartPolicy Always) only to its start: the next one waits until it runs
   and its startup probe, if any, has succeeded;
3. app containers (and sidecars, which restart on any exit whatever the pod's policy): start
   missing ones, restart exited ones per restartPolicy (behind the CrashLoopBackOff delay),
   kill those whose liveness or startup probe failed, and kill and start again at once,
   whatever the policy, a running one whose container hash differs from its spec's (the
   spec changed: a new image), as upstream's "definition changed, will be restarted";
4. remove dead instances older than the latest one of each container, and sandboxes that a
   newer sandbox replaced.

Ephemeral containers (``kubectl debug``) start once a sandbox is ready, beside the init
containers' work so that a debugger can look at a pod stuck in initialization, and only if
no instance of them exists: they are never restarted, and count for nothing in completion.

Sidecars never hold a pod back from completion: once its app containers are done for good
(restartPolicy Never/OnFailure), the pod is finished and its sidecars are stopped, in
reverse order, before the sandbox.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from nodeagent.kubelet import backoff, containerhash
from nodeagent.kubelet.runtimepod import RuntimePod
from nodeagent.model.pod import Container, Pod, RestartPolicy
from nodeagent.runtime.base import ContainerInfo, ContainerState, SandboxInfo


@dataclass(frozen=True)
class StartContainer:
    container: Container
    attempt: int
    init: bool = False
    # A restart for a changed spec, not for a failure: it does not feed CrashLoopBackOff.
    changed: bool = False


@dataclass(frozen=True)
class KillContainer:
    info: ContainerInfo
    reason: str  # why, for the log and events
    grace_s: int | None = None  # None: the pod's terminationGracePeriodSeconds


@dataclass(frozen=True)
class PodActions:
    create_sandbox: bool = False
    sandbox_attempt: int = 0
    kill_pod: bool = False  # tear down the old sandbox and its containers first
    kill: tuple[KillContainer, ...] = ()
    start: tuple[StartContainer, ...] = ()
    # Containers that should restart but are backing off: name -> wall time to retry.
    backoff: Mapping[str, float] = field(default_factory=dict)
    prune: tuple[ContainerInfo, ...] = ()
    # Dead sandboxes replaced by a newer one (removing one removes its containers too).
    prune_sandboxes: tuple[SandboxInfo, ...] = ()
    finished: bool = False  # the pod has run to completion; stop its sandbox
    deadline_exceeded: bool = False  # activeDeadlineSeconds passed: the pod ends Failed

    @property
    def idle(self) -> bool:
        return not (
            self.create_sandbox
            or self.kill_pod
            or self.kill
            or self.start
            or self.prune
            or self.prune_sandboxes
        )


@dataclass(frozen=True)
class PlanInput:
    pod: Pod
    runtime: RuntimePod
    now: float  # wall-clock seconds
    backoffs: Mapping[str, backoff.Backoff] = field(default_factory=dict)
    # Containers whose liveness or startup probe asks for a restart: name -> reason.
    unhealthy: Mapping[str, str] = field(default_factory=dict)
    # Startup probe results (absent: no result yet); a sidecar without one starts at once.
    started: Mapping[str, bool] = field(default_factory=dict)
    start_time: float | None = None  # the pod's startTime (its first sandbox), if any


def should_restart(policy: RestartPolicy, exit_code: int) -> bool:
    if policy is RestartPolicy.ALWAYS:
        return True
    return policy is RestartPolicy.ON_FAILURE and exit_code != 0


def next_attempt(runtime: RuntimePod, name: str) -> int:
    latest = runtime.latest(name)
    return 0 if latest is None else latest.attempt + 1


def deadline_exceeded(pod: Pod, start_time: float | None, now: float) -> bool:
    """``activeDeadlineSeconds`` has passed since the pod's startTime."""
    deadline = pod.spec.active_deadline_seconds
    return deadline is not None and start_time is not None and now - start_time >= deadline


def pod_finished(pod: Pod, runtime: RuntimePod) -> bool:
    """True once nothing will ever run again in this pod (never under restartPolicy Always).
    Sidecars do not count: they run for the app containers, and stop when those are done."""
    policy = pod.spec.restart_policy
    if policy is RestartPolicy.ALWAYS:
        return False
    for init in pod.spec.init_containers:
        if init.sidecar:
            continue
        latest = runtime.latest(init.name)
        if latest is not None and latest.state is ContainerState.EXITED and latest.exit_code:
            return policy is RestartPolicy.NEVER
    for container in pod.spec.containers:
        latest = runtime.latest(container.name)
        if latest is None or latest.state is not ContainerState.EXITED:
            return False
        if should_restart(policy, latest.exit_code):
            return False
    return True


def plan_pod(inp: PlanInput) -> PodActions:
    pod, runtime = inp.pod, inp.runtime
    sandbox = runtime.ready_sandbox()
    if deadline_exceeded(pod, inp.start_time, inp.now):
        kills = _stop_all(pod, runtime, "DeadlineExceeded")
        return PodActions(kill=kills, finished=True, deadline_exceeded=True)
    if sandbox is None:
        latest = runtime.latest_sandbox()
        # Under Never, a pod whose sandbox died after its containers ran is not run again.
        ran_under_never = (
            pod.spec.restart_policy is RestartPolicy.NEVER
            and latest is not None
            and bool(runtime.containers)
        )
        if ran_under_never or pod_finished(pod, runtime):
            return PodActions(finished=True)
        return PodActions(
            create_sandbox=True,
            sandbox_attempt=0 if latest is None else latest.attempt + 1,
            kill_pod=not runtime.empty,
        )
    if pod_finished(pod, runtime):
        kills = _stop_all(pod, runtime, "PodCompleted")  # what is left: the sidecars
        return PodActions(finished=True, prune=_prune(pod, runtime), kill=kills)
    prune = _prune(pod, runtime)
    dead = tuple(s for s in runtime.sandboxes if s.id != sandbox.id)
    ephemeral = _plan_ephemeral(inp)
    init_actions = _plan_init(inp, sandbox.id)
    if init_actions is not None:
        return PodActions(
            start=(*ephemeral, *init_actions.start),
            backoff=init_actions.backoff,
            kill=init_actions.kill,
            prune=prune,
            prune_sandboxes=dead,
            finished=init_actions.finished,
        )
    app = _plan_app(inp, sandbox.id, prune)
    return replace(app, start=(*ephemeral, *app.start), prune_sandboxes=dead)


def _plan_ephemeral(inp: PlanInput) -> tuple[StartContainer, ...]:
    """Ephemeral containers with no instance anywhere in the pod: each runs once."""
    return tuple(
        StartContainer(c, 0)
        for c in inp.pod.spec.ephemeral_containers
        if inp.runtime.latest(c.name) is None
    )


def _restart_or_backoff(
    inp: PlanInput, container: Container, last: ContainerInfo, *, init: bool
) -> tuple[StartContainer | None, float | None]:
    """Restart ``container`` now, or say until when it must wait (CrashLoopBackOff)."""
    # A container that never ran has no finish time: back off from its creation instead of
    # from the epoch (which would mean no backoff at all, and a hot create/start loop).
    finished_at = (last.finished_at_ns or last.created_at_ns) / 1e9
    ran_for = (last.finished_at_ns - last.started_at_ns) / 1e9 if last.started_at_ns else 0.0
    entry = inp.backoffs.get(container.name)
    if ran_for >= backoff.RESET_AFTER_RUNNING_S:
        entry = None
    until = backoff.wait_until(entry, failed_at=finished_at, now=inp.now)
    if until is not None:
        return None, until
    start = StartContainer(container, next_attempt(inp.runtime, container.name), init=init)
    return start, None


def stop_order(pod: Pod, names: set[str]) -> list[str]:
    """Containers in the order they are stopped: app containers, then sidecars in reverse
    (a sidecar outlives what it serves)."""
    order = [c.name for c in pod.spec.containers]
    order += [c.name for c in reversed(pod.spec.init_containers)]
    return [n for n in order if n in names] + sorted(names - set(order))


def _stop_all(pod: Pod, runtime: RuntimePod, reason: str) -> tuple[KillContainer, ...]:
    running = {c.name: c for c in runtime.running()}
    return tuple(KillContainer(running[n], reason) for n in stop_order(pod, set(running)))


def _sidecar_started(inp: PlanInput, container: Container) -> bool:
    return inp.started.get(container.name, container.startup_probe is None)


def _initialized(inp: PlanInput, sandbox_id: str) -> bool:
    """App containers exist in this sandbox: initialization is over for it, whatever
    happens to its init containers and sidecars since."""
    return any(inp.runtime.latest(c.name, sandbox_id) for c in inp.pod.spec.containers)


def _plan_init(inp: PlanInput, sandbox_id: str) -> PodActions | None:
    """Actions while init containers are unfinished; None once all exited cleanly (each
    sidecar running and started)."""
    if _initialized(inp, sandbox_id):
        return None
    for init in inp.pod.spec.init_containers:
        last = inp.runtime.latest(init.name, sandbox_id)
        if last is None:
            start = StartContainer(init, next_attempt(inp.runtime, init.name), init=True)
            return PodActions(start=(start,))
        if last.state is ContainerState.RUNNING:
            if init.sidecar and _sidecar_started(inp, init):
                continue
            reason = inp.unhealthy.get(init.name)
            if init.sidecar and reason is not None:  # its startup probe failed
                return PodActions(kill=(KillContainer(last, reason, _probe_grace(init)),))
            return PodActions()
        if last.state is ContainerState.EXITED and last.exit_code == 0 and not init.sidecar:
            continue
        # Failed, or created but never started, or a sidecar that exited: retry per policy.
        if inp.pod.spec.restart_policy is RestartPolicy.NEVER and not init.sidecar:
            return PodActions(finished=True)
        start_or_none, until = _restart_or_backoff(inp, init, last, init=True)
        if start_or_none is None:
            return PodActions(backoff={init.name: until or inp.now})
        return PodActions(start=(start_or_none,))
    return None


def _plan_app(inp: PlanInput, sandbox_id: str, prune: tuple[ContainerInfo, ...]) -> PodActions:
    starts: list[StartContainer] = []
    kills: list[KillContainer] = []
    waits: dict[str, float] = {}
    pod_policy = inp.pod.spec.restart_policy
    for container in (*inp.pod.sidecars(), *inp.pod.spec.containers):
        policy = RestartPolicy.ALWAYS if container.sidecar else pod_policy
        last = inp.runtime.latest(container.name, sandbox_id)
        if last is None:
            earlier = inp.runtime.latest(container.name)  # in a previous sandbox
            done = earlier is not None and earlier.state is ContainerState.EXITED
            if done and earlier is not None and not should_restart(policy, earlier.exit_code):
                continue  # finished for good (e.g. succeeded under OnFailure)
            attempt = next_attempt(inp.runtime, container.name)
            starts.append(StartContainer(container, attempt, init=container.sidecar))
        elif last.state is ContainerState.RUNNING:
            kill, restart = _plan_running(inp, container, last)
            kills.extend(kill)
            starts.extend(restart)
        elif last.state is ContainerState.EXITED:
            if not should_restart(policy, last.exit_code):
                continue
            start, until = _restart_or_backoff(inp, container, last, init=container.sidecar)
            if start is not None:
                starts.append(start)
            else:
                waits[container.name] = until or inp.now
        elif last.state is ContainerState.CREATED:
            # Created but never started (a failed start): replace it, behind backoff.
            start, until = _restart_or_backoff(inp, container, last, init=container.sidecar)
            if start is not None:
                starts.append(start)
                prune = (*prune, last)
            else:
                waits[container.name] = until or inp.now
    return PodActions(kill=tuple(kills), start=tuple(starts), backoff=waits, prune=prune)


def _plan_running(
    inp: PlanInput, container: Container, last: ContainerInfo
) -> tuple[tuple[KillContainer, ...], tuple[StartContainer, ...]]:
    """A running container: killed and started again at once, whatever the restart policy,
    when its spec changed (nothing failed, so no backoff); killed when a probe failed."""
    if containerhash.changed(container, last.labels):
        reason = f"Container {container.name} definition changed, will be restarted"
        attempt = next_attempt(inp.runtime, container.name)
        start = StartContainer(container, attempt, init=container.sidecar, changed=True)
        return (KillContainer(last, reason),), (start,)
    unhealthy = inp.unhealthy.get(container.name)
    if unhealthy is not None:
        return (KillContainer(last, unhealthy, _probe_grace(container)),), ()
    return (), ()


def _probe_grace(container: Container) -> int | None:
    """A liveness/startup probe's own terminationGracePeriodSeconds overrides the pod's."""
    for probe in (container.liveness_probe, container.startup_probe):
        if probe is not None and probe.termination_grace_period_seconds is not None:
            return probe.termination_grace_period_seconds
    return None


def _prune(pod: Pod, runtime: RuntimePod) -> tuple[ContainerInfo, ...]:
    """Dead instances beyond the newest one and the one before it (the kubelet keeps one)."""
    doomed: list[ContainerInfo] = []
    for container in pod.all_containers():
        dead = [
            c for c in runtime.instances(container.name)[1:] if c.state is ContainerState.EXITED
        ]
        # The newest dead instance stays: it is the container's lastState.
        doomed.extend(dead[1:])
    known = {c.name for c in (*pod.all_containers(), *pod.spec.ephemeral_containers)}
    doomed.extend(c for c in runtime.containers if c.name not in known)
    return tuple(doomed)
