"""Probe fields: kubelet defaults, the API's "0 means default", and clear errors for bad input."""

from __future__ import annotations

from typing import Any

import pytest

from nodeagent.model.fields import ValidationError
from nodeagent.model.pod import GRPCAction, Probe, TCPSocketAction
from nodeagent.model.validate import parse_document


def pod_with(probes: dict[str, Any], ports: list[Any] | None = None) -> dict[str, Any]:
    container = {"name": "app", "image": "busybox", **probes}
    if ports is not None:
        container["ports"] = ports
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [container]},
    }


def parse(probes: dict[str, Any], ports: list[Any] | None = None) -> Any:
    pod = parse_document(pod_with(probes, ports), source="test", node_name="n")
    return pod.spec.containers[0]  # type: ignore[union-attr]


def errors(probes: dict[str, Any], ports: list[Any] | None = None) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        parse(probes, ports)
    return {e.path: e.message for e in info.value.errors}


TCP = {"tcpSocket": {"port": 80}}


def test_defaults_are_the_kubelets() -> None:
    probe = parse({"livenessProbe": TCP}).liveness_probe
    assert probe == Probe(TCPSocketAction(port=80))
    assert (probe.initial_delay_seconds, probe.period_seconds, probe.timeout_seconds) == (0, 10, 1)
    assert (probe.success_threshold, probe.failure_threshold) == (1, 3)
    assert probe.termination_grace_period_seconds is None


def test_zero_means_default_as_the_api_defaults_it() -> None:
    zeros = dict.fromkeys(("periodSeconds", "timeoutSeconds", "failureThreshold"), 0)
    probe = parse({"readinessProbe": {**TCP, **zeros, "successThreshold": 0}}).readiness_probe
    assert (probe.period_seconds, probe.timeout_seconds) == (10, 1)
    assert (probe.success_threshold, probe.failure_threshold) == (1, 3)
    liveness = parse({"livenessProbe": {**TCP, "successThreshold": 0}}).liveness_probe
    assert liveness.success_threshold == 1


def test_grpc_and_probe_grace() -> None:
    container = parse(
        {
            "livenessProbe": {"grpc": {"port": 9090}, "terminationGracePeriodSeconds": 3},
            "startupProbe": {"grpc": {"port": 9090, "service": "boot"}},
        }
    )
    assert container.liveness_probe.handler == GRPCAction(port=9090)
    assert container.liveness_probe.termination_grace_period_seconds == 3
    assert container.startup_probe.handler == GRPCAction(port=9090, service="boot")


@pytest.mark.parametrize(
    ("probes", "path", "message"),
    [
        ({"livenessProbe": {}}, "spec.containers[0].livenessProbe", "exactly one of"),
        (
            {"readinessProbe": {**TCP, "exec": {"command": ["true"]}}},
            "spec.containers[0].readinessProbe",
            "found exec, tcpSocket",
        ),
        (
            {"readinessProbe": {"httpGet": {"port": "web"}}},
            "spec.containers[0].readinessProbe.httpGet.port",
            "no container port named 'web'",
        ),
        (
            {"startupProbe": {"tcpSocket": {"port": "admin"}}},
            "spec.containers[0].startupProbe.tcpSocket.port",
            "no container port named 'admin'",
        ),
        (
            {"livenessProbe": {**TCP, "successThreshold": 2}},
            "spec.containers[0].livenessProbe.successThreshold",
            "must be 1",
        ),
        (
            {"startupProbe": {**TCP, "successThreshold": 3}},
            "spec.containers[0].startupProbe.successThreshold",
            "must be 1",
        ),
        (
            {"readinessProbe": {**TCP, "periodSeconds": -1}},
            "spec.containers[0].readinessProbe.periodSeconds",
            "must be >= 0",
        ),
        (
            {"readinessProbe": {**TCP, "initialDelaySeconds": -5}},
            "spec.containers[0].readinessProbe.initialDelaySeconds",
            "must be >= 0",
        ),
        (
            {"readinessProbe": {**TCP, "timeoutSeconds": "1s"}},
            "spec.containers[0].readinessProbe.timeoutSeconds",
            "must be an integer",
        ),
        (
            {"livenessProbe": {**TCP, "terminationGracePeriodSeconds": 0}},
            "spec.containers[0].livenessProbe.terminationGracePeriodSeconds",
            "must be >= 1",
        ),
        (
            {"livenessProbe": {"grpc": {}}},
            "spec.containers[0].livenessProbe.grpc.port",
            "is required",
        ),
        (
            {"livenessProbe": {"grpc": {"port": 70000}}},
            "spec.containers[0].livenessProbe.grpc.port",
            "1-65535",
        ),
        (
            {"livenessProbe": {"httpGet": {"port": 0}}},
            "spec.containers[0].livenessProbe.httpGet.port",
            "1-65535",
        ),
        (
            {"livenessProbe": {"exec": {"command": []}}},
            "spec.containers[0].livenessProbe.exec.command",
            "is required",
        ),
        (
            {"livenessProbe": {**TCP, "periodSecond": 5}},
            "spec.containers[0].livenessProbe.periodSecond",
            "",
        ),
        (
            {"lifecycle": {"preStop": {"grpc": {"port": 1}}}},
            "spec.containers[0].lifecycle.preStop.grpc",
            "only valid in probes",
        ),
    ],
)
def test_bad_probes_name_their_field(probes: dict[str, Any], path: str, message: str) -> None:
    found = errors(probes)
    assert path in found, found
    assert message in found[path]


def test_named_port_that_exists_is_fine() -> None:
    ports = [{"name": "web", "containerPort": 8080}]
    probe = parse({"readinessProbe": {"httpGet": {"port": "web"}}}, ports).readiness_probe
    assert probe.handler.port == "web"
