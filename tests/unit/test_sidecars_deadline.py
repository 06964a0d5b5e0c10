"""Native sidecars, activeDeadlineSeconds and priority: the pure decisions (validation,
plan, status) over hand-built runtime snapshots."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from nodeagent.kubelet import backoff
from nodeagent.kubelet.plan import KillContainer, PlanInput, PodActions, plan_pod, stop_order
from nodeagent.kubelet.podstatus import StatusInput, compute_status
from nodeagent.kubelet.runtimepod import RuntimePod
from nodeagent.model.fields import ValidationError
from nodeagent.model.pod import Container, ExecAction, Pod, PodSpec, Probe, RestartPolicy
from nodeagent.model.validate import parse_pod
from nodeagent.runtime.base import SandboxState
from tests.unit.snapshots import (
    NEVER,
    T0,
    UID,
    container,
    exited,
    runtime,
    sandbox,
    started,
)

STARTUP = Probe(ExecAction(("true",)))


def sidecar_pod(
    *,
    policy: RestartPolicy = RestartPolicy.ALWAYS,
    probe: Probe | None = None,
    deadline: int | None = None,
) -> Pod:
    return Pod(
        uid=UID,
        name="p",
        namespace="default",
        spec=PodSpec(
            containers=(Container("app", "busybox:1.36"),),
            init_containers=(
                Container("setup", "busybox:1.36"),
                Container("proxy", "busybox:1.36", sidecar=True, startup_probe=probe),
                Container("logger", "busybox:1.36", sidecar=True),
            ),
            restart_policy=policy,
            active_deadline_seconds=deadline,
        ),
    )


def plan(
    pod: Pod,
    snapshot: RuntimePod,
    *,
    now: float = T0 + 100,
    startup: dict[str, bool] | None = None,
    start_time: float | None = T0,
    backoffs: dict[str, backoff.Backoff] | None = None,
) -> PodActions:
    return plan_pod(
        PlanInput(
            pod=pod,
            runtime=snapshot,
            now=now,
            started=startup or {},
            start_time=start_time,
            backoffs=backoffs or {},
        )
    )


def killed(actions: PodActions) -> list[tuple[str, str]]:
    return [(k.info.name, k.reason) for k in actions.kill]


# -- plan: sidecars ------------------------------------------------------------------------


def test_sidecars_start_in_order_after_the_init_container_and_before_the_app() -> None:
    pod = sidecar_pod()
    assert started(plan(pod, runtime(sandbox()))) == [("setup", 0, True)]
    done = exited("setup")
    assert started(plan(pod, runtime(sandbox(), done))) == [("proxy", 0, True)]
    proxy = container("proxy")
    assert started(plan(pod, runtime(sandbox(), done, proxy))) == [("logger", 0, True)]
    both = runtime(sandbox(), done, proxy, container("logger"))
    assert started(plan(pod, both)) == [("app", 0, False)]


def test_next_container_waits_for_the_sidecars_startup_probe() -> None:
    pod = sidecar_pod(probe=STARTUP)
    snapshot = runtime(sandbox(), exited("setup"), container("proxy"))
    assert plan(pod, snapshot).idle  # running, not started yet
    assert plan(pod, snapshot, startup={"proxy": False}).idle
    assert started(plan(pod, snapshot, startup={"proxy": True})) == [("logger", 0, True)]


def test_exited_sidecar_restarts_even_under_restart_policy_never() -> None:
    pod = sidecar_pod(policy=NEVER)
    snapshot = runtime(
        sandbox(),
        exited("setup"),
        exited("proxy", code=1, finished=T0 + 5),
        container("logger"),
        container("app"),
    )
    actions = plan(pod, snapshot, now=T0 + 100)
    assert started(actions) == [("proxy", 1, True)]
    assert not actions.finished
    # Behind the crash backoff like any container.
    crashed_before = {"proxy": backoff.advance(None, now=T0 + 5)}
    actions = plan(pod, snapshot, now=T0 + 6, backoffs=crashed_before)
    assert not actions.start and "proxy" in actions.backoff


def test_pod_completes_when_the_app_is_done_and_its_sidecars_are_stopped_last_first() -> None:
    pod = sidecar_pod(policy=NEVER)
    snapshot = runtime(
        sandbox(), exited("setup"), container("proxy"), container("logger"), exited("app")
    )
    actions = plan(pod, snapshot)
    assert actions.finished
    assert killed(actions) == [("logger", "PodCompleted"), ("proxy", "PodCompleted")]


def test_stop_order_is_apps_then_sidecars_in_reverse() -> None:
    pod = sidecar_pod()
    assert stop_order(pod, {"proxy", "app", "logger", "stray"}) == [
        "app",
        "logger",
        "proxy",
        "stray",
    ]


# -- plan: activeDeadlineSeconds -----------------------------------------------------------


def test_deadline_kills_everything_and_finishes_the_pod() -> None:
    pod = sidecar_pod(deadline=30)
    snapshot = runtime(
        sandbox(), exited("setup"), container("proxy"), container("logger"), container("app")
    )
    assert not plan(pod, snapshot, now=T0 + 29).finished
    actions = plan(pod, snapshot, now=T0 + 30)
    assert actions.finished and actions.deadline_exceeded and not actions.start
    assert killed(actions) == [
        ("app", "DeadlineExceeded"),
        ("logger", "DeadlineExceeded"),
        ("proxy", "DeadlineExceeded"),
    ]
    assert all(isinstance(k, KillContainer) and k.grace_s is None for k in actions.kill)
    # The sandbox stopped: nothing is ever created again, whatever the restartPolicy.
    gone = runtime(sandbox(state=SandboxState.NOTREADY), exited("app"))
    actions = plan(pod, gone, now=T0 + 1000)
    assert actions.finished and not actions.create_sandbox


def test_no_deadline_before_the_pod_started() -> None:
    pod = sidecar_pod(deadline=1)
    actions = plan(pod, runtime(), now=T0 + 1000, start_time=None)
    assert actions.create_sandbox


# -- status --------------------------------------------------------------------------------


def status_of(pod: Pod, snapshot: RuntimePod, **kwargs: Any) -> dict[str, Any]:
    return compute_status(
        StatusInput(pod=pod, runtime=snapshot, now=kwargs.pop("now", T0 + 100), **kwargs)
    )


def statuses(status: dict[str, Any], group: str) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in status[group]}


def condition(status: dict[str, Any], kind: str) -> str:
    return str(next(c["status"] for c in status["conditions"] if c["type"] == kind))


def test_running_sidecars_are_listed_started_and_ready_in_init_container_statuses() -> None:
    pod = sidecar_pod()
    snapshot = runtime(
        sandbox(), exited("setup"), container("proxy"), container("logger"), container("app")
    )
    status = status_of(pod, snapshot, start_time=T0)
    inits = statuses(status, "initContainerStatuses")
    assert list(inits) == ["setup", "proxy", "logger"]
    assert inits["proxy"]["ready"] and inits["proxy"]["started"]
    assert "running" in inits["proxy"]["state"]
    assert status["phase"] == "Running"
    assert condition(status, "Initialized") == "True"
    assert condition(status, "Ready") == "True"


def test_sidecar_not_started_keeps_the_pod_initializing_and_unready() -> None:
    pod = sidecar_pod(probe=STARTUP)
    snapshot = runtime(sandbox(), exited("setup"), container("proxy"))
    status = status_of(pod, snapshot, started={"proxy": False})
    assert statuses(status, "initContainerStatuses")["proxy"]["started"] is False
    assert status["phase"] == "Pending"
    assert condition(status, "Initialized") == "False"
    app = statuses(status, "containerStatuses")["app"]
    assert app["state"]["waiting"]["reason"] == "PodInitializing"


def test_pod_with_stopped_sidecars_succeeds_when_its_app_succeeded() -> None:
    pod = sidecar_pod(policy=NEVER)
    snapshot = runtime(
        sandbox(),
        exited("setup"),
        exited("proxy", code=143),
        exited("logger", code=137),
        exited("app"),
    )
    assert status_of(pod, snapshot)["phase"] == "Succeeded"
    failed = replace(snapshot, containers=(*snapshot.containers[:3], exited("app", code=1)))
    assert status_of(pod, failed)["phase"] == "Failed"


def test_deadline_exceeded_status() -> None:
    pod = sidecar_pod(deadline=30)
    snapshot = runtime(sandbox(), exited("setup"), exited("app", code=137))
    status = status_of(pod, snapshot, now=T0 + 31, start_time=T0)
    assert status["phase"] == "Failed"
    assert status["reason"] == "DeadlineExceeded"
    assert status["message"] == "Pod was active on the node longer than the specified deadline"
    before = status_of(pod, snapshot, now=T0 + 29, start_time=T0)
    assert "reason" not in before and before["phase"] != "Failed"


# -- validation ----------------------------------------------------------------------------


def doc(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"containers": [{"name": "app", "image": "busybox:1.36"}]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": base | spec}


def error_paths(document: dict[str, Any]) -> set[str]:
    try:
        parse_pod(document, source="t", node_name="n")
    except ValidationError as exc:
        return {e.path for e in exc.errors}
    return set()


def test_init_container_with_restart_policy_always_is_a_sidecar_and_may_have_probes() -> None:
    probe = {"exec": {"command": ["true"]}}
    init = {"name": "side", "image": "busybox:1.36", "restartPolicy": "Always"}
    pod = parse_pod(doc(initContainers=[init | {"startupProbe": probe}]), source="t", node_name="n")
    (side,) = pod.sidecars()
    assert side.name == "side" and side.startup_probe is not None
    assert not pod.spec.containers[0].sidecar


def test_restart_policy_is_rejected_where_kubernetes_rejects_it() -> None:
    init = {"name": "i", "image": "busybox:1.36"}
    probe = {"exec": {"command": ["true"]}}
    assert error_paths(doc(initContainers=[init | {"restartPolicy": "Never"}])) == {
        "spec.initContainers[0].restartPolicy"
    }
    assert error_paths(doc(initContainers=[init | {"readinessProbe": probe}])) == {
        "spec.initContainers[0].readinessProbe"
    }
    app = {"name": "app", "image": "busybox:1.36", "restartPolicy": "Always"}
    assert error_paths(doc(containers=[app])) == {"spec.containers[0].restartPolicy"}


def test_active_deadline_and_priority_are_read() -> None:
    pod = parse_pod(doc(activeDeadlineSeconds=5, priority=1000), source="t", node_name="n")
    assert pod.spec.active_deadline_seconds == 5 and pod.spec.priority == 1000
    plain = parse_pod(doc(), source="t", node_name="n")
    assert plain.spec.active_deadline_seconds is None and plain.spec.priority is None
    assert error_paths(doc(activeDeadlineSeconds=0)) == {"spec.activeDeadlineSeconds"}
    assert error_paths(doc(priority="high")) == {"spec.priority"}


def test_sub_path_expr_is_read_and_checked() -> None:
    mount = {"name": "v", "mountPath": "/logs", "subPathExpr": "$(POD_NAME)"}
    app = {"name": "app", "image": "busybox:1.36", "volumeMounts": [mount]}
    volumes = [{"name": "v", "emptyDir": {}}]
    pod = parse_pod(doc(containers=[app], volumes=volumes), source="t", node_name="n")
    assert pod.spec.containers[0].volume_mounts[0].sub_path_expr == "$(POD_NAME)"
    both = {**mount, "subPath": "x"}
    assert error_paths(doc(containers=[{**app, "volumeMounts": [both]}], volumes=volumes)) == {
        "spec.containers[0].volumeMounts[0].subPathExpr"
    }
    absolute = {**mount, "subPathExpr": "/$(POD_NAME)"}
    assert error_paths(doc(containers=[{**app, "volumeMounts": [absolute]}], volumes=volumes)) == {
        "spec.containers[0].volumeMounts[0].subPathExpr"
    }
