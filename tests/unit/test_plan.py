"""What a pod worker does next (nodeagent.kubelet.plan), from hand-built runtime snapshots."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import pytest

from nodeagent.kubelet import backoff
from nodeagent.kubelet.containerhash import LABEL_CONTAINER_HASH, container_hash
from nodeagent.kubelet.plan import (
    KillContainer,
    PlanInput,
    PodActions,
    StartContainer,
    plan_pod,
    pod_finished,
    should_restart,
)
from nodeagent.kubelet.runtimepod import RuntimePod
from nodeagent.model.pod import (
    Container,
    EnvVar,
    ExecAction,
    Pod,
    PodSpec,
    Probe,
    RestartPolicy,
)
from nodeagent.runtime.base import (
    ContainerInfo,
    SandboxState,
)
from tests.unit.snapshots import (
    ALWAYS,
    CREATED,
    EXITED,
    NEVER,
    ON_FAILURE,
    T0,
    UID,
    container,
    exited,
    runtime,
    sandbox,
    started,
)


def make_pod(
    *names: str,
    inits: tuple[str, ...] = (),
    policy: RestartPolicy = ALWAYS,
    liveness_grace: int | None = None,
) -> Pod:
    probe = Probe(ExecAction(("true",)), termination_grace_period_seconds=liveness_grace)
    containers = tuple(
        Container(n, "busybox:1.36", liveness_probe=probe) for n in names or ("app",)
    )
    return Pod(
        uid=UID,
        name="p",
        namespace="default",
        spec=PodSpec(
            containers=containers,
            init_containers=tuple(Container(n, "busybox:1.36") for n in inits),
            restart_policy=policy,
        ),
    )


def plan(
    pod: Pod,
    snapshot: RuntimePod,
    *,
    now: float = T0 + 100,
    backoffs: Mapping[str, backoff.Backoff] | None = None,
    unhealthy: Mapping[str, str] | None = None,
) -> PodActions:
    return plan_pod(
        PlanInput(
            pod=pod,
            runtime=snapshot,
            now=now,
            backoffs=backoffs or {},
            unhealthy=unhealthy or {},
        )
    )


# --- the sandbox --------------------------------------------------------------------------------


def test_no_sandbox_creates_one() -> None:
    actions = plan(make_pod(), runtime())
    assert actions.create_sandbox
    assert (actions.sandbox_attempt, actions.kill_pod) == (0, False)
    assert actions.start == ()


def test_dead_sandbox_is_torn_down_and_replaced_with_the_next_attempt() -> None:
    snapshot = runtime(sandbox(0, SandboxState.NOTREADY), container("app"))
    actions = plan(make_pod(), snapshot)
    assert actions.create_sandbox and actions.kill_pod
    assert actions.sandbox_attempt == 1
    assert actions.start == ()


def test_the_newest_sandbox_counts() -> None:
    snapshot = runtime(
        sandbox(0, SandboxState.NOTREADY), sandbox(1), container("app", 1, sandbox_attempt=1)
    )
    actions = plan(make_pod(), snapshot)
    assert not actions.create_sandbox and not actions.start
    # The replaced sandbox is garbage now.
    assert [s.attempt for s in actions.prune_sandboxes] == [0]


def test_a_new_sandbox_starts_containers_with_the_next_attempts() -> None:
    snapshot = runtime(
        sandbox(0, SandboxState.NOTREADY),
        sandbox(1),
        container("app", 0, EXITED, finished=T0 + 5, exit_code=137),
    )
    assert started(plan(make_pod(), snapshot)) == [("app", 1, False)]


# --- init containers ----------------------------------------------------------------------------


def test_init_containers_run_one_at_a_time_in_order() -> None:
    pod = make_pod("app", "side", inits=("first", "second"))
    assert started(plan(pod, runtime(sandbox()))) == [("first", 0, True)]
    running_first = runtime(sandbox(), container("first"))
    assert plan(pod, running_first).idle
    first_done = runtime(sandbox(), exited("first"))
    assert started(plan(pod, first_done)) == [("second", 0, True)]
    both_done = runtime(sandbox(), exited("first"), exited("second"))
    assert started(plan(pod, both_done)) == [("app", 0, False), ("side", 0, False)]


def test_failed_init_under_never_finishes_the_pod() -> None:
    pod = make_pod(inits=("setup",), policy=NEVER)
    actions = plan(pod, runtime(sandbox(), exited("setup", code=1)))
    assert actions.finished
    assert actions.start == ()


@pytest.mark.parametrize("policy", [ALWAYS, ON_FAILURE])
def test_failed_init_is_retried_under_always_and_on_failure(policy: RestartPolicy) -> None:
    pod = make_pod(inits=("setup",), policy=policy)
    actions = plan(pod, runtime(sandbox(), exited("setup", code=1)))
    assert not actions.finished
    assert started(actions) == [("setup", 1, True)]


def test_failed_init_backs_off_on_its_second_failure() -> None:
    pod = make_pod(inits=("setup",))
    crashed = runtime(sandbox(), exited("setup", 1, code=1, started=T0 + 20, finished=T0 + 21))
    entry = backoff.advance(None, now=T0 + 20)  # the worker's record of restarting it
    actions = plan(pod, crashed, now=T0 + 22, backoffs={"setup": entry})
    assert actions.start == ()
    assert actions.backoff == {"setup": T0 + 31}
    later = plan(pod, crashed, now=T0 + 31, backoffs={"setup": entry})
    assert started(later) == [("setup", 2, True)]


def test_init_containers_run_again_in_a_new_sandbox() -> None:
    pod = make_pod(inits=("setup",))
    snapshot = runtime(
        sandbox(0, SandboxState.NOTREADY), sandbox(1), exited("setup"), exited("app", code=137)
    )
    assert started(plan(pod, snapshot)) == [("setup", 1, True)]


# --- restart policies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "code", "restart"),
    [
        (ALWAYS, 0, True),
        (ALWAYS, 1, True),
        (ON_FAILURE, 0, False),
        (ON_FAILURE, 1, True),
        (NEVER, 0, False),
        (NEVER, 1, False),
    ],
)
def test_restart_policy(policy: RestartPolicy, code: int, restart: bool) -> None:
    assert should_restart(policy, code) is restart
    pod = make_pod("app", "other", policy=policy)
    snapshot = runtime(sandbox(), exited("app", code=code), container("other"))
    actions = plan(pod, snapshot)
    assert started(actions) == ([("app", 1, False)] if restart else [])
    assert not actions.finished  # "other" still runs


def test_pod_that_ran_to_completion_stops_its_sandbox() -> None:
    pod = make_pod("app", policy=ON_FAILURE)
    actions = plan(pod, runtime(sandbox(), exited("app")))
    assert actions.finished
    assert actions.start == ()
    # Once the sandbox is stopped, nothing is created again.
    stopped = plan(pod, runtime(sandbox(0, SandboxState.NOTREADY), exited("app")))
    assert stopped.finished and not stopped.create_sandbox
    assert stopped.idle


# --- CrashLoopBackOff ---------------------------------------------------------------------------


def test_crash_loop_backoff_10s_then_20s_from_each_finish() -> None:
    pod = make_pod()
    # First crash: restart at once (the kubelet's first restart is immediate).
    first = runtime(sandbox(), exited("app", 0, code=1, started=T0 + 1, finished=T0 + 2))
    assert started(plan(pod, first, now=T0 + 2)) == [("app", 1, False)]
    entry = backoff.advance(None, now=T0 + 2)  # the worker records the restart

    # Second crash: wait 10 s from its finish.
    second = runtime(sandbox(), exited("app", 0, code=1), exited("app", 1, code=1, started=T0 + 3))
    finish = T0 + 4
    actions = plan(pod, second, now=finish + 1, backoffs={"app": entry})
    assert actions.start == ()
    assert actions.backoff == {"app": finish + 10}
    assert started(plan(pod, second, now=finish + 10, backoffs={"app": entry})) == [
        ("app", 2, False)
    ]
    entry = backoff.advance(entry, now=finish + 10)

    # Third crash: 20 s.
    third = runtime(sandbox(), exited("app", 1, code=1), exited("app", 2, code=1, started=T0 + 15))
    finish = T0 + 16
    assert plan(pod, third, now=finish + 1, backoffs={"app": entry}).backoff == {"app": finish + 20}


def test_backoff_resets_after_ten_minutes_of_running() -> None:
    pod = make_pod()
    entry = backoff.Backoff(delay_s=300, updated_at=T0 + 1000)
    long_run = runtime(sandbox(), exited("app", 5, code=1, started=T0 + 1000, finished=T0 + 1600))
    assert started(plan(pod, long_run, now=T0 + 1601, backoffs={"app": entry})) == [
        ("app", 6, False)
    ]
    short_run = runtime(sandbox(), exited("app", 5, code=1, started=T0 + 1000, finished=T0 + 1599))
    actions = plan(pod, short_run, now=T0 + 1600, backoffs={"app": entry})
    assert actions.backoff == {"app": T0 + 1599 + 300}


def test_container_created_but_never_started_is_replaced() -> None:
    pod = make_pod()
    stuck = container("app", 0, CREATED, created=T0 + 1)
    actions = plan(pod, runtime(sandbox(), stuck))
    assert started(actions) == [("app", 1, False)]
    assert stuck in actions.prune


def test_container_created_but_never_started_backs_off_from_its_creation() -> None:
    # No finish time to measure from: the creation time stands in for it.
    pod = make_pod()
    stuck = container("app", 1, CREATED, created=T0 + 50)
    entry = backoff.advance(None, now=T0 + 50)
    actions = plan(pod, runtime(sandbox(), stuck), now=T0 + 51, backoffs={"app": entry})
    assert actions.start == ()
    assert actions.backoff == {"app": T0 + 60}


# --- probes -------------------------------------------------------------------------------------


def test_unhealthy_container_is_killed_with_the_probe_grace() -> None:
    pod = make_pod(liveness_grace=5)
    running = container("app")
    actions = plan(pod, runtime(sandbox(), running), unhealthy={"app": "Liveness probe failed"})
    assert actions.kill == (KillContainer(running, "Liveness probe failed", 5),)
    assert actions.start == ()


def test_unhealthy_container_without_probe_grace_uses_the_pods() -> None:
    pod = make_pod()
    actions = plan(pod, runtime(sandbox(), container("app")), unhealthy={"app": "failed"})
    assert [k.grace_s for k in actions.kill] == [None]


def test_healthy_running_pod_is_idle() -> None:
    pod = make_pod("a", "b")
    actions = plan(pod, runtime(sandbox(), container("a"), container("b")))
    assert actions.idle
    assert actions == PodActions()


# --- pruning ------------------------------------------------------------------------------------


def test_prune_keeps_the_newest_dead_instance() -> None:
    pod = make_pod()
    old = [exited("app", a, code=1, started=T0 + a * 10) for a in range(3)]
    snapshot = runtime(sandbox(), *old, container("app", 3, started=T0 + 40))
    actions = plan(pod, snapshot)
    assert sorted(c.attempt for c in actions.prune) == [0, 1]
    assert actions.start == ()


def test_prune_keeps_the_current_and_previous_dead_instances() -> None:
    pod = make_pod(policy=NEVER)
    dead = [exited("app", a, code=1, started=T0 + a * 10) for a in range(3)]
    actions = plan(pod, runtime(sandbox(), *dead))
    assert [c.attempt for c in actions.prune] == [0]


def test_prune_removes_containers_the_spec_does_not_know() -> None:
    pod = make_pod()
    stranger = container("gone")
    actions = plan(pod, runtime(sandbox(), container("app"), stranger))
    assert actions.prune == (stranger,)


# --- pod_finished -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "inits", "items", "finished"),
    [
        (ALWAYS, (), [exited("app", code=0)], False),
        (ALWAYS, (), [exited("app", code=1)], False),
        (NEVER, (), [exited("app", code=0)], True),
        (NEVER, (), [exited("app", code=1)], True),
        (NEVER, (), [exited("app", code=0), container("x", 0)], False),
        (NEVER, (), [], False),
        (ON_FAILURE, (), [exited("app", code=0)], True),
        (ON_FAILURE, (), [exited("app", code=1)], False),
        (NEVER, ("init",), [exited("init", code=1)], True),
        (ON_FAILURE, ("init",), [exited("init", code=1)], False),
        (NEVER, ("init",), [container("init")], False),
        # A failed try whose retry succeeded: the newest instance counts.
        (ON_FAILURE, (), [exited("app", 0, code=1), exited("app", 1, code=0)], True),
    ],
)
def test_pod_finished(
    policy: RestartPolicy,
    inits: tuple[str, ...],
    items: list[ContainerInfo],
    finished: bool,
) -> None:
    pod = make_pod("app", *(["x"] if any(i.name == "x" for i in items) else []), inits=inits)
    pod = Pod(
        uid=pod.uid,
        name=pod.name,
        namespace=pod.namespace,
        spec=PodSpec(
            containers=pod.spec.containers,
            init_containers=pod.spec.init_containers,
            restart_policy=policy,
        ),
    )
    assert pod_finished(pod, runtime(sandbox(), *items)) is finished


def test_start_container_carries_init_flag() -> None:
    pod = make_pod(inits=("setup",))
    (start,) = plan(pod, runtime(sandbox())).start
    assert start == StartContainer(pod.spec.init_containers[0], 0, init=True)


# --- spec updates: the container hash -----------------------------------------------------------


def hashed(info: ContainerInfo, spec: Container) -> ContainerInfo:
    """``info`` as created from ``spec``: carrying its container hash, as the starter does."""
    return replace(info, labels={LABEL_CONTAINER_HASH: container_hash(spec)})


def with_image(pod: Pod, name: str, image: str) -> Pod:
    containers = tuple(
        replace(c, image=image) if c.name == name else c for c in pod.spec.containers
    )
    return replace(pod, spec=replace(pod.spec, containers=containers))


def test_a_changed_image_restarts_that_container_at_once_and_no_other() -> None:
    old = make_pod("a", "b")
    a, b = old.spec.containers
    snapshot = runtime(sandbox(), hashed(container("a", 2), a), hashed(container("b"), b))
    assert plan(old, snapshot).idle

    new = with_image(old, "a", "busybox:1.37")
    actions = plan(new, snapshot)
    (kill,) = actions.kill
    assert kill.info.id == "a-2" and kill.grace_s is None  # the pod's grace period
    assert kill.reason == "Container a definition changed, will be restarted"
    (start,) = actions.start
    assert (start.container.name, start.container.image, start.attempt) == ("a", "busybox:1.37", 3)
    assert start.changed  # not a failure: no CrashLoopBackOff for it
    assert not actions.create_sandbox and not actions.kill_pod and not actions.backoff


@pytest.mark.parametrize("policy", [NEVER, ON_FAILURE])
def test_a_changed_spec_restarts_whatever_the_restart_policy(policy: RestartPolicy) -> None:
    old = make_pod(policy=policy)
    new = with_image(old, "app", "busybox:1.37")
    actions = plan(new, runtime(sandbox(), hashed(container("app"), old.spec.containers[0])))
    assert started(actions) == [("app", 1, False)] and len(actions.kill) == 1


def test_an_exited_container_of_an_old_spec_follows_its_policy_only() -> None:
    old = make_pod(policy=NEVER)
    new = with_image(old, "app", "busybox:1.37")
    done = hashed(exited("app", code=0), old.spec.containers[0])
    actions = plan(new, runtime(sandbox(), done))
    assert actions.start == () and actions.kill == () and actions.finished


def test_a_container_without_a_hash_is_never_restarted_for_it() -> None:
    # Created by an agent from before hashes: a spec it cannot compare is not a change.
    new = with_image(make_pod(), "app", "busybox:1.37")
    assert plan(new, runtime(sandbox(), container("app"))).idle


def test_a_changed_sidecar_restarts_and_the_app_is_untouched() -> None:
    pod = make_pod("app", inits=("side",))
    side = replace(pod.spec.init_containers[0], sidecar=True)
    old = replace(pod, spec=replace(pod.spec, init_containers=(side,)))
    new_side = replace(side, image="busybox:1.37")
    new = replace(old, spec=replace(old.spec, init_containers=(new_side,)))
    snapshot = runtime(
        sandbox(), hashed(container("side"), side), hashed(container("app"), old.spec.containers[0])
    )
    actions = plan(new, snapshot)
    assert [k.info.id for k in actions.kill] == ["side-0"]
    assert started(actions) == [("side", 1, True)]


def test_the_hash_ignores_fields_at_their_defaults_and_sees_the_image() -> None:
    plain = Container("app", "busybox:1.36")
    explicit = Container("app", "busybox:1.36", command=(), stdin=False, sidecar=False)
    assert container_hash(plain) == container_hash(explicit)
    assert container_hash(plain) != container_hash(replace(plain, image="busybox:1.37"))
    assert container_hash(plain) != container_hash(replace(plain, command=("sh",)))
    # Env is resolved (ConfigMap values, read again after an agent restart): not hashed.
    assert container_hash(plain) == container_hash(replace(plain, env=(EnvVar("X", "1"),)))
    assert len(container_hash(plain)) == 8


# --- ephemeral containers -----------------------------------------------------------------------


def with_debugger(pod: Pod, *names: str) -> Pod:
    ephemeral = tuple(Container(n, "busybox:1.36", target_container_name="app") for n in names)
    return replace(pod, spec=replace(pod.spec, ephemeral_containers=ephemeral))


def test_a_new_ephemeral_container_starts_in_the_running_pod() -> None:
    pod = with_debugger(make_pod(), "debugger")
    actions = plan(pod, runtime(sandbox(), container("app")))
    assert started(actions) == [("debugger", 0, False)]
    assert actions.kill == () and not actions.create_sandbox


@pytest.mark.parametrize("code", [0, 1])
def test_an_ephemeral_container_is_never_restarted_nor_pruned(code: int) -> None:
    pod = with_debugger(make_pod(), "debugger")
    snapshot = runtime(sandbox(), container("app"), exited("debugger", code=code))
    assert plan(pod, snapshot).idle


def test_an_ephemeral_container_starts_while_init_containers_are_stuck() -> None:
    pod = with_debugger(make_pod(inits=("setup",)), "debugger")
    actions = plan(pod, runtime(sandbox(), container("setup")))  # the init container runs on
    assert started(actions) == [("debugger", 0, False)]


def test_ephemeral_containers_do_not_hold_a_pod_from_completion() -> None:
    pod = with_debugger(make_pod(policy=NEVER), "debugger")
    snapshot = runtime(sandbox(), exited("app"), container("debugger"))
    actions = plan(pod, snapshot)
    assert actions.finished and [k.info.id for k in actions.kill] == ["debugger-0"]
