"""Which local addresses NodePorts answer on (``--nodeport-addresses``). Pure.

kube-proxy's NodePortAddresses: a list of CIDRs, or ``primary`` (the node's own IP). The
result goes into ``RulesConfig.nodeport_ips``: None means every local address (the rule
builders match the kernel's idea of local, ``addrtype LOCAL`` / ``fib daddr type local``),
a tuple the exact addresses (possibly none: then no NodePort answers anywhere).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence


def primary_ip(local: Iterable[str]) -> str:
    """The node's IP when --node-ip is not given: its lowest non-loopback IPv4 address."""
    addresses = (ipaddress.IPv4Address(a) for a in local)
    usable = [a for a in addresses if not a.is_loopback and not a.is_link_local]
    return str(min(usable)) if usable else ""


def nodeport_ips(
    wanted: Sequence[str], local: Iterable[str], primary: str
) -> tuple[str, ...] | None:
    """The addresses ``--nodeport-addresses`` selects (kube-proxy's NodePortAddresses):
    CIDRs match the node's local IPv4 addresses, ``primary`` is the node's own IP; None
    (every local address) when nothing is asked for or a CIDR covers everything."""
    if not wanted:
        return None
    networks = [ipaddress.ip_network(w, strict=False) for w in wanted if w != "primary"]
    if any(n.prefixlen == 0 and n.version == 4 for n in networks):
        return None
    found = {primary} if "primary" in wanted and primary else set()
    for ip in local:
        address = ipaddress.ip_address(ip)
        if any(address in n for n in networks if n.version == address.version):
            found.add(ip)
    return tuple(sorted(found, key=lambda a: ipaddress.ip_address(a)))
