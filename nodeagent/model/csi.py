"""CSI volume sources as the pod worker hands them to the CSI volume manager (``nodeagent.csi``).

Two shapes, as in the API: a PersistentVolume's ``csi`` source (``CSIVolumeSource``: the
volume exists outside the pod, named by its ``volumeHandle``, and may be staged once per
node) and a pod's inline ``csi`` volume (``CSIInlineSource``: an ephemeral volume that lives
and dies with the pod; the kubelet names it after the pod and never stages it).

``CSIVolumeSource`` is the seam between resolving a claim (``apiserver/claims.py``: PVC -> PV)
and mounting it; only the fields the CSI Node service needs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

# The CSI spec's plugin name: 63 characters or less, alphanumeric at both ends, dashes, dots
# and alphanumerics between.
CSI_DRIVER_NAME = re.compile(r"^[a-zA-Z0-9]([-a-zA-Z0-9.]{0,61}[a-zA-Z0-9])?$")


@dataclass(frozen=True)
class CSIVolumeSource:
    """A PersistentVolume's ``spec.csi``: what PVC resolution hands to the CSI mounter."""

    driver: str
    volume_handle: str
    read_only: bool = False
    fs_type: str = ""
    volume_attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CSIInlineSource:
    """A pod's ``volumes[].csi``: a CSI ephemeral volume."""

    driver: str
    read_only: bool = False
    fs_type: str = ""
    # Sorted (key, value) pairs: a pod spec stays hashable and compares by value.
    volume_attributes: tuple[tuple[str, str], ...] = field(default=())
    node_publish_secret_ref: str = ""  # a Secret in the pod's namespace; "" for none
