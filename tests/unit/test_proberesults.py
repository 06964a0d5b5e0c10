"""Probe thresholds, gating and on-hold (nodeagent.kubelet.proberesults), as pure functions."""

from __future__ import annotations

import pytest

from nodeagent.kubelet.proberesults import (
    ProbeKind,
    ProbeState,
    Result,
    failure_reason,
    initial_state,
    observe,
    probes_of,
    should_probe,
    to_json,
)
from nodeagent.model.pod import (
    Container,
    ExecAction,
    GRPCAction,
    HTTPGetAction,
    Probe,
    TCPSocketAction,
)

LIVENESS, READINESS, STARTUP = ProbeKind.LIVENESS, ProbeKind.READINESS, ProbeKind.STARTUP
SUCCESS, FAILURE, UNKNOWN = Result.SUCCESS, Result.FAILURE, Result.UNKNOWN
T0 = 1_700_000_000.0


def probe(**fields: int) -> Probe:
    return Probe(ExecAction(("true",)), **fields)


def run(kind: ProbeKind, p: Probe, outcomes: str, state: ProbeState | None = None) -> ProbeState:
    """Feed outcomes ('s' success, 'f' failure) one second apart."""
    state = state or initial_state(kind)
    for i, o in enumerate(outcomes):
        state = observe(state, kind, p, ok=o == "s", message=f"#{i}", now=T0 + i)
    return state


def test_initial_results_follow_the_kubelet() -> None:
    assert initial_state(LIVENESS).result is SUCCESS  # presumed healthy
    assert initial_state(READINESS).result is FAILURE  # not ready before a success
    assert initial_state(STARTUP).result is UNKNOWN  # not started, not failed
    for kind in ProbeKind:
        state = initial_state(kind)
        assert (state.last, state.probed_at, state.on_hold) == (UNKNOWN, None, False)


def test_readiness_needs_success_threshold_and_failure_threshold() -> None:
    p = probe(success_threshold=2, failure_threshold=3)
    assert run(READINESS, p, "s").result is FAILURE
    ready = run(READINESS, p, "ss")
    assert ready.result is SUCCESS and ready.successes == 2
    assert run(READINESS, p, "ff", ready).result is SUCCESS  # below the failure threshold
    not_ready = run(READINESS, p, "fff", ready)
    assert not_ready.result is FAILURE and not_ready.failures == 3 and not_ready.successes == 0
    assert not not_ready.on_hold  # readiness keeps probing
    assert run(READINESS, p, "sfs").result is FAILURE  # runs restart on every change


def test_liveness_fails_at_threshold_then_holds() -> None:
    p = probe(failure_threshold=3)
    state = run(LIVENESS, p, "ff")
    assert state.result is SUCCESS and state.failures == 2 and state.run == 2
    assert run(LIVENESS, p, "ffsff").result is SUCCESS  # a success restarts the count
    state = run(LIVENESS, p, "fff")
    assert state.result is FAILURE and state.on_hold
    assert state.run == 0  # the kubelet's resultRun restarts; the display count does not
    assert state.failures == 3 and state.message == "#2" and state.probed_at == T0 + 2
    assert not should_probe(LIVENESS, state, p, started=True, running_for_s=100)


def test_startup_is_unknown_until_it_decides() -> None:
    p = probe(failure_threshold=2)
    assert run(STARTUP, p, "f").result is UNKNOWN
    started = run(STARTUP, p, "fs")
    assert started.result is SUCCESS
    assert not should_probe(STARTUP, started, p, started=True, running_for_s=100)
    failed = run(STARTUP, p, "ff")
    assert failed.result is FAILURE and failed.on_hold


@pytest.mark.parametrize("kind", [LIVENESS, READINESS])
def test_startup_gates_liveness_and_readiness(kind: ProbeKind) -> None:
    state, p = initial_state(kind), probe()
    assert not should_probe(kind, state, p, started=False, running_for_s=100)
    assert should_probe(kind, state, p, started=True, running_for_s=100)


@pytest.mark.parametrize("kind", list(ProbeKind))
def test_initial_delay_counts_whole_seconds_of_running(kind: ProbeKind) -> None:
    state, p = initial_state(kind), probe(initial_delay_seconds=5)
    assert not should_probe(kind, state, p, started=True, running_for_s=4.99)
    assert should_probe(kind, state, p, started=True, running_for_s=5.0)


def test_messages_read_like_the_kubelets_events() -> None:
    assert failure_reason(LIVENESS, "HTTP probe failed with statuscode: 500") == (
        "Liveness probe failed: HTTP probe failed with statuscode: 500"
    )
    assert failure_reason(STARTUP, "") == "Startup probe failed"


def test_probes_of_lists_startup_first() -> None:
    c = Container("app", "busybox", liveness_probe=probe(), startup_probe=probe())
    assert [k for k, _ in probes_of(c)] == [STARTUP, LIVENESS]
    assert probes_of(Container("app", "busybox")) == []


def test_json_before_and_after_probes() -> None:
    p = Probe(HTTPGetAction(port=8080), period_seconds=1)
    entry = to_json("web", READINESS, p, None, "")
    assert entry == {
        "container": "web",
        "probe": "readiness",
        "handler": "httpGet",
        "periodSeconds": 1,
        "result": "Failure",
        "lastResult": "",
        "consecutiveSuccesses": 0,
        "consecutiveFailures": 0,
        "message": "",
        "lastProbeTime": None,
    }
    state = run(READINESS, p, "ff")
    entry = to_json("web", READINESS, p, state, "containerd://abc")
    assert entry["containerID"] == "containerd://abc"
    assert (entry["lastResult"], entry["consecutiveFailures"]) == ("Failure", 2)
    assert entry["message"] == "#1"
    assert entry["lastProbeTime"] == "2023-11-14T22:13:21Z"
    kinds: dict[str, ExecAction | HTTPGetAction | TCPSocketAction | GRPCAction] = {
        "exec": ExecAction(("true",)),
        "tcpSocket": TCPSocketAction(port=1),
        "grpc": GRPCAction(port=1),
    }
    for name, handler in kinds.items():
        assert to_json("c", LIVENESS, Probe(handler), None, "")["handler"] == name
