"""Authorization as kube-apiserver does it for nodes: Node authorizer, RBAC, NodeRestriction.

Follows plugin/pkg/auth/authorizer/node (node_authorizer.go, with AuthorizeNodeWithSelectors
on, the default since 1.32), the bootstrap policy's ``system:node-proxier`` ClusterRole and the
NodeRestriction admission plugin (plugin/pkg/admission/noderestriction):

- A node is the user ``system:node:<name>`` in the group ``system:nodes``. It may:
  - get, list and watch only its own Node (a list or watch needs ``fieldSelector
    metadata.name=<self>``); create, update and patch Nodes and ``nodes/status`` (which
    NodeRestriction narrows to its own, without changing its taints or setting labels
    outside the kubelet's set);
  - get the pods bound to it; list and watch pods only with ``fieldSelector
    spec.nodeName=<self>``; create and delete pods (NodeRestriction: only mirror pods bound
    to itself, owned by its Node, referencing no Secret, ConfigMap, PVC or service account;
    only pods bound to itself deleted); update and patch ``pods/status`` of its own pods;
  - get, list and watch (by name) the Secrets and ConfigMaps its pods reference; create
    tokens for the service accounts its pods run as, bound to such a pod;
  - get (only) the PersistentVolumeClaims its pods use (``persistentVolumeClaim.claimName``,
    and ``<pod>-<volume>`` for a generic ephemeral volume) and the PersistentVolumes those
    claims are bound to (``spec.volumeName``): the graph's pod -> pvc -> pv edges;
  - its own Lease in ``kube-node-lease``;
  - get, list and watch Services and RuntimeClasses; get Endpoints; create, update and
    patch Events (the static "node rules").
  Everything else (listing all Nodes, EndpointSlices, Endpoints) needs RBAC: a
  ClusterRoleBinding to a ClusterRole such as ``system:node-proxier`` (bootstrapped here as
  upstream has it: list/watch Services and Endpoints, get/list/watch Nodes, events, list/watch
  EndpointSlices).
- ``system:masters`` (the admin token) may do everything. Other users (service-account tokens)
  are not restricted here: only nodes are.
- A refusal is a 403 Forbidden with upstream's message: ``nodes is forbidden: User
  "system:node:n1" cannot list resource "nodes" in API group "" at the cluster scope: node
  'n1' cannot read all nodes, only its own Node object``.

Simplified: RBAC reads ClusterRoleBindings and ClusterRoles only (no namespaced Roles, no
aggregation); the node graph is computed from the stored pods on each request.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tests.apiserver import errors
from tests.apiserver.resources import (
    CLUSTERROLEBINDINGS,
    CLUSTERROLES,
    CONFIGMAPS,
    CSINODES,
    LEASES,
    NODES,
    PERSISTENTVOLUMECLAIMS,
    PERSISTENTVOLUMES,
    PODS,
    SECRETS,
    VOLUMEATTACHMENTS,
    ResourceType,
)

if TYPE_CHECKING:
    from tests.apiserver.store import Store

Obj = dict[str, Any]
NODES_GROUP = "system:nodes"
NODE_PREFIX = "system:node:"
MASTERS = "system:masters"
NODE_PROXIER = "system:node-proxier"
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
NODE_LEASE_NAMESPACE = "kube-node-lease"
RBAC_LABEL = {"kubernetes.io/bootstrapping": "rbac-defaults"}


@dataclass(frozen=True)
class Identity:
    user: str
    groups: tuple[str, ...] = ()

    @property
    def node(self) -> str | None:
        """The node name of a node credential, else None."""
        if NODES_GROUP in self.groups and self.user.startswith(NODE_PREFIX):
            return self.user[len(NODE_PREFIX) :]
        return None


@dataclass(frozen=True)
class Attributes:
    """One resource request, as the authorizer sees it."""

    verb: str  # get list watch create update patch delete deletecollection
    rt: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None = None
    field_selector: dict[str, str] = field(default_factory=dict)  # equality terms only


def _rule(groups: list[str], resources: list[str], verbs: list[str]) -> Obj:
    return {"apiGroups": groups, "resources": resources, "verbs": verbs}


def _events_rule() -> Obj:
    return _rule(["", "events.k8s.io"], ["events"], ["create", "patch", "update"])


# The bootstrap policy's roles a test needs (plugin/pkg/auth/authorizer/rbac/bootstrappolicy).
BOOTSTRAP_ROLES: dict[str, list[Obj]] = {
    "cluster-admin": [_rule(["*"], ["*"], ["*"])],
    NODE_PROXIER: [
        _rule([""], ["endpoints", "services"], ["list", "watch"]),
        _rule([""], ["nodes"], ["get", "list", "watch"]),
        _events_rule(),
        _rule(["discovery.k8s.io"], ["endpointslices"], ["list", "watch"]),
    ],
}
# The Node authorizer's static rules (bootstrappolicy NodeRules), for what the graph and the
# per-resource checks above do not cover.
NODE_RULES: list[Obj] = [
    _rule([""], ["services"], ["get", "list", "watch"]),
    _rule([""], ["endpoints"], ["get"]),
    _events_rule(),
    _rule(["node.k8s.io"], ["runtimeclasses"], ["get", "list", "watch"]),
    _rule(["storage.k8s.io"], ["csidrivers"], ["get", "list", "watch"]),
    _rule(["authentication.k8s.io"], ["tokenreviews"], ["create"]),
    _rule(
        ["authorization.k8s.io"], ["subjectaccessreviews", "localsubjectaccessreviews"], ["create"]
    ),
]


def bootstrap(store: Store) -> None:
    """The bootstrap ClusterRoles and upstream's binding of system:node-proxier (to
    kube-proxy's user, not to nodes)."""
    for name, rules in BOOTSTRAP_ROLES.items():
        if store.find(CLUSTERROLES, None, name) is None:
            store.create(
                CLUSTERROLES,
                None,
                {"metadata": {"name": name, "labels": RBAC_LABEL}, "rules": rules},
            )
    if store.find(CLUSTERROLEBINDINGS, None, NODE_PROXIER) is None:
        store.create(
            CLUSTERROLEBINDINGS,
            None,
            binding_body(NODE_PROXIER, NODE_PROXIER, [("User", "system:kube-proxy")]),
        )


def binding_body(name: str, role: str, subjects: list[tuple[str, str]]) -> Obj:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": who}
            for kind, who in subjects
        ],
    }


# -- authorization ---------------------------------------------------------------------------


def authorize(store: Store, who: Identity, attrs: Attributes) -> None:
    """Raise the 403 upstream would answer, or return."""
    if MASTERS in who.groups:
        return
    node = who.node
    if node is None and who.user.startswith(NODE_PREFIX):
        reason = f'unknown node for user "{who.user}"'
    elif node is None:
        return  # only node credentials are restricted here
    else:
        allowed, reason = _node_authorizer(store, node, attrs)
        if allowed:
            return
    if _rbac_allows(store, who, attrs):
        return
    raise _forbidden(who, attrs, reason)


def allows(store: Store, who: Identity, attrs: Attributes) -> bool:
    """A SubjectAccessReview's answer: only what a rule grants (no permissive default)."""
    if MASTERS in who.groups:
        return True
    node = who.node
    if node is not None and _node_authorizer(store, node, attrs)[0]:
        return True
    return _rbac_allows(store, who, attrs)


def _forbidden(who: Identity, attrs: Attributes, reason: str) -> errors.ApiError:
    rt = attrs.rt
    resource = rt.plural + (f"/{attrs.subresource}" if attrs.subresource else "")
    scope = f'in the namespace "{attrs.namespace}"' if attrs.namespace else "at the cluster scope"
    msg = (
        f'User "{who.user}" cannot {attrs.verb} resource "{resource}" in API group '
        f'"{rt.group}" {scope}'
    )
    if reason:
        msg += f": {reason}"
    qualified = rt.plural if not rt.group else f"{rt.plural}.{rt.group}"
    details: Obj = {"kind": rt.plural}
    if rt.group:
        details["group"] = rt.group
    if attrs.name:
        details["name"] = attrs.name
        text = f'{qualified} "{attrs.name}" is forbidden: {msg}'
    else:
        text = f"{qualified} is forbidden: {msg}"
    return errors.ApiError(403, "Forbidden", text, details=details)


def _node_authorizer(store: Store, node: str, a: Attributes) -> tuple[bool, str]:
    """(allowed, reason) as node_authorizer.go decides; not allowed means "no opinion"."""
    rt = a.rt
    if rt in (SECRETS, CONFIGMAPS):
        if a.verb not in ("get", "list", "watch"):
            return False, "can only read resources of this type"
        if a.subresource:
            return False, "cannot read subresource"
        if not a.name:
            return False, "No Object name found"
        if not a.namespace or not _pod_references(store, node, rt, a.namespace, a.name):
            return False, f"no relationship found between node '{node}' and this object"
        return True, ""
    if rt in (PERSISTENTVOLUMECLAIMS, PERSISTENTVOLUMES):
        if a.verb != "get" or not a.name:
            return False, "can only get individual resources of this type"
        if a.subresource:
            return False, "cannot get subresource"
        if not _uses_storage(store, node, rt, a.namespace, a.name):
            return False, f"no relationship found between node '{node}' and this object"
        return True, ""
    if rt.plural == "serviceaccounts" and not rt.group:
        if a.verb != "create" or not a.name:
            return False, "can only create tokens for individual service accounts"
        if a.subresource != "token":
            return False, "can only create token subresource of serviceaccount"
        if not _pod_references(store, node, rt, a.namespace or "", a.name):
            return False, f"no relationship found between node '{node}' and this object"
        return True, ""
    if rt is LEASES:
        if a.verb not in ("get", "create", "update", "patch", "delete"):
            return False, "can only get, create, update, patch, or delete a node lease"
        if a.namespace != NODE_LEASE_NAMESPACE:
            return False, f'can only access leases in the "{NODE_LEASE_NAMESPACE}" system namespace'
        if a.verb != "create" and a.name != node:
            return False, "can only access node lease with the same name as the requesting node"
        return True, ""
    if rt is CSINODES:
        # Any verb but list/watch; NodeRestriction narrows writes to the node's own.
        return a.verb in ("get", "create", "update", "patch", "delete"), ""
    if rt is VOLUMEATTACHMENTS:
        if a.verb != "get" or a.subresource:
            return False, "can only get individual VolumeAttachments"
        va = store.find(VOLUMEATTACHMENTS, "", a.name or "")
        if va is None or (va.get("spec") or {}).get("nodeName") != node:
            return False, _no_relation(node)
        return True, ""
    if rt is NODES:
        return _authorize_node(node, a)
    if rt is PODS:
        return _authorize_pod(store, node, a)
    return _rules_allow(NODE_RULES, a), ""


def _authorize_node(node: str, a: Attributes) -> tuple[bool, str]:
    if not a.subresource:
        if a.verb in ("create", "update", "patch"):
            return True, ""
        if a.verb in ("get", "list", "watch"):
            name = a.name or a.field_selector.get("metadata.name", "")
            if name == node:
                return True, ""
            if not name:
                return False, f"node '{node}' cannot read all nodes, only its own Node object"
            return False, f"node '{node}' cannot read '{name}', only its own Node object"
    elif a.subresource == "status" and a.verb in ("update", "patch"):
        return True, ""
    return False, ""


def _authorize_pod(store: Store, node: str, a: Attributes) -> tuple[bool, str]:
    if not a.subresource:
        if a.verb == "get":
            return _bound(store, node, a), _no_relation(node)
        if a.verb in ("list", "watch"):
            if a.field_selector.get("spec.nodeName") == node:
                return True, ""
            name = a.name or a.field_selector.get("metadata.name", "")
            if name:
                return _bound(store, node, a, name), _no_relation(node)
            return False, "can only list/watch pods with spec.nodeName field selector"
        if a.verb in ("create", "delete"):
            return True, ""  # mirror pods; NodeRestriction narrows it
    elif (a.subresource, a.verb) in _POD_SUBRESOURCE_WRITES:
        return True, ""
    return False, ""


_POD_SUBRESOURCE_WRITES = {("status", "update"), ("status", "patch"), ("eviction", "create")}


def _no_relation(node: str) -> str:
    return f"no relationship found between node '{node}' and this object"


def _bound(store: Store, node: str, a: Attributes, name: str | None = None) -> bool:
    pod = store.find(PODS, a.namespace, name or a.name or "")
    return pod is not None and (pod.get("spec") or {}).get("nodeName") == node


def _pod_references(store: Store, node: str, rt: ResourceType, namespace: str, name: str) -> bool:
    """Whether a pod bound to ``node`` uses the object (the authorizer's graph edges)."""
    for pod in store.items(PODS, namespace):
        spec = pod.get("spec") or {}
        if spec.get("nodeName") != node:
            continue
        if rt.plural == "serviceaccounts":
            if (spec.get("serviceAccountName") or "default") == name:
                return True
        elif name in set(pod_references(spec, rt.kind)):
            return True
    return False


def _uses_storage(
    store: Store, node: str, rt: ResourceType, namespace: str | None, name: str
) -> bool:
    """pod -> pvc (namespaced) and pvc -> pv edges, from the pods bound to ``node``."""
    for pod in store.items(PODS):
        spec = pod.get("spec") or {}
        if spec.get("nodeName") != node:
            continue
        pod_ns = str(pod["metadata"].get("namespace") or "")
        for claim in pod_claims(pod):
            if rt is PERSISTENTVOLUMECLAIMS and (pod_ns, claim) == (namespace, name):
                return True
            if rt is PERSISTENTVOLUMES:
                pvc = store.find(PERSISTENTVOLUMECLAIMS, pod_ns, claim)
                if pvc is not None and (pvc.get("spec") or {}).get("volumeName") == name:
                    return True
    return False


def pod_claims(pod: Obj) -> Iterator[str]:
    """The claims a pod uses (podutil's PVC visitor: ephemeral volumes included)."""
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        source = volume.get("persistentVolumeClaim")
        if isinstance(source, dict) and source.get("claimName"):
            yield str(source["claimName"])
        elif isinstance(volume.get("ephemeral"), dict):
            yield f"{pod['metadata'].get('name')}-{volume.get('name')}"


def pod_references(spec: Obj, kind: str) -> Iterator[str]:
    """Names of the Secrets or ConfigMaps a pod spec references (podutil.VisitPodSecretNames
    and VisitPodConfigmapNames over volumes, env, envFrom, imagePullSecrets)."""
    key = "secret" if kind == "Secret" else "configMap"
    ref_key = "secretKeyRef" if kind == "Secret" else "configMapKeyRef"
    env_from_key = "secretRef" if kind == "Secret" else "configMapRef"
    if kind == "Secret":
        for ref in spec.get("imagePullSecrets") or []:
            if ref.get("name"):
                yield str(ref["name"])
    for volume in spec.get("volumes") or []:
        source = volume.get(key)
        if isinstance(source, dict):
            found = source.get("secretName") if kind == "Secret" else source.get("name")
            if found:
                yield str(found)
        for projected in (volume.get("projected") or {}).get("sources") or []:
            inner = projected.get(key)
            if isinstance(inner, dict) and inner.get("name"):
                yield str(inner["name"])
        secret_ref = (volume.get("csi") or {}).get("nodePublishSecretRef") or {}
        if kind == "Secret" and isinstance(secret_ref, dict) and secret_ref.get("name"):
            yield str(secret_ref["name"])
    groups = ("initContainers", "containers", "ephemeralContainers")
    for container in (c for g in groups for c in spec.get(g) or []):
        for env in container.get("env") or []:
            ref = (env.get("valueFrom") or {}).get(ref_key)
            if isinstance(ref, dict) and ref.get("name"):
                yield str(ref["name"])
        for env_from in container.get("envFrom") or []:
            ref = env_from.get(env_from_key)
            if isinstance(ref, dict) and ref.get("name"):
                yield str(ref["name"])


def _rules_allow(rules: list[Obj], a: Attributes) -> bool:
    resource = a.rt.plural + (f"/{a.subresource}" if a.subresource else "")
    for rule in rules:
        groups, resources = rule.get("apiGroups") or [], rule.get("resources") or []
        verbs, names = rule.get("verbs") or [], rule.get("resourceNames") or []
        if (
            ("*" in groups or a.rt.group in groups)
            and ("*" in resources or resource in resources)
            and ("*" in verbs or a.verb in verbs)
            and (not names or (a.name or "") in names)
        ):
            return True
    return False


def _rbac_allows(store: Store, who: Identity, a: Attributes) -> bool:
    for binding in store.items(CLUSTERROLEBINDINGS):
        if not any(_subject_matches(s, who) for s in binding.get("subjects") or []):
            continue
        ref = binding.get("roleRef") or {}
        role = store.find(CLUSTERROLES, None, str(ref.get("name") or ""))
        if (
            ref.get("kind") == "ClusterRole"
            and role is not None
            and _rules_allow(role.get("rules") or [], a)
        ):
            return True
    return False


def _subject_matches(subject: Obj, who: Identity) -> bool:
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "User":
        return bool(name == who.user)
    if kind == "Group":
        return name in who.groups
    if kind == "ServiceAccount":
        return who.user == f"system:serviceaccount:{subject.get('namespace')}:{name}"
    return False
