"""``nodeagent describe pod NAME``: one pod in depth, in ``kubectl describe pod``'s shape.

Pure, like the other views: the snapshot (pod entry with its status, probes, spec summary and
back-off deadlines, plus the node's event ring) and the clock in, text out. Per container it
shows the current state and the last terminated one (the "state history" the kubelet keeps),
its probes with their latest results, and when a back-off ends; then the pod's events,
oldest first, with kubectl's ``Age`` column (``12s (x4 over 3m)`` for repeated events).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from nodeagent.server.fmt import as_int, as_list, as_map, as_str, human_duration, table, timestamp
from nodeagent.server.render import NONE


class PodNotFound(LookupError):
    """No pod by that name runs on this node; the message is meant for the CLI user."""


def find_pod(snapshot: Mapping[str, Any], namespace: str, name: str) -> Mapping[str, Any]:
    pods = [as_map(p) for p in as_list(snapshot.get("pods"))]
    for pod in pods:
        meta = as_map(pod.get("metadata"))
        if (
            as_str(meta.get("name")) == name
            and (as_str(meta.get("namespace")) or "default") == namespace
        ):
            return pod
    elsewhere = sorted(
        as_str(as_map(p.get("metadata")).get("namespace")) or "default"
        for p in pods
        if as_str(as_map(p.get("metadata")).get("name")) == name
    )
    hint = f" (there is one in namespace {', '.join(elsewhere)}; use -n)" if elsewhere else ""
    raise PodNotFound(f'pod "{name}" not found in namespace "{namespace}" on this node{hint}')


def render_pod(snapshot: Mapping[str, Any], namespace: str, name: str, now: datetime) -> str:
    pod = find_pod(snapshot, namespace, name)
    meta, status, spec = (as_map(pod.get(k)) for k in ("metadata", "status", "spec"))
    node = as_str(as_map(snapshot.get("node")).get("name"))
    lines = [
        _kv("Name", as_str(meta.get("name"))),
        _kv("Namespace", as_str(meta.get("namespace")) or "default"),
        _kv("UID", as_str(meta.get("uid"))),
        _kv("Node", node or NONE),
        _kv("Source", as_str(spec.get("source")) or NONE),
        _kv("Start Time", _when(status.get("startTime"), now)),
        _kv("Labels", _pairs(as_map(meta.get("labels")))),
        _kv("Status", as_str(status.get("phase")) or "Unknown"),
    ]
    if as_str(pod.get("worker")) == "terminating":
        lines.append(_kv("Worker", "terminating"))
    for key, label in (("reason", "Reason"), ("message", "Message")):
        if as_str(status.get(key)):
            lines.append(_kv(label, as_str(status.get(key))))
    lines += [
        _kv("IP", as_str(status.get("podIP")) or NONE),
        _kv("QoS Class", as_str(status.get("qosClass")) or NONE),
        _kv("Restart Policy", as_str(spec.get("restartPolicy")) or NONE),
        _kv("Grace Period", f"{as_str(spec.get('terminationGracePeriodSeconds')) or '?'}s"),
    ]
    probes = [as_map(p) for p in as_list(pod.get("probes"))]
    due = as_map(pod.get("backoffUntil"))
    for group, title in (("initContainers", "Init Containers"), ("containers", "Containers")):
        specs = [as_map(c) for c in as_list(spec.get(group))]
        statuses = [as_map(c) for c in as_list(status.get(f"{group[:-1]}Statuses"))]
        if specs or statuses:
            lines.append(f"{title}:")
            lines += _containers(specs, statuses, probes, due, now)
    lines.append("Conditions:")
    conditions = [
        (as_str(c.get("type")), as_str(c.get("status")))
        for c in (as_map(c) for c in as_list(status.get("conditions")))
    ]
    lines += _indented(table(("Type", "Status"), conditions) if conditions else "<none>")
    lines.append("Events:" + ("" if _events(snapshot, meta) else "  <none>"))
    events = _events(snapshot, meta)
    if events:
        rows = [_event_row(e, now) for e in events]
        lines += _indented(table(("Type", "Reason", "Age", "Object", "Message"), rows))
    return "\n".join(lines) + "\n"


def _kv(label: str, value: str, indent: int = 0, width: int = 16) -> str:
    return " " * indent + f"{label + ':':<{width}}{value}".rstrip()


def _indented(text: str, by: int = 2) -> list[str]:
    return [" " * by + line for line in text.splitlines()]


def _when(value: Any, now: datetime) -> str:
    at = timestamp(value)
    return f"{as_str(value)} ({human_duration(now - at)} ago)" if at else NONE


def _pairs(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={as_str(v)}" for k, v in sorted(values.items())) or NONE


def _containers(
    specs: Sequence[Mapping[str, Any]],
    statuses: Sequence[Mapping[str, Any]],
    probes: Sequence[Mapping[str, Any]],
    due: Mapping[str, Any],
    now: datetime,
) -> list[str]:
    by_name = {as_str(s.get("name")): s for s in statuses}
    names = [as_str(c.get("name")) for c in specs] or list(by_name)
    spec_by_name = {as_str(c.get("name")): c for c in specs}
    lines = []
    for name in names:
        spec, status = spec_by_name.get(name, {}), by_name.get(name, {})
        lines.append(f"  {name}:")
        lines.append(_kv("Container ID", as_str(status.get("containerID")) or NONE, 4, 18))
        lines.append(
            _kv("Image", as_str(spec.get("image")) or as_str(status.get("image")) or NONE, 4, 18)
        )
        for key, label in (("command", "Command"), ("args", "Args")):
            if as_list(spec.get(key)):
                lines.append(_kv(label, " ".join(as_str(a) for a in as_list(spec[key])), 4, 18))
        lines += _state("State", as_map(status.get("state")), now)
        last = as_map(status.get("lastState"))
        if last:
            lines += _state("Last State", last, now)
        lines.append(_kv("Ready", str(status.get("ready") is True), 4, 18))
        lines.append(_kv("Restart Count", str(as_int(status.get("restartCount"))), 4, 18))
        until = timestamp(due.get(name))
        if until is not None and until > now:
            lines.append(_kv("Back-off", f"next try in {human_duration(until - now)}", 4, 18))
        limits = as_map(spec.get("limits"))
        if limits:
            lines.append(_kv("Limits", _pairs(limits), 4, 18))
        for field, label in (
            ("livenessProbe", "Liveness"),
            ("readinessProbe", "Readiness"),
            ("startupProbe", "Startup"),
        ):
            if as_str(spec.get(field)):
                lines.append(_kv(label, as_str(spec.get(field)), 4, 18))
        lines += _probe_results([p for p in probes if as_str(p.get("container")) == name], now)
    return lines


def _state(label: str, state: Mapping[str, Any], now: datetime) -> list[str]:
    """``Running``/``Waiting``/``Terminated`` with the details kubectl prints under it."""
    for kind in ("running", "waiting", "terminated"):
        if kind in state:
            detail = as_map(state.get(kind))
            lines = [_kv(label, kind.capitalize(), 4, 18)]
            for key, name in (("reason", "Reason"), ("message", "Message")):
                if as_str(detail.get(key)):
                    lines.append(_kv(name, as_str(detail.get(key)), 6, 16))
            if kind == "terminated":
                lines.append(_kv("Exit Code", str(as_int(detail.get("exitCode"))), 6, 16))
            for key, name in (("startedAt", "Started"), ("finishedAt", "Finished")):
                if as_str(detail.get(key)):
                    lines.append(_kv(name, _when(detail.get(key), now), 6, 16))
            return lines
    return [_kv(label, "Unknown", 4, 18)]


def _probe_results(probes: Sequence[Mapping[str, Any]], now: datetime) -> list[str]:
    if not probes:
        return []
    lines = ["    Probe Results:"]
    for p in probes:
        probed = timestamp(p.get("lastProbeTime"))
        when = f"{human_duration(now - probed)} ago" if probed else "never"
        text = (
            f"{as_str(p.get('probe')) or '?'}: {as_str(p.get('result')) or 'Unknown'} "
            f"(last {as_str(p.get('lastResult')) or 'none'} {when}, "
            f"{as_int(p.get('consecutiveFailures'))} failures, "
            f"{as_int(p.get('consecutiveSuccesses'))} successes in a row)"
        )
        lines.append("      " + text)
        if as_str(p.get("message")):
            lines.append("        " + as_str(p.get("message")))
        failure = as_map(p.get("lastFailure"))
        if failure and as_str(failure.get("message")):
            lines.append("        restarted after: " + as_str(failure.get("message")))
    return lines


def _events(snapshot: Mapping[str, Any], meta: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    namespace = as_str(meta.get("namespace")) or "default"
    name, uid = as_str(meta.get("name")), as_str(meta.get("uid"))
    found = []
    for event in (as_map(e) for e in as_list(snapshot.get("events"))):
        obj = as_map(event.get("involvedObject"))
        if as_str(obj.get("kind")) not in ("", "Pod"):
            continue  # the Node's own events
        if (as_str(obj.get("namespace")) or "default", as_str(obj.get("name"))) != (
            namespace,
            name,
        ):
            continue
        if uid and as_str(obj.get("uid")) not in ("", uid):
            continue  # an earlier pod of the same name
        found.append(event)
    return found


def _event_row(event: Mapping[str, Any], now: datetime) -> tuple[str, ...]:
    last = timestamp(event.get("lastTimestamp"))
    first = timestamp(event.get("firstTimestamp")) or last
    count = as_int(event.get("count")) or 1
    age = human_duration(now - last) if last else "<unknown>"
    if count > 1 and first is not None:
        age = f"{age} (x{count} over {human_duration(now - first)})"
    path = as_str(as_map(event.get("involvedObject")).get("fieldPath"))
    return (
        as_str(event.get("type")),
        as_str(event.get("reason")),
        age,
        path or "pod",
        as_str(event.get("message")),
    )
