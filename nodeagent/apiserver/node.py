"""The Node object and the Lease: how the control plane knows this node is alive.

Follows the upstream docs "Nodes" (self-registration, status, heartbeats) and "Leases":

- Registration: the kubelet creates its Node with labels ``kubernetes.io/hostname``,
  ``kubernetes.io/os`` and ``kubernetes.io/arch`` (and their ``beta.`` forms), addresses
  InternalIP and Hostname, capacity and allocatable, ``nodeInfo`` and conditions. A Node
  that already exists (a restart, or an operator made it) is adopted: our labels are merged
  in and the status written. The node's ``spec.podCIDR``, once the controller-manager has
  set it, overrides ``--pod-cidr`` (``on_pod_cidr``). Node IPAM assigns it a moment after
  the Node is created, so our own Node is watched (``fieldSelector=metadata.name=<node>``,
  the one Node a node may read since AuthorizeNodeWithSelectors): the podCIDR and labels
  are known as soon as they change, not at the next status write.
- Node status: computed every ``STATUS_INTERVAL_S``; sent when it changed (heartbeat times
  aside) and at least every ``STATUS_REPORT_S`` even when it did not, as the kubelet does
  since node leases carry the heartbeat. A condition keeps its ``lastTransitionTime`` while its
  status holds. A Node deleted under us (404) is registered again.
- Lease: ``kube-node-lease/<node>`` renewed every ``LEASE_RENEW_S`` with
  ``leaseDurationSeconds`` ``LEASE_DURATION_S`` and an owner reference to the Node, so the
  Lease goes when the Node does. The renewal is a PUT of the last Lease we saw (optimistic
  concurrency); a conflict or a failure re-reads it, retrying sooner than the period.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import psutil
import structlog
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta, OwnerReference
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Node as NodeResource
from lightkube.resources.core_v1 import NodeStatus as NodeStatusResource
from lightkube.types import PatchType

from nodeagent import version
from nodeagent.apiserver.client import ApiClient, ApiFailure, api_errors
from nodeagent.apiserver.reflector import Backoff, Collection, Reflector
from nodeagent.kubelet import nodestatus
from nodeagent.kubelet.podstatus import rfc3339

log = structlog.get_logger("nodeagent.apiserver.node")

Obj = dict[str, Any]

STATUS_INTERVAL_S = 10.0
STATUS_REPORT_S = 300.0
LEASE_RENEW_S = 10.0
LEASE_DURATION_S = 40
LEASE_NAMESPACE = "kube-node-lease"
KUBELET_VERSION = version.kubelet_version()
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le"}
_HEARTBEAT_KEYS = ("lastHeartbeatTime",)
# Upstream's fixed condition messages. The local status shows live numbers ("812 MiB
# available"); the API gets these, so that a changed number is not a changed status.
_MESSAGES = {
    "KubeletHasSufficientMemory": "kubelet has sufficient memory available",
    "KubeletHasInsufficientMemory": "kubelet has insufficient memory available",
    "KubeletHasNoDiskPressure": "kubelet has no disk pressure",
    "KubeletHasDiskPressure": "kubelet has disk pressure",
    "KubeletHasSufficientPID": "kubelet has sufficient PID available",
    "KubeletHasInsufficientPID": "kubelet has insufficient PID available",
}


@dataclass(frozen=True)
class HostInfo:
    """What does not change while the agent runs: identity of the machine and its OS."""

    machine_id: str
    system_uuid: str
    boot_id: str
    kernel_version: str
    os_image: str
    architecture: str

    @classmethod
    def read(cls) -> HostInfo:
        return cls(
            machine_id=_read("/etc/machine-id"),
            system_uuid=_read("/sys/class/dmi/id/product_uuid").lower(),
            boot_id=_read("/proc/sys/kernel/random/boot_id"),
            kernel_version=os.uname().release,
            os_image=_os_image(),
            architecture=_ARCH.get(platform.machine(), platform.machine()),
        )


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def _os_image() -> str:
    for line in _read("/etc/os-release").splitlines():
        key, _, value = line.partition("=")
        if key == "PRETTY_NAME":
            return value.strip().strip('"')
    return "Linux"


# -- pure builders ------------------------------------------------------------------------


def node_labels(name: str, host: HostInfo) -> dict[str, str]:
    return {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": host.architecture,
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": host.architecture,
    }


def node_status(
    facts: nodestatus.NodeFacts,
    *,
    host: HostInfo,
    host_ip: str,
    previous: Obj | None,
) -> Obj:
    """The Node's status; transition times carried over from ``previous`` where they hold."""
    capacity = nodestatus.capacity(facts.max_pods)
    allocatable = nodestatus.allocatable(facts.max_pods, facts.reservation)
    with contextlib.suppress(OSError):
        disk = psutil.disk_usage(facts.state_dir).total // 1024
        capacity["ephemeral-storage"] = allocatable["ephemeral-storage"] = f"{disk}Ki"
    old = {c.get("type"): c for c in (previous or {}).get("conditions") or []}
    conditions = []
    for cond in nodestatus.conditions(facts):
        before = old.get(cond["type"])
        same = before is not None and before.get("status") == cond["status"]
        since = before.get("lastTransitionTime") if same and before else None
        message = _MESSAGES.get(cond["reason"], cond["message"])
        conditions.append(
            {**cond, "message": message, "lastTransitionTime": since or rfc3339(facts.now)}
        )
    addresses = [{"type": "InternalIP", "address": host_ip}] if host_ip else []
    addresses.append({"type": "Hostname", "address": facts.name})
    runtime = f"{facts.runtime_name}://{facts.runtime_version or 'unknown'}"
    endpoints = {"kubeletEndpoint": {"Port": facts.kubelet_port}} if facts.kubelet_port else {}
    return {
        "daemonEndpoints": endpoints,
        "capacity": capacity,
        "allocatable": allocatable,
        "conditions": conditions,
        "addresses": addresses,
        "images": nodestatus.node_images(facts.images),
        "nodeInfo": {
            "machineID": host.machine_id,
            "systemUUID": host.system_uuid,
            "bootID": host.boot_id,
            "kernelVersion": host.kernel_version,
            "osImage": host.os_image,
            "containerRuntimeVersion": runtime,
            "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": "",  # deprecated (KEP-4004): the kubelet leaves it empty
            "operatingSystem": "linux",
            "architecture": host.architecture,
        },
    }


def status_changed(old: Obj | None, new: Obj) -> bool:
    """Whether ``new`` says something ``old`` did not (heartbeat times do not count)."""

    def strip(status: Obj | None) -> Obj:
        status = dict(status or {})
        status["conditions"] = sorted(
            (
                {k: v for k, v in c.items() if k not in _HEARTBEAT_KEYS}
                for c in status.get("conditions") or []
            ),
            key=lambda c: str(c.get("type")),
        )
        return {k: status.get(k) for k in new}

    return strip(old) != strip(new)


# -- the loops ------------------------------------------------------------------------------


class NodeRegistration:
    """Registers the Node, then keeps its status current (see the module docstring)."""

    def __init__(
        self,
        client: ApiClient,
        *,
        name: str,
        facts: Callable[[], nodestatus.NodeFacts],
        on_pod_cidr: Callable[[str], None],
        on_deleting: Callable[[bool], None] = lambda deleting: None,
        volumes_in_use: Callable[[], list[str]] = list,
        backoff: Backoff | None = None,
    ) -> None:
        """``on_deleting(True)``: the Node got a deletionTimestamp (the proxy's healthz then
        fails, so load balancers drain the node, as kube-proxy's)."""
        self.client = client
        self.name = name
        self._facts = facts
        self._on_pod_cidr = on_pod_cidr
        self._on_deleting = on_deleting
        self._volumes_in_use = volumes_in_use
        self.deleting = False
        self._backoff = backoff or Backoff(initial_s=1.0, cap_s=STATUS_INTERVAL_S)
        self.host = HostInfo.read()
        self.registered = asyncio.Event()
        self.uid = ""
        self.pod_cidr = ""
        self.node_ip = ""  # the InternalIP to report (--node-ip or network/nodeip.py's choice)
        self.node: Obj | None = None  # the Node as the API last showed it
        self.labels: dict[str, str] = {}
        self._sent: Obj | None = None
        self._sent_at = 0.0
        self.own = Reflector(
            client,
            Collection("/api/v1/nodes", field_selector=f"metadata.name={name}"),
            on_change=self._own_changed,
        )

    async def watch(self) -> None:
        """Follow our own Node (its podCIDR above all) once it is registered."""
        await self.registered.wait()
        await self.own.run()

    def _own_changed(self) -> None:
        node = self.own.objects.get(self.name)
        if node is not None:
            self._observe(node)

    async def run(self) -> None:
        while True:
            try:
                if not self.registered.is_set():
                    await self._register()
                await self._update_status()
                self._backoff.reset()
                delay = STATUS_INTERVAL_S
            except ApiFailure as exc:
                if exc.not_found:
                    log.warning("node_gone", node=self.name)
                    self.registered.clear()
                delay = self._backoff.next_delay()
                log.warning("node_status_failed", error=str(exc), retry_in_s=round(delay, 2))
            await asyncio.sleep(delay)

    async def _status(self) -> Obj:
        facts = self._facts()
        host_ip = self.node_ip  # never guessed here: a bridge's address would mislead peers
        previous = (self.node or {}).get("status")
        status = await asyncio.to_thread(
            node_status, facts, host=self.host, host_ip=host_ip, previous=previous
        )
        # null, not []: the strategic merge patch then drops the field, which upstream omits
        # when empty.
        status["volumesInUse"] = self._volumes_in_use() or None
        return status

    async def _register(self) -> None:
        status = await self._status()
        labels = node_labels(self.name, self.host)
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": labels,
                "annotations": {"volumes.kubernetes.io/controller-managed-attach-detach": "true"},
            },
            "spec": {},
            "status": status,
        }
        try:
            with api_errors():
                created = await self.client.typed.create(msgspec.convert(body, NodeResource))
            node = created.to_dict()
            log.info("node_registered", node=self.name)
        except ApiFailure as exc:
            if not exc.conflict:
                raise
            # It exists: adopt it, with our labels merged into whatever else it carries.
            with api_errors():
                patched = await self.client.typed.patch(
                    NodeResource,
                    self.name,
                    {"metadata": {"labels": labels}},
                    patch_type=PatchType.STRATEGIC,
                )
            node = patched.to_dict()
            log.info("node_adopted", node=self.name)
        self._observe(node)
        self._sent, self._sent_at = None, 0.0  # write the full status next
        self.registered.set()

    async def _update_status(self) -> None:
        status = await self._status()
        now = time.monotonic()
        if not status_changed(self._sent, status) and now - self._sent_at < STATUS_REPORT_S:
            return
        with api_errors():
            patched = await self.client.typed.patch(
                NodeStatusResource,
                self.name,
                {"status": status},
                patch_type=PatchType.STRATEGIC,
            )
        self._sent, self._sent_at = status, now
        self._observe(patched.to_dict())

    def _observe(self, node: Obj) -> None:
        self.node = node
        meta = node.get("metadata") or {}
        self.uid = str(meta.get("uid") or "")
        self.labels = dict(meta.get("labels") or {})
        deleting = bool(meta.get("deletionTimestamp"))
        if deleting != self.deleting:
            log.info("node_deleting" if deleting else "node_not_deleting", node=self.name)
            self.deleting = deleting
            self._on_deleting(deleting)
        cidr = str((node.get("spec") or {}).get("podCIDR") or "")
        if cidr and cidr != self.pod_cidr:
            log.info("node_pod_cidr", node=self.name, pod_cidr=cidr)
            self.pod_cidr = cidr
            self._on_pod_cidr(cidr)


class LeaseHeartbeat:
    """Renews ``kube-node-lease/<node>`` (see the module docstring)."""

    def __init__(
        self,
        client: ApiClient,
        registration: NodeRegistration,
        *,
        renew_s: float = LEASE_RENEW_S,
    ) -> None:
        self.client = client
        self.registration = registration
        self.renew_s = renew_s
        self.renewals = 0
        self.last_renewed = 0.0  # time.time() of the last renewal the API accepted
        self._lease: Lease | None = None
        self._backoff = Backoff(initial_s=0.2, cap_s=renew_s * 0.7)

    async def run(self) -> None:
        await self.registration.registered.wait()  # the Lease is owned by the Node
        while True:
            try:
                await self._renew()
                self._backoff.reset()
                delay = self.renew_s
            except ApiFailure as exc:
                self._lease = None  # re-read it next time: a conflict means it moved on
                delay = self._backoff.next_delay()
                log.warning("lease_renew_failed", error=str(exc), retry_in_s=round(delay, 2))
            await asyncio.sleep(delay)

    async def _renew(self) -> None:
        name = self.registration.name
        now = datetime.datetime.now(datetime.UTC)
        lease = self._lease
        if lease is None:
            lease = await self._read(name)
        with api_errors():
            if lease is None:
                self._lease = await self.client.typed.create(self._new_lease(now))
            else:
                lease.spec = self._spec(lease.spec, now)
                self._ensure_owner(lease)
                self._lease = await self.client.typed.replace(lease)
        self.renewals += 1
        self.last_renewed = time.time()

    async def _read(self, name: str) -> Lease | None:
        try:
            with api_errors():
                return await self.client.typed.get(Lease, name, namespace=LEASE_NAMESPACE)
        except ApiFailure as exc:
            if exc.not_found:
                return None
            raise

    def _new_lease(self, now: datetime.datetime) -> Lease:
        lease = Lease(
            metadata=ObjectMeta(name=self.registration.name, namespace=LEASE_NAMESPACE),
            spec=self._spec(None, now),
        )
        self._ensure_owner(lease)
        return lease

    def _spec(self, spec: LeaseSpec | None, now: datetime.datetime) -> LeaseSpec:
        name = self.registration.name
        if spec is None or spec.holderIdentity != name:
            spec = LeaseSpec(holderIdentity=name, acquireTime=now)
        spec.leaseDurationSeconds = LEASE_DURATION_S
        spec.renewTime = now
        return spec

    def _ensure_owner(self, lease: Lease) -> None:
        uid = self.registration.uid
        if not uid or lease.metadata is None:
            return
        owners = [o for o in lease.metadata.ownerReferences or [] if o.kind != "Node"]
        owners.append(
            OwnerReference(apiVersion="v1", kind="Node", name=lease.metadata.name or "", uid=uid)
        )
        lease.metadata.ownerReferences = owners
