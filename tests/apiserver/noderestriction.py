"""The NodeRestriction admission plugin: what a node credential may write.

Follows plugin/pkg/admission/noderestriction/admission.go, for the kinds served here:

- Pods: a node creates only mirror pods (the ``kubernetes.io/config.mirror`` annotation), bound
  to itself (``spec.nodeName``), with exactly one owner reference, a controller reference to
  its own Node (apiVersion v1, kind Node, its name and uid) without ``blockOwnerDeletion``,
  and referencing no service account, Secret, ConfigMap or PersistentVolumeClaim. It deletes
  and updates the status of pods bound to itself only, and may not change labels through the
  status. No other pod update.
- Nodes: a node creates and modifies only its own Node; it may not change its taints, nor set
  labels in ``node-restriction.kubernetes.io`` or in kubernetes.io/k8s.io namespaces other
  than the kubelet's own (``kubernetes.io/hostname``, ``kubernetes.io/os``...,
  ``kubelet.kubernetes.io/*``, ``node.kubernetes.io/*``).
- Leases: only in ``kube-node-lease`` and named after the node.
- TokenRequests: bound to a pod (with its uid) that runs on this node.

Each refusal is a 403 ``<resource> "<name>" is forbidden: <upstream's reason>``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tests.apiserver import errors
from tests.apiserver.authz import MIRROR_ANNOTATION, NODE_LEASE_NAMESPACE, pod_references
from tests.apiserver.resources import CSINODES, LEASES, NODES, PODS, ResourceType

if TYPE_CHECKING:
    from tests.apiserver.store import Store

Obj = dict[str, Any]

KUBELET_LABELS = frozenset(
    {
        "kubernetes.io/hostname",
        "kubernetes.io/os",
        "kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "failure-domain.beta.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "topology.kubernetes.io/zone",
    }
)
KUBELET_LABEL_NAMESPACES = ("kubelet.kubernetes.io", "node.kubernetes.io")


def _refuse(rt: ResourceType, name: str, why: str) -> errors.ApiError:
    return errors.forbidden(rt, name, why)


def admit_create(store: Store, node: str, rt: ResourceType, obj: Obj) -> None:
    name = str((obj.get("metadata") or {}).get("name") or "")
    if rt is PODS:
        _pod_create(store, node, obj, name)
    elif rt is NODES:
        _node_write(node, name, obj, None)
    elif rt is LEASES:
        _lease(node, obj, name)
    elif rt is CSINODES:
        _csinode(node, name)


def admit_update(node: str, rt: ResourceType, old: Obj, new: Obj, subresource: str | None) -> None:
    name = str(old["metadata"]["name"])
    if rt is PODS:
        if subresource != "status":
            raise _refuse(
                rt,
                name,
                f'unexpected operation "UPDATE", node "{node}" can only create and '
                "delete mirror pods",
            )
        if (old.get("spec") or {}).get("nodeName") != node:
            raise _refuse(
                rt,
                name,
                f'node "{node}" can only update pod status for pods with spec.nodeName set to '
                "itself",
            )
        if (old["metadata"].get("labels") or {}) != (new["metadata"].get("labels") or {}):
            raise _refuse(rt, name, f'node "{node}" cannot update labels through pod status')
    elif rt is NODES:
        _node_write(node, name, new, old)
    elif rt is LEASES:
        _lease(node, new, name)
    elif rt is CSINODES:
        _csinode(node, name)


def admit_delete(node: str, rt: ResourceType, old: Obj) -> None:
    name = str(old["metadata"]["name"])
    if rt is PODS and (old.get("spec") or {}).get("nodeName") != node:
        raise _refuse(
            rt, name, f'node "{node}" can only delete pods with spec.nodeName set to itself'
        )
    if rt is NODES and name != node:
        raise _refuse(rt, name, f'node "{node}" is not allowed to modify node "{name}"')
    if rt is LEASES:
        _lease(node, old, name)
    if rt is CSINODES:
        _csinode(node, name)


def _csinode(node: str, name: str) -> None:
    if name != node:
        raise _refuse(CSINODES, name, f'node "{node}" is not allowed to modify object "{name}"')


def admit_token(
    store: Store, node: str, rt: ResourceType, namespace: str, name: str, body: Obj
) -> None:
    ref = (body.get("spec") or {}).get("boundObjectRef") or {}
    if ref.get("apiVersion", "v1") != "v1" or ref.get("kind") != "Pod" or not ref.get("name"):
        raise _refuse(rt, name, "node requested token not bound to a pod")
    if not ref.get("uid"):
        raise _refuse(rt, name, "node requested token with a pod binding without a uid")
    pod = store.find(PODS, namespace, str(ref["name"]))
    if pod is None:
        raise errors.not_found(PODS, str(ref["name"]))
    if ref["uid"] != pod["metadata"]["uid"]:
        raise _refuse(
            rt,
            name,
            f"the UID in the bound object reference ({ref['uid']}) does not match the UID in "
            "record. The object might have been deleted and then recreated",
        )
    if (pod.get("spec") or {}).get("nodeName") != node:
        raise _refuse(rt, name, "node requested token bound to a pod scheduled on a different node")


def _pod_create(store: Store, node: str, pod: Obj, name: str) -> None:
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    if MIRROR_ANNOTATION not in (meta.get("annotations") or {}):
        raise _refuse(
            PODS,
            name,
            f'pod does not have "{MIRROR_ANNOTATION}" annotation, node "{node}" can only create '
            "mirror pods",
        )
    if spec.get("nodeName") != node:
        raise _refuse(
            PODS, name, f'node "{node}" can only create pods with spec.nodeName set to itself'
        )
    owners = meta.get("ownerReferences") or []
    if len(owners) > 1:
        raise _refuse(
            PODS,
            name,
            f'node "{node}" can only create pods with a single owner reference set to itself',
        )
    owner = owners[0] if owners else {}
    if (owner.get("apiVersion"), owner.get("kind"), owner.get("name")) != ("v1", "Node", node):
        raise _refuse(
            PODS, name, f'node "{node}" can only create pods with an owner reference set to itself'
        )
    if not owner.get("controller"):
        raise _refuse(
            PODS,
            name,
            f'node "{node}" can only create pods with a controller owner reference set to itself',
        )
    if owner.get("blockOwnerDeletion"):
        raise _refuse(
            PODS, name, f'node "{node}" must not set blockOwnerDeletion on an owner reference'
        )
    node_obj = store.find(NODES, None, node)
    if node_obj is None:
        raise errors.not_found(NODES, node)
    if owner.get("uid") != node_obj["metadata"]["uid"]:
        raise _refuse(
            PODS,
            name,
            f"node {node} UID mismatch: expected {owner.get('uid')} got "
            f"{node_obj['metadata']['uid']}",
        )
    if spec.get("serviceAccountName"):
        raise _refuse(
            PODS, name, f'node "{node}" can not create pods that reference a service account'
        )
    for kind, what in (("Secret", "secrets"), ("ConfigMap", "configmaps")):
        if next(pod_references(spec, kind), None) is not None:
            raise _refuse(PODS, name, f'node "{node}" can not create pods that reference {what}')
    if any(v.get("persistentVolumeClaim") for v in spec.get("volumes") or []):
        raise _refuse(
            PODS, name, f'node "{node}" can not create pods that reference persistentvolumeclaims'
        )


def _label_namespace(key: str) -> str:
    return key.split("/", 1)[0] if "/" in key else ""


def forbidden_labels(modified: set[str]) -> list[str]:
    out = []
    for label in modified:
        ns = _label_namespace(label)
        restricted = ns == "node-restriction.kubernetes.io" or ns.endswith(
            ".node-restriction.kubernetes.io"
        )
        kube = ns in ("kubernetes.io", "k8s.io") or ns.endswith((".kubernetes.io", ".k8s.io"))
        kubelet = label in KUBELET_LABELS or any(
            ns == k or ns.endswith("." + k) for k in KUBELET_LABEL_NAMESPACES
        )
        if restricted or (kube and not kubelet):
            out.append(label)
    return sorted(out)


def _node_write(node: str, name: str, new: Obj, old: Obj | None) -> None:
    if name != node:
        raise _refuse(NODES, name, f'node "{node}" is not allowed to modify node "{name}"')
    new_labels = (new.get("metadata") or {}).get("labels") or {}
    old_labels = ((old or {}).get("metadata") or {}).get("labels") or {}
    keys = set(new_labels) | set(old_labels)
    bad = forbidden_labels({k for k in keys if new_labels.get(k) != old_labels.get(k)})
    if old is None:
        if bad:
            raise _refuse(
                NODES,
                name,
                f'node "{node}" is not allowed to set the following labels: {", ".join(bad)}',
            )
        return
    if (new.get("spec") or {}).get("taints") != (old.get("spec") or {}).get("taints"):
        raise _refuse(NODES, name, f'node "{node}" is not allowed to modify taints')
    if bad:
        raise _refuse(NODES, name, f"is not allowed to modify labels: {', '.join(bad)}")


def _lease(node: str, lease: Obj, name: str) -> None:
    namespace = (lease.get("metadata") or {}).get("namespace")
    if namespace != NODE_LEASE_NAMESPACE:
        raise _refuse(
            LEASES, name, f'can only access leases in the "{NODE_LEASE_NAMESPACE}" system namespace'
        )
    if name != node:
        raise _refuse(
            LEASES, name, "can only access node lease with the same name as the requesting node"
        )
