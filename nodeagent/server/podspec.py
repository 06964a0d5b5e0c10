"""The spec part of ``nodeagent describe pod``: a summary of the validated Pod, as JSON.

Pure. The snapshot's pods carry status, not spec; describe needs the few spec facts an
operator checks first (which image, which command, which ports, probes and limits, the
restart policy), so the daemon adds this summary to each pod entry as ``spec``, in the
Kubernetes field names, with only the fields that are set.
"""

from __future__ import annotations

from typing import Any

from nodeagent.model.pod import (
    Container,
    EmptyDirSource,
    ExecAction,
    HTTPGetAction,
    Pod,
    Probe,
    TCPSocketAction,
)


def spec_summary(pod: Pod) -> dict[str, Any]:
    spec = pod.spec
    doc: dict[str, Any] = {
        "restartPolicy": spec.restart_policy.value,
        "terminationGracePeriodSeconds": spec.termination_grace_period_seconds,
        "containers": [_container(c) for c in spec.containers],
    }
    if spec.init_containers:
        doc["initContainers"] = [_container(c) for c in spec.init_containers]
    if spec.host_network:
        doc["hostNetwork"] = True
    if spec.volumes:
        doc["volumes"] = [
            {
                "name": v.name,
                "type": "emptyDir" if isinstance(v.source, EmptyDirSource) else "hostPath",
            }
            for v in spec.volumes
        ]
    if spec.active_deadline_seconds is not None:
        doc["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if spec.priority is not None:  # recorded only: one node does not preempt
        doc["priority"] = spec.priority
    if pod.source:
        doc["source"] = pod.source
    return doc


def _container(c: Container) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": c.name, "image": c.image}
    if c.sidecar:
        doc["restartPolicy"] = "Always"
    if c.command:
        doc["command"] = list(c.command)
    if c.args:
        doc["args"] = list(c.args)
    if c.ports:
        doc["ports"] = [
            {"containerPort": p.container_port, "protocol": p.protocol}
            | ({"hostPort": p.host_port} if p.host_port else {})
            for p in c.ports
        ]
    limits = {}
    if c.resources.cpu_limit_millis is not None:
        limits["cpu"] = f"{c.resources.cpu_limit_millis}m"
    if c.resources.memory_limit_bytes is not None:
        limits["memory"] = str(c.resources.memory_limit_bytes)
    if limits:
        doc["limits"] = limits
    for field, probe in (
        ("livenessProbe", c.liveness_probe),
        ("readinessProbe", c.readiness_probe),
        ("startupProbe", c.startup_probe),
    ):
        if probe is not None:
            doc[field] = probe_text(probe)
    return doc


def probe_text(probe: Probe) -> str:
    """kubectl describe's one-line probe form: ``exec [cat /ok] delay=0s timeout=1s ...``."""
    h = probe.handler
    if isinstance(h, ExecAction):
        what = f"exec [{' '.join(h.command)}]"
    elif isinstance(h, HTTPGetAction):
        what = f"http-get {h.scheme.lower()}://{h.host or ''}:{h.port}{h.path}"
    elif isinstance(h, TCPSocketAction):
        what = f"tcp-socket {h.host or ''}:{h.port}"
    else:
        what = f"grpc <pod>:{h.port} {h.service}".rstrip()
    return (
        f"{what} delay={probe.initial_delay_seconds}s timeout={probe.timeout_seconds}s "
        f"period={probe.period_seconds}s #success={probe.success_threshold} "
        f"#failure={probe.failure_threshold}"
    )
