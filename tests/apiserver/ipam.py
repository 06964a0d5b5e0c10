"""Node IPAM: each Node gets ``spec.podCIDR``/``podCIDRs`` a moment after it is created.

Follows kube-controller-manager's node IPAM controller (``--allocate-node-cidrs``,
``--cluster-cidr``, ``--node-cidr-mask-size``; the "range allocator"), and what k3s does:

- The cluster CIDR is cut into subnets of the mask size; a new Node without a podCIDR gets the
  lowest free one. Never two Nodes the same subnet: a CIDR a Node already carries (set by
  someone else, or kept across a server restart) is taken out of the pool when seen.
- The assignment is asynchronous: ``delay_s`` after the Node is created (upstream it comes
  from the controller's informer and work queue, often a second or more later; k3s took about
  10 s). Until then the Node has no podCIDR, and a node agent must wait for it. This is the
  behaviour that hid the bugs: an API server that assigns at once, or never, does not show it.
- A deleted Node's CIDR goes back to the pool.
- ``POST /fake/v1/ipam`` assigns every waiting Node at once (``assign_now``), so a test can
  set a long delay and create its pods while the nodes wait, without racing the clock.
- Once set, ``spec.podCIDR`` is not changed by the controller (upstream validation makes it
  immutable); a Node created with one is left alone.

Simplified: IPv4 only, one CIDR per Node (no dual stack), no ``NodeCIDRAllocationFailed``
event when the pool is exhausted (the Node simply stays without a podCIDR, and a warning is
logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ipaddress
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from tests.apiserver.resources import NODES
from tests.apiserver.store import Store
from tests.apiserver.watch import DELETED, Change

Obj = dict[str, Any]

log = logging.getLogger("tests.apiserver.ipam")

DEFAULT_DELAY_S = 1.5


def parse_ipam(text: str) -> tuple[ipaddress.IPv4Network, int]:
    """``CLUSTER_CIDR/MASK`` as the command line takes it, e.g. ``10.244.0.0/16/24``."""
    cidr, _, mask = text.rpartition("/")
    network = ipaddress.IPv4Network(cidr, strict=True)
    size = int(mask)
    if not network.prefixlen <= size <= 30:
        raise ValueError(f"node mask size {size} must lie between /{network.prefixlen} and /30")
    return network, size


class NodeIPAM:
    """Hands out node pod CIDRs (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        *,
        cluster_cidr: ipaddress.IPv4Network,
        mask_size: int,
        delay_s: float = DEFAULT_DELAY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not cluster_cidr.prefixlen <= mask_size <= 30:
            raise ValueError(f"mask size /{mask_size} does not fit {cluster_cidr}")
        self.store = store
        self.cluster_cidr = cluster_cidr
        self.mask_size = mask_size
        self.delay_s = delay_s
        self.clock = clock
        self.used: dict[str, str] = {}  # CIDR -> the node that holds it
        self.due: dict[str, float] = {}  # node -> when its CIDR is to be assigned
        self._wake = asyncio.Event()

    def on_change(self, change: Change) -> None:
        if change.rt is not NODES:
            return
        name = change.obj["metadata"]["name"]
        cidr = _pod_cidr(change.obj)
        if change.type == DELETED:
            self.due.pop(name, None)
            self.used = {c: n for c, n in self.used.items() if n != name}
            return
        if cidr:
            self.due.pop(name, None)
            self.used.setdefault(cidr, name)
        elif name not in self.due and change.prev is None:
            self.due[name] = self.clock() + self.delay_s
            self._wake.set()

    def adopt(self) -> None:
        """Take in the Nodes the store holds already (a server started on saved objects)."""
        for node in self.store.items(NODES):
            name = node["metadata"]["name"]
            if cidr := _pod_cidr(node):
                self.used.setdefault(cidr, name)
            else:
                self.due.setdefault(name, self.clock() + self.delay_s)

    def assign_due(self) -> list[str]:
        """Assign a CIDR to every Node whose moment has come; return their names."""
        now = self.clock()
        done = []
        for name, when in sorted(self.due.items(), key=lambda item: item[1]):
            if when > now:
                continue
            del self.due[name]
            if self._assign(name):
                done.append(name)
        return done

    def assign_now(self) -> list[str]:
        """Assign every waiting Node at once (a test hook: a test that must create pods
        before the CIDR comes sets a long delay, then says when)."""
        now = self.clock()
        self.due = dict.fromkeys(self.due, now)
        return self.assign_due()

    def next_due(self) -> float | None:
        return min(self.due.values(), default=None)

    async def run(self) -> None:
        self.adopt()
        while True:
            self.assign_due()
            due = self.next_due()
            timeout = None if due is None else max(0.0, due - self.clock())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _assign(self, name: str) -> bool:
        node = self.store.find(NODES, None, name)
        if node is None or _pod_cidr(node):
            return False
        cidr = next(self._free(), None)
        if cidr is None:
            log.warning(
                "node IPAM: no free /%d in %s for %s", self.mask_size, self.cluster_cidr, name
            )
            return False
        new = copy.deepcopy(node)
        spec = new.setdefault("spec", {})
        spec["podCIDR"], spec["podCIDRs"] = cidr, [cidr]
        self.used[cidr] = name
        self.store.replace(NODES, new)
        return True

    def _free(self) -> Iterator[str]:
        for subnet in self.cluster_cidr.subnets(new_prefix=self.mask_size):
            if str(subnet) not in self.used:
                yield str(subnet)


def _pod_cidr(node: Obj) -> str:
    return str((node.get("spec") or {}).get("podCIDR") or "")
