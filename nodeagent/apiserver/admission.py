"""The kubelet's admission of API pods (pure): does a new pod fit this node?

The scheduler has already chosen this node, but its view may be stale, and pods can be bound
by hand (``spec.nodeName``). So the kubelet checks again before it starts a pod (upstream
``lifecycle/predicate.go``: the scheduler's ``AdmissionCheck`` plus a taint check), and a pod
that does not fit ends ``Failed`` with the first reason, never started. In upstream's order:

- ``PodOSSelectorNodeLabelDoesNotMatch``: the pod's ``kubernetes.io/os`` label is not linux;
- ``OutOfpods``: the node runs ``allocatable.pods`` pods already;
- ``OutOfcpu`` / ``OutOfmemory``: the pod's requests plus those of the pods admitted before
  it exceed ``allocatable``. A pod's request is as upstream ``PodRequests``: the app
  containers' sum plus every sidecar's (restartable init containers run beside them), or, if
  larger, what the busiest moment of the init sequence asks (a regular init container plus
  the sidecars started before it). A container with a limit but no request requests its
  limit, as API defaulting makes it;
- ``NodeAffinity``: ``spec.nodeSelector`` or the required node affinity
  (``nodeSelectorTerms``: ORed terms of ANDed ``matchExpressions`` with In, NotIn, Exists,
  DoesNotExist, Gt, Lt, and ``matchFields`` on ``metadata.name``, as DaemonSet pods carry)
  does not match the node's labels, read fresh from its Node (``kubectl label`` counts);
- ``NodePorts``: an app container's ``hostPort`` (and protocol) is taken on the same host IP
  by an admitted pod (``0.0.0.0``, or no hostIP, takes it on every IP);
- ``TaintToleration``: the node has a ``NoExecute`` taint the pod does not tolerate. Only
  NoExecute counts (NoSchedule is the scheduler's business), so DaemonSet pods, which
  tolerate not-ready and unreachable, run on a node that is not Ready yet.

Pods are admitted oldest first, against the pods that run (static pods included) and those
admitted before them in the same pass. An admitted pod is never asked again; a rejected one
stays rejected (its ``Failed`` status is final). A pod found running in the runtime when the
agent starts counts as admitted: upstream re-admits such pods on restart, and can kill a
running pod because a label changed (kubernetes/kubernetes#124586, accepted as a bug); we do
what its proposed fix does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nodeagent.apiserver.pods import Rejection
from nodeagent.model import quantity
from nodeagent.model.pod import Container, Pod

Obj = dict[str, Any]

AFFINITY_REASON = "NodeAffinity"
AFFINITY_MESSAGE = (
    "Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector"
)
PORTS_REASON = "NodePorts"
PORTS_MESSAGE = (
    "Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports"
)
TAINT_REASON = "TaintToleration"
TAINT_MESSAGE = "Predicate TaintToleration failed: node(s) had taints that the pod didn't tolerate"
OS_REASON = "PodOSSelectorNodeLabelDoesNotMatch"
OS_MESSAGE = "Failed to admit pod as the `kubernetes.io/os` label doesn't match node label"
OS_LABEL = "kubernetes.io/os"
ALL_IPS = "0.0.0.0"


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str  # NoSchedule, PreferNoSchedule or NoExecute


@dataclass(frozen=True)
class NodeView:
    """What admission needs of the node: name, labels, taints and allocatable resources."""

    name: str
    labels: Mapping[str, str]
    cpu_millis: int
    memory_bytes: int
    pods: int
    taints: tuple[Taint, ...] = field(default=())

    @classmethod
    def from_allocatable(
        cls,
        name: str,
        labels: Mapping[str, str],
        allocatable: Mapping[str, str],
        *,
        taints: tuple[Taint, ...] = (),
    ) -> NodeView:
        return cls(
            name=name,
            labels=dict(labels),
            cpu_millis=quantity.cpu_millis(allocatable.get("cpu", "0")),
            memory_bytes=quantity.memory_bytes(allocatable.get("memory", "0")),
            pods=int(allocatable.get("pods", "0")),
            taints=taints,
        )

    @classmethod
    def from_node(
        cls,
        name: str,
        node: Obj | None,
        *,
        default_labels: Mapping[str, str],
        allocatable: Mapping[str, str],
    ) -> NodeView:
        """The view of our Node document (``default_labels`` until there is one)."""
        labels = labels_of(node) if node is not None else default_labels
        return cls.from_allocatable(name, labels, allocatable, taints=node_taints(node))


def labels_of(node: Obj | None) -> dict[str, str]:
    labels = ((node or {}).get("metadata") or {}).get("labels") or {}
    return {str(k): str(v) for k, v in labels.items()}


def node_taints(node: Obj | None) -> tuple[Taint, ...]:
    """The taints of a Node document (``spec.taints``); malformed entries are skipped."""
    taints = ((node or {}).get("spec") or {}).get("taints") or []
    return tuple(
        Taint(str(t.get("key") or ""), str(t.get("value") or ""), str(t.get("effect") or ""))
        for t in taints
        if isinstance(t, dict)
    )


def _request(container: Container, resource: str) -> int:
    r = container.resources
    if resource == "cpu":
        value = r.cpu_request_millis if r.cpu_request_millis is not None else r.cpu_limit_millis
    else:
        value = (
            r.memory_request_bytes if r.memory_request_bytes is not None else r.memory_limit_bytes
        )
    return value or 0


def pod_request(pod: Pod, resource: str) -> int:
    """What the pod requests of ``resource`` (cpu millis, memory bytes), as ``PodRequests``."""
    total = sum(_request(c, resource) for c in pod.spec.containers)
    sidecars = 0  # the sidecars started so far: they keep running while later inits run
    peak = 0
    for container in pod.spec.init_containers:
        wanted = _request(container, resource)
        if container.sidecar:
            total += wanted
            sidecars += wanted
            peak = max(peak, sidecars)
        else:
            peak = max(peak, sidecars + wanted)
    return max(total, peak)


def check(pod: Pod, obj: Obj, node: NodeView, admitted: Iterable[Pod]) -> Rejection | None:
    """Why ``pod`` (``obj``: its API document) cannot join ``admitted`` on ``node``."""
    spec = obj.get("spec") or {}
    if pod.labels.get(OS_LABEL, "linux") != "linux":
        return Rejection(OS_REASON, OS_MESSAGE)
    others = list(admitted)
    if len(others) + 1 > node.pods:
        return Rejection(
            "OutOfpods",
            "Node didn't have enough resource: pods, requested: 1, "
            f"used: {len(others)}, capacity: {node.pods}",
        )
    for resource, capacity in (("cpu", node.cpu_millis), ("memory", node.memory_bytes)):
        wanted = pod_request(pod, resource)
        if wanted == 0:
            continue
        used = sum(pod_request(p, resource) for p in others)
        if used + wanted > capacity:
            return Rejection(
                f"OutOf{resource}",
                f"Node didn't have enough resource: {resource}, requested: {wanted}, "
                f"used: {used}, capacity: {capacity}",
            )
    if not _selector_matches(spec.get("nodeSelector") or {}, node) or not _affinity_matches(
        spec.get("affinity") or {}, node
    ):
        return Rejection(AFFINITY_REASON, AFFINITY_MESSAGE)
    if _ports_conflict(host_ports(pod), [p for o in others for p in host_ports(o)]):
        return Rejection(PORTS_REASON, PORTS_MESSAGE)
    if untolerated_taint(spec.get("tolerations") or [], node.taints) is not None:
        return Rejection(TAINT_REASON, TAINT_MESSAGE)
    return None


HostPort = tuple[str, str, int]  # (host IP, protocol, port)


def host_ports(pod: Pod) -> list[HostPort]:
    """The host ports the pod's app containers take. A hostNetwork pod's container ports are
    host ports (API defaulting sets ``hostPort`` to ``containerPort`` there)."""
    ports = []
    for container in pod.spec.containers:
        for port in container.ports:
            number = port.host_port or (port.container_port if pod.spec.host_network else 0)
            if number > 0:
                ports.append((port.host_ip or ALL_IPS, port.protocol or "TCP", number))
    return ports


def _ports_conflict(wanted: Iterable[HostPort], used: Iterable[HostPort]) -> bool:
    taken = list(used)
    for ip, protocol, number in wanted:
        for other_ip, other_protocol, other_number in taken:
            if (protocol, number) != (other_protocol, other_number):
                continue
            if ip == other_ip or ALL_IPS in (ip, other_ip):
                return True
    return False


def untolerated_taint(tolerations: Iterable[Any], taints: Iterable[Taint]) -> Taint | None:
    """The first NoExecute taint no toleration tolerates (the kubelet checks only those)."""
    rules = [t for t in tolerations if isinstance(t, dict)]
    for taint in taints:
        if taint.effect != "NoExecute":
            continue
        if not any(_tolerates(rule, taint) for rule in rules):
            return taint
    return None


def _tolerates(rule: Mapping[str, Any], taint: Taint) -> bool:
    effect, key = str(rule.get("effect") or ""), str(rule.get("key") or "")
    if effect and effect != taint.effect:
        return False
    if key and key != taint.key:
        return False
    operator = str(rule.get("operator") or "Equal")
    if operator == "Exists":
        return True
    return operator == "Equal" and str(rule.get("value") or "") == taint.value


def _selector_matches(selector: Mapping[str, Any], node: NodeView) -> bool:
    return all(node.labels.get(str(k)) == str(v) for k, v in selector.items())


def _affinity_matches(affinity: Mapping[str, Any], node: NodeView) -> bool:
    node_affinity = affinity.get("nodeAffinity") or {}
    required = node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    terms = required.get("nodeSelectorTerms")
    if not terms:
        return True  # no requirement (an empty term list matches nothing upstream, but the
        # API rejects it, so only "absent" reaches us)
    return any(_term_matches(term or {}, node) for term in terms)


def terms_match(terms: Iterable[Any], node: NodeView) -> bool:
    """Whether ``node`` matches any of the nodeSelectorTerms (ORed, as upstream); a PV's
    ``nodeAffinity.required`` is read the same way."""
    return any(_term_matches(term or {}, node) for term in terms)


def _term_matches(term: Mapping[str, Any], node: NodeView) -> bool:
    expressions = term.get("matchExpressions") or []
    fields = term.get("matchFields") or []
    if not expressions and not fields:
        return False  # an empty term matches no node
    labels = node.labels
    for expr in expressions:
        if not _expression_matches(
            expr, labels.get(str(expr.get("key"))), str(expr.get("key")) in labels
        ):
            return False
    for expr in fields:
        value = node.name if expr.get("key") == "metadata.name" else None
        if not _expression_matches(expr, value, value is not None):
            return False
    return True


def _expression_matches(expr: Mapping[str, Any], value: str | None, present: bool) -> bool:
    op = expr.get("operator")
    values = [str(v) for v in expr.get("values") or []]
    if op == "In":
        return present and value in values
    if op == "NotIn":
        return not present or value not in values
    if op == "Exists":
        return present
    if op == "DoesNotExist":
        return not present
    if op in ("Gt", "Lt") and present and len(values) == 1:
        try:
            have, bound = int(value or ""), int(values[0])
        except ValueError:
            return False
        return have > bound if op == "Gt" else have < bound
    return False
