"""What a PersistentVolume's ``csi`` source asks of a CSI node plugin.

The seam between resolving a claim (``apiserver/claims.py``: PVC -> PV) and mounting it: a
PV whose source is ``csi`` becomes one ``CSIVolumeSource``, which whatever CSI mounter the
agent has takes from there (NodeStageVolume/NodePublishVolume). Only the fields the CSI Node
service needs; frozen, so both sides can keep it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CSIVolumeSource:
    driver: str
    volume_handle: str
    read_only: bool = False
    fs_type: str = ""
    volume_attributes: Mapping[str, str] = field(default_factory=dict)
