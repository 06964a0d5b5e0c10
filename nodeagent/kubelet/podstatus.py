"""Pod status as Kubernetes reports it: a pure function of spec, runtime snapshot and probes.

The output is a ``PodStatus`` in the API's own JSON shape (phase, conditions,
containerStatuses ...) so that the local status endpoint, the CLI and, in cluster mode, the
API server all see the same document. Phase follows the kubelet's ``getPhase``; condition
transition times are carried over from the previous status while a condition's value holds.
A hostNetwork pod's IP is the node's; a terminating pod keeps the IP of its stopped sandbox.
``qosClass`` is upstream's ComputePodQOS; in cluster mode the API's own value (set at
creation, immutable) is what the status writer keeps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nodeagent.kubelet.plan import deadline_exceeded
from nodeagent.kubelet.runtimepod import RuntimePod
from nodeagent.model.pod import Container, Pod, RestartPolicy
from nodeagent.runtime.base import ContainerID, ContainerInfo, ContainerState

Json = dict[str, Any]


@dataclass(frozen=True)
class Waiting:
    """Why a container is not running, as the pod worker last saw it."""

    reason: str  # a kubelet reason: ErrImagePull, CrashLoopBackOff, RunContainerError ...
    message: str = ""


@dataclass(frozen=True)
class StatusInput:
    pod: Pod
    runtime: RuntimePod
    now: float
    host_ip: str = ""
    runtime_name: str = "containerd"
    waiting: Mapping[str, Waiting] = field(default_factory=dict)
    ready: Mapping[str, bool] = field(default_factory=dict)  # readiness probe results
    started: Mapping[str, bool] = field(default_factory=dict)  # startup probe results
    previous: Mapping[str, Any] | None = None
    start_time: float | None = None
    messages: Mapping[ContainerID, str] = field(default_factory=dict)  # termination messages
    forbidden: str = ""  # why the node's policy refuses the pod ("" if it does not)
    # The pod is being stopped: its IPs outlive its sandbox, so the final status the API is
    # told still names them (upstream's preserveDataFromBeforeStopping).
    terminating: bool = False


def rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ns_time(ns: int) -> str:
    return rfc3339(ns / 1e9)


def compute_status(inp: StatusInput) -> Json:
    pod, runtime = inp.pod, inp.runtime
    sandbox = runtime.ready_sandbox()
    inits = [_container_status(inp, c, init=True) for c in pod.spec.init_containers]
    initialized = _initialized(inp, inits)
    apps = [
        _container_status(inp, c, init=False, initialized=initialized) for c in pod.spec.containers
    ]
    regular = [s for c, s in zip(pod.spec.init_containers, inits, strict=True) if not c.sidecar]
    phase = pod_phase(pod.spec.restart_policy, regular, apps)
    sidecars = [s for c, s in zip(pod.spec.init_containers, inits, strict=True) if c.sidecar]
    deadline = deadline_exceeded(pod, inp.start_time, inp.now)
    if deadline:
        phase = "Failed"
    ip = sandbox.ip if sandbox is not None else ""
    if pod.spec.host_network and inp.host_ip:
        ip = inp.host_ip  # the node's network: its IP is the pod's, sandbox or not (upstream)
    elif not ip and inp.terminating:
        ip = str((inp.previous or {}).get("podIP") or "")
    status: Json = {"phase": phase}
    if inp.forbidden:
        # The kubelet's soft admission: the pod stays Pending, its status says why.
        status.update(reason="Forbidden", message=inp.forbidden)
    if deadline:
        status.update(reason=DEADLINE_REASON, message=DEADLINE_MESSAGE)
    status["conditions"] = _conditions(
        inp, sandbox is not None, initialized, apps + sidecars, phase
    )
    if inp.host_ip:
        status["hostIP"] = inp.host_ip
        status["hostIPs"] = [{"ip": inp.host_ip}]
    if ip:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}]
    if inp.start_time is not None:
        status["startTime"] = rfc3339(inp.start_time)
    if inits:
        status["initContainerStatuses"] = inits
    status["containerStatuses"] = apps
    if pod.spec.ephemeral_containers:
        status["ephemeralContainerStatuses"] = [
            # Never ready: readiness is for what serves, as upstream's prober manager sees it.
            {**_container_status(inp, c, init=False), "ready": False}
            for c in pod.spec.ephemeral_containers
        ]
    status["qosClass"] = qos_class(pod)
    return status


DEADLINE_REASON = "DeadlineExceeded"
DEADLINE_MESSAGE = "Pod was active on the node longer than the specified deadline"


def _initialized(inp: StatusInput, inits: list[Json]) -> bool:
    """Every init container completed, and every sidecar started (or the app containers
    already ran in this pod: a sidecar restarting later does not uninitialize it)."""
    apps_ran = any(inp.runtime.instances(c.name) for c in inp.pod.spec.containers)
    return all(
        _succeeded(s) or (c.sidecar and (s["started"] or apps_ran))
        for c, s in zip(inp.pod.spec.init_containers, inits, strict=True)
    )


def _succeeded(status: Json) -> bool:
    terminated = status["state"].get("terminated")
    return terminated is not None and terminated["exitCode"] == 0


def pod_phase(policy: RestartPolicy, inits: list[Json], apps: list[Json]) -> str:
    """The kubelet's getPhase over already computed container statuses."""
    for init in inits:
        if _succeeded(init):
            continue
        terminated = init["state"].get("terminated") or init.get("lastState", {}).get("terminated")
        if terminated is not None and policy is RestartPolicy.NEVER:
            return "Failed"
        return "Pending"
    running = waiting = stopped = succeeded = 0
    for app in apps:
        state = app["state"]
        if "running" in state:
            running += 1
        elif "terminated" in state:
            stopped += 1
            succeeded += state["terminated"]["exitCode"] == 0
        elif "terminated" in app.get("lastState", {}):
            stopped += 1  # waiting after a crash: CrashLoopBackOff counts as stopped
        else:
            waiting += 1
    if waiting:
        return "Pending"
    if running:
        return "Running"
    if policy is RestartPolicy.ALWAYS:
        return "Running"
    if succeeded == stopped:
        return "Succeeded"
    if policy is RestartPolicy.ON_FAILURE:
        return "Running"
    return "Failed"


def _container_status(
    inp: StatusInput,
    container: Container,
    *,
    init: bool,
    initialized: bool = True,
) -> Json:
    instances = inp.runtime.instances(container.name)
    current = instances[0] if instances else None
    previous = next((c for c in instances[1:] if c.state is ContainerState.EXITED), None)
    status: Json = {
        "name": container.name,
        "image": container.image,
        "imageID": "",
        "restartCount": current.attempt if current is not None else 0,
        "ready": False,
        "started": False,
        "lastState": {},
    }
    waiting = inp.waiting.get(container.name)
    if current is not None:
        status["containerID"] = f"{inp.runtime_name}://{current.id}"
        status["imageID"] = current.image_ref
    if waiting is not None:
        # The worker's reason wins: the newest instance is the failed one (or none).
        status["state"] = {"waiting": _drop_empty(reason=waiting.reason, message=waiting.message)}
        if current is not None and current.state is ContainerState.EXITED:
            status["lastState"] = {"terminated": _terminated(current, inp)}
        return status
    if current is None:
        reason = "ContainerCreating" if init or initialized else "PodInitializing"
        status["state"] = {"waiting": {"reason": reason}}
        return status
    if previous is not None:
        status["lastState"] = {"terminated": _terminated(previous, inp)}
    if current.state is ContainerState.RUNNING:
        started = inp.started.get(container.name, container.startup_probe is None)
        ready = started and inp.ready.get(container.name, container.readiness_probe is None)
        status["state"] = {"running": {"startedAt": _ns_time(current.started_at_ns)}}
        status["started"] = started
        status["ready"] = ready and (not init or container.sidecar)
    elif current.state is ContainerState.EXITED:
        status["state"] = {"terminated": _terminated(current, inp)}
        # An init container that completed counts as ready, as upstream reports it.
        status["ready"] = init and current.exit_code == 0
    else:
        status["state"] = {"waiting": {"reason": "ContainerCreating"}}
    return status


def _terminated(info: ContainerInfo, inp: StatusInput) -> Json:
    reason = info.reason or ("Completed" if info.exit_code == 0 else "Error")
    result: Json = {
        "exitCode": info.exit_code,
        "reason": reason,
        "containerID": f"{inp.runtime_name}://{info.id}",
    }
    message = termination_join(info.message, inp.messages.get(info.id, ""))
    if message:
        result["message"] = message
    if info.started_at_ns:
        result["startedAt"] = _ns_time(info.started_at_ns)
    if info.finished_at_ns:
        result["finishedAt"] = _ns_time(info.finished_at_ns)
    return result


def termination_join(runtime_message: str, message: str) -> str:
    """The runtime's message, then the termination message, joined as upstream joins them."""
    if runtime_message and message:
        return f"{runtime_message}: {message}"
    return runtime_message or message


def _drop_empty(**fields: str) -> Json:
    return {k: v for k, v in fields.items() if v}


def _conditions(
    inp: StatusInput, sandbox_ready: bool, initialized: bool, apps: list[Json], phase: str
) -> list[Json]:
    containers_ready = bool(apps) and all(a["ready"] for a in apps)
    if phase == "Succeeded":
        containers_ready = False
    values = [
        ("PodReadyToStartContainers", sandbox_ready, ""),
        ("Initialized", initialized, "" if initialized else "ContainersNotInitialized"),
        ("Ready", containers_ready, "" if containers_ready else "ContainersNotReady"),
        ("ContainersReady", containers_ready, "" if containers_ready else "ContainersNotReady"),
        ("PodScheduled", True, ""),
    ]
    gates = gate_problems(inp.pod) if containers_ready else ""
    if gates:
        values[2] = ("Ready", False, READINESS_GATES_NOT_READY)
    if phase == "Succeeded":
        values[1] = ("Initialized", True, "PodCompleted")
        values[2] = ("Ready", False, "PodCompleted")
        values[3] = ("ContainersReady", False, "PodCompleted")
    before = {
        c.get("type"): c for c in (inp.previous or {}).get("conditions", []) if isinstance(c, dict)
    }
    result = []
    for kind, ok, reason in values:
        value = "True" if ok else "False"
        old = before.get(kind)
        since = old["lastTransitionTime"] if old and old.get("status") == value else None
        condition: Json = {
            "type": kind,
            "status": value,
            "lastProbeTime": None,
            "lastTransitionTime": since or rfc3339(inp.now),
        }
        if reason:
            condition["reason"] = reason
        if reason == READINESS_GATES_NOT_READY:
            condition["message"] = gates
        result.append(condition)
    return result


READINESS_GATES_NOT_READY = "ReadinessGatesNotReady"


def gate_problems(pod: Pod) -> str:
    """Why the readiness gates hold Ready back ("" if they do not), worded as upstream's
    GeneratePodReadyCondition: every gate's condition must exist and be True."""
    problems = []
    for gate in pod.spec.readiness_gates:
        status = pod.gate_conditions.get(gate)
        if status is None:
            problems.append(
                f'corresponding condition of pod readiness gate "{gate}" does not exist.'
            )
        elif status != "True":
            problems.append(
                f'the status of pod readiness gate "{gate}" is not "True", but {status}'
            )
    return ", ".join(problems)


def qos_class(pod: Pod) -> str:
    """The pod's QoS class as upstream's ComputePodQOS: only cpu and memory count, zero
    quantities count as unset, requests and limits are summed over every container (init
    containers and sidecars too); Guaranteed needs a cpu and a memory limit on every
    container and the pod's summed requests equal to its summed limits. An unset request is
    its limit, as the API server defaults it (static pods are defaulted the same way)."""
    requests: dict[str, int] = {}
    limits: dict[str, int] = {}
    guaranteed = True
    for r in (c.resources for c in pod.all_containers()):
        cpu_request = r.cpu_limit_millis if r.cpu_request_millis is None else r.cpu_request_millis
        memory_request = (
            r.memory_limit_bytes if r.memory_request_bytes is None else r.memory_request_bytes
        )
        _add_positive(requests, cpu=cpu_request, memory=memory_request)
        found = _add_positive(limits, cpu=r.cpu_limit_millis, memory=r.memory_limit_bytes)
        guaranteed = guaranteed and found == {"cpu", "memory"}
    if not requests and not limits:
        return "BestEffort"
    return "Guaranteed" if guaranteed and requests == limits else "Burstable"


def _add_positive(total: dict[str, int], **quantities: int | None) -> set[str]:
    """Adds the positive quantities to ``total``; the names of those added."""
    added = set()
    for name, value in quantities.items():
        if value is not None and value > 0:
            total[name] = total.get(name, 0) + value
            added.add(name)
    return added
