"""PersistentVolumes and PersistentVolumeClaims: defaults and validation as kube-apiserver's.

Follows pkg/apis/core/validation (ValidatePersistentVolume, ValidatePersistentVolumeClaim and
their Update forms) and the registry strategies, for what a node agent meets:
- create: ``status`` is reset to ``phase: Pending`` (both kinds); ``volumeMode`` defaults to
  ``Filesystem``; a PV's ``persistentVolumeReclaimPolicy`` to ``Retain``.
- a PV needs ``capacity.storage``, ``accessModes``, exactly one volume source (``hostPath``
  and ``local`` need an absolute ``path``; ``csi`` a ``driver`` and ``volumeHandle``); a
  ``local`` PV needs ``nodeAffinity``; ReadWriteOncePod may not be combined with other modes.
- a PVC needs ``accessModes`` and ``resources.requests.storage``.
- update: a PV's source, ``volumeMode`` and a set ``nodeAffinity`` are immutable; a PVC's
  spec is immutable but for ``resources.requests`` and ``volumeName`` while it is unset (the
  binder sets it). Status goes through the status subresource.

Simplified: no binder (a test binds, as kube-controller-manager's PV controller would: set
``pvc.spec.volumeName``, ``pv.spec.claimRef`` and both phases), no StorageClasses, no
capacity or quantity checks beyond presence.
"""

from __future__ import annotations

import copy
from typing import Any

from tests.apiserver import errors
from tests.apiserver.resources import PERSISTENTVOLUMECLAIMS, PERSISTENTVOLUMES

Obj = dict[str, Any]

ACCESS_MODES = ("ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod")
PV_SOURCES = (
    "hostPath",
    "local",
    "csi",
    "nfs",
    "iscsi",
    "fc",
    "rbd",
    "cephfs",
    "flexVolume",
    "glusterfs",
)


def on_create_pv(pv: Obj) -> None:
    spec = pv.setdefault("spec", {})
    spec.setdefault("persistentVolumeReclaimPolicy", "Retain")
    spec.setdefault("volumeMode", "Filesystem")
    pv["status"] = {"phase": "Pending"}
    _validate_pv(pv)


def on_update_pv(old: Obj, new: Obj) -> None:
    spec = new.setdefault("spec", {})
    spec.setdefault("persistentVolumeReclaimPolicy", "Retain")
    spec.setdefault("volumeMode", "Filesystem")
    _validate_pv(new)
    before, after = old.get("spec") or {}, spec
    name = old["metadata"]["name"]
    if {k: before.get(k) for k in PV_SOURCES} != {k: after.get(k) for k in PV_SOURCES}:
        _invalid_pv(
            name,
            "spec.persistentvolumesource: Forbidden: spec.persistentvolumesource is "
            "immutable after creation",
        )
    if before.get("volumeMode") != after.get("volumeMode"):
        _invalid_pv(name, "spec.volumeMode: Invalid value: field is immutable")
    if before.get("nodeAffinity") and before.get("nodeAffinity") != after.get("nodeAffinity"):
        _invalid_pv(name, "spec.nodeAffinity: Invalid value: field is immutable")


def _validate_pv(pv: Obj) -> None:
    name = pv["metadata"]["name"]
    spec = pv.get("spec") or {}
    if not (spec.get("capacity") or {}).get("storage"):
        _invalid_pv(name, "spec.capacity: Required value")
    _access_modes(PERSISTENTVOLUMES, name, spec)
    sources = [k for k in PV_SOURCES if k in spec]
    if not sources:
        _invalid_pv(name, "spec: Required value: must specify a volume type")
    if len(sources) > 1:
        _invalid_pv(name, f"spec.{sources[1]}: Forbidden: may not specify more than 1 volume type")
    for kind in ("hostPath", "local"):
        if kind in sources:
            path = str((spec.get(kind) or {}).get("path") or "")
            if not path:
                _invalid_pv(name, f"spec.{kind}.path: Required value")
            if not path.startswith("/"):
                _invalid_pv(name, f"spec.{kind}.path: Invalid value: {path!r}: must be absolute")
    if "local" in sources and not spec.get("nodeAffinity"):
        _invalid_pv(name, "spec.nodeAffinity: Required value: Local volumes require node affinity")
    if "csi" in sources:
        for field in ("driver", "volumeHandle"):
            if not (spec.get("csi") or {}).get(field):
                _invalid_pv(name, f"spec.csi.{field}: Required value")


def on_create_pvc(pvc: Obj) -> None:
    spec = pvc.setdefault("spec", {})
    spec.setdefault("volumeMode", "Filesystem")
    pvc["status"] = {"phase": "Pending"}
    _validate_pvc(pvc)


def on_update_pvc(old: Obj, new: Obj) -> None:
    spec = new.setdefault("spec", {})
    spec.setdefault("volumeMode", "Filesystem")
    _validate_pvc(new)
    before, after = copy.deepcopy(old.get("spec") or {}), copy.deepcopy(spec)
    if not before.get("volumeName"):
        before["volumeName"] = after.get("volumeName")
    before.pop("resources", None)
    after.pop("resources", None)
    if {k: v for k, v in before.items() if v is not None} != {
        k: v for k, v in after.items() if v is not None
    }:
        raise errors.invalid(
            PERSISTENTVOLUMECLAIMS,
            old["metadata"]["name"],
            "spec: Forbidden: spec is immutable after creation except resources.requests and "
            "volumeAttributesClassName for bound claims",
        )


def _validate_pvc(pvc: Obj) -> None:
    name = pvc["metadata"]["name"]
    spec = pvc.get("spec") or {}
    _access_modes(PERSISTENTVOLUMECLAIMS, name, spec)
    if not ((spec.get("resources") or {}).get("requests") or {}).get("storage"):
        raise errors.invalid(
            PERSISTENTVOLUMECLAIMS, name, "spec.resources[storage]: Required value"
        )


def _access_modes(rt: Any, name: str, spec: Obj) -> None:
    modes = spec.get("accessModes") or []
    if not modes:
        raise errors.invalid(
            rt, name, "spec.accessModes: Required value: at least 1 access mode is required"
        )
    for mode in modes:
        if mode not in ACCESS_MODES:
            supported = ", ".join(f'"{m}"' for m in ACCESS_MODES)
            raise errors.invalid(
                rt,
                name,
                f'spec.accessModes: Unsupported value: "{mode}": supported values: {supported}',
            )
    if "ReadWriteOncePod" in modes and len(modes) > 1:
        raise errors.invalid(
            rt,
            name,
            "spec.accessModes: Forbidden: may not use ReadWriteOncePod with other access modes",
        )


def _invalid_pv(name: str, why: str) -> None:
    raise errors.invalid(PERSISTENTVOLUMES, name, why)
