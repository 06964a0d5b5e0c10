"""What both proxy modes' rule builders share: their configuration, kube-proxy's endpoint
categories, its chain-name hash, and the order service ports are written in. Pure.

The iptables mode (``nodeagent.proxy.iptables``) and the nftables mode
(``nodeagent.proxy.nftables``) build different text from the same decisions; the decisions
live here, so that the two modes cannot drift apart on which endpoints a packet may reach.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from nodeagent.proxy.state import Endpoint, ServicePortInfo, ServicePortName

MASQ_MARK = "0x4000"
LARGE_CLUSTER_ENDPOINTS = 1000
LOCALHOST = "127.0.0.0/8"
MULTICAST = "224.0.0.0/4"


@dataclass(frozen=True)
class RulesConfig:
    # Traffic from this range is pod traffic ("local" in kube-proxy's detect-local sense);
    # a service IP reached from anywhere else is masqueraded. "": no such detection.
    cluster_cidr: str = ""
    # NodePorts answer on 127.0.0.1 too (needs net.ipv4.conf.all.route_localnet=1).
    localhost_nodeports: bool = True
    # Comments on the per-endpoint rules. Past LARGE_CLUSTER_ENDPOINTS endpoints the syncer
    # leaves them out, as kube-proxy does: in the nft backend every added rule makes the
    # kernel re-validate every rule reachable from the built-in chains, and the comment
    # match is a good part of that work (0.30 -> 0.16 s per sync at 5000 x 10, measured).
    comments: bool = True
    # Multi-node pod network: pod traffic to the rest of cluster_cidr keeps its source, pod
    # traffic leaving it is masqueraded (needs cluster_cidr to be the whole cluster's).
    pod_egress_masquerade: bool = False
    # --nodeport-addresses: the local IPs NodePorts answer on; None: every local address.
    nodeport_ips: tuple[str, ...] | None = None


_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"  # RFC 4648, as Go's base32.StdEncoding
_B32_PAIRS = tuple(_B32[i >> 5] + _B32[i & 31] for i in range(1024))  # 10 bits -> 2 chars


@functools.lru_cache(maxsize=1 << 17)
def hash16(text: str) -> str:
    """The first 16 base32 characters of sha256(text): exactly its first 10 bytes.

    Done by table, not ``base64.b32encode`` (pure Python, several times slower): a full sync
    of 5000 services x 10 endpoints names 55000 chains.
    """
    n = int.from_bytes(hashlib.sha256(text.encode()).digest()[:10], "big")
    pairs = _B32_PAIRS
    return "".join(pairs[(n >> shift) & 1023] for shift in (70, 60, 50, 40, 30, 20, 10, 0))


def sort_key(name: ServicePortName) -> tuple[str, str, str, str]:
    """Sorting by this is the dataclass order, at C speed (it matters at 5000 services)."""
    return (name.namespace, name.name, name.port, name.protocol)


@dataclass(frozen=True)
class Categorized:
    cluster: tuple[Endpoint, ...]  # used by the Cluster policy chain
    local: tuple[Endpoint, ...]  # used by the Local policy chain
    reachable: tuple[Endpoint, ...]  # cluster + local: each gets an endpoint chain
    any_usable: bool  # some endpoint anywhere can take traffic


def categorize(info: ServicePortInfo, endpoints: Sequence[Endpoint]) -> Categorized:
    """Ready endpoints, or else serving+terminating ones (kube-proxy's CategorizeEndpoints)."""
    cluster: tuple[Endpoint, ...] = ()
    if info.uses_cluster_endpoints:
        cluster = tuple(e for e in endpoints if e.ready) or tuple(
            e for e in endpoints if e.serving and e.terminating
        )
    if not info.uses_local_endpoints:
        return Categorized(cluster, (), cluster, bool(cluster))
    local = tuple(e for e in endpoints if e.local and e.ready) or tuple(
        e for e in endpoints if e.local and e.serving and e.terminating
    )
    any_usable = any(e.ready or (e.serving and e.terminating) for e in endpoints)
    if not info.uses_cluster_endpoints:
        return Categorized((), local, local, any_usable)
    reachable = tuple(sorted(set(cluster) | set(local)))
    return Categorized(cluster, local, reachable, any_usable or bool(cluster))
