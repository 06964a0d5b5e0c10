"""Mirror pods: the API's read-only copies of this node's static pods.

Follows the kubelet (upstream "Create static Pods"): for every static pod the agent runs,
the API holds a pod of the same namespace and name (``<name>-<node>``), bound to this node,
owned by the Node, and annotated ``kubernetes.io/config.mirror`` with the static pod's
``kubernetes.io/config.hash``. ``kubectl`` shows it like any pod; its status is the static
pod's (the status writer patches it); deleting it only makes the agent create it again.

``MirrorPods.sync`` converges, each time something changed and every ``RESYNC_S``:
- a static pod without a mirror gets one (its spec read again from its manifest file, and
  used only if it still parses to the same pod: an edited file waits for the file source);
- a mirror whose hash is not its static pod's (the manifest changed) is deleted for good
  and made again at once; a mirror whose static pod is gone is only deleted;
- a mirror being deleted (``deletionTimestamp``: someone ran ``kubectl delete`` on it) is
  deleted for good (grace 0) and made again at once, as upstream ``tryReconcileMirrorPods``:
  the static pod never stops for it, and the API never shows it Terminating for long.
Deletes carry the mirror's uid as a precondition, so a namesake is never removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import structlog
import yaml

from nodeagent.apiserver.client import ApiClient, ApiFailure
from nodeagent.apiserver.pods import MIRROR_ANNOTATION, is_mirror
from nodeagent.model.fields import ValidationError
from nodeagent.model.pod import Pod
from nodeagent.model.validate import parse_pod

log = structlog.get_logger("nodeagent.apiserver.mirror")

Obj = dict[str, Any]

RESYNC_S = 10.0
HASH_ANNOTATION = "kubernetes.io/config.hash"
SOURCE_ANNOTATION = "kubernetes.io/config.source"


def manifest_doc(pod: Pod, node_name: str, *, manifest_name: str) -> Obj | None:
    """The document of ``pod`` in its manifest file, if the file still holds exactly it."""
    path = Path(pod.source)
    try:
        text = path.read_text(encoding="utf-8")
        docs = [json.loads(text)] if path.suffix == ".json" else list(yaml.safe_load_all(text))
    except (OSError, ValueError, yaml.YAMLError):
        return None
    for doc in docs:
        if not isinstance(doc, dict) or doc.get("kind") != "Pod":
            continue
        meta = doc.get("metadata") or {}
        if (
            meta.get("name") != manifest_name
            or (meta.get("namespace") or "default") != pod.namespace
        ):
            continue
        try:
            parsed = parse_pod(doc, source=pod.source, node_name=node_name)
        except (ValidationError, RecursionError):
            return None
        return doc if parsed.uid == pod.uid else None
    return None


def mirror_body(pod: Pod, doc: Obj, *, node_name: str, node_uid: str) -> Obj:
    """The mirror pod of static ``pod`` (``doc``: its manifest document)."""
    meta = doc.get("metadata") or {}
    annotations = {
        **{k: str(v) for k, v in (meta.get("annotations") or {}).items()},
        SOURCE_ANNOTATION: "file",
        HASH_ANNOTATION: pod.uid,
        MIRROR_ANNOTATION: pod.uid,
    }
    metadata: Obj = {
        "name": pod.name,
        "namespace": pod.namespace,
        "labels": dict(meta.get("labels") or {}),
        "annotations": annotations,
    }
    if node_uid:
        metadata["ownerReferences"] = [
            {
                "apiVersion": "v1",
                "kind": "Node",
                "name": node_name,
                "uid": node_uid,
                "controller": True,
            }
        ]
    spec = dict(doc.get("spec") or {})
    spec["nodeName"] = node_name
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


class MirrorPods:
    def __init__(
        self,
        client: ApiClient,
        *,
        node_name: str,
        static_pods: Callable[[], Mapping[str, tuple[Pod, str]] | None],
        mirrors: Callable[[], Mapping[str, Obj]],
        node_uid: Callable[[], str],
        ready: Callable[[], bool],
    ) -> None:
        """``static_pods()``: key -> (pod under its cluster name, its name in the manifest),
        None while unknown; ``mirrors()``: the API's mirror pods of this node by key."""
        self.client = client
        self.node_name = node_name
        self._static = static_pods
        self._mirrors = mirrors
        self._node_uid = node_uid
        self._ready = ready
        self._wake = asyncio.Event()
        self.created = 0
        self.deleted = 0

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RESYNC_S):
                    await self._wake.wait()
            self._wake.clear()
            if not self._ready():  # the Node (owner of every mirror) or the first list
                await asyncio.sleep(0.5)
                self._wake.set()
                continue
            try:
                await self.sync()
            except ApiFailure as exc:
                log.warning("mirror_sync_failed", error=str(exc))
                await asyncio.sleep(1.0)

    async def sync(self) -> None:
        static = self._static()
        if static is None:
            return
        mirrors = {k: o for k, o in self._mirrors().items() if is_mirror(o)}
        gone: set[str] = set()
        for key, obj in mirrors.items():
            meta = obj.get("metadata") or {}
            entry = static.get(key)
            mirrored = (meta.get("annotations") or {}).get(MIRROR_ANNOTATION)
            stale = entry is None or mirrored != entry[0].uid
            if (stale or meta.get("deletionTimestamp")) and await self._delete(obj):
                gone.add(key)
        for key, (pod, manifest_name) in static.items():
            if key in mirrors and key not in gone:
                continue
            doc = await asyncio.to_thread(
                manifest_doc, pod, self.node_name, manifest_name=manifest_name
            )
            if doc is None:
                continue  # the file changed under us: the file source will tell
            body = mirror_body(pod, doc, node_name=self.node_name, node_uid=self._node_uid())
            try:
                await self.client.request(
                    "POST", f"/api/v1/namespaces/{pod.namespace}/pods", body=body
                )
            except ApiFailure as exc:
                if exc.retryable:
                    raise
                # AlreadyExists: an API pod owns the name (merge reports it); else refused.
                log.warning("mirror_create_refused", pod=key, error=str(exc))
                continue
            self.created += 1
            log.info("mirror_created", pod=key, hash=pod.uid)

    async def _delete(self, obj: Obj) -> bool:
        """Delete a mirror for good; whether it is gone (a namesake's conflict: no)."""
        meta = obj.get("metadata") or {}
        namespace, name = meta.get("namespace") or "default", meta.get("name")
        try:
            await self.client.delete_pod_now(namespace, str(name), str(meta.get("uid")))
        except ApiFailure as exc:
            if exc.retryable:
                raise
            if not (exc.not_found or exc.conflict):
                log.warning("mirror_delete_refused", pod=f"{namespace}/{name}", error=str(exc))
            return exc.not_found
        self.deleted += 1
        log.info("mirror_deleted", pod=f"{namespace}/{name}")
        return True
