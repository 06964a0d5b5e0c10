"""The node's CNI network configuration: render it (pure) and write it (atomic).

containerd's CRI plugin runs the CNI plugins itself; our part is the conflist it reads from
its ``conf_dir``. The chain is the classic one for a single-node pod network:

- ``bridge`` creates the node bridge, is the pods' gateway, masquerades pod traffic leaving
  the pod CIDR (``ipMasq``) and sets hairpin mode, so a pod reaches itself through a Service
  whose endpoint it is. ``host-local`` IPAM hands out addresses from the node's pod CIDR and
  keeps its leases in ``dataDir`` (ours, so tests and nodes never share a lease store).
- ``portmap`` implements ``hostPort`` from the runtime's ``portMappings`` capability, with
  ``snat`` so hairpin and localhost connections to a host port work.

The loopback interface is not in the list: containerd's CRI plugin brings ``lo`` up itself.

Debian 12's plugins (containernetworking-plugins 1.1.1) answer ``VERSION`` with
0.1.0-1.0.0, and containerd 1.6 speaks 1.0.0, so the list says 1.0.0.

``write_conflist`` replaces only its own file, by writing a temporary file and renaming it:
containerd watches the directory and must never read a half-written list. Other files in the
directory are left alone.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

from nodeagent.fsutil import write_file_atomic

CNI_VERSION = "1.0.0"
CONFLIST_NAME = "10-nodeagent.conflist"
DEFAULT_BRIDGE = "na0"
DEFAULT_NETWORK_NAME = "nodeagent"


def render_conflist(
    *,
    pod_cidr: str,
    bridge: str = DEFAULT_BRIDGE,
    ipam_data_dir: str,
    name: str = DEFAULT_NETWORK_NAME,
) -> dict[str, Any]:
    """The conflist for a bridge + portmap pod network on pod_cidr.

    Raises ValueError for a CIDR that is not a network address, or a bridge name Linux would
    refuse (at most 15 characters).
    """
    network = ipaddress.ip_network(pod_cidr, strict=True)
    if not bridge or len(bridge) > 15 or "/" in bridge or bridge.strip() != bridge:
        raise ValueError(f"invalid bridge name {bridge!r}")
    default_route = "0.0.0.0/0" if network.version == 4 else "::/0"
    return {
        "cniVersion": CNI_VERSION,
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": str(network)}]],
                    "routes": [{"dst": default_route}],
                    "dataDir": ipam_data_dir,
                },
            },
            {
                "type": "portmap",
                "capabilities": {"portMappings": True},
                "snat": True,
            },
        ],
    }


def write_conflist(conf_dir: Path | str, conflist: dict[str, Any]) -> Path:
    """Atomically write conflist as conf_dir/10-nodeagent.conflist; return its path."""
    directory = Path(conf_dir)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / CONFLIST_NAME
    write_file_atomic(target, json.dumps(conflist, indent=2, sort_keys=True) + "\n", mode=0o644)
    return target
