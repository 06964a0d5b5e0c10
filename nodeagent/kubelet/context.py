"""The one typed context every pod worker shares, instead of long argument chains."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nodeagent.csi.mounter import CSIVolumes
from nodeagent.kubelet.cgroups.manager import PodCgroups
from nodeagent.kubelet.dns import DNSSettings
from nodeagent.kubelet.envvars import ServiceView
from nodeagent.kubelet.images import ImageManager
from nodeagent.kubelet.pleg import RuntimeCache
from nodeagent.kubelet.prober import ProbeManager
from nodeagent.model.security import PrivilegePolicy
from nodeagent.runtime.base import Runtime


@dataclass(frozen=True)
class KubeletContext:
    node_name: str
    host_ip: str
    state_dir: Path
    pod_log_dir: str
    runtime: Runtime
    runtime_name: str  # prefix of containerIDs in status: "containerd", "docker"
    cache: RuntimeCache
    images: ImageManager
    prober: ProbeManager
    resync_s: float = 60.0  # a worker re-checks its pod this often even without events
    # --cluster-dns, --cluster-domain and the node's resolv.conf
    dns: DNSSettings = field(default_factory=DNSSettings)
    # --allow-privileged and the paths no hostPath may reach
    privilege: PrivilegePolicy = field(default_factory=PrivilegePolicy)
    # The Services as the proxy has them (API and manifest directory): read at each
    # container creation for the pod's Service variables.
    services: Callable[[], ServiceView] = ServiceView
    # Why a sandbox on the pod network may not start now ("" when it may): no podCIDR yet.
    network_problem: Callable[[], str] = field(default=lambda: "")
    # CSI volumes: the registered drivers and what they published (None: no CSI support).
    csi: CSIVolumes | None = None
    # Pod cgroups under kubepods (--cgroups-per-qos); None: the runtime's default placement.
    cgroups: PodCgroups | None = None
