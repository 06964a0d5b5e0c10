"""Render a status snapshot as the plain-text view of ``nodeagent status``.

Pure: ``render_status(snapshot, now)`` is a function of its arguments, so the exact output is
unit-tested against canned snapshots and the clock is an argument, not a call.

The input comes over a socket from a possibly different version of the agent, so the reader
is forgiving: a missing or mistyped field renders as a blank or ``<none>``, never a traceback.
Column meanings follow ``kubectl get pods`` where they overlap (READY, RESTARTS, AGE with
kubectl's rounding), so the output reads the way operators expect.

Layout::

    NODE: n1   RUNTIME: containerd 1.6.20   READY: True   PODS: 2/110

    NAMESPACE   NAME    PHASE     READY   RESTARTS   AGE   IP          REASON
    default     web     Running   1/1     0          5m    10.88.0.5
    default     crash   Running   0/1     4          2h    10.88.0.6   CrashLoopBackOff
    default     api     Running   0/1     0          1m    10.88.0.7   Readiness probe failed: ...

    PROBES:
    NAMESPACE   NAME   CONTAINER   PROBE       RESULT    LAST      FAILURES   SUCCESSES   ...
    default     api    api         readiness   Failure   Failure   4          0           ...

    SERVICES:
    NAMESPACE   NAME   TYPE       CLUSTER-IP   EXTERNAL-IP   PORT(S)        ENDPOINTS
    default     web    NodePort   10.96.0.1    <none>        80:30080/TCP   2/3

    PROXY: iptables (nft)   LAST SYNC: 3s ago (partial, 0.042 s)   RULES: 57   SYNCS: 1 full, ...

    ERRORS:
    SOURCE                OBJECT        FIELD                      MESSAGE
    /etc/pods/bad.yaml    default/bad   spec.containers[0].image   must not be empty

ENDPOINTS is ready/total; ``-`` for services the proxy does not program (ExternalName,
headless, or one whose clusterIP/nodePort could not be allocated).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from nodeagent.server.fmt import GAP as _GAP
from nodeagent.server.fmt import as_int as _int
from nodeagent.server.fmt import as_list as _list
from nodeagent.server.fmt import as_map as _map
from nodeagent.server.fmt import as_str as _str
from nodeagent.server.fmt import human_duration
from nodeagent.server.fmt import table as _table
from nodeagent.server.fmt import timestamp as _timestamp

NONE = "<none>"


VIEWS = ("all", "pods", "services")  # the node's own view is nodeview.render_node


def render_status(
    snapshot: Mapping[str, Any],
    now: datetime,
    *,
    view: str = "all",
    namespace: str | None = None,
) -> str:
    """The whole overview (``all``) or the pods or services subview; ``namespace`` keeps only
    that namespace's objects."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    if namespace is not None:
        snapshot = in_namespace(snapshot, namespace)
    sections = []
    if view == "all":
        sections.append(_node_line(_map(snapshot.get("node")), len(_list(snapshot.get("pods")))))
    if view in ("all", "pods"):
        sections.append(_pods_section(_list(snapshot.get("pods")), now))
        probes = _probe_rows(_list(snapshot.get("pods")), now)
        if probes:
            sections.append("PROBES:\n" + _table(_PROBE_HEADER, probes))
    if view in ("all", "services"):
        sections += _service_sections(snapshot, now, empty="No services." if view != "all" else "")
    errors = _errors(snapshot, pods_only=view == "pods")
    if errors and view != "services":
        sections.append("ERRORS:\n" + _table(("SOURCE", "OBJECT", "FIELD", "MESSAGE"), errors))
    return "\n\n".join(sections) + "\n"


def in_namespace(snapshot: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    """The snapshot with only ``namespace``'s pods, services and events (node-wide parts stay)."""

    def ours(obj: Any, meta_key: str = "metadata") -> bool:
        return (_str(_map(_map(obj).get(meta_key)).get("namespace")) or "default") == namespace

    filtered = dict(snapshot)
    filtered["pods"] = [p for p in _list(snapshot.get("pods")) if ours(p)]
    filtered["services"] = [s for s in _list(snapshot.get("services")) if ours(s)]
    filtered["events"] = [e for e in _list(snapshot.get("events")) if ours(e, "involvedObject")]
    filtered["errors"] = [
        e
        for e in _list(snapshot.get("errors"))
        if _str(_map(e).get("object")).partition("/")[0] in ("", namespace)
    ]
    return filtered


# --- Node ------------------------------------------------------------------------------------


def _node_line(node: Mapping[str, Any], pod_count: int) -> str:
    runtime = _map(node.get("runtime"))
    runtime_text = " ".join(
        s for s in (_str(runtime.get("name")), _str(runtime.get("version"))) if s
    )
    conditions = [_map(c) for c in _list(node.get("conditions"))]
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    fields = [
        f"NODE: {_str(node.get('name')) or NONE}",
        f"RUNTIME: {runtime_text or NONE}",
        f"READY: {_ready_text(ready)}",
    ]
    max_pods = _str(_map(node.get("allocatable")).get("pods")) or _str(
        _map(node.get("capacity")).get("pods")
    )
    fields.append(f"PODS: {pod_count}/{max_pods}" if max_pods else f"PODS: {pod_count}")
    # Every other node condition is a problem when True (MemoryPressure, NetworkUnavailable...).
    problems = [
        _str(c.get("type"))
        for c in conditions
        if c.get("type") != "Ready" and c.get("status") == "True"
    ]
    if problems:
        fields.append(f"PROBLEMS: {','.join(problems)}")
    return _GAP.join(fields)


def _ready_text(condition: Mapping[str, Any] | None) -> str:
    if condition is None:
        return "Unknown"
    status = _str(condition.get("status")) or "Unknown"
    if status == "True":
        return status
    why = ": ".join(s for s in (_str(condition.get("reason")), _str(condition.get("message"))) if s)
    return f"{status} ({why})" if why else status


# --- Pods ------------------------------------------------------------------------------------

_POD_HEADER = ("NAMESPACE", "NAME", "PHASE", "READY", "RESTARTS", "AGE", "IP", "REASON")


def _pods_section(pods: Sequence[Any], now: datetime) -> str:
    if not pods:
        return "No pods."
    rows = [_pod_row(_map(p), now) for p in pods]
    rows.sort(key=lambda r: (r[0], r[1]))
    return _table(_POD_HEADER, rows)


def _pod_row(pod: Mapping[str, Any], now: datetime) -> tuple[str, ...]:
    meta = _map(pod.get("metadata"))
    status = _map(pod.get("status"))
    containers = [_map(c) for c in _list(status.get("containerStatuses"))]
    inits = [_map(c) for c in _list(status.get("initContainerStatuses"))]
    ready = sum(1 for c in containers if c.get("ready") is True)
    restarts = sum(_int(c.get("restartCount")) for c in (*inits, *containers))
    created = _timestamp(meta.get("creationTimestamp")) or _timestamp(status.get("startTime"))
    return (
        _str(meta.get("namespace")) or "default",
        _str(meta.get("name")) or NONE,
        _str(status.get("phase")) or "Unknown",
        f"{ready}/{len(containers)}",
        str(restarts),
        human_duration(now - created) if created else "<unknown>",
        _str(status.get("podIP")) or NONE,
        _reason(status, inits, containers, [_map(p) for p in _list(pod.get("probes"))])
        + _retry(pod, [*inits, *containers], now),
    )


def _retry(pod: Mapping[str, Any], containers: Sequence[Mapping[str, Any]], now: datetime) -> str:
    """When the first container in back-off is tried again (crash loop or image pull)."""
    due = _map(pod.get("backoffUntil"))
    for c in containers:
        until = _timestamp(due.get(_str(c.get("name"))))
        if until is not None and c.get("ready") is not True:
            left = until - now
            return f" (retry in {human_duration(left)})" if left.total_seconds() > 0 else ""
    return ""


def _reason(
    status: Mapping[str, Any],
    inits: Sequence[Mapping[str, Any]],
    containers: Sequence[Mapping[str, Any]],
    probes: Sequence[Mapping[str, Any]] = (),
) -> str:
    """Why the pod is not fully ready: the first not-ready container's waiting/terminated reason.

    Init containers come first: while one crash-loops, the app containers only say
    "PodInitializing", which hides the cause. A running container that is not ready has no
    such reason; its latest probe failure is the why. A pod-level reason (e.g. Evicted) is the
    fallback.
    """
    for c in inits:
        state = _map(c.get("state"))
        terminated = _map(state.get("terminated"))
        if terminated and _int(terminated.get("exitCode")) == 0:
            continue  # completed successfully: not a reason
        reason = _state_reason(state)
        if reason and c.get("ready") is not True:
            return reason
    for c in containers:
        if c.get("ready") is True:
            continue
        reason = _state_reason(_map(c.get("state"))) or _probe_reason(probes, c.get("name"))
        if reason:
            return reason
    return _str(status.get("reason"))


def _probe_reason(probes: Sequence[Mapping[str, Any]], container: Any) -> str:
    """The container's latest probe failure, worded as the kubelet's Unhealthy event."""
    for probe in probes:
        if probe.get("container") == container and probe.get("lastResult") == "Failure":
            kind = _str(probe.get("probe"))
            text = f"{kind.capitalize()} probe failed" if kind else "Probe failed"
            message = _str(probe.get("message"))
            return f"{text}: {message}" if message else text
    return ""


# --- Probes ----------------------------------------------------------------------------------

_PROBE_HEADER = (
    "NAMESPACE",
    "NAME",
    "CONTAINER",
    "PROBE",
    "RESULT",
    "LAST",
    "FAILURES",
    "SUCCESSES",
    "PROBED",
    "MESSAGE",
)


def _probe_rows(pods: Sequence[Any], now: datetime) -> list[tuple[str, ...]]:
    """One row per probe: the result acted on, the latest outcome, the streaks, and why."""
    rows: list[tuple[str, ...]] = []
    for pod in (_map(p) for p in pods):
        meta = _map(pod.get("metadata"))
        for probe in (_map(p) for p in _list(pod.get("probes"))):
            probed = _timestamp(probe.get("lastProbeTime"))
            rows.append(
                (
                    _str(meta.get("namespace")) or "default",
                    _str(meta.get("name")) or NONE,
                    _str(probe.get("container")) or NONE,
                    _str(probe.get("probe")) or NONE,
                    _str(probe.get("result")) or "Unknown",
                    _str(probe.get("lastResult")) or NONE,
                    str(_int(probe.get("consecutiveFailures"))),
                    str(_int(probe.get("consecutiveSuccesses"))),
                    f"{human_duration(now - probed)} ago" if probed else "never",
                    _str(probe.get("message")),
                )
            )
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    return rows


_PULL_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")


def _state_reason(state: Mapping[str, Any]) -> str:
    """The waiting or terminated reason; a pull failure says what failed (kubectl hides it)."""
    for kind in ("waiting", "terminated"):
        detail = _map(state.get(kind))
        reason = _str(detail.get("reason"))
        message = _str(detail.get("message"))
        if reason in _PULL_REASONS and message:
            return f"{reason}: {message}"
        if reason:
            return reason
    return ""


# --- Services and the proxy ----------------------------------------------------------------

_SERVICE_HEADER = ("NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "ENDPOINTS")


def _service_sections(snapshot: Mapping[str, Any], now: datetime, *, empty: str = "") -> list[str]:
    """The services table (as ``kubectl get svc``, plus ready/total endpoints), proxy line."""
    sections = []
    rows = [_service_row(_map(s)) for s in _list(snapshot.get("services"))]
    if rows:
        rows.sort(key=lambda r: (r[0], r[1]))
        sections.append("SERVICES:\n" + _table(_SERVICE_HEADER, rows))
    elif empty:
        sections.append(empty)
    proxy = snapshot.get("proxy")
    if isinstance(proxy, Mapping):
        sections.append(proxy_line(proxy, now))
    return sections


def _service_row(service: Mapping[str, Any]) -> tuple[str, ...]:
    meta, spec = _map(service.get("metadata")), _map(service.get("spec"))
    kind = _str(spec.get("type")) or "ClusterIP"
    balancer = _map(_map(service.get("status")).get("loadBalancer"))
    ingress = [_str(_map(i).get("ip")) for i in _list(balancer.get("ingress"))]
    external = [a for a in (*ingress, *(_str(a) for a in _list(spec.get("externalIPs")))) if a]
    if kind == "ExternalName":
        external = [_str(spec.get("externalName"))]
    ports = []
    for port in (_map(p) for p in _list(spec.get("ports"))):
        number = _str(port.get("port"))
        node_port = _str(port.get("nodePort"))
        protocol = _str(port.get("protocol")) or "TCP"
        ports.append(f"{number}:{node_port}/{protocol}" if node_port else f"{number}/{protocol}")
    ready, not_ready = _list(service.get("endpoints")), _list(service.get("notReadyEndpoints"))
    proxied = service.get("proxied") is not False and kind != "ExternalName"
    return (
        _str(meta.get("namespace")) or "default",
        _str(meta.get("name")) or NONE,
        kind,
        _str(spec.get("clusterIP")) or NONE,
        ",".join(external) or NONE,
        ",".join(ports) or NONE,
        f"{len(ready)}/{len(ready) + len(not_ready)}" if proxied else "-",
    )


def proxy_line(proxy: Mapping[str, Any], now: datetime) -> str:
    backend = _str(proxy.get("backend"))
    fields = [f"PROXY: iptables ({backend})" if backend else "PROXY: starting"]
    synced = _timestamp(proxy.get("lastSync"))
    if synced is not None:
        duration = proxy.get("duration")
        took = f"{duration:.3f} s" if isinstance(duration, int | float) else "?"
        what = ", ".join(s for s in (_str(proxy.get("lastSyncKind")), took) if s)
        fields.append(f"LAST SYNC: {human_duration(now - synced)} ago ({what})")
        fields.append(f"RULES: {_int(proxy.get('rules'))}")
        fields.append(
            f"SYNCS: {_int(proxy.get('fullSyncs'))} full, {_int(proxy.get('partialSyncs'))} partial"
        )
    elif backend:
        fields.append("LAST SYNC: never")
    if _int(proxy.get("failedSyncs")):
        fields.append(f"FAILED: {_int(proxy.get('failedSyncs'))}")
    error = _str(proxy.get("lastError"))
    if error:
        fields.append(f"ERROR: {error}")
    for warning in _list(proxy.get("warnings")):
        fields.append(f"WARNING: {_str(warning)}")
    return _GAP.join(fields)


# --- Errors ----------------------------------------------------------------------------------


def _errors(snapshot: Mapping[str, Any], *, pods_only: bool = False) -> list[tuple[str, ...]]:
    """Manifest errors of the node, then per-pod errors (attributed to their pod)."""
    node_errors = [] if pods_only else _list(snapshot.get("errors"))
    rows = [_error_row(e, default_object="") for e in node_errors]
    for p in _list(snapshot.get("pods")):
        meta = _map(_map(p).get("metadata"))
        obj = f"{_str(meta.get('namespace')) or 'default'}/{_str(meta.get('name'))}"
        rows += [_error_row(e, default_object=obj) for e in _list(_map(p).get("errors"))]
    return rows


def _error_row(error: Any, *, default_object: str) -> tuple[str, ...]:
    if not isinstance(error, Mapping):
        return ("", default_object, "", _str(error))  # a plain string message
    return (
        _str(error.get("source")),
        _str(error.get("object")) or default_object,
        _str(error.get("field")),
        _str(error.get("message")),
    )
