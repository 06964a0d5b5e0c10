"""One pod worker per pod incarnation (uid): it makes the runtime match the spec.

Lifecycle, stored as ``WorkerState`` and never inferred from timestamps::

    SYNCING ----terminate()----> TERMINATING ----all stopped, removed----> TERMINATED
       |                              ^
       |                              +-- retried with backoff while the runtime fails
       +----detach()----> task ends; the pod keeps running (agent shutdown)

While SYNCING the worker loops: refresh its pod from the runtime, ``plan_pod`` (pure), carry
out the actions, publish status, then sleep until woken (a runtime change seen by the
relister, a probe result, a spec update handed over by ``update``) or until the next
backoff or activeDeadlineSeconds deadline. Every failure
of one pod stays in that pod: it becomes a waiting reason in its status and a log event.
How one container is created and started is in starter.py; how containers are stopped
(preStop, grace periods, sidecars last) is in stopper.py; the containers' waiting reasons and
back-off holds are kept in waits.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import time
from collections.abc import Callable
from typing import Any

import structlog

from nodeagent import metrics
from nodeagent.kubelet import specs, starter, stopper, termination, volumes
from nodeagent.kubelet.cgroups.fs import CgroupError
from nodeagent.kubelet.context import KubeletContext
from nodeagent.kubelet.handlers import Target, run_handler
from nodeagent.kubelet.images import ImageError, Puller
from nodeagent.kubelet.plan import KillContainer, PlanInput, PodActions, StartContainer, plan_pod
from nodeagent.kubelet.podstatus import StatusInput, Waiting, compute_status
from nodeagent.kubelet.runtimepod import RuntimePod
from nodeagent.kubelet.starter import EnvSource as EnvSource
from nodeagent.kubelet.stopper import MIN_KILL_GRACE_S as MIN_KILL_GRACE_S
from nodeagent.kubelet.waits import SANDBOX, ContainerWaits
from nodeagent.model.fields import FieldError
from nodeagent.model.pod import Container, Pod
from nodeagent.model.security import privilege_errors
from nodeagent.runtime.base import ContainerID, ContainerState, RuntimeFailure, SandboxInfo

MAX_ROUNDS = 8  # plan/act rounds per sync before yielding to other work


class WorkerState(enum.Enum):
    SYNCING = "syncing"  # bringing the runtime in line with the spec
    TERMINATING = "terminating"  # stopping containers, then the sandbox
    TERMINATED = "terminated"  # nothing of the pod is left in the runtime


class PodWorker:
    def __init__(self, pod: Pod, ctx: KubeletContext) -> None:
        self.pod = pod
        self.ctx = ctx
        self.state = WorkerState.SYNCING
        self.status: dict[str, Any] | None = None
        self.log = structlog.get_logger("nodeagent.pod").bind(
            pod=pod.name, namespace=pod.namespace, uid=pod.uid
        )
        self._wake = asyncio.Event()
        self._done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._grace_override: int | None = None
        self._hurry: asyncio.Task[None] | None = None  # a stop sped up by a shorter grace
        self._waits = ContainerWaits()  # reasons, back-offs and holds of its containers
        self._unhealthy: dict[str, str] = {}
        self._ready: dict[str, bool] = {}
        self._started: dict[str, bool] = {}
        self._volume_paths: dict[str, str] | None = None
        self._messages: dict[ContainerID, str] = {}  # exited instance -> termination message
        # The node's privilege policy refuses the pod (soft admission, as the kubelet's).
        own_dir = str(volumes.pod_dir(ctx.state_dir, pod))
        self._forbidden = privilege_errors(pod, ctx.privilege, own_dir=own_dir)
        self._first_seen = time.time()
        self._soon = 0.0  # an extra, earlier sync asked for by an action
        # Told when what makes the pod a Service endpoint changes (IP, Ready, phase): the
        # proxy reacts at once instead of on its next poll.
        self.on_serving_change: Callable[[], None] | None = None
        # Where a container's env comes from when it is created (cluster mode: ConfigMaps
        # and Secrets read again); None: the spec's env as it is.
        self.env_source: EnvSource | None = None

    # -- control, all idempotent and non-blocking ------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"pod:{self.pod.key}")

    def wake(self) -> None:
        self._wake.set()

    def update(self, pod: Pod) -> None:
        """The same pod (uid) with a newer spec or metadata: the next plan follows it."""
        if pod.spec != self.pod.spec:
            self.log.info("pod_spec_updated")
            own_dir = str(volumes.pod_dir(self.ctx.state_dir, pod))
            self._forbidden = privilege_errors(pod, self.ctx.privilege, own_dir=own_dir)
        self.pod = pod
        self._wake.set()

    def terminate(self, grace_s: int | None = None) -> None:
        """Stop the pod within ``grace_s`` (None: its spec's). Asked again with a shorter
        period while stopping (a second DELETE), the shorter one wins, as upstream's
        calculateEffectiveGracePeriod: the containers still running are stopped again
        with it (no second preStop hook)."""
        if self.state is WorkerState.SYNCING:
            self._grace_override = grace_s
            self.state = WorkerState.TERMINATING
            self.log.info("pod_terminating")
            self.ctx.prober.remove_pod(self.pod.uid)
        elif (
            self.state is WorkerState.TERMINATING
            and grace_s is not None
            and grace_s < self._grace()
        ):
            self._grace_override = grace_s
            self.log.info("pod_grace_shortened", grace_s=grace_s)
            self._hurry = asyncio.create_task(self._stop_sooner(grace_s))
        self._wake.set()

    async def _stop_sooner(self, grace_s: int) -> None:
        try:
            runtime_pod = await self.ctx.cache.refresh(self.pod.uid)
            sandbox = runtime_pod.ready_sandbox()
            ip = sandbox.ip if sandbox is not None else ""
            stops = (
                self._stop_container_id(None, c.id, ip, grace_s=grace_s)
                for c in runtime_pod.running()
            )
            await asyncio.gather(*stops)
        except RuntimeFailure as exc:  # the termination under way still stops them
            self.log.warning("pod_grace_shortening_failed", error=str(exc))

    async def wait_terminated(self) -> None:
        await self._done.wait()

    async def detach(self) -> None:
        """Stop working on the pod without touching it (agent shutdown)."""
        self.ctx.prober.remove_pod(self.pod.uid)
        if self._hurry is not None:
            self._hurry.cancel()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    @property
    def backoff_until(self) -> dict[str, float]:
        """Container -> wall time before which it is not retried (crash or pull back-off)."""
        return dict(self._waits.hold)

    def set_probe_state(
        self, *, ready: dict[str, bool], started: dict[str, bool], unhealthy: dict[str, str]
    ) -> None:
        """The prober's latest view; a change wakes the worker."""
        if (ready, started, unhealthy) != (self._ready, self._started, self._unhealthy):
            self._ready, self._started, self._unhealthy = ready, started, unhealthy
            self._wake.set()

    # -- the loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = 1.0
        while self.state is WorkerState.SYNCING:
            try:
                deadline = await metrics.timed_worker("sync", self._sync())
                delay = 1.0
            except RuntimeFailure as exc:
                self.log.warning("pod_sync_failed", error=str(exc))
                deadline, delay = time.time() + delay, min(delay * 2, 30.0)
            except Exception:
                self.log.exception("pod_sync_crashed")
                deadline, delay = time.time() + delay, min(delay * 2, 30.0)
            await self._sleep_until(deadline)
        while True:
            try:
                await metrics.timed_worker("terminate", self._terminate())
                break
            except Exception as exc:  # keep trying: leaking a pod is the worse outcome
                self.log.warning("pod_termination_failed", error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        self.state = WorkerState.TERMINATED
        self._done.set()
        self.log.info("pod_terminated")

    async def _sleep_until(self, deadline: float) -> None:
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
        # arrives as the wait ends, and detach() must always stop the worker.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, deadline - time.time())):
                await self._wake.wait()
        self._wake.clear()

    async def _refresh(self) -> RuntimePod:
        """Re-read the pod, and let the prober follow at once: its view (``unhealthy`` above
        all) must never name a container instance that this snapshot no longer runs."""
        runtime_pod = await self.ctx.cache.refresh(self.pod.uid)
        if self.state is WorkerState.SYNCING:
            self.ctx.prober.sync_pod(self, self.pod, runtime_pod)
        await self._read_messages(runtime_pod)
        return runtime_pod

    async def _sync(self) -> float:
        runtime_pod = await self._refresh()
        if self._forbidden:
            # Nothing of a refused pod starts; its status says which fields and why. One
            # adopted from before a policy change is stopped, as the kubelet stops it.
            if runtime_pod.running():
                await self._kill_everything(runtime_pod, grace_s=self._grace(), remove=False)
                runtime_pod = await self._refresh()
            self._waits.fail_all(self.pod, "Blocked", "")
            self._publish(runtime_pod)
            return time.time() + self.ctx.resync_s
        for _ in range(MAX_ROUNDS):
            if self.state is not WorkerState.SYNCING:
                break
            actions = plan_pod(
                PlanInput(
                    pod=self.pod,
                    runtime=runtime_pod,
                    now=time.time(),
                    backoffs=self._waits.backoffs,
                    unhealthy=self._unhealthy,
                    started=self._started,
                    start_time=self._start_time(runtime_pod),
                )
            )
            self._waits.note_backoff(self.pod, actions, self.log)
            self._publish(runtime_pod)  # observable now, not only after slow work (pulls)
            if not await self._execute(actions, runtime_pod):
                break
            runtime_pod = await self._refresh()
        self._publish(runtime_pod)
        return self._next_deadline()

    def _start_time(self, runtime_pod: RuntimePod) -> float:
        """The pod's startTime: its first sandbox, else when this worker first saw it."""
        sandboxes = [s.created_at_ns for s in runtime_pod.sandboxes]
        return min(sandboxes) / 1e9 if sandboxes else self._first_seen

    def _next_deadline(self) -> float:
        now = time.time()
        wake = [*self._waits.hold.values(), self._soon]
        if self.pod.spec.active_deadline_seconds is not None:
            runtime_pod = self.ctx.cache.get(self.pod.uid)
            wake.append(self._start_time(runtime_pod) + self.pod.spec.active_deadline_seconds)
        pending = [t for t in wake if t > now]
        return min([now + self.ctx.resync_s, *pending])

    async def _execute(self, actions: PodActions, runtime_pod: RuntimePod) -> bool:
        """Carry out the actions; False when nothing was (or could be) done."""
        acted = False
        if actions.kill_pod:
            await self._kill_everything(runtime_pod, grace_s=MIN_KILL_GRACE_S, remove=False)
            acted = True
        if actions.create_sandbox:
            acted = await self._create_sandbox(actions.sandbox_attempt) or acted
        for kill in actions.kill:
            await self._kill_container(kill)
            acted = True
        sandbox = runtime_pod.ready_sandbox()
        starts = []
        for start in actions.start:
            if self._waits.held(start.container.name):
                self._waits.still_held(start.container)
            else:
                starts.append(start)
        if starts and sandbox is not None:
            results = await asyncio.gather(*(self._start(s, sandbox) for s in starts))
            acted = acted or any(results)
        for info in actions.prune:
            await stopper.remove_container(self.ctx.runtime, info)
            acted = True
        for old in actions.prune_sandboxes:
            await stopper.ignore_missing(self.ctx.runtime.stop_sandbox(old.id))
            await stopper.ignore_missing(self.ctx.runtime.remove_sandbox(old.id))
            acted = True
        if actions.finished:
            self._waits.waiting.clear()  # a finished pod shows how its containers ended
        if actions.finished and sandbox is not None:
            await self.ctx.runtime.stop_sandbox(sandbox.id)
            self.log.info("pod_completed")
            acted = True
        return acted

    # -- actions ----------------------------------------------------------------------------

    async def _create_sandbox(self, attempt: int) -> bool:
        if self._waits.held(SANDBOX):
            return False
        if not self.pod.spec.host_network and (problem := self.ctx.network_problem()):
            # The kubelet's NetworkNotReady: the pod waits (no backoff, no failure) and is
            # woken when the network is ready.
            self._waits.fail_all(self.pod, "ContainerCreating", f"network is not ready: {problem}")
            return False
        try:
            self._volume_paths = await volumes.prepare(self.ctx.state_dir, self.pod, self.ctx.csi)
            cgroups = self.ctx.cgroups
            config = specs.sandbox_config(
                self.pod,
                attempt=attempt,
                pod_log_dir=self.ctx.pod_log_dir,
                dns=self.ctx.dns,
                cgroup_parent=await cgroups.ensure_pod(self.pod) if cgroups else "",
            )
            await asyncio.to_thread(os.makedirs, config.log_directory, 0o755, True)
            sandbox_id = await self.ctx.runtime.run_sandbox(config)
        except (volumes.VolumeError, RuntimeFailure, OSError, ValueError, CgroupError) as exc:
            self._waits.fail_all(
                self.pod, "ContainerCreating", f"failed to create pod sandbox: {exc}"
            )
            self.log.warning("sandbox_create_failed", error=str(exc))
            self._waits.hold_with_backoff(SANDBOX)
            return False
        self.log.info("sandbox_created", sandbox=sandbox_id[:13], attempt=attempt)
        self._waits.sandbox_created()
        return True

    async def _start(self, start: StartContainer, sandbox: SandboxInfo) -> bool:
        container, log = start.container, self.log.bind(container=start.container.name)
        if not await self._pull(start, log):
            return False
        if start.attempt > 0 and not start.changed:
            self._waits.restarted(container.name)
        try:
            container, container_id = await starter.create_and_start(
                self.ctx,
                self.pod,
                container,
                attempt=start.attempt,
                sandbox=sandbox,
                env_source=self.env_source,
                volume_paths=self._ensure_volume_paths,
            )
        except starter.StartError as exc:
            self._waits.waiting[container.name] = Waiting(exc.reason, exc.message)
            if exc.reason == "RunContainerError":
                # The failed container itself drives the restart backoff; show this reason
                # for a moment before the next sync turns it into CrashLoopBackOff.
                self._soon = time.time() + 1.0
            else:
                self._waits.hold_with_backoff(container.name)
            log.warning("container_start_failed", reason=exc.reason, error=exc.message)
            return False
        self._waits.started(container.name)
        log.info("container_started", attempt=start.attempt, id=container_id[:13])
        await self._post_start(container, container_id, sandbox, log)
        return True

    async def _pull(self, start: StartContainer, log: Any) -> bool:
        """Make sure the image is present; False (and a waiting reason) when it is not."""
        container, pod = start.container, self.pod
        try:
            puller = Puller(pod.namespace, pod.name, pod.uid, container.name, init=start.init)
            await self.ctx.images.ensure(
                container.image, container.image_pull_policy, puller, pod.spec.image_pull_secrets
            )
        except ImageError as exc:
            self._waits.waiting[container.name] = Waiting(exc.reason, exc.message)
            retry_at = self.ctx.images.retry_at(container.image) or time.time()
            self._waits.hold[container.name] = retry_at
            if exc.reason == "ErrImagePull":
                # Look again shortly, so that status moves on to ImagePullBackOff as upstream.
                self._soon = time.time() + 1.0
            log.warning("image_failed", reason=exc.reason, error=exc.message)
            return False
        return True

    async def _ensure_volume_paths(self) -> dict[str, str]:
        if self._volume_paths is None:  # an adopted pod: its sandbox predates this worker
            self._volume_paths = await volumes.prepare(self.ctx.state_dir, self.pod, self.ctx.csi)
        return self._volume_paths

    async def _read_messages(self, runtime_pod: RuntimePod) -> None:
        """Termination messages of exited instances, read once per instance."""
        pod_dir = str(volumes.pod_dir(self.ctx.state_dir, self.pod))
        log_dir = specs.log_directory(self.ctx.pod_log_dir, self.pod)
        present = {info.id for info in runtime_pod.containers}
        for gone in [cid for cid in self._messages if cid not in present]:
            del self._messages[gone]  # removed instances: a crash loop must not grow this
        for info in runtime_pod.containers:
            spec = self._spec_container(info.name)
            if spec is None or info.id in self._messages:
                continue
            if info.state is not ContainerState.EXITED or not info.detailed:
                continue
            self._messages[info.id] = await asyncio.to_thread(
                termination.read,
                specs.termination_log_path(pod_dir, info.name, info.attempt),
                os.path.join(log_dir, info.name, f"{info.attempt}.log"),
                exit_code=info.exit_code,
                policy=spec.termination_message_policy,
            )

    async def _post_start(
        self, container: Container, container_id: ContainerID, sandbox: SandboxInfo, log: Any
    ) -> None:
        hook = container.lifecycle.post_start
        if hook is None:
            return
        target = Target(self.ctx.runtime, container_id, container, sandbox.ip)
        outcome = await run_handler(
            hook, target, timeout_s=self.pod.spec.termination_grace_period_seconds or 30
        )
        if not outcome.ok:
            log.warning("post_start_hook_failed", error=outcome.message)
            self._waits.waiting[container.name] = Waiting("PostStartHookError", outcome.message)
            await self._stop_container_id(
                container, container_id, sandbox.ip, grace_s=MIN_KILL_GRACE_S
            )

    async def _kill_container(self, kill: KillContainer) -> None:
        grace = kill.grace_s if kill.grace_s is not None else self._grace()
        self.log.info("container_killing", container=kill.info.name, reason=kill.reason)
        container = self._spec_container(kill.info.name)
        sandbox = self.ctx.cache.get(self.pod.uid).ready_sandbox()
        ip = sandbox.ip if sandbox is not None else ""
        await self._stop_container_id(container, kill.info.id, ip, grace_s=grace)
        self._unhealthy.pop(kill.info.name, None)

    def _spec_container(self, name: str) -> Container | None:
        return stopper.spec_container(self.pod, name)

    def _grace(self) -> int:
        if self._grace_override is not None:
            return self._grace_override
        return self.pod.spec.termination_grace_period_seconds

    async def _stop_container_id(
        self, container: Container | None, container_id: ContainerID, pod_ip: str, *, grace_s: int
    ) -> None:
        await stopper.stop_container(
            self.ctx.runtime, container, container_id, pod_ip, grace_s=grace_s, log=self.log
        )

    async def _kill_everything(
        self, runtime_pod: RuntimePod, *, grace_s: int, remove: bool
    ) -> None:
        await stopper.stop_pod(
            self.ctx.runtime, self.pod, runtime_pod, grace_s=grace_s, remove=remove, log=self.log
        )

    async def _terminate(self) -> None:
        runtime_pod = await self.ctx.cache.refresh(self.pod.uid)
        await self._kill_everything(runtime_pod, grace_s=self._grace(), remove=False)
        # The stopped containers' exit codes, before removal erases them: the final status
        # a control plane is told before the pod is deleted.
        stopped = await self.ctx.cache.refresh(self.pod.uid)
        self._publish(stopped)
        await self._kill_everything(stopped, grace_s=MIN_KILL_GRACE_S, remove=True)
        if self.ctx.csi is not None:  # the driver unmounts its own, before the sweep below
            await self.ctx.csi.unmount_pod(self.pod.uid)
        await volumes.cleanup(self.ctx.state_dir, self.pod.uid)
        left = await self.ctx.cache.refresh(self.pod.uid)
        if not left.empty:
            raise RuntimeFailure(
                f"{len(left.containers)} containers and {len(left.sandboxes)} sandboxes remain"
            )

    # -- status -----------------------------------------------------------------------------

    def _publish(self, runtime_pod: RuntimePod) -> None:
        start = self._start_time(runtime_pod)
        before = _serving(self.status)
        self.status = compute_status(
            StatusInput(
                pod=self.pod,
                runtime=runtime_pod,
                now=time.time(),
                host_ip=self.ctx.host_ip,
                runtime_name=self.ctx.runtime_name,
                waiting=dict(self._waits.waiting),
                ready=self._ready,
                started=self._started,
                previous=self.status,
                start_time=start,
                messages=self._messages,
                forbidden=_forbidden_message(self._forbidden),
                terminating=self.state is not WorkerState.SYNCING,
            )
        )
        metrics.pod_status(self.pod.uid, self._first_seen, self.status)
        if self.on_serving_change is not None and _serving(self.status) != before:
            self.on_serving_change()


def _serving(status: dict[str, Any] | None) -> tuple[str, str, str]:
    """What of a status makes the pod an endpoint: its IP, Ready condition and phase."""
    status = status or {}
    conditions = status.get("conditions") or []
    ready = next((str(c.get("status")) for c in conditions if c.get("type") == "Ready"), "")
    return str(status.get("podIP") or ""), ready, str(status.get("phase") or "")


def _forbidden_message(errors: list[FieldError]) -> str:
    return "; ".join(str(e) for e in errors)
