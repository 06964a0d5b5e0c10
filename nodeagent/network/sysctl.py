"""The kernel settings a node of a multi-node pod network needs, set and checked at start.

- ``net.ipv4.ip_forward=1``: a node forwards between its pod bridge and the node network;
  without it, pods reach nothing beyond their own node (and other nodes' pods never reach
  them). Required: a failure is an error in the log and in ``nodeagent status``.
- ``net.bridge.bridge-nf-call-iptables=1``: bridged pod-to-pod traffic passes through
  iptables, so Service DNAT between two pods on one bridge is undone on the reply. It exists
  once the br_netfilter module is loaded; missing, it is a warning (see proxy/host.py).

Both live under /proc/sys/net and are per network namespace: the values seen and set are
those of the namespace the agent runs in (a test node's, or the host's on a real node).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger("nodeagent.network.sysctl")

PROC_SYS = Path("/proc/sys")
IP_FORWARD = "net.ipv4.ip_forward"
BRIDGE_NF_CALL_IPTABLES = "net.bridge.bridge-nf-call-iptables"

# key -> (wanted value, required); a required setting that cannot be made is an error.
NODE_SYSCTLS: Mapping[str, tuple[str, bool]] = {
    IP_FORWARD: ("1", True),
    BRIDGE_NF_CALL_IPTABLES: ("1", False),
}


@dataclass(frozen=True)
class SysctlResult:
    key: str
    wanted: str
    found: str  # "" when the key does not exist
    ok: bool
    required: bool
    problem: str = ""


def path_of(key: str, root: Path = PROC_SYS) -> Path:
    return root / key.replace(".", "/")


def ensure(key: str, wanted: str, *, required: bool, root: Path = PROC_SYS) -> SysctlResult:
    """Set ``key`` to ``wanted`` if it differs, then read it back."""
    path = path_of(key, root)
    try:
        found = path.read_text().strip()
    except FileNotFoundError:
        hint = " (is the br_netfilter module loaded?)" if key.startswith("net.bridge.") else ""
        return SysctlResult(key, wanted, "", False, required, f"missing{hint}")
    except OSError as exc:
        return SysctlResult(key, wanted, "", False, required, exc.strerror or str(exc))
    if found != wanted:
        try:
            path.write_text(wanted)
            found = path.read_text().strip()
        except OSError as exc:
            return SysctlResult(key, wanted, found, False, required, exc.strerror or str(exc))
    ok = found == wanted
    return SysctlResult(key, wanted, found, ok, required, "" if ok else f"reads {found!r}")


def prepare_node(root: Path = PROC_SYS) -> list[SysctlResult]:
    """Apply NODE_SYSCTLS; log what could not be set."""
    results = [ensure(k, v, required=r, root=root) for k, (v, r) in NODE_SYSCTLS.items()]
    for result in results:
        if result.ok:
            continue
        event = "sysctl_required_unset" if result.required else "sysctl_unset"
        logger = log.error if result.required else log.warning
        logger(event, key=result.key, wanted=result.wanted, problem=result.problem)
    return results


def problems(results: list[SysctlResult]) -> list[str]:
    return [f"{r.key} is not {r.wanted}: {r.problem}" for r in results if not r.ok]
