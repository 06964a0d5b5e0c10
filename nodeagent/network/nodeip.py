"""The node's own address when ``--node-ip`` is not given: the Node's InternalIP.

Other nodes route this node's pod CIDR via this address (host-gw) and Services' NodePorts are
reached at it, so it must be the address the node is reached at from outside, never one the
agent itself made. The kubelet (``nodestatus.NodeAddress`` without a cloud provider) takes the
hostname's address if it lies on a local interface, else the address of the interface that
holds the default route (``utilnet.ChooseHostInterface``). We take them the other way round:
the default route's interface first, the hostname's address second, because a name lookup
blocks for seconds on a machine without DNS, and a hostname mapped to ``127.0.1.1`` (Debian's
``/etc/hosts``) is rejected anyway. Where both are valid they agree on ordinary machines.

Never chosen: loopback, link-local and multicast addresses, and the devices the pod network
makes: a CNI bridge (our ``na0``, ``cni0``, ``docker0``), a pod's veth (enslaved to a bridge),
tunnels, and any address inside the pod or cluster CIDR. A veth that is the node's uplink (a
node that is itself a container or a network namespace, as in kind or our lab) is fine.

When neither rule finds one (no default route, a hostname that resolves elsewhere), the first
usable address of a device that is not a bridge is taken, and the agent logs that it guessed:
set ``--node-ip`` there.

``choose`` is the pure decision; ``read_host`` the netlink reading (blocking: run it in a
thread), ``find`` both, with the hostname lookup bounded in time. The lookup runs in a daemon
thread of its own, not the loop's executor: a resolver that never answers keeps
``getaddrinfo`` blocked for its whole retry budget (many seconds past ours), and
``asyncio.run`` joins the executor's threads on exit, so an abandoned lookup would hold up the
agent's shutdown until the resolver gave up.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import socket
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import structlog
from pyroute2 import IPRoute

log = structlog.get_logger("nodeagent.network.nodeip")

# Devices of pod networking, never the node's uplink.
TUNNEL_KINDS = frozenset({"vxlan", "geneve", "wireguard", "ipip", "gre"})
POD_NETWORK_NAMES = ("na0", "cni0", "docker0")
POD_NETWORK_PREFIXES = ("cni", "flannel", "cali", "weave", "kube-", "tunl", "vxlan")
MAIN_TABLE = 254
RESOLVE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Interface:
    name: str
    kind: str  # IFLA_INFO_KIND: "" for a physical device, "veth", "bridge", ...
    addresses: tuple[str, ...]  # IPv4 addresses, in the kernel's order
    enslaved: bool = False  # has a master (a pod's veth on the CNI bridge)

    def pod_network(self) -> bool:
        return (
            self.enslaved
            or self.kind in TUNNEL_KINDS
            or self.name in POD_NETWORK_NAMES
            or self.name.startswith(POD_NETWORK_PREFIXES)
        )


@dataclass(frozen=True)
class HostNetwork:
    """What the choice reads from the machine (or the node's network namespace)."""

    interfaces: tuple[Interface, ...]
    default_route_interfaces: tuple[str, ...]  # best (lowest metric) first


class Rule(enum.Enum):
    DEFAULT_ROUTE = "default-route"  # the address of the default route's interface
    HOSTNAME = "hostname"  # the hostname's address, on a local interface
    GUESS = "guess"  # the first usable address of a device that is not a bridge
    NONE = "none"  # no usable address at all


def _usable(address: str, excluded: Sequence[ipaddress.IPv4Network]) -> bool:
    ip = ipaddress.IPv4Address(address)
    if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
        return False
    return not any(ip in network for network in excluded)


def candidates(
    host: HostNetwork, excluded: Sequence[ipaddress.IPv4Network] = ()
) -> dict[str, tuple[str, ...]]:
    """Interface name -> its addresses that may be the node's address."""
    found = {}
    for iface in host.interfaces:
        if iface.pod_network() or iface.name == "lo":
            continue
        usable = tuple(a for a in iface.addresses if _usable(a, excluded))
        if usable:
            found[iface.name] = usable
    return found


def choose(
    host: HostNetwork, *, excluded: Iterable[str] = (), hostname_addresses: Sequence[str] = ()
) -> tuple[str, Rule]:
    """The node's address and the rule that chose it (see the module docstring).

    ``excluded``: CIDRs whose addresses are never the node's (the pod and cluster CIDRs).
    """
    networks = [ipaddress.IPv4Network(c) for c in excluded if ":" not in c]
    usable = candidates(host, networks)
    for name in host.default_route_interfaces:
        if name in usable:
            return usable[name][0], Rule.DEFAULT_ROUTE
    local = {a for addresses in usable.values() for a in addresses}
    for address in hostname_addresses:
        if address in local:
            return address, Rule.HOSTNAME
    kinds = {i.name: i.kind for i in host.interfaces}
    for name, addresses in usable.items():
        if kinds.get(name) != "bridge":
            return addresses[0], Rule.GUESS
    return "", Rule.NONE


def read_host() -> HostNetwork:
    """The interfaces and default routes of this network namespace, via netlink."""
    with IPRoute() as ipr:
        links: dict[int, tuple[str, str, bool]] = {}
        for link in ipr.get_links():
            info = link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
            enslaved = bool(link.get_attr("IFLA_MASTER"))
            links[link["index"]] = (str(link.get_attr("IFLA_IFNAME")), str(kind or ""), enslaved)
        addresses: dict[int, list[str]] = {}
        for addr in ipr.get_addr(family=socket.AF_INET):
            addresses.setdefault(addr["index"], []).append(str(addr.get_attr("IFA_ADDRESS")))
        defaults = []
        for route in ipr.get_routes(family=socket.AF_INET, table=MAIN_TABLE):
            oif = route.get_attr("RTA_OIF")
            if route["dst_len"] == 0 and oif in links:
                defaults.append((route.get_attr("RTA_PRIORITY") or 0, links[oif][0]))
    interfaces = tuple(
        Interface(name, kind, tuple(addresses.get(index, ())), enslaved)
        for index, (name, kind, enslaved) in sorted(links.items())
    )
    return HostNetwork(interfaces, tuple(name for _, name in sorted(defaults)))


def resolve(hostname: str) -> tuple[str, ...]:
    """The hostname's IPv4 addresses (blocking; /etc/hosts, then DNS)."""
    try:
        infos = socket.getaddrinfo(hostname, None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        return ()
    return tuple(dict.fromkeys(str(info[4][0]) for info in infos))


async def _resolve_within(hostname: str, seconds: float) -> tuple[str, ...]:
    """``resolve`` in a daemon thread (see the module docstring); () after ``seconds``."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[tuple[str, ...]] = loop.create_future()

    def deliver(names: tuple[str, ...]) -> None:
        if not answer.done():  # cancelled when we stopped waiting
            answer.set_result(names)

    def lookup() -> None:
        names = resolve(hostname)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(deliver, names)

    threading.Thread(target=lookup, name="resolve-hostname", daemon=True).start()
    try:
        return await asyncio.wait_for(answer, seconds)
    except TimeoutError:
        return ()


async def find(*, excluded: Iterable[str] = (), hostname: str = "") -> str:
    """Read this namespace's network and choose; the hostname is looked up only when the
    default route does not decide, and for at most RESOLVE_TIMEOUT_S."""
    excluded = tuple(excluded)
    host = await asyncio.to_thread(read_host)
    chosen, rule = choose(host, excluded=excluded)
    if rule is not Rule.DEFAULT_ROUTE and hostname:
        names = await _resolve_within(hostname, RESOLVE_TIMEOUT_S)
        chosen, rule = choose(host, excluded=excluded, hostname_addresses=names)
    if rule is Rule.DEFAULT_ROUTE or rule is Rule.HOSTNAME:
        log.info("node_ip_chosen", node_ip=chosen, rule=rule.value)
    else:
        log.warning("node_ip_guessed", node_ip=chosen or None, rule=rule.value, hint="--node-ip")
    return chosen
