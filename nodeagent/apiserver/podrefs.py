"""Fetching what pods reference, and keeping their ConfigMap, Secret and token files current.

``PodReferences`` is the effectful half of ``refs.py``. For a pod that needs it (see
``refs.needs_rewrite``), ``prepare`` starts one task that reads the pod's ConfigMaps and
Secrets (404: absent), asks the TokenRequest API for each projected token (bound to the pod),
writes the volume files and keeps the rewritten spec; the pod is held back (``Hold``) until
then, and the cluster link is told (``on_change``) when it is ready or has failed. A failed
preparation is retried with backoff, as the kubelet retries a mount.

A prepared pod follows the spec updates the API allows (a new image, activeDeadlineSeconds,
ephemeral containers): the new spec is rewritten with the references fetched at preparation
(no round trip to the API on the way), so that only what the update changed differs; the
first rewritten spec used to be kept forever, and such a pod never saw an update.

A container's env is resolved again each time it is created, as the kubelet resolves env at
container creation: ``container_env`` reads the ConfigMaps and Secrets again and gives the
worker the env of now (a missing one is CreateContainerConfigError; an API out of reach
keeps the env of the last resolution). Its files follow their sources too: every
``REFRESH_S`` the running pods' ConfigMaps and Secrets are read again and changed files
replaced, and each token is renewed when 80% of its lifetime (at most 24 h) has passed, as
the kubelet does.

PersistentVolumeClaims (``claims.py``) are resolved in the same preparation: each claim and
then its PV is read, the claim volume becomes a hostPath of the PV's directory, a local PV
gets the pod's fsGroup, and a ReadWriteOncePod claim that another of this node's live pods
holds keeps the pod waiting (FailedMount) until that pod is gone. A claim is resolved once,
when the pod is prepared: a pod keeps the volume it started with, as the kubelet does.

Files are written by ``kubelet/projection.py`` (atomically, through a ``..data`` symlink;
secrets on tmpfs), which the manifest directory's pods share.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from nodeagent.apiserver import claims
from nodeagent.apiserver.admission import NodeView
from nodeagent.apiserver.claims import ClaimMount
from nodeagent.apiserver.client import ApiClient, ApiFailure
from nodeagent.apiserver.pods import Hold
from nodeagent.apiserver.reflector import Backoff
from nodeagent.csi.client import CSIError
from nodeagent.csi.mounter import CSIVolumes
from nodeagent.kubelet.projection import write_volumes
from nodeagent.kubelet.volumes import set_ownership
from nodeagent.model.csi import CSIVolumeSource
from nodeagent.model.pod import EnvVar, Pod
from nodeagent.model.refs import (
    MOUNT_ERROR,
    Lookup,
    RefError,
    TokenSpec,
    env_refers,
    needs_rewrite,
    references,
    rewrite,
)
from nodeagent.model.validate import parse_pod

log = structlog.get_logger("nodeagent.apiserver.refs")

Obj = dict[str, Any]

REFRESH_S = 30.0
TOKEN_MAX_AGE_S = 24 * 3600


@dataclass
class _Token:
    value: str
    issued: float
    expires: float

    def due(self, now: float) -> bool:
        lifetime = self.expires - self.issued
        return now >= self.issued + min(0.8 * lifetime, TOKEN_MAX_AGE_S)


@dataclass
class _Entry:
    obj: Obj
    spec: Obj | None = None  # the rewritten spec, once prepared
    source: Obj | None = None  # the API's spec that ``spec`` was rewritten from
    lookup: Lookup | None = None  # what the preparation fetched
    hold: Hold = field(default_factory=lambda: Hold(MOUNT_ERROR, "", error=False))
    task: asyncio.Task[None] | None = None
    tokens: dict[TokenSpec, _Token] = field(default_factory=dict)
    mounts: dict[str, ClaimMount] = field(default_factory=dict)  # by volume name


class PodReferences:
    def __init__(
        self,
        client: ApiClient,
        *,
        state_dir: Path,
        on_change: Callable[[], None],
        active: Callable[[str], bool],
        node: Callable[[], NodeView],
        csi: CSIVolumes | None = None,
        refresh_s: float = REFRESH_S,
    ) -> None:
        self.client = client
        self._node = node  # this node's name and labels, for a PV's nodeAffinity
        self._csi = csi  # publishes the pods' csi PVs; None: no CSI plugin registry
        self.state_dir = state_dir
        self._on_change = on_change
        self._active = active  # a worker runs this pod uid: keep its files current
        self._refresh_s = refresh_s
        self._entries: dict[str, _Entry] = {}

    # -- for read_pods ----------------------------------------------------------------------

    def prepared(self, obj: Obj) -> Obj | None:
        """The document to run, if ready (no side effects)."""
        if not _needs_work(obj):
            return obj
        entry = self._entries.get(_uid(obj))
        if entry is None or entry.spec is None:
            return None
        entry.obj = obj
        if obj.get("spec") != entry.source:
            self._follow_update(entry)
        return {**obj, "spec": entry.spec}

    def _follow_update(self, entry: _Entry) -> None:
        """Rewrite an updated spec with the references of the preparation. A new reference
        (an ephemeral container's env) that lookup lacks keeps the last good spec."""
        try:
            doc = self._rewrite(entry.obj, entry.lookup, entry.mounts)
        except RefError as exc:
            log.warning("pod_update_not_followed", pod=_name(entry.obj), error=exc.message)
        else:
            entry.spec = doc["spec"]
        entry.source = entry.obj.get("spec")

    def prepare(self, obj: Obj) -> Obj | Hold:
        """The document to run, or why not yet (starting the work if need be)."""
        ready = self.prepared(obj)
        if ready is not None:
            return ready
        uid = _uid(obj)
        entry = self._entries.setdefault(uid, _Entry(obj))
        entry.obj = obj
        if entry.task is None or entry.task.done():
            entry.task = asyncio.create_task(self._prepare(entry), name=f"refs:{uid}")
        return entry.hold

    def keep(self, uids: set[str]) -> None:
        """Forget every pod not in ``uids`` (gone from the API)."""
        for uid in set(self._entries) - uids:
            entry = self._entries.pop(uid)
            if entry.task is not None:
                entry.task.cancel()

    async def close(self) -> None:
        tasks = [e.task for e in self._entries.values() if e.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- work -------------------------------------------------------------------------------

    async def _prepare(self, entry: _Entry) -> None:
        backoff = Backoff(initial_s=1.0, cap_s=60.0)
        name = _name(entry.obj)
        while True:
            try:
                lookup = await self._fetch(entry)
                source = entry.obj.get("spec")  # what ``doc`` is made of: obj may change
                mounts = await self._claims(entry)
                doc = self._rewrite(entry.obj, lookup, mounts)
                await self._write_volumes(entry.obj, lookup)
                await self._own(entry.obj, mounts)
            except RefError as exc:
                entry.hold = Hold(exc.reason, exc.message)
            except ApiFailure as exc:
                entry.hold = Hold(MOUNT_ERROR, f"cannot read the pod's references: {exc}")
            except OSError as exc:
                entry.hold = Hold(MOUNT_ERROR, f"cannot write the pod's volumes: {exc}")
            else:
                entry.spec, entry.source, entry.lookup = doc["spec"], source, lookup
                entry.mounts = mounts
                log.info("pod_references_ready", pod=name)
                self._on_change()
                return
            log.warning("pod_references_failed", pod=name, error=entry.hold.message)
            self._on_change()
            await asyncio.sleep(backoff.next_delay())

    async def run(self) -> None:
        """Keep the running pods' files current."""
        while True:
            await asyncio.sleep(self._refresh_s)
            for uid, entry in list(self._entries.items()):
                if entry.spec is None or not self._active(uid):
                    continue
                try:
                    lookup = await self._fetch(entry)
                    await self._write_volumes(entry.obj, lookup)
                except (RefError, ApiFailure, OSError) as exc:
                    # Keep the last good files, as the kubelet does when a source goes.
                    log.warning(
                        "pod_references_refresh_failed", pod=_name(entry.obj), error=str(exc)
                    )

    async def container_env(self, pod: Pod, container: str) -> tuple[EnvVar, ...] | None:
        """``container``'s env resolved now; None when the spec's own env is the one to use
        (no reference to the API in it, or the API out of reach). Raises ValueError with
        the kubelet's message when a referenced object or key is missing."""
        entry = self._entries.get(pod.uid)
        if entry is None or entry.spec is None or not env_refers(entry.obj, container):
            return None
        try:
            lookup = await self._fetch(entry)
            doc = self._rewrite(entry.obj, lookup, entry.mounts)
        except RefError as exc:
            raise ValueError(exc.message) from exc
        except ApiFailure as exc:
            log.warning("container_env_stale", pod=_name(entry.obj), error=str(exc))
            return None
        node = str((entry.obj.get("spec") or {}).get("nodeName") or "")
        fresh = parse_pod(doc, source="api", node_name=node)
        return next((c.env for c in fresh.all_containers() if c.name == container), None)

    async def secret(self, namespace: str, name: str) -> Obj | None:
        """A Secret as the API serves it (a pod's pull secret); None: not found."""
        return await self._get(namespace, "secrets", name)

    async def _fetch(self, entry: _Entry) -> Lookup:
        obj = entry.obj
        namespace = _namespace(obj)
        refs = references(obj)
        config_maps = {
            n: o for n in refs.config_maps if (o := await self._get(namespace, "configmaps", n))
        }
        secrets = {n: o for n in refs.secrets if (o := await self._get(namespace, "secrets", n))}
        now = time.time()
        for spec in refs.tokens:
            token = entry.tokens.get(spec)
            if token is None or token.due(now):
                entry.tokens[spec] = await self._request_token(obj, spec)
        tokens = {spec: t.value for spec, t in entry.tokens.items()}
        return Lookup(config_maps, secrets, tokens)

    async def _get(self, namespace: str, plural: str, name: str) -> Obj | None:
        try:
            return await self.client.request(
                "GET", f"/api/v1/namespaces/{namespace}/{plural}/{name}"
            )
        except ApiFailure as exc:
            if exc.not_found:
                return None
            raise

    async def _request_token(self, obj: Obj, spec: TokenSpec) -> _Token:
        meta = obj.get("metadata") or {}
        account = str((obj.get("spec") or {}).get("serviceAccountName") or "default")
        body: Obj = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": spec.expiration_seconds,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta.get("name"),
                    "uid": meta.get("uid"),
                },
            },
        }
        if spec.audience:
            body["spec"]["audiences"] = [spec.audience]
        path = f"/api/v1/namespaces/{_namespace(obj)}/serviceaccounts/{account}/token"
        answer = await self.client.request("POST", path, body=body)
        status = answer.get("status") or {}
        token = str(status.get("token") or "")
        if not token:
            raise ApiFailure(0, "BadResponse", "the TokenRequest answer holds no token")
        now = time.time()
        expires = _parse_time(str(status.get("expirationTimestamp") or "")) or (
            now + spec.expiration_seconds
        )
        return _Token(token, now, expires)

    def _rewrite(self, obj: Obj, lookup: Lookup | None, mounts: dict[str, ClaimMount]) -> Obj:
        doc = rewrite(obj, pod_dir=self._pod_dir(obj), lookup=lookup)
        return claims.apply(doc, mounts)

    async def _claims(self, entry: _Entry) -> dict[str, ClaimMount]:
        """The pod's claim volumes resolved (RefError while one cannot be mounted)."""
        obj, namespace = entry.obj, _namespace(entry.obj)
        mounts: dict[str, ClaimMount] = {}
        for use in claims.claim_uses(obj):
            claim = await self._get(namespace, "persistentvolumeclaims", use.claim)
            bound, pv_name = claims.check_claim(use, obj, claim)
            pv = await self._get_cluster("persistentvolumes", pv_name)
            mount = claims.resolve(use, bound, pv, self._node())
            holder = self._once_pod_holder(mount, _uid(obj)) if mount.once_pod else None
            if holder is not None:
                raise RefError(
                    MOUNT_ERROR,
                    f"persistentvolumeclaim {mount.claim!r} has access mode ReadWriteOncePod "
                    f"and pod {holder} on this node uses it",
                )
            if mount.csi is not None:
                mount = await self._publish(mount, mount.csi, _uid(obj))
            mounts[use.volume] = mount
        return mounts

    async def _publish(self, mount: ClaimMount, source: CSIVolumeSource, uid: str) -> ClaimMount:
        """A csi PV staged and published for this pod: a directory to bind like any other.
        The pod worker unpublishes it when the pod goes (``CSIVolumes.unmount_pod``)."""
        if self._csi is None:  # as the kubelet words a driver it does not know
            raise RefError(MOUNT_ERROR, f"CSI driver not registered: {source.driver}")
        try:
            path = await self._csi.mount(source, pod_uid=uid, volume_name=mount.volume)
        except CSIError as exc:
            raise RefError(MOUNT_ERROR, f"volume {mount.volume!r}: {exc}") from exc
        return dataclasses.replace(mount, path=path, path_type="Directory")

    def _once_pod_holder(self, mount: ClaimMount, uid: str) -> str | None:
        """The live pod of this node that holds ``mount``'s claim, if another does."""
        for other_uid, other in self._entries.items():
            if other_uid == uid or other.spec is None:
                continue
            phase = (other.obj.get("status") or {}).get("phase")
            live = self._active(other_uid) or phase not in ("Succeeded", "Failed")
            if live and any(m.claim == mount.claim for m in other.mounts.values()):
                return _name(other.obj)
        return None

    async def _own(self, obj: Obj, mounts: dict[str, ClaimMount]) -> None:
        context = ((obj.get("spec") or {}).get("securityContext")) or {}
        group = context.get("fsGroup")
        if not isinstance(group, int) or isinstance(group, bool):
            return
        on_mismatch = context.get("fsGroupChangePolicy") == "OnRootMismatch"
        for mount in mounts.values():
            if mount.fs_group_applies and not mount.read_only:
                await asyncio.to_thread(
                    set_ownership, Path(mount.path), group, on_root_mismatch=on_mismatch
                )

    def volumes_in_use(self) -> list[str]:
        """The persistent volumes the prepared pods of this node mount (Node volumesInUse)."""
        return claims.in_use(
            m for uid, e in self._entries.items() if self._active(uid) for m in e.mounts.values()
        )

    async def _get_cluster(self, plural: str, name: str) -> Obj | None:
        try:
            return await self.client.request("GET", f"/api/v1/{plural}/{name}")
        except ApiFailure as exc:
            if exc.not_found:
                return None
            raise

    def _pod_dir(self, obj: Obj) -> str:
        return str(self.state_dir / "pods" / _uid(obj))

    async def _write_volumes(self, obj: Obj, lookup: Lookup) -> None:
        for name in await write_volumes(self._pod_dir(obj), obj, lookup):
            log.debug("volume_written", pod=_name(obj), volume=name)


def _parse_time(text: str) -> float | None:
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _needs_work(obj: Obj) -> bool:
    return needs_rewrite(obj) or claims.uses_claims(obj)


def _uid(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


def _namespace(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("namespace") or "default")


def _name(obj: Obj) -> str:
    return f"{_namespace(obj)}/{(obj.get('metadata') or {}).get('name')}"
