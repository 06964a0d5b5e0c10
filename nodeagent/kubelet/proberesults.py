"""The result of one probe over time: thresholds, gating and on-hold, as pure functions.

This is the decision half of the kubelet's ``prober/worker.go``; the prober (``prober.py``)
owns the tasks and the clock and calls in here. Three things are decided:

- Whether to probe at all (``should_probe``): never before the container has run for
  ``initialDelaySeconds``; liveness and readiness never before the startup probe succeeded;
  a startup probe never again after it succeeded; liveness and startup never again after
  they failed (the container is being restarted, and its successor gets fresh workers).
- What a probe's outcome does to the result the kubelet acts on (``observe``): a result
  changes only after ``failureThreshold`` consecutive failures or ``successThreshold``
  consecutive successes. Until then the previous result stands.
- Where a result starts (``initial_state``): liveness is Success (a container is presumed
  healthy), readiness is Failure (not ready before its first success), startup is Unknown
  (not started, but not failed either).

The consecutive counters for display are kept apart from the kubelet's ``resultRun``, which
restarts at zero when a liveness or startup failure puts the worker on hold.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Any

from nodeagent.kubelet.podstatus import rfc3339
from nodeagent.model.pod import Container, ExecAction, HTTPGetAction, Probe, TCPSocketAction


class ProbeKind(enum.Enum):
    STARTUP = "startup"  # gates the other two; failure restarts the container
    LIVENESS = "liveness"  # failure restarts the container
    READINESS = "readiness"  # gates the container's ready, and so ContainersReady and Ready


class Result(enum.Enum):
    SUCCESS = "Success"  # the check passed (thresholds met, for a worker's result)
    FAILURE = "Failure"  # the check failed (thresholds met, for a worker's result)
    UNKNOWN = "Unknown"  # not decided yet: a startup probe that has not succeeded or failed


@dataclass(frozen=True)
class ProbeState:
    result: Result  # what the kubelet acts on: changes only when a threshold is met
    last: Result = Result.UNKNOWN  # the latest probe's own outcome; UNKNOWN before the first
    run: int = 0  # the kubelet's resultRun: length of the current run of ``last``
    successes: int = 0  # consecutive successes, for display
    failures: int = 0  # consecutive failures, for display
    message: str = ""  # the latest probe's message
    probed_at: float | None = None  # wall-clock seconds of the latest probe
    on_hold: bool = False  # liveness/startup failed: no more probes of this container


def initial_state(kind: ProbeKind) -> ProbeState:
    if kind is ProbeKind.LIVENESS:
        return ProbeState(Result.SUCCESS)
    if kind is ProbeKind.READINESS:
        return ProbeState(Result.FAILURE)
    return ProbeState(Result.UNKNOWN)


def probes_of(container: Container) -> list[tuple[ProbeKind, Probe]]:
    """The container's probes, startup first (it gates the others)."""
    found = [
        (ProbeKind.STARTUP, container.startup_probe),
        (ProbeKind.LIVENESS, container.liveness_probe),
        (ProbeKind.READINESS, container.readiness_probe),
    ]
    return [(kind, probe) for kind, probe in found if probe is not None]


def should_probe(
    kind: ProbeKind, state: ProbeState, probe: Probe, *, started: bool, running_for_s: float
) -> bool:
    """Whether a tick of this worker runs its probe (the checks of the kubelet's doProbe)."""
    if state.on_hold:
        return False
    if kind is ProbeKind.STARTUP:
        if state.result is Result.SUCCESS:
            return False  # started once is started for good
    elif not started:
        return False
    # The kubelet truncates the running time to whole seconds before comparing.
    return int(running_for_s) >= probe.initial_delay_seconds


def observe(
    state: ProbeState, kind: ProbeKind, probe: Probe, *, ok: bool, message: str, now: float
) -> ProbeState:
    """The state after one probe whose outcome was ``ok``."""
    outcome = Result.SUCCESS if ok else Result.FAILURE
    run = state.run + 1 if outcome is state.last else 1
    new = replace(
        state,
        last=outcome,
        run=run,
        successes=state.successes + 1 if ok else 0,
        failures=0 if ok else state.failures + 1,
        message=message,
        probed_at=now,
    )
    threshold = probe.success_threshold if ok else probe.failure_threshold
    if run < threshold:
        return new  # below the threshold: the result stands
    new = replace(new, result=outcome)
    if outcome is Result.FAILURE and kind in (ProbeKind.LIVENESS, ProbeKind.STARTUP):
        # The container is being restarted; its successor gets a fresh worker.
        new = replace(new, on_hold=True, run=0)
    return new


def failure_reason(kind: ProbeKind, message: str) -> str:
    """How a failure reads in logs, status and the restart reason (the kubelet's event text)."""
    text = f"{kind.value.capitalize()} probe failed"
    return f"{text}: {message}" if message else text


def handler_kind(probe: Probe) -> str:
    """The probe's handler as the API names it: exec, httpGet, tcpSocket or grpc."""
    handler = probe.handler
    if isinstance(handler, ExecAction):
        return "exec"
    if isinstance(handler, HTTPGetAction):
        return "httpGet"
    if isinstance(handler, TCPSocketAction):
        return "tcpSocket"
    return "grpc"


def to_json(
    container: str, kind: ProbeKind, probe: Probe, state: ProbeState | None, container_id: str
) -> dict[str, Any]:
    """One probe for the status snapshot; ``state`` None means no worker runs it (yet)."""
    entry: dict[str, Any] = {
        "container": container,
        "probe": kind.value,
        "handler": handler_kind(probe),
        "periodSeconds": probe.period_seconds,
    }
    if container_id:
        entry["containerID"] = container_id
    if state is None:
        state = initial_state(kind)
    entry.update(
        {
            "result": state.result.value,
            "lastResult": state.last.value if state.probed_at is not None else "",
            "consecutiveSuccesses": state.successes,
            "consecutiveFailures": state.failures,
            "message": state.message,
            "lastProbeTime": rfc3339(state.probed_at) if state.probed_at is not None else None,
        }
    )
    return entry
