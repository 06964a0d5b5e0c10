"""A pod's PersistentVolumeClaims, resolved to what this node mounts (pure).

The kubelet's volume manager, for the sources we mount ourselves. For each
``persistentVolumeClaim`` volume (and each generic ``ephemeral`` volume, whose claim is
``<pod>-<volume>`` and must be owned by the pod), ``podrefs.py`` reads the claim, then the
PersistentVolume it is bound to, and asks this module:

    check_claim    the claim -> the PV's name, or why not yet (not found, not bound, being
                   deleted, not the pod's own ephemeral claim)
    resolve        the claim and its PV -> a ``ClaimMount``, or why not: the PV's
                   ``claimRef`` must point back at the claim (uid included), its
                   ``nodeAffinity`` must match this node, its source must be one we mount
    apply          the pod with each claim volume turned into a ``hostPath`` of the PV's
                   directory, its mounts read-only when the claim is

Every "why not" is a ``RefError`` with ``MOUNT_ERROR``: the pod stays Pending
(ContainerCreating), the cluster link reports a ``FailedMount`` event with the message and
retries with backoff, as the kubelet retries a mount; nothing here fails the pod.

Sources: ``hostPath`` (its ``type`` checked by ``kubelet/volumes.py`` as for a pod's own
hostPath) and ``local`` (a directory that must exist). A ``csi`` source becomes a
``CSIVolumeSource`` (``model/csi.py``) for the CSI mounter; anything else is an error naming
the source. Read-only: the pod volume's ``readOnly``, a ``csi`` source's ``readOnly``, or a PV
whose only access mode is ReadOnlyMany. ``fsGroup`` applies to ``local`` volumes (upstream's
local plugin manages ownership, its hostPath plugin does not); ReadWriteOncePod is enforced by
``podrefs.py``, which sees all of this node's pods.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nodeagent.apiserver.admission import NodeView, terms_match
from nodeagent.model.csi import CSIVolumeSource
from nodeagent.model.refs import MOUNT_ERROR, RefError, pod_containers

Obj = dict[str, Any]

READ_WRITE_ONCE_POD = "ReadWriteOncePod"
READ_ONLY_MANY = "ReadOnlyMany"
KNOWN_SOURCES = (
    "hostPath",
    "local",
    "csi",
    "nfs",
    "iscsi",
    "fc",
    "rbd",
    "cephfs",
    "cinder",
    "flexVolume",
    "glusterfs",
    "awsElasticBlockStore",
    "gcePersistentDisk",
    "azureDisk",
    "azureFile",
    "vsphereVolume",
    "portworxVolume",
    "scaleIO",
    "storageos",
    "quobyte",
    "photonPersistentDisk",
    "flocker",
)


@dataclass(frozen=True)
class ClaimUse:
    """A pod volume backed by a claim."""

    volume: str  # the pod's volume name
    claim: str  # the PVC's name (the pod's namespace)
    read_only: bool  # the pod volume's ``persistentVolumeClaim.readOnly``
    ephemeral: bool  # a generic ephemeral volume: the claim must be owned by the pod


@dataclass(frozen=True)
class ClaimMount:
    """What a claim volume is on this node."""

    volume: str
    claim: str  # namespace/name
    pv: str
    path: str  # the directory to mount ("" for a csi source until it is published)
    path_type: str  # the hostPath ``type`` the kubelet checks before mounting
    read_only: bool
    fs_group_applies: bool  # local volumes: the pod's fsGroup owns the files
    once_pod: bool  # ReadWriteOncePod: one pod at a time on this node
    csi: CSIVolumeSource | None = None


def claim_uses(obj: Obj) -> list[ClaimUse]:
    pod_name = str((obj.get("metadata") or {}).get("name") or "")
    uses = []
    for volume in (obj.get("spec") or {}).get("volumes") or []:
        name = str(volume.get("name") or "")
        if isinstance(volume.get("persistentVolumeClaim"), dict):
            source = volume["persistentVolumeClaim"]
            claim = str(source.get("claimName") or "")
            uses.append(ClaimUse(name, claim, bool(source.get("readOnly")), ephemeral=False))
        elif isinstance(volume.get("ephemeral"), dict):
            uses.append(ClaimUse(name, f"{pod_name}-{name}", False, ephemeral=True))
    return uses


def uses_claims(obj: Obj) -> bool:
    return bool(claim_uses(obj))


def check_claim(use: ClaimUse, pod: Obj, claim: Obj | None) -> tuple[Obj, str]:
    """The claim and the name of the PV it is bound to; RefError while it cannot be used."""
    if claim is None:
        raise _error(f'persistentvolumeclaim "{use.claim}" not found')
    meta = claim.get("metadata") or {}
    namespace = str(meta.get("namespace") or "default")
    pod_meta = pod.get("metadata") or {}
    if use.ephemeral and not _owned_by(meta, str(pod_meta.get("uid") or "")):
        raise _error(
            f"PVC {namespace}/{use.claim} was not created for pod "
            f"{namespace}/{pod_meta.get('name')} (pod is not owner)"
        )
    if meta.get("deletionTimestamp"):
        raise _error(f"can't start pod because PVC {namespace}/{use.claim} is being deleted")
    phase = str((claim.get("status") or {}).get("phase") or "Pending")
    pv = str((claim.get("spec") or {}).get("volumeName") or "")
    if phase != "Bound" or not pv:
        raise _error(f'persistentvolumeclaim "{use.claim}" not bound')
    return claim, pv


def _owned_by(meta: Mapping[str, Any], uid: str) -> bool:
    return any(
        ref.get("uid") == uid and ref.get("controller") for ref in meta.get("ownerReferences") or []
    )


def resolve(use: ClaimUse, claim: Obj, pv: Obj | None, node: NodeView) -> ClaimMount:
    """The mount of a bound claim; RefError naming the PV and the field when it cannot be."""
    claim_meta = claim.get("metadata") or {}
    namespace = str(claim_meta.get("namespace") or "default")
    pv_name = str((claim.get("spec") or {}).get("volumeName") or "")
    if pv is None:
        raise _error(f'persistentvolume "{pv_name}" not found')
    spec = pv.get("spec") or {}
    _check_claim_ref(pv_name, spec.get("claimRef"), claim_meta, namespace)
    terms = ((spec.get("nodeAffinity") or {}).get("required") or {}).get("nodeSelectorTerms")
    if terms is not None and not terms_match(terms, node):
        raise _error(
            f'MountVolume.NodeAffinity check failed for volume "{use.volume}" '
            f'(PersistentVolume "{pv_name}"): spec.nodeAffinity: no matching '
            f'NodeSelectorTerms for node "{node.name}"'
        )
    if spec.get("volumeMode", "Filesystem") != "Filesystem":
        raise _error(
            f'PersistentVolume "{pv_name}": spec.volumeMode {spec.get("volumeMode")} is not '
            "supported by nodeagent (Filesystem is)"
        )
    modes = [str(m) for m in spec.get("accessModes") or []]
    read_only = use.read_only or modes == [READ_ONLY_MANY]
    once_pod = READ_WRITE_ONCE_POD in modes or READ_WRITE_ONCE_POD in [
        str(m) for m in (claim.get("spec") or {}).get("accessModes") or []
    ]
    base = ClaimMount(
        use.volume, f"{namespace}/{use.claim}", pv_name, "", "", read_only, False, once_pod
    )
    if isinstance(spec.get("hostPath"), dict):
        source = spec["hostPath"]
        path, kind = str(source.get("path") or ""), str(source.get("type") or "")
        return dataclasses.replace(base, path=path, path_type=kind)
    if isinstance(spec.get("local"), dict):
        path = str(spec["local"].get("path") or "")
        return dataclasses.replace(base, path=path, path_type="Directory", fs_group_applies=True)
    if isinstance(spec.get("csi"), dict):
        csi = _csi(spec["csi"])
        return dataclasses.replace(base, read_only=read_only or csi.read_only, csi=csi)
    found = next((k for k in KNOWN_SOURCES if k in spec), "none")
    raise _error(
        f'PersistentVolume "{pv_name}": spec.{found}: volume source not supported by nodeagent '
        "(hostPath, local and csi are)"
    )


def _check_claim_ref(pv: str, ref: Any, claim_meta: Mapping[str, Any], namespace: str) -> None:
    if not isinstance(ref, dict):
        raise _error(
            f'found PV object "{pv}" but it has a nil pv.Spec.ClaimRef indicating it is not '
            "yet bound to the claim"
        )
    if ref.get("name") != claim_meta.get("name") or (ref.get("namespace") or "") != namespace:
        raise _error(
            f'found PV object "{pv}" but its pv.Spec.ClaimRef ({ref.get("namespace")}/'
            f"{ref.get('name')}) does not point to claim {namespace}/{claim_meta.get('name')}"
        )
    uid = str(claim_meta.get("uid") or "")
    if ref.get("uid") and ref.get("uid") != uid:
        raise _error(
            f'found PV object "{pv}" but its pv.Spec.ClaimRef.UID ("{ref.get("uid")}") does '
            f'not point to claim.UID ("{uid}")'
        )


def _csi(source: Mapping[str, Any]) -> CSIVolumeSource:
    return CSIVolumeSource(
        driver=str(source.get("driver") or ""),
        volume_handle=str(source.get("volumeHandle") or ""),
        read_only=bool(source.get("readOnly")),
        fs_type=str(source.get("fsType") or ""),
        volume_attributes={
            str(k): str(v) for k, v in (source.get("volumeAttributes") or {}).items()
        },
    )


def apply(doc: Obj, mounts: Mapping[str, ClaimMount]) -> Obj:
    """``doc`` with each resolved claim volume a hostPath of its directory, mounted
    read-only where the claim is. Volumes without a mount are left as they are."""
    out = copy.deepcopy(doc)
    spec = out.setdefault("spec", {})
    volumes = []
    for volume in spec.get("volumes") or []:
        mount = mounts.get(str(volume.get("name") or ""))
        if mount is not None and mount.path:
            volume = {
                "name": volume.get("name"),
                "hostPath": {"path": mount.path, "type": mount.path_type},
            }
        volumes.append(volume)
    if volumes:
        spec["volumes"] = volumes
    read_only = {name for name, mount in mounts.items() if mount.read_only}
    for container in pod_containers(spec):
        for volume_mount in container.get("volumeMounts") or []:
            if volume_mount.get("name") in read_only:
                volume_mount["readOnly"] = True
    return out


def in_use(mounts: Iterable[ClaimMount]) -> list[str]:
    """Node ``status.volumesInUse``: the kubelet's unique names of the volumes mounted here
    whose plugin attaches or mounts a device (csi, local), sorted; hostPath ones are not
    reported, as upstream."""
    names = set()
    for mount in mounts:
        if mount.csi is not None:
            names.add(f"kubernetes.io/csi/{mount.csi.driver}^{mount.csi.volume_handle}")
        elif mount.fs_group_applies:
            names.add(f"kubernetes.io/local-volume/{mount.pv}")
    return sorted(names)


def _error(message: str) -> RefError:
    return RefError(MOUNT_ERROR, message)
