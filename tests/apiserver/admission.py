"""Defaults, validation and the admission plugins a kubelet's pods meet on a real server.

Follows, per kind:
- Pods: the API defaulting (``restartPolicy: Always``, ``dnsPolicy: ClusterFirst``,
  ``terminationGracePeriodSeconds: 30``, ``imagePullPolicy`` from the tag, TCP ports...);
  the create strategy (status reset to ``phase: Pending`` and a ``qosClass``); the
  ServiceAccount admission plugin ("Configure Service Accounts for Pods": ``serviceAccountName``
  defaults to ``default``, which must exist, and a projected ``kube-api-access-*`` volume with a
  serviceAccountToken, the ``kube-root-ca.crt`` ConfigMap and the namespace is mounted at
  /var/run/secrets/kubernetes.io/serviceaccount unless automount is off; mirror pods are left
  alone); DefaultTolerationSeconds (not-ready/unreachable NoExecute for 300 s); and pod update
  validation (the spec is immutable but for images, activeDeadlineSeconds, tolerations and
  scheduling gates; activeDeadlineSeconds may be set or lowered, never raised or removed).
  The graceful-deletion period rules live in ``deletion_grace``.
- Pod status writes: the IP conversion and ``ValidatePodStatusUpdate`` (``podstatus.py``).
- Services: type, ports, ``targetPort`` and policy defaults, then ``allocators.assign``.
- Namespaces: the ``kubernetes`` finalizer, ``phase: Active`` and the
  ``kubernetes.io/metadata.name`` label. Secrets: ``type: Opaque``, ``stringData`` folded into
  ``data``. Secrets and ConfigMaps with ``immutable: true`` reject data changes.
- PersistentVolumes and PersistentVolumeClaims: ``storage.py``.
"""

from __future__ import annotations

import base64
import re
import secrets
from typing import TYPE_CHECKING, Any

from tests.apiserver import errors, podstatus, storage
from tests.apiserver.allocators import AllocationError, assign
from tests.apiserver.resources import (
    CONFIGMAPS,
    NAMESPACES,
    PERSISTENTVOLUMECLAIMS,
    PERSISTENTVOLUMES,
    PODS,
    SECRETS,
    SERVICEACCOUNTS,
    SERVICES,
    ResourceType,
)

if TYPE_CHECKING:
    from tests.apiserver.store import Store

Obj = dict[str, Any]

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
SA_MOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
_MUTABLE_POD_SPEC = ("activeDeadlineSeconds", "tolerations", "schedulingGates")
_DEFAULT_TOLERATIONS = (
    ("node.kubernetes.io/not-ready", 300),
    ("node.kubernetes.io/unreachable", 300),
)


def _default_pull_policy(image: str) -> str:
    last = image.rsplit("/", 1)[-1]
    if "@" in last:
        return "IfNotPresent"
    tag = last.split(":", 1)[1] if ":" in last else "latest"
    return "Always" if tag == "latest" else "IfNotPresent"


def qos_class(spec: Obj) -> str:
    """Guaranteed, Burstable or BestEffort, from cpu and memory requests and limits."""
    containers = list(spec.get("containers") or []) + list(spec.get("initContainers") or [])
    any_set = False
    guaranteed = True
    for c in containers:
        res = c.get("resources") or {}
        requests, limits = res.get("requests") or {}, res.get("limits") or {}
        if requests or limits:
            any_set = True
        for name in ("cpu", "memory"):
            if name not in limits or requests.get(name, limits[name]) != limits[name]:
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


class Admission:
    def __init__(self, store: Store, *, service_account_admission: bool = True) -> None:
        self.store = store
        self.service_account_admission = service_account_admission

    def check_name(self, rt: ResourceType, name: str) -> None:
        if rt.group == "rbac.authorization.k8s.io":  # path segment names: "system:node-proxier"
            if name in (".", "..") or "/" in name or "%" in name:
                raise errors.invalid(
                    rt, name, f"metadata.name: Invalid value: {name!r}: may not contain '/'"
                )
            return
        if rt is SERVICES:
            pattern, what = _LABEL_1035, "a DNS-1035 label"
        elif rt.name_is_label:
            pattern, what = _LABEL_1123, "a lowercase RFC 1123 label"
        else:
            pattern, what = _SUBDOMAIN, "a lowercase RFC 1123 subdomain"
        limit = 63 if rt.name_is_label else 253
        if len(name) > limit or not pattern.match(name):
            raise errors.invalid(
                rt, name, f"metadata.name: Invalid value: {name!r}: must be {what}"
            )

    def on_create(self, rt: ResourceType, obj: Obj) -> None:
        if rt is PODS:
            self._pod_create(obj)
        elif rt is SERVICES:
            obj["status"] = {"loadBalancer": {}}
            self._service(obj, None)
        elif rt is NAMESPACES:
            obj.setdefault("spec", {})["finalizers"] = ["kubernetes"]
            obj["status"] = {"phase": "Active"}
            self._namespace_label(obj)
        elif rt is SECRETS:
            self._secret(obj)
        elif rt is PERSISTENTVOLUMES:
            storage.on_create_pv(obj)
        elif rt is PERSISTENTVOLUMECLAIMS:
            storage.on_create_pvc(obj)

    def on_update(self, rt: ResourceType, old: Obj, new: Obj, subresource: str | None) -> None:
        if rt is PODS and "status" in new:
            podstatus.convert(new["status"])
        if subresource == "status":
            if rt is PODS:
                found = podstatus.validate_update(old, new)
                if found:
                    raise errors.invalid_fields(PODS, old["metadata"]["name"], found)
            return
        if rt is PODS:
            self._pod_update(old, new)
        elif rt is SERVICES:
            self._service(new, old)
        elif rt is NAMESPACES:
            new["spec"] = old.get("spec", {})
            self._namespace_label(new)
        elif rt is SECRETS:
            self._secret(new)
        elif rt is PERSISTENTVOLUMES:
            storage.on_update_pv(old, new)
        elif rt is PERSISTENTVOLUMECLAIMS:
            storage.on_update_pvc(old, new)
        if rt in (SECRETS, CONFIGMAPS) and old.get("immutable"):
            for field in ("data", "binaryData", "immutable"):
                if new.get(field) != old.get(field):
                    name = old["metadata"]["name"]
                    raise errors.invalid(
                        rt, name, f"{field}: Forbidden: field is immutable when `immutable` is set"
                    )

    def deletion_grace(self, rt: ResourceType, obj: Obj, requested: int | None) -> int:
        """Seconds before a DELETE removes the object (0: at once). Pods only."""
        if rt is not PODS:
            return 0
        spec, status = obj.get("spec", {}), obj.get("status", {})
        grace = requested if requested is not None else spec.get("terminationGracePeriodSeconds")
        grace = 30 if grace is None else int(grace)
        if grace < 0:
            grace = 1
        if not spec.get("nodeName") or status.get("phase") in ("Succeeded", "Failed"):
            return 0  # unscheduled or terminal pods go at once
        return grace

    # -- pods ----------------------------------------------------------------------------

    def _pod_create(self, pod: Obj) -> None:
        name = pod["metadata"]["name"]
        spec = pod.setdefault("spec", {})
        if not spec.get("containers"):
            raise errors.invalid(PODS, name, "spec.containers: Required value")
        for group in ("containers", "initContainers"):
            for i, c in enumerate(spec.get(group) or []):
                for field in ("name", "image"):
                    if not c.get(field):
                        raise errors.invalid(
                            PODS, name, f"spec.{group}[{i}].{field}: Required value"
                        )
                c.setdefault("imagePullPolicy", _default_pull_policy(c["image"]))
                c.setdefault("terminationMessagePath", "/dev/termination-log")
                c.setdefault("terminationMessagePolicy", "File")
                c.setdefault("resources", {})
                for port in c.get("ports") or []:
                    port.setdefault("protocol", "TCP")
        for key, value in (
            ("restartPolicy", "Always"),
            ("terminationGracePeriodSeconds", 30),
            ("dnsPolicy", "ClusterFirst"),
            ("schedulerName", "default-scheduler"),
            ("securityContext", {}),
            ("enableServiceLinks", True),
            ("priority", 0),
        ):
            spec.setdefault(key, value)
        mirror = MIRROR_ANNOTATION in (pod["metadata"].get("annotations") or {})
        if self.service_account_admission and not mirror:
            self._service_account(pod)
        tolerations = spec.setdefault("tolerations", [])
        for key, seconds in _DEFAULT_TOLERATIONS:
            if not any(
                t.get("key") == key and t.get("effect") in (None, "", "NoExecute")
                for t in tolerations
            ):
                tolerations.append(
                    {
                        "key": key,
                        "operator": "Exists",
                        "effect": "NoExecute",
                        "tolerationSeconds": seconds,
                    }
                )
        pod["status"] = {"phase": "Pending", "qosClass": qos_class(spec)}
        podstatus.convert(pod["status"])

    def _service_account(self, pod: Obj) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        sa_name = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
        spec["serviceAccountName"] = spec["serviceAccount"] = sa_name
        sa = self.store.find(SERVICEACCOUNTS, meta["namespace"], sa_name)
        if sa is None:
            raise errors.forbidden(
                PODS,
                meta["name"],
                f"error looking up service account {meta['namespace']}/{sa_name}: "
                f'serviceaccount "{sa_name}" not found',
            )
        automount = spec.get("automountServiceAccountToken")
        if automount is None:
            automount = sa.get("automountServiceAccountToken", True)
        containers = list(spec.get("containers") or []) + list(spec.get("initContainers") or [])
        if not automount or any(
            m.get("mountPath") == SA_MOUNT_PATH
            for c in containers
            for m in c.get("volumeMounts") or []
        ):
            return
        volume = "kube-api-access-" + "".join(
            secrets.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5)
        )
        spec.setdefault("volumes", []).append(
            {
                "name": volume,
                "projected": {
                    "defaultMode": 420,
                    "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {
                            "configMap": {
                                "name": "kube-root-ca.crt",
                                "items": [{"key": "ca.crt", "path": "ca.crt"}],
                            }
                        },
                        {
                            "downwardAPI": {
                                "items": [
                                    {
                                        "path": "namespace",
                                        "fieldRef": {
                                            "apiVersion": "v1",
                                            "fieldPath": "metadata.namespace",
                                        },
                                    }
                                ]
                            }
                        },
                    ],
                },
            }
        )
        for c in containers:
            c.setdefault("volumeMounts", []).append(
                {"name": volume, "readOnly": True, "mountPath": SA_MOUNT_PATH}
            )

    def _pod_update(self, old: Obj, new: Obj) -> None:
        def frozen(spec: Obj) -> Obj:
            out = {k: v for k, v in spec.items() if k not in _MUTABLE_POD_SPEC}
            for group in ("containers", "initContainers"):
                out[group] = [
                    {k: v for k, v in c.items() if k != "image"} for c in spec.get(group) or []
                ]
            return out

        _deadline_update(old, new)
        if frozen(old.get("spec", {})) != frozen(new.get("spec", {})):
            raise errors.invalid(
                PODS,
                old["metadata"]["name"],
                "spec: Forbidden: pod updates may not change fields other than "
                "`spec.containers[*].image`,`spec.initContainers[*].image`,"
                "`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing "
                "tolerations),`spec.schedulingGates`",
            )

    # -- other kinds ---------------------------------------------------------------------

    def _service(self, svc: Obj, old: Obj | None) -> None:
        name = svc["metadata"]["name"]
        spec = svc.setdefault("spec", {})
        kind = spec.setdefault("type", "ClusterIP")
        if kind not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
            raise errors.invalid(SERVICES, name, f"spec.type: Unsupported value: {kind!r}")
        spec.setdefault("sessionAffinity", "None")
        ports = spec.get("ports") or []
        if kind != "ExternalName" and not ports and spec.get("clusterIP") != "None":
            raise errors.invalid(SERVICES, name, "spec.ports: Required value")
        for i, port in enumerate(ports):
            if not isinstance(port.get("port"), int):
                raise errors.invalid(SERVICES, name, f"spec.ports[{i}].port: Required value")
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port["port"])
            if len(ports) > 1 and not port.get("name"):
                raise errors.invalid(SERVICES, name, f"spec.ports[{i}].name: Required value")
        if kind != "ExternalName":
            spec.setdefault("internalTrafficPolicy", "Cluster")
        if kind in ("NodePort", "LoadBalancer"):
            spec.setdefault("externalTrafficPolicy", "Cluster")
        else:
            spec.pop("externalTrafficPolicy", None)
        uid = svc["metadata"].get("uid")
        others = [s for s in self.store.items(SERVICES) if s["metadata"].get("uid") != uid]
        try:
            assign(spec, (old or {}).get("spec"), others)
        except AllocationError as exc:
            raise errors.invalid(SERVICES, name, str(exc)) from exc

    @staticmethod
    def _namespace_label(ns: Obj) -> None:
        meta = ns["metadata"]
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]

    @staticmethod
    def _secret(secret: Obj) -> None:
        secret.setdefault("type", "Opaque")
        string_data = secret.pop("stringData", None) or {}
        if string_data:
            data = secret.setdefault("data", {})
            for key, value in string_data.items():
                data[key] = base64.b64encode(str(value).encode()).decode()


def _deadline_update(old: Obj, new: Obj) -> None:
    """activeDeadlineSeconds may be set or lowered on a running pod, never raised or removed
    (upstream ValidatePodUpdate)."""
    before = (old.get("spec") or {}).get("activeDeadlineSeconds")
    after = (new.get("spec") or {}).get("activeDeadlineSeconds")
    name = old["metadata"]["name"]
    field = "spec.activeDeadlineSeconds"
    if after is None and before is not None:
        why = "must not update from a positive integer to nil value"
        raise errors.invalid(PODS, name, f"{field}: Invalid value: null: {why}")
    if after is not None and (not isinstance(after, int) or after <= 0):
        raise errors.invalid(PODS, name, f"{field}: Invalid value: {after}: must be positive")
    if after is not None and before is not None and after > before:
        why = "must be less than or equal to previous value"
        raise errors.invalid(PODS, name, f"{field}: Invalid value: {after}: {why}")
