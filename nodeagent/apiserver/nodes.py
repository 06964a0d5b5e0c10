"""Other nodes, watched: the host-gw routes to their pod CIDRs (see nodeagent.network.routes).

A reflector lists and watches ``/api/v1/nodes``. ``peer_routes`` (pure) turns the Nodes into
the routes this node wants: for every *other* Node with a ``spec.podCIDR`` and an
``InternalIP`` address, "podCIDR via InternalIP". A Node without either (not yet given a CIDR
by the controller-manager, or not yet reporting addresses) gets no route until it has both; a
bad CIDR or address is reported by node and field, and the other nodes' routes still go in.

``NodeRoutes.run`` syncs the kernel after the first list and after every change, and every
``RESYNC_S`` regardless, so a route deleted by hand comes back. Routes are never removed
before the first list: an agent restarted while the API is down keeps the pod network up,
as the reflector's invariant keeps pods running.

Since 1.32 a node may read only its own Node: listing them all needs a ClusterRole such as
``system:node-proxier`` (docs/rbac.md). Without it the reflector reports the 403 (``report``
-> ``forbidden``), keeps asking slowly, and no route is ever removed or added meanwhile.

Readiness is deliberately ignored: a NotReady node's pods may still run (an agent restart, a
network blip to the API), and its routes cost nothing while they are wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Iterable
from typing import Any

import structlog

from nodeagent.apiserver.client import ApiClient
from nodeagent.apiserver.reflector import NODE_PROXIER, Collection, Reflector
from nodeagent.network.routes import Route, RouteTable, normalise

log = structlog.get_logger("nodeagent.apiserver.nodes")

Obj = dict[str, Any]

RESYNC_S = 30.0


def internal_ip(node: Obj) -> str:
    """The Node's first IPv4 InternalIP, or ""."""
    for address in (node.get("status") or {}).get("addresses") or []:
        if address.get("type") != "InternalIP":
            continue
        try:
            ip = ipaddress.ip_address(str(address.get("address") or ""))
        except ValueError:
            continue
        if ip.version == 4:
            return str(ip)
    return ""


def peer_routes(nodes: Iterable[Obj], *, node_name: str) -> tuple[list[Route], list[str]]:
    """(routes to every other node's pod CIDR, problems naming node and field). Pure."""
    routes: dict[str, Route] = {}
    problems: list[str] = []
    for node in sorted(nodes, key=lambda n: str((n.get("metadata") or {}).get("name"))):
        name = str((node.get("metadata") or {}).get("name") or "")
        if not name or name == node_name:
            continue
        spec = node.get("spec") or {}
        cidrs = [spec.get("podCIDR")] if spec.get("podCIDR") else spec.get("podCIDRs") or []
        v4 = []
        for cidr in cidrs:
            try:
                v4.append(normalise(str(cidr)))
            except ValueError:
                if ":" not in str(cidr):  # IPv6 pod CIDRs are not routed by us, not an error
                    problems.append(f"Node {name}: spec.podCIDR {cidr!r} is not an IPv4 CIDR")
        gateway = internal_ip(node)
        if not v4 or not gateway:
            continue
        for cidr in v4:
            if cidr in routes:
                other = routes[cidr].node
                problems.append(f"Node {name}: spec.podCIDR {cidr} is also Node {other}'s")
                continue
            routes[cidr] = Route(cidr, gateway, node=name)
    return sorted(routes.values()), problems


class NodeRoutes:
    """Watches Nodes, keeps the routes to the other nodes' pods in the kernel."""

    def __init__(
        self, client: ApiClient, *, node_name: str, table: RouteTable | None = None
    ) -> None:
        self.node_name = node_name
        self.table = table or RouteTable()
        self.problems: list[str] = []
        self.syncs = 0
        self._changed = asyncio.Event()
        self.nodes = Reflector(
            client, Collection("/api/v1/nodes", needs=NODE_PROXIER), on_change=self._changed.set
        )

    def loops(self) -> dict[str, Any]:
        return {"api-nodes": self.nodes.run, "node-routes": self.run}

    async def run(self) -> None:
        await self.nodes.synced.wait()
        while True:
            self._changed.clear()
            routes, problems = peer_routes(self.nodes.objects.values(), node_name=self.node_name)
            for problem in set(problems) - set(self.problems):
                log.error("node_route_invalid", problem=problem)
            self.problems = problems
            await self.table.sync(routes)
            self.syncs += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), RESYNC_S)

    def report(self) -> dict[str, Any]:
        forbidden = [self.nodes.report()] if self.nodes.forbidden else []
        return {
            **self.table.report(),
            "nodeErrors": list(self.problems),
            "syncs": self.syncs,
            "forbidden": forbidden,
        }
