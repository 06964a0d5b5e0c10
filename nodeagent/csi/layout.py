"""Where CSI volumes live on the node, and what we remember of each (pure).

The kubelet's layout, under our state dir instead of /var/lib/kubelet:

- a pod's volume is published at ``pods/<uid>/volumes/kubernetes.io~csi/<name>/mount``,
  with ``vol_data.json`` beside it: the record that lets a restarted agent unpublish it
  without the pod's spec (the pod may be gone from every source by then);
- a staged PersistentVolume is at ``plugins/kubernetes.io/csi/<driver>/<sha256(handle)>/
  globalmount``: one per volume and node, shared by every pod using the volume, so it is
  unstaged only when no record names it any more.

A record is written before the plugin is asked to publish: a crash in between leaves a
record for a volume that may be half mounted, and unpublishing is idempotent in the CSI spec,
so cleanup always asks the plugin, never only looks at the mount table.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CSI_KIND = "kubernetes.io~csi"
RECORD = "vol_data.json"
MOUNT = "mount"

# The volume_context keys the kubelet adds when the CSIDriver asks for podInfoOnMount.
POD_NAME = "csi.storage.k8s.io/pod.name"
POD_NAMESPACE = "csi.storage.k8s.io/pod.namespace"
POD_UID = "csi.storage.k8s.io/pod.uid"
SERVICE_ACCOUNT = "csi.storage.k8s.io/serviceAccount.name"
EPHEMERAL = "csi.storage.k8s.io/ephemeral"


@dataclass(frozen=True)
class VolumeRecord:
    """What a published volume needs to be unpublished: kept in its ``vol_data.json``."""

    driver: str
    volume_handle: str
    pod_uid: str
    volume_name: str
    target_path: str
    staging_path: str = ""  # "" when the driver was not asked to stage it

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> VolumeRecord:
        """Raises ValueError on anything that is not a record we wrote."""
        data: Any = json.loads(text)
        fields = ("driver", "volume_handle", "pod_uid", "volume_name", "target_path")
        if not isinstance(data, dict) or not all(isinstance(data.get(f), str) for f in fields):
            raise ValueError("not a CSI volume record")
        return VolumeRecord(
            **{f: data[f] for f in fields}, staging_path=str(data.get("staging_path") or "")
        )


def volumes_dir(state_dir: Path, pod_uid: str) -> Path:
    return state_dir / "pods" / pod_uid / "volumes" / CSI_KIND


def volume_dir(state_dir: Path, pod_uid: str, volume_name: str) -> Path:
    return volumes_dir(state_dir, pod_uid) / volume_name


def target_path(state_dir: Path, pod_uid: str, volume_name: str) -> Path:
    return volume_dir(state_dir, pod_uid, volume_name) / MOUNT


def staging_path(state_dir: Path, driver: str, volume_handle: str) -> Path:
    digest = hashlib.sha256(volume_handle.encode()).hexdigest()
    return state_dir / "plugins" / "kubernetes.io" / "csi" / driver / digest / "globalmount"


def inline_volume_handle(pod_uid: str, volume_name: str) -> str:
    """The volume_id of an inline ephemeral volume, as the kubelet makes it: unique per pod
    and volume, the same after a restart."""
    return "csi-" + hashlib.sha256(f"{pod_uid}{volume_name}".encode()).hexdigest()


def attachment_name(volume_handle: str, driver: str, node_name: str) -> str:
    """The VolumeAttachment the attach/detach controller creates for a volume on a node."""
    return "csi-" + hashlib.sha256(f"{volume_handle}{driver}{node_name}".encode()).hexdigest()


def pod_info(
    *, name: str, namespace: str, uid: str, service_account: str, ephemeral: bool
) -> dict[str, str]:
    """The volume_context entries of podInfoOnMount."""
    return {
        POD_NAME: name,
        POD_NAMESPACE: namespace,
        POD_UID: uid,
        SERVICE_ACCOUNT: service_account,
        EPHEMERAL: "true" if ephemeral else "false",
    }


def still_staged(staging: str, records: Mapping[str, VolumeRecord]) -> bool:
    """Whether any remaining record (by target path) still uses ``staging``."""
    return any(r.staging_path == staging for r in records.values())
