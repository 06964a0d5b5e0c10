"""Host-gw routes: one kernel route per other node's pod CIDR, via that node's InternalIP.

This is flannel's ``host-gw`` backend in miniature. Each node's pods live on its own bridge
with an address from the node's ``spec.podCIDR``; a packet from a pod on node A to a pod on
node C leaves A through its default route's neighbourhood and needs A to know "10.244.3.0/24
is behind 10.250.0.13". Every agent watches the Nodes and keeps exactly those routes. It only
works when every node reaches every other node's InternalIP directly (one L2 segment): a
gateway that is not on-link is refused by the kernel, and the node is reported, not routed.

Ownership: our routes carry the routing protocol number ``RTPROT_NODEAGENT`` (shown as
``proto 77`` by ``ip route``) in the main table. A sync lists only routes with that number,
so it never changes or deletes a route someone else made; and a destination that already has
a foreign route is left alone and reported (replacing it could cut the node off).

``plan`` is the pure part (desired vs. ours -> add/replace/delete), ``RouteTable`` the thin
pyroute2 effect, run in a thread because netlink calls block.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import structlog
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

log = structlog.get_logger("nodeagent.network.routes")

RTPROT_NODEAGENT = 77  # above the kernel's reserved range; not in iproute2's rt_protos list
MAIN_TABLE = 254


@dataclass(frozen=True, order=True)
class Route:
    """``dst`` (a pod CIDR, normalised) via ``gateway`` (a node's InternalIP)."""

    dst: str
    gateway: str
    node: str = field(default="", compare=False)  # for logs and status only


@dataclass(frozen=True)
class RoutePlan:
    add: tuple[Route, ...] = ()  # new, or a changed gateway (replaced in place)
    delete: tuple[Route, ...] = ()  # ours, no longer wanted
    blocked: tuple[Route, ...] = ()  # wanted, but a foreign route holds the destination

    @property
    def empty(self) -> bool:
        return not (self.add or self.delete)


def normalise(cidr: str) -> str:
    """``10.244.1.0/24`` for any spelling; ValueError for a bad or host-bits-set CIDR."""
    return str(ipaddress.IPv4Network(cidr, strict=True))


def plan(
    desired: Iterable[Route], ours: Iterable[Route], foreign_dsts: Iterable[str] = ()
) -> RoutePlan:
    """What to change so that our routes are exactly ``desired`` (pure)."""
    want = {r.dst: r for r in desired}
    have = {r.dst: r for r in ours}
    foreign = set(foreign_dsts) - set(have)
    add = [r for dst, r in want.items() if dst not in foreign and have.get(dst) != r]
    delete = [r for dst, r in have.items() if dst not in want]
    blocked = [r for dst, r in want.items() if dst in foreign]
    return RoutePlan(tuple(sorted(add)), tuple(sorted(delete)), tuple(sorted(blocked)))


@dataclass(frozen=True)
class SyncResult:
    plan: RoutePlan
    failed: Mapping[Route, str]  # route -> the kernel's reason


class RouteTable:
    """Our routes in the current network namespace's main table."""

    def __init__(self, protocol: int = RTPROT_NODEAGENT) -> None:
        self.protocol = protocol
        self.installed: dict[str, Route] = {}  # dst -> route, as of the last sync
        self.problems: dict[str, str] = {}  # dst -> why it is not installed

    async def sync(self, desired: Iterable[Route]) -> SyncResult:
        result = await asyncio.to_thread(self._sync, list(desired))
        self.problems = {r.dst: why for r, why in result.failed.items()}
        for route in result.plan.blocked:
            self.problems[route.dst] = "a route not made by nodeagent holds this destination"
        return result

    def _sync(self, desired: list[Route]) -> SyncResult:
        failed: dict[Route, str] = {}
        with IPRoute() as ipr:
            ours, foreign = self._read(ipr)
            todo = plan(desired, ours, foreign)
            for route in todo.delete:
                try:
                    ipr.route(
                        "del",
                        dst=route.dst,
                        gateway=route.gateway,
                        proto=self.protocol,
                        table=MAIN_TABLE,
                    )
                    log.info("route_deleted", dst=route.dst, via=route.gateway)
                except NetlinkError as exc:
                    failed[route] = exc.args[1] if len(exc.args) > 1 else str(exc)
            for route in todo.add:
                try:
                    ipr.route(
                        "replace",
                        dst=route.dst,
                        gateway=route.gateway,
                        proto=self.protocol,
                        table=MAIN_TABLE,
                    )
                    log.info("route_added", dst=route.dst, via=route.gateway, node=route.node)
                except NetlinkError as exc:
                    why = exc.args[1] if len(exc.args) > 1 else str(exc)
                    failed[route] = why
                    log.error(
                        "route_failed", dst=route.dst, via=route.gateway, node=route.node, error=why
                    )
            for route in todo.blocked:
                log.error(
                    "route_blocked",
                    dst=route.dst,
                    node=route.node,
                    error="a route not made by nodeagent holds this destination",
                )
            now, _ = self._read(ipr)
        self.installed = {r.dst: r for r in now}
        return SyncResult(todo, failed)

    def _read(self, ipr: IPRoute) -> tuple[list[Route], set[str]]:
        """(our routes, destinations of everyone else's) in the main table."""
        ours: list[Route] = []
        foreign: set[str] = set()
        for msg in ipr.get_routes(family=socket.AF_INET, table=MAIN_TABLE):
            dst = msg.get("dst")
            if not dst:
                continue  # the default route
            cidr = f"{dst}/{msg['dst_len']}"
            if msg["proto"] == self.protocol:
                ours.append(Route(cidr, str(msg.get("gateway") or "")))
            else:
                foreign.add(cidr)
        return ours, foreign

    def report(self) -> dict[str, object]:
        return {
            "routes": [{"dst": r.dst, "via": r.gateway} for r in sorted(self.installed.values())],
            "problems": dict(sorted(self.problems.items())),
        }
