"""The kubelet's admission of API pods (pure): does a new pod fit this node?

The scheduler has already chosen this node, but its view may be stale, and pods can be bound
by hand (``spec.nodeName``). So the kubelet checks again before it starts a pod (upstream
``lifecycle/predicate.go``, "GeneralPredicates"), and a pod that does not fit ends
``Failed`` with the reason, never started:

- ``OutOfpods``: the node runs ``allocatable.pods`` pods already;
- ``OutOfcpu`` / ``OutOfmemory``: the pod's requests plus those of the pods admitted before
  it exceed ``allocatable``. A pod's request is the larger of the sum over its app containers
  and the largest init container's (init containers run one at a time); a container with a
  limit but no request requests its limit, as API defaulting makes it;
- ``NodeAffinity``: ``spec.nodeSelector`` or the required node affinity
  (``nodeSelectorTerms``: ORed terms of ANDed ``matchExpressions`` with In, NotIn, Exists,
  DoesNotExist, Gt, Lt, and ``matchFields`` on ``metadata.name``) does not match the node.

Pods are admitted oldest first, against the pods that run (static pods included) and those
admitted before them in the same pass. An admitted pod is never asked again; a rejected one
stays rejected (its ``Failed`` status is final).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nodeagent.apiserver.pods import Rejection
from nodeagent.model import quantity
from nodeagent.model.pod import Container, Pod

Obj = dict[str, Any]

AFFINITY_REASON = "NodeAffinity"
AFFINITY_MESSAGE = (
    "Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector"
)


@dataclass(frozen=True)
class NodeView:
    """What admission needs of the node: its name, labels and allocatable resources."""

    name: str
    labels: Mapping[str, str]
    cpu_millis: int
    memory_bytes: int
    pods: int

    @classmethod
    def from_allocatable(
        cls, name: str, labels: Mapping[str, str], allocatable: Mapping[str, str]
    ) -> NodeView:
        return cls(
            name=name,
            labels=dict(labels),
            cpu_millis=quantity.cpu_millis(allocatable.get("cpu", "0")),
            memory_bytes=quantity.memory_bytes(allocatable.get("memory", "0")),
            pods=int(allocatable.get("pods", "0")),
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
    apps = sum(_request(c, resource) for c in pod.spec.containers)
    inits = max((_request(c, resource) for c in pod.spec.init_containers), default=0)
    return max(apps, inits)


def check(pod: Pod, obj: Obj, node: NodeView, admitted: Iterable[Pod]) -> Rejection | None:
    """Why ``pod`` (``obj``: its API document) cannot join ``admitted`` on ``node``."""
    spec = obj.get("spec") or {}
    if not _selector_matches(spec.get("nodeSelector") or {}, node) or not _affinity_matches(
        spec.get("affinity") or {}, node
    ):
        return Rejection(AFFINITY_REASON, AFFINITY_MESSAGE)
    others = list(admitted)
    if len(others) + 1 > node.pods:
        return Rejection(
            "OutOfpods", f"Node didn't have enough resource: pods, capacity: {node.pods}"
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
    return None


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
