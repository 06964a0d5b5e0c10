"""The node's pod network: which pod CIDR it serves, and whether pods may be given addresses.

The pod CIDR comes from ``--pod-cidr`` (or 10.88.0.0/16 standalone), written at start. In
cluster mode without ``--pod-cidr`` it is the Node's ``spec.podCIDR``, which the
controller-manager's node IPAM assigns a moment after the Node is registered. Until it comes:

- no CNI config is written (containerd then reports ``NetworkReady=false``, as upstream with
  an empty ``/etc/cni/net.d``), and with it no pod gets an address from a range another node
  may also be handing out;
- no sandbox that needs the pod network starts; hostNetwork pods run. Pods wait in Pending
  with ContainerCreating and the kubelet's message (``network is not ready: container runtime
  network not ready: NetworkReady=false reason:NetworkPluginNotReady message:...``), never
  fail, and are woken the moment the network is ready;
- the Node's Ready condition is False with that message.

A podCIDR that changes later (a Node deleted and registered again, an operator's fix) must not
leave the bridge with the old gateway address: the bridge plugin refuses to add a second one
("already has an IP address different from ..."), and every new sandbox would fail. We
decide (``cidr_action``, pure):

- no pod holds an address of the old range: APPLY at once: delete the bridge (it has no ports
  left; the bridge plugin makes it again with the new gateway) and write the new config;
- pods still hold old addresses: DEFER. The old config stays, so pods keep starting (on the
  old range, which the Node no longer claims), and the Node reports condition
  ``PodCIDRChangePending`` True naming both ranges; the change is applied as soon as the last
  of those pods is gone (re-checked every ``RECHECK_S``). Stopping running pods to renumber
  them is a decision for the operator (drain the node), not for the agent.

The config file on disk counts as the configured range: an agent restarted on a node whose
pods use the Node's podCIDR keeps them undisturbed.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from nodeagent.network import cni

log = structlog.get_logger("nodeagent.network.podnet")

NOT_READY_REASON = "NetworkPluginNotReady"
WAITING_MESSAGE = "waiting for the Node's spec.podCIDR (node IPAM)"
APPLYING_MESSAGE = "writing the CNI config"
RECHECK_S = 2.0


class CidrAction(enum.Enum):
    KEEP = "keep"  # the configured range is the wanted one: nothing to do
    APPLY = "apply"  # write the wanted range (and remove a bridge of another range first)
    DEFER = "defer"  # pods still use the old range: keep it until they are gone


def cidr_action(configured: str, wanted: str, pods_on_configured: int) -> CidrAction:
    """What to do when the Node's podCIDR is ``wanted`` and the node serves ``configured``
    ("" before any config), with ``pods_on_configured`` pods holding addresses of it."""
    if configured == wanted:
        return CidrAction.KEEP
    if not configured or pods_on_configured == 0:
        return CidrAction.APPLY
    return CidrAction.DEFER


def count_in(cidr: str, pod_ips: Iterable[str]) -> int:
    """How many of ``pod_ips`` lie in ``cidr`` (bad addresses are not counted)."""
    if not cidr:
        return 0
    network = ipaddress.ip_network(cidr)
    count = 0
    for ip in pod_ips:
        try:
            count += ipaddress.ip_address(ip) in network
        except ValueError:
            continue
    return count


def not_ready_error(message: str) -> str:
    """The runtime network error, worded as the kubelet words CRI's NetworkReady=false."""
    return (
        "container runtime network not ready: NetworkReady=false "
        f"reason:{NOT_READY_REASON} message:{message}"
    )


@dataclass(frozen=True)
class PodNetworkStatus:
    """What node status and the status socket show of the pod network."""

    pod_cidr: str  # the range pods get addresses from; "" while waiting
    wanted_cidr: str  # the Node's podCIDR (or the flag's); "" while waiting
    error: str  # "" when pods may start; else the kubelet-worded reason they may not

    @property
    def ready(self) -> bool:
        return not self.error

    @property
    def change_pending(self) -> bool:
        return bool(self.pod_cidr and self.wanted_cidr and self.pod_cidr != self.wanted_cidr)

    def to_json(self) -> dict[str, object]:
        return {
            "podCIDR": self.pod_cidr,
            "wantedPodCIDR": self.wanted_cidr,
            "ready": self.ready,
            "error": self.error,
        }


def configured_cidr(conf_dir: Path) -> str:
    """The subnet of our conflist in ``conf_dir``, "" if none (or unreadable)."""
    try:
        conf = json.loads((conf_dir / cni.CONFLIST_NAME).read_text(encoding="utf-8"))
        return str(conf["plugins"][0]["ipam"]["ranges"][0][0]["subnet"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return ""


def remove_bridge(name: str) -> bool:
    """Delete the bridge ``name`` if it exists (blocking netlink); whether it did."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return False
        try:
            ipr.link("del", index=found[0])
        except NetlinkError as exc:
            log.warning("bridge_remove_failed", bridge=name, error=str(exc))
            return False
    return True


class PodNetwork:
    """The node's pod CIDR and CNI config (see the module docstring).

    ``pod_ips`` reads the addresses pods hold now, ``pods_known`` says whether that list is
    complete yet (after a restart, running pods are adopted first); ``on_applied`` is told each
    range written (the proxy's cluster CIDR, waking the pods that waited). ``set_pod_cidr`` only
    records the wish: ``run`` carries it out, off the event loop (netlink and file writes
    block; pyroute2's synchronous socket cannot even be opened on a running loop).
    """

    def __init__(
        self,
        *,
        conf_dir: Path,
        ipam_dir: Path,
        pod_ips: Callable[[], Iterable[str]],
        pods_known: Callable[[], bool],
        on_applied: Callable[[str], None],
        bridge: str = cni.DEFAULT_BRIDGE,
    ) -> None:
        self.conf_dir = conf_dir
        self.ipam_dir = ipam_dir
        self.bridge = bridge
        self._pod_ips = pod_ips
        self._pods_known = pods_known
        self._on_applied = on_applied
        self.configured = ""  # the range our config on disk gives out
        self.wanted = ""  # the range we were told to serve
        self.last_error = ""  # a failed write, shown until a write succeeds
        self._announced = ""  # the range on_applied was last told
        self._wake = asyncio.Event()

    def start(self, pod_cidr: str) -> None:
        """Read what an earlier run left; ``pod_cidr`` (a flag, or "") is the range wanted."""
        self.configured = configured_cidr(self.conf_dir)
        if pod_cidr:
            self.set_pod_cidr(pod_cidr)

    def set_pod_cidr(self, cidr: str) -> None:
        """The range to serve: from the flag, or the Node's spec.podCIDR as it changes."""
        if cidr != self.wanted:
            log.info("pod_cidr_wanted", pod_cidr=cidr, configured=self.configured or None)
        self.wanted = cidr
        self._wake.set()

    async def reconcile(self) -> None:
        """One step towards serving ``wanted`` (see ``cidr_action``)."""
        if not self.wanted:
            return
        if self.configured == self.wanted and self._announced == self.wanted:
            return  # written (or, once, rewritten: an earlier run's file may be older)
        if self.configured and self.configured != self.wanted and not self._pods_known():
            return  # a change, decided once the running pods are adopted
        pods = count_in(self.configured, self._pod_ips())
        action = cidr_action(self.configured, self.wanted, pods)
        if action is CidrAction.DEFER:
            return
        wanted = self.wanted
        if action is CidrAction.APPLY and self.configured:
            removed = await asyncio.to_thread(remove_bridge, self.bridge)
            log.info("pod_cidr_changed", old=self.configured, new=wanted, bridge_removed=removed)
        try:
            path = await asyncio.to_thread(self._write, wanted)
        except (OSError, ValueError) as exc:
            self.last_error = f"cannot write the CNI config for {wanted}: {exc}"
            log.error("cni_config_failed", pod_cidr=wanted, error=str(exc))
            return
        self.configured, self.last_error = wanted, ""
        log.info("cni_config_written", path=str(path), pod_cidr=wanted)
        if self._announced != wanted:
            self._announced = wanted
            self._on_applied(wanted)

    def _write(self, cidr: str) -> Path:
        conflist = cni.render_conflist(pod_cidr=cidr, ipam_data_dir=str(self.ipam_dir))
        return cni.write_conflist(self.conf_dir, conflist)

    def status(self) -> PodNetworkStatus:
        if self.last_error:
            error = not_ready_error(self.last_error)
        elif not self.wanted or not self._announced or self._announced != self.configured:
            error = not_ready_error(WAITING_MESSAGE if not self.wanted else APPLYING_MESSAGE)
        else:
            error = ""
        # A range on disk that nobody confirmed yet serves no pod: report it only once wanted.
        served = self.configured if self._announced else ""
        return PodNetworkStatus(pod_cidr=served, wanted_cidr=self.wanted, error=error)

    def problem(self) -> str:
        """ "" when a pod may get a pod-network sandbox now; else why not."""
        return self.status().error

    async def run(self) -> None:
        """Serve the wanted range: at once when told, and every RECHECK_S while a change
        waits for the pods of the old range to go."""
        while True:
            self._wake.clear()
            await self.reconcile()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), RECHECK_S)
