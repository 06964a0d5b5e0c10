"""The kernel settings the proxy depends on, and the node's own addresses.

Everything here acts on the network namespace the agent runs in (on a real node, the host's;
in tests, the test node's), the way kube-proxy does on start-up:

- ``net.ipv4.conf.all.route_localnet=1`` so NodePorts answer on 127.0.0.1 (DNAT of a
  loopback destination to a pod is otherwise dropped as martian). If it cannot be set, the
  rules leave 127.0.0.0/8 out of NodePorts instead.
- ``net.bridge.bridge-nf-call-iptables=1``: pods on one bridge talk to each other at layer 2;
  without this, a reply from a service endpoint to a client pod on the same bridge skips
  conntrack and reaches the client un-NATed (from the pod IP instead of the service IP), and
  the client drops it. It exists per network namespace once br_netfilter is loaded (kernel
  5.3+; measured: settable inside a test netns, default 1). If it is missing or cannot be
  set, this is reported, not fatal: traffic from the node and from other hosts still works.
"""

from __future__ import annotations

import socket
from pathlib import Path

import psutil

from nodeagent.log import get_logger

log = get_logger(__name__)

PROC_SYS = Path("/proc/sys")
ROUTE_LOCALNET = "net/ipv4/conf/all/route_localnet"
BRIDGE_NF_CALL_IPTABLES = "net/bridge/bridge-nf-call-iptables"


def _ensure(key: str, value: str) -> str | None:
    """Set a sysctl if it differs; None on success, else why not."""
    path = PROC_SYS / key
    try:
        if path.read_text().strip() == value:
            return None
        path.write_text(value)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def prepare() -> tuple[bool, list[str]]:
    """Apply the sysctls; return (localhost NodePorts possible, warnings)."""
    warnings: list[str] = []
    problem = _ensure(ROUTE_LOCALNET, "1")
    localhost_nodeports = problem is None
    if problem is not None:
        warnings.append(f"cannot set {ROUTE_LOCALNET} ({problem}): no NodePorts on 127.0.0.1")
    problem = _ensure(BRIDGE_NF_CALL_IPTABLES, "1")
    if problem is not None:
        warnings.append(
            f"cannot set {BRIDGE_NF_CALL_IPTABLES} ({problem}; is br_netfilter loaded?): "
            "pod-to-service traffic between pods on the same bridge may fail"
        )
    for warning in warnings:
        log.warning("proxy_host_setting", problem=warning)
    return localhost_nodeports, warnings


def local_addresses() -> set[str]:
    """The IPv4 addresses of this network namespace's interfaces."""
    found: set[str] = set()
    for addresses in psutil.net_if_addrs().values():
        found.update(a.address for a in addresses if a.family == socket.AF_INET)
    return found
