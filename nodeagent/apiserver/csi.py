"""Cluster mode's part of CSI: the CSINode object, CSIDriver policies, VolumeAttachments and
the Secrets of inline volumes.

- ``driver_changed`` is the plugin registry's listener. As the kubelet's nodeinfomanager, it
  keeps ``CSINode/<node>`` (storage.k8s.io/v1, owned by our Node) listing each registered
  driver with its node id, topology keys and volume limit; a deregistered driver is removed
  from the list. Conflicts are retried on a fresh read.
- ``policy`` reads the driver's CSIDriver: attachRequired (default true, and true when the
  driver has no CSIDriver object at all, as the kubelet assumes), podInfoOnMount, and whether
  volumeLifecycleModes allows Ephemeral (inline volumes; default Persistent only).
- ``attached`` waits briefly for the VolumeAttachment the attach/detach controller makes for
  (volume, driver, node) to say ``status.attached``, and returns its attachmentMetadata (the
  publish_context). Not attached in time is a ``CSIError``: the pod worker tries again with
  backoff, and the pod waits in ContainerCreating, as with the kubelet.
- ``secret`` reads a nodePublishSecretRef's Secret (the Node authorizer allows the Secrets
  its pods name).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping
from typing import Any

import structlog

from nodeagent.apiserver.client import ApiClient, ApiFailure
from nodeagent.csi import layout
from nodeagent.csi.client import CSIError, NodeInfo
from nodeagent.csi.mounter import ClusterHooks, DriverPolicy

log = structlog.get_logger("nodeagent.apiserver.csi")

STORAGE = "/apis/storage.k8s.io/v1"
ATTACH_WAIT_S = 10.0  # per try; the worker's backoff spaces the tries
ATTACH_POLL_S = 0.5
CONFLICT_RETRIES = 5

Obj = dict[str, Any]


class ClusterCSI:
    def __init__(self, client: ApiClient, *, node_name: str) -> None:
        self.client = client
        self.node_name = node_name
        self._lock = asyncio.Lock()  # one CSINode write at a time

    def hooks(self) -> ClusterHooks:
        return ClusterHooks(policy=self.policy, attached=self.attached, secret=self.secret)

    # -- CSINode ----------------------------------------------------------------------------

    async def driver_changed(self, driver: str, info: NodeInfo | None) -> None:
        async with self._lock:
            for _ in range(CONFLICT_RETRIES):
                try:
                    await self._write_csinode(driver, info)
                    return
                except ApiFailure as exc:
                    if not exc.conflict:
                        log.warning("csinode_update_failed", driver=driver, error=str(exc))
                        return
            log.warning("csinode_update_failed", driver=driver, error="conflicts")

    async def _write_csinode(self, driver: str, info: NodeInfo | None) -> None:
        path = f"{STORAGE}/csinodes/{self.node_name}"
        try:
            current: Obj | None = await self.client.request("GET", path)
        except ApiFailure as exc:
            if not exc.not_found:
                raise
            current = None
        if current is None:
            if info is None:
                return
            body = await self._new_csinode()
            body["spec"]["drivers"] = [csinode_driver(driver, info)]
            await self.client.request("POST", f"{STORAGE}/csinodes", body=body)
            log.info("csinode_created", driver=driver)
            return
        spec = current.setdefault("spec", {})
        drivers = [d for d in spec.get("drivers") or [] if d.get("name") != driver]
        if info is not None:
            drivers.append(csinode_driver(driver, info))
        if drivers == (spec.get("drivers") or []):
            return
        spec["drivers"] = drivers
        await self.client.request("PUT", path, body=current)
        log.info("csinode_updated", driver=driver, registered=info is not None)

    async def _new_csinode(self) -> Obj:
        node = await self.client.request("GET", f"/api/v1/nodes/{self.node_name}")
        owner = {
            "apiVersion": "v1",
            "kind": "Node",
            "name": self.node_name,
            "uid": (node.get("metadata") or {}).get("uid", ""),
        }
        return {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "CSINode",
            "metadata": {"name": self.node_name, "ownerReferences": [owner]},
            "spec": {},
        }

    # -- mounting ---------------------------------------------------------------------------

    async def policy(self, driver: str) -> DriverPolicy:
        try:
            obj = await self.client.request("GET", f"{STORAGE}/csidrivers/{driver}")
        except ApiFailure as exc:
            if exc.not_found:
                return DriverPolicy()
            raise CSIError(f"CSIDriver {driver}: {exc}") from exc
        return driver_policy(obj)

    async def attached(self, driver: str, volume_handle: str) -> Mapping[str, str]:
        name = layout.attachment_name(volume_handle, driver, self.node_name)
        last = "not found"
        try:
            async with asyncio.timeout(ATTACH_WAIT_S):
                while True:
                    try:
                        va = await self.client.request("GET", f"{STORAGE}/volumeattachments/{name}")
                    except ApiFailure as exc:
                        if not exc.not_found:
                            raise CSIError(f"VolumeAttachment {name}: {exc}") from exc
                        va = {}
                    else:
                        status = va.get("status") or {}
                        if status.get("attached") is True:
                            return _strings(status.get("attachmentMetadata"))
                        error = (status.get("attachError") or {}).get("message")
                        last = f"attach error: {error}" if error else "not attached yet"
                    await asyncio.sleep(ATTACH_POLL_S)
        except TimeoutError:
            pass
        raise CSIError(
            f"volume {volume_handle!r} of driver {driver!r}: VolumeAttachment {name}: {last}"
        )

    async def secret(self, namespace: str, name: str) -> Mapping[str, str]:
        try:
            obj = await self.client.request("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")
        except ApiFailure as exc:
            raise CSIError(f"Secret {namespace}/{name}: {exc}") from exc
        data = obj.get("data") or {}
        try:
            return {str(k): base64.b64decode(str(v)).decode() for k, v in data.items()}
        except (ValueError, UnicodeDecodeError) as exc:
            raise CSIError(f"Secret {namespace}/{name}: data is not text: {exc}") from exc


def csinode_driver(driver: str, info: NodeInfo) -> Obj:
    """One ``spec.drivers`` entry of a CSINode."""
    entry: Obj = {"name": driver, "nodeID": info.node_id, "topologyKeys": sorted(info.topology)}
    if info.max_volumes > 0:
        entry["allocatable"] = {"count": info.max_volumes}
    return entry


def driver_policy(obj: Obj) -> DriverPolicy:
    """A CSIDriver object's spec, with upstream's defaults for unset fields."""
    spec = obj.get("spec") or {}
    modes = spec.get("volumeLifecycleModes") or ["Persistent"]
    return DriverPolicy(
        attach_required=spec.get("attachRequired") is not False,
        pod_info_on_mount=spec.get("podInfoOnMount") is True,
        ephemeral="Ephemeral" in modes,
    )


def _strings(raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict):
        return {}
    return {str(k): str(v) for k, v in raw.items()}
