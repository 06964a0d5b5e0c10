"""UDP conntrack clean-up: flows to a service that no longer lead to one of its endpoints.

UDP has no connection to close, so conntrack keeps a flow (and its DNAT decision) alive for
as long as packets keep coming: a client that talks to a service IP every few seconds (a DNS
resolver) keeps talking to a deleted endpoint forever. And a flow created while the service
had no endpoints was never DNATed at all, so it keeps being rejected after endpoints appear.
kube-proxy deletes such flows after each sync; so do we, with the ``conntrack`` tool.

``stale_flows`` is the pure decision: a UDP flow is stale when its original destination is a
service VIP:port (cluster, external or load-balancer IP) or a NodePort on a local address,
and its reply source, the endpoint it was translated to (or the VIP itself when it was not
translated), is not a current endpoint of that service port. Only the service ports that
changed in a sync are looked at. ``Conntrack`` lists flows and deletes them one by one by
their exact original tuple.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from nodeagent.log import get_logger
from nodeagent.model.service import Protocol
from nodeagent.proxy import command
from nodeagent.proxy.ruleconfig import categorize
from nodeagent.proxy.state import Endpoint, ServicePortInfo

log = get_logger(__name__)

TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Flow:
    src: str
    dst: str
    sport: int
    dport: int
    reply_src: str
    reply_sport: int


def parse_flows(text: str) -> list[Flow]:
    """Parse ``conntrack -L -p udp`` output; lines that do not parse are skipped."""
    flows = []
    for line in text.splitlines():
        fields = [f.split("=", 1) for f in line.split() if "=" in f]
        src = [v for k, v in fields if k == "src"]
        dst = [v for k, v in fields if k == "dst"]
        sport = [v for k, v in fields if k == "sport"]
        dport = [v for k, v in fields if k == "dport"]
        if len(src) < 2 or len(dst) < 2 or len(sport) < 2 or len(dport) < 2:
            continue
        with contextlib.suppress(ValueError):
            flows.append(Flow(src[0], dst[0], int(sport[0]), int(dport[0]), src[1], int(sport[1])))
    return flows


def stale_flows(
    flows: Iterable[Flow],
    services: Sequence[tuple[ServicePortInfo, Sequence[Endpoint]]],
    local_addresses: Iterable[str],
) -> list[Flow]:
    """The flows to delete, given the UDP service ports that changed and their endpoints."""
    by_vip: dict[tuple[str, int], set[tuple[str, int]]] = {}
    by_node_port: dict[int, set[tuple[str, int]]] = {}
    for info, endpoints in services:
        if info.protocol is not Protocol.UDP:
            continue
        usable = {(e.ip, e.port) for e in categorize(info, endpoints).reachable}
        for ip in (info.cluster_ip, *info.external_ips, *info.load_balancer_ips):
            by_vip.setdefault((ip, info.port), set()).update(usable)
        if info.node_port:
            by_node_port.setdefault(info.node_port, set()).update(usable)
    local = set(local_addresses)
    stale = []
    for flow in flows:
        backend = (flow.reply_src, flow.reply_sport)
        usable_set = by_vip.get((flow.dst, flow.dport))
        if usable_set is None and flow.dst in local:
            usable_set = by_node_port.get(flow.dport)
        if usable_set is not None and backend not in usable_set:
            stale.append(flow)
    return stale


class Conntrack:
    """The ``conntrack`` tool, in the network namespace this process runs in."""

    def __init__(self) -> None:
        self.available = shutil.which("conntrack") is not None
        if not self.available:
            log.warning("conntrack_missing", effect="stale UDP flows are not cleaned up")

    async def _run(self, *args: str) -> tuple[int, str]:
        try:
            done = await command.run(("conntrack", *args), stdin=None, timeout_s=TIMEOUT_S)
        except TimeoutError:
            return -1, ""
        return done.code, done.out

    async def udp_flows(self) -> list[Flow]:
        if not self.available:
            return []
        code, out = await self._run("-L", "-p", "udp")
        return parse_flows(out) if code == 0 else []

    async def delete(self, flows: Iterable[Flow]) -> int:
        """Delete each flow by its original tuple; return how many were found and deleted."""
        deleted = 0
        for f in flows:
            code, _ = await self._run(
                "-D",
                "-p",
                "udp",
                "--orig-src",
                f.src,
                "--orig-dst",
                f.dst,
                "--sport",
                str(f.sport),
                "--dport",
                str(f.dport),
            )
            deleted += code == 0  # exit 1: already gone
        return deleted

    async def clean(
        self,
        services: Sequence[tuple[ServicePortInfo, Sequence[Endpoint]]],
        local_addresses: Iterable[str],
    ) -> int:
        if not self.available or not services:
            return 0
        stale = stale_flows(await self.udp_flows(), services, local_addresses)
        if not stale:
            return 0
        deleted = await self.delete(stale)
        log.info("conntrack_cleaned", flows=deleted)
        return deleted
