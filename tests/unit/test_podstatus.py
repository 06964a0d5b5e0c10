"""Pod status as the API shows it (nodeagent.kubelet.podstatus), from hand-built snapshots."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import pytest

from nodeagent.kubelet.podstatus import (
    StatusInput,
    Waiting,
    compute_status,
    qos_class,
    rfc3339,
)
from nodeagent.kubelet.runtimepod import RuntimePod
from nodeagent.model.pod import (
    Container,
    ExecAction,
    Pod,
    PodSpec,
    Probe,
    Resources,
    RestartPolicy,
)
from nodeagent.runtime.base import (
    ContainerID,
    ContainerInfo,
    ContainerState,
    SandboxID,
    SandboxInfo,
    SandboxState,
)
from tests.unit.snapshots import ALWAYS, EXITED, NEVER, ON_FAILURE, RUNNING, T0, UID, ns

NOW = T0 + 100
PROBE = Probe(ExecAction(("true",)))


def make_pod(
    *containers: Container, inits: tuple[Container, ...] = (), policy: RestartPolicy = ALWAYS
) -> Pod:
    return Pod(
        uid=UID,
        name="p",
        namespace="default",
        spec=PodSpec(
            containers=containers or (Container("app", "busybox:1.36"),),
            init_containers=inits,
            restart_policy=policy,
        ),
    )


SANDBOX = SandboxInfo(
    id=SandboxID("sb0"),
    uid=UID,
    name="p",
    namespace="default",
    attempt=0,
    state=SandboxState.READY,
    created_at_ns=ns(T0),
    ip="10.88.0.7",
)


def info(
    name: str,
    attempt: int = 0,
    state: ContainerState = RUNNING,
    *,
    code: int = 0,
    reason: str = "",
    started: float = T0 + 1,
    finished: float = T0 + 2,
) -> ContainerInfo:
    return ContainerInfo(
        id=ContainerID(f"{name}-{attempt}"),
        sandbox_id=SANDBOX.id,
        uid=UID,
        name=name,
        attempt=attempt,
        image="docker.io/library/busybox:1.36",
        state=state,
        created_at_ns=ns(started - 0.5),
        image_ref="sha256:abc",
        started_at_ns=ns(started),
        finished_at_ns=ns(finished) if state is EXITED else 0,
        exit_code=code,
        reason=reason,
        detailed=True,
    )


def status(
    pod: Pod,
    *items: ContainerInfo,
    sandbox: SandboxInfo | None = SANDBOX,
    waiting: Mapping[str, Waiting] | None = None,
    ready: Mapping[str, bool] | None = None,
    started: Mapping[str, bool] | None = None,
    previous: dict[str, Any] | None = None,
    now: float = NOW,
) -> dict[str, Any]:
    return compute_status(
        StatusInput(
            pod=pod,
            runtime=RuntimePod(UID, (sandbox,) if sandbox else (), tuple(items)),
            now=now,
            host_ip="192.168.56.11",
            waiting=waiting or {},
            ready=ready or {},
            started=started or {},
            previous=previous,
            start_time=T0,
        )
    )


def conditions(result: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in result["conditions"]}


def container_status(result: dict[str, Any], name: str) -> dict[str, Any]:
    for key in ("initContainerStatuses", "containerStatuses"):
        for item in result.get(key, []):
            if item["name"] == name:
                return dict(item)
    raise AssertionError(f"no status for {name}")


# --- phases -------------------------------------------------------------------------------------


def test_pending_while_init_runs_app_containers_wait_with_pod_initializing() -> None:
    pod = make_pod(inits=(Container("setup", "busybox:1.36"),))
    result = status(pod, info("setup"))
    assert result["phase"] == "Pending"
    assert container_status(result, "setup")["state"] == {"running": {"startedAt": rfc3339(T0 + 1)}}
    assert container_status(result, "app")["state"] == {"waiting": {"reason": "PodInitializing"}}
    assert conditions(result)["Initialized"] == "False"
    assert conditions(result)["PodReadyToStartContainers"] == "True"


def test_pending_before_anything_ran() -> None:
    result = status(make_pod(), sandbox=None)
    assert result["phase"] == "Pending"
    assert container_status(result, "app")["state"] == {"waiting": {"reason": "ContainerCreating"}}
    assert conditions(result)["PodReadyToStartContainers"] == "False"
    assert "podIP" not in result


def test_running() -> None:
    pod = make_pod(inits=(Container("setup", "busybox:1.36"),))
    result = status(pod, info("setup", state=EXITED), info("app", started=T0 + 3))
    assert result["phase"] == "Running"
    assert result["podIP"] == "10.88.0.7"
    assert result["podIPs"] == [{"ip": "10.88.0.7"}]
    assert result["hostIP"] == "192.168.56.11"
    assert result["startTime"] == rfc3339(T0)
    app = container_status(result, "app")
    assert app["state"] == {"running": {"startedAt": rfc3339(T0 + 3)}}
    assert (app["ready"], app["started"], app["restartCount"]) == (True, True, 0)
    assert app["containerID"] == "containerd://app-0"
    assert (app["image"], app["imageID"]) == ("busybox:1.36", "sha256:abc")
    assert conditions(result) == {
        "PodReadyToStartContainers": "True",
        "Initialized": "True",
        "Ready": "True",
        "ContainersReady": "True",
        "PodScheduled": "True",
    }


@pytest.mark.parametrize("policy", [NEVER, ON_FAILURE])
def test_succeeded(policy: RestartPolicy) -> None:
    pod = make_pod(Container("a", "busybox"), Container("b", "busybox"), policy=policy)
    result = status(pod, info("a", state=EXITED), info("b", state=EXITED))
    assert result["phase"] == "Succeeded"
    terminated = container_status(result, "a")["state"]["terminated"]
    assert terminated["exitCode"] == 0
    assert terminated["reason"] == "Completed"
    assert terminated["startedAt"] == rfc3339(T0 + 1)
    assert terminated["finishedAt"] == rfc3339(T0 + 2)
    ready = {c["type"]: c for c in result["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "PodCompleted")


def test_failed_under_never_with_a_failed_container() -> None:
    pod = make_pod(Container("a", "busybox"), Container("b", "busybox"), policy=NEVER)
    result = status(pod, info("a", state=EXITED), info("b", state=EXITED, code=2))
    assert result["phase"] == "Failed"
    terminated = container_status(result, "b")["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (2, "Error")


def test_running_under_on_failure_while_a_failed_container_waits_to_restart() -> None:
    pod = make_pod(policy=ON_FAILURE)
    result = status(pod, info("app", state=EXITED, code=1))
    assert result["phase"] == "Running"


def test_failed_init_under_never_fails_the_pod() -> None:
    pod = make_pod(inits=(Container("setup", "busybox:1.36"),), policy=NEVER)
    result = status(pod, info("setup", state=EXITED, code=1))
    assert result["phase"] == "Failed"


def test_running_under_always_after_every_container_exited() -> None:
    pod = make_pod(Container("a", "busybox"), Container("b", "busybox"))
    result = status(pod, info("a", state=EXITED), info("b", state=EXITED, code=1))
    assert result["phase"] == "Running"
    assert conditions(result)["Ready"] == "False"


# --- container states ---------------------------------------------------------------------------


def test_oom_killed_is_reported_as_the_runtime_says() -> None:
    result = status(make_pod(), info("app", state=EXITED, code=137, reason="OOMKilled"))
    terminated = container_status(result, "app")["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (137, "OOMKilled")
    assert terminated["containerID"] == "containerd://app-0"


def test_crash_loop_backoff_waiting_with_last_state_terminated() -> None:
    pod = make_pod()
    items = (
        info("app", 0, EXITED, code=1, started=T0 + 1, finished=T0 + 2),
        info("app", 1, EXITED, code=1, started=T0 + 3, finished=T0 + 4),
    )
    waiting = {"app": Waiting("CrashLoopBackOff", "back-off 10s restarting failed container")}
    result = status(pod, *items, waiting=waiting)
    app = container_status(result, "app")
    assert app["state"] == {
        "waiting": {
            "reason": "CrashLoopBackOff",
            "message": "back-off 10s restarting failed container",
        }
    }
    last = app["lastState"]["terminated"]
    assert (last["exitCode"], last["reason"], last["finishedAt"]) == (1, "Error", rfc3339(T0 + 4))
    assert app["restartCount"] == 1
    assert (app["ready"], app["started"]) == (False, False)
    assert result["phase"] == "Running"


def test_restart_count_is_the_attempt_and_last_state_the_previous_instance() -> None:
    items = (
        info("app", 2, EXITED, code=3, started=T0 + 1, finished=T0 + 2),
        info("app", 3, RUNNING, started=T0 + 5),
    )
    app = container_status(status(make_pod(), *items), "app")
    assert app["restartCount"] == 3
    assert app["state"] == {"running": {"startedAt": rfc3339(T0 + 5)}}
    assert app["lastState"]["terminated"]["exitCode"] == 3


def test_waiting_reason_without_any_instance() -> None:
    waiting = {"app": Waiting("ErrImagePull", 'Failed to pull image "x"')}
    app = container_status(status(make_pod(), waiting=waiting), "app")
    assert app["state"] == {
        "waiting": {"reason": "ErrImagePull", "message": 'Failed to pull image "x"'}
    }
    assert app["lastState"] == {}
    assert "containerID" not in app


# --- readiness ----------------------------------------------------------------------------------


def test_not_ready_with_a_readiness_probe_and_no_result_yet() -> None:
    pod = make_pod(Container("app", "busybox", readiness_probe=PROBE))
    result = status(pod, info("app"))
    app = container_status(result, "app")
    assert (app["ready"], app["started"]) == (False, True)
    assert result["phase"] == "Running"
    assert conditions(result)["Ready"] == "False"
    assert conditions(result)["ContainersReady"] == "False"
    ready = status(pod, info("app"), ready={"app": True})
    assert container_status(ready, "app")["ready"] is True
    assert conditions(ready)["Ready"] == "True"


def test_startup_probe_holds_started_and_ready() -> None:
    pod = make_pod(Container("app", "busybox", startup_probe=PROBE))
    app = container_status(status(pod, info("app")), "app")
    assert (app["started"], app["ready"]) == (False, False)
    app = container_status(status(pod, info("app"), started={"app": True}), "app")
    assert (app["started"], app["ready"]) == (True, True)


# --- conditions over time -----------------------------------------------------------------------


def test_transition_times_carry_over_while_a_condition_holds() -> None:
    pod = make_pod(Container("app", "busybox", readiness_probe=PROBE))
    first = status(pod, info("app"), now=T0 + 10)
    times = {c["type"]: c["lastTransitionTime"] for c in first["conditions"]}
    assert set(times.values()) == {rfc3339(T0 + 10)}

    second = status(pod, info("app"), previous=first, now=T0 + 20)
    assert {c["type"]: c["lastTransitionTime"] for c in second["conditions"]} == times

    third = status(pod, info("app"), ready={"app": True}, previous=second, now=T0 + 30)
    after = {c["type"]: c["lastTransitionTime"] for c in third["conditions"]}
    assert after["Ready"] == after["ContainersReady"] == rfc3339(T0 + 30)
    assert after["PodScheduled"] == after["Initialized"] == rfc3339(T0 + 10)
    assert all(c["lastProbeTime"] is None for c in third["conditions"])


def test_not_ready_conditions_carry_a_reason() -> None:
    pod = make_pod(inits=(Container("setup", "busybox"),))
    result = status(pod, info("setup"))
    reasons = {c["type"]: c.get("reason") for c in result["conditions"]}
    assert reasons["Initialized"] == "ContainersNotInitialized"
    assert reasons["Ready"] == "ContainersNotReady"


# --- QoS ----------------------------------------------------------------------------------------


def with_resources(*resources: Resources) -> Pod:
    return make_pod(*(Container(f"c{i}", "busybox", resources=r) for i, r in enumerate(resources)))


def test_qos_classes() -> None:
    assert qos_class(with_resources(Resources())) == "BestEffort"
    assert qos_class(with_resources(Resources(memory_request_bytes=1 << 20))) == "Burstable"
    guaranteed = Resources(cpu_limit_millis=500, memory_limit_bytes=1 << 26)
    assert qos_class(with_resources(guaranteed)) == "Guaranteed"
    equal = Resources(
        cpu_limit_millis=500,
        memory_limit_bytes=1 << 26,
        cpu_request_millis=500,
        memory_request_bytes=1 << 26,
    )
    assert qos_class(with_resources(equal, guaranteed)) == "Guaranteed"
    lower = Resources(cpu_limit_millis=500, memory_limit_bytes=1 << 26, cpu_request_millis=100)
    assert qos_class(with_resources(lower)) == "Burstable"
    assert qos_class(with_resources(guaranteed, Resources())) == "Burstable"
    assert status(with_resources(guaranteed))["qosClass"] == "Guaranteed"


def test_qos_zero_quantities_count_as_unset() -> None:
    zero = Resources(cpu_limit_millis=0, memory_limit_bytes=0, cpu_request_millis=0)
    assert qos_class(with_resources(zero)) == "BestEffort"
    # A zero cpu limit is no limit: a memory limit alone cannot make the pod Guaranteed.
    half = Resources(cpu_limit_millis=0, memory_limit_bytes=1 << 26)
    assert qos_class(with_resources(half)) == "Burstable"


def test_qos_sums_requests_and_limits_over_the_pod_and_counts_init_containers() -> None:
    guaranteed = Resources(cpu_limit_millis=500, memory_limit_bytes=1 << 26)
    # Each container's request differs from its limit, the pod's sums agree (upstream).
    low = Resources(
        cpu_limit_millis=500,
        memory_limit_bytes=1 << 26,
        cpu_request_millis=400,
        memory_request_bytes=1 << 26,
    )
    high = Resources(
        cpu_limit_millis=500,
        memory_limit_bytes=1 << 26,
        cpu_request_millis=600,
        memory_request_bytes=1 << 26,
    )
    assert qos_class(with_resources(low, high)) == "Guaranteed"
    init = Container("init", "busybox", resources=Resources(memory_request_bytes=1 << 20))
    assert qos_class(make_pod(Container("c", "busybox"), inits=(init,))) == "Burstable"
    unlimited_init = Container("init", "busybox")
    pod = make_pod(Container("c", "busybox", resources=guaranteed), inits=(unlimited_init,))
    assert qos_class(pod) == "Burstable"  # every container needs both limits


# --- host network ------------------------------------------------------------------------------


def test_a_host_network_pod_reports_the_node_ip_as_its_own() -> None:
    base = make_pod()
    pod = Pod(
        uid=base.uid,
        name=base.name,
        namespace=base.namespace,
        spec=PodSpec(containers=base.spec.containers, host_network=True),
    )
    for sandbox in (SANDBOX, None):
        result = status(pod, info("app"), sandbox=sandbox)
        assert result["podIP"] == "192.168.56.11"
        assert result["podIPs"] == [{"ip": "192.168.56.11"}]
        assert result["hostIPs"] == [{"ip": "192.168.56.11"}]
    assert status(base, info("app"))["podIP"] == SANDBOX.ip


def test_a_terminating_pod_keeps_the_ip_of_its_stopped_sandbox() -> None:
    before = status(make_pod(), info("app"))
    stopped = StatusInput(
        pod=make_pod(),
        runtime=RuntimePod(UID, (), (info("app", state=EXITED, code=137),)),
        now=NOW,
        previous=before,
    )
    assert compute_status(dataclasses.replace(stopped, terminating=True))["podIP"] == SANDBOX.ip
    assert "podIP" not in compute_status(stopped)  # a sandbox being replaced: no IP meanwhile
