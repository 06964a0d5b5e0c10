"""Publishing a pod's CSI volumes, and taking them away again from the records alone.

``mount`` (a PersistentVolume's ``csi`` source) and ``mount_inline`` (a pod's inline
ephemeral volume) return the host path to bind into the containers. The order, as the
kubelet's: wait for the VolumeAttachment when the driver needs attach (cluster mode), write
the volume's record, stage it once per node when the driver has STAGE_UNSTAGE_VOLUME (never
for inline volumes), then publish it into the pod's directory. Each step is skipped when
its mount is already there: a worker calls this at every sandbox creation and after
adopting a pod.

``unmount_pod`` reads the pod's records (``layout.VolumeRecord``), unpublishes each, and
unstages a staged volume once no record of any pod names its staging path any more: a
volume a running pod still uses is never unstaged. It needs nothing but the state dir and the
registered drivers, so it works for a pod deleted while the agent was down. A driver that is
not registered (yet) is an error: the caller retries, and the mount stays until the plugin
is back to take it away (unmounting behind the plugin's back could lose its data).

What the cluster adds comes in as ``ClusterHooks``: the CSIDriver's policy (attachRequired,
podInfoOnMount, volumeLifecycleModes), waiting for the VolumeAttachment, and Secrets.
Standalone, there are no CSIDriver objects: no attach, no pod info, inline volumes allowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from nodeagent.csi import layout
from nodeagent.csi.client import CSIError, Publish
from nodeagent.csi.layout import VolumeRecord
from nodeagent.csi.registry import PluginRegistry
from nodeagent.model.csi import CSIInlineSource, CSIVolumeSource
from nodeagent.model.pod import Pod

log = structlog.get_logger("nodeagent.csi.mounter")

# How long a mount waits for the first scan of the plugins dir (a restarted agent).
SCAN_WAIT_S = 30.0


@dataclass(frozen=True)
class DriverPolicy:
    """A CSIDriver object's say, with the kubelet's defaults for a driver that has none
    (``standalone`` is what we do without any API: no attach, inline volumes allowed)."""

    attach_required: bool = True
    pod_info_on_mount: bool = False
    ephemeral: bool = False  # volumeLifecycleModes has Ephemeral

    @staticmethod
    def standalone() -> DriverPolicy:
        return DriverPolicy(attach_required=False, ephemeral=True)


@dataclass(frozen=True)
class ClusterHooks:
    policy: Callable[[str], Awaitable[DriverPolicy]]  # driver name -> its CSIDriver's policy
    # (driver, volume handle) -> the VolumeAttachment's attachmentMetadata, once attached.
    attached: Callable[[str, str], Awaitable[Mapping[str, str]]]
    secret: Callable[[str, str], Awaitable[Mapping[str, str]]]  # (namespace, name) -> data


async def _no_secret(namespace: str, name: str) -> Mapping[str, str]:
    raise CSIError(f"Secret {namespace}/{name}: no API to read it from in standalone mode")


class CSIVolumes:
    def __init__(
        self, state_dir: Path, registry: PluginRegistry, *, hooks: ClusterHooks | None = None
    ) -> None:
        self.state_dir = state_dir
        self.registry = registry
        self.hooks = hooks
        # One operation per volume at a time: two pods sharing a staged volume must not race
        # an unstage against a publish. volume id -> (lock, operations holding or awaiting it)
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    # -- mounting ---------------------------------------------------------------------------

    async def mount(
        self, source: CSIVolumeSource, *, pod_uid: str, volume_name: str, pod: Pod | None = None
    ) -> str:
        """Stage (when the driver stages) and publish a PV's CSI volume for one pod volume;
        return the host path of the published volume."""
        policy = await self._policy(source.driver)
        context = dict(source.volume_attributes)
        if pod is not None and policy.pod_info_on_mount:
            context |= _pod_info(pod, ephemeral=False)
        publish_context: Mapping[str, str] = {}
        if policy.attach_required and self.hooks is not None:
            publish_context = await self.hooks.attached(source.driver, source.volume_handle)
        request = Publish(
            volume_id=source.volume_handle,
            target_path=str(layout.target_path(self.state_dir, pod_uid, volume_name)),
            read_only=source.read_only,
            fs_type=source.fs_type,
            volume_context=context,
            publish_context=publish_context,
        )
        return await self._publish(source.driver, request, pod_uid, volume_name, stage=True)

    async def mount_inline(self, pod: Pod, volume_name: str, source: CSIInlineSource) -> str:
        """Publish a pod's inline ephemeral volume (never staged, as the kubelet's)."""
        where = f"volume {volume_name!r}: csi driver {source.driver!r}"
        policy = await self._policy(source.driver)
        if not policy.ephemeral:
            raise CSIError(
                f"{where}: its CSIDriver does not list Ephemeral in volumeLifecycleModes"
            )
        context = dict(source.volume_attributes)
        if policy.pod_info_on_mount:
            context |= _pod_info(pod, ephemeral=True)
        secrets: Mapping[str, str] = {}
        if source.node_publish_secret_ref:
            lookup = self.hooks.secret if self.hooks is not None else _no_secret
            try:
                secrets = await lookup(pod.namespace, source.node_publish_secret_ref)
            except CSIError as exc:
                raise CSIError(f"{where}: nodePublishSecretRef: {exc}") from exc
        request = Publish(
            volume_id=layout.inline_volume_handle(pod.uid, volume_name),
            target_path=str(layout.target_path(self.state_dir, pod.uid, volume_name)),
            read_only=source.read_only,
            fs_type=source.fs_type,
            volume_context=context,
            secrets=secrets,
        )
        return await self._publish(source.driver, request, pod.uid, volume_name, stage=False)

    async def _publish(
        self, driver: str, request: Publish, pod_uid: str, volume_name: str, *, stage: bool
    ) -> str:
        await self._scanned()
        registered = self.registry.driver(driver)
        staging = ""
        if stage and registered.info.stages:
            staging = str(layout.staging_path(self.state_dir, driver, request.volume_id))
        record = VolumeRecord(
            driver=driver,
            volume_handle=request.volume_id,
            pod_uid=pod_uid,
            volume_name=volume_name,
            target_path=request.target_path,
            staging_path=staging,
        )
        async with self._lock(request.volume_id):
            await asyncio.to_thread(_write_record, self.state_dir, record)
            if staging and not await asyncio.to_thread(is_mount_point, staging):
                await asyncio.to_thread(os.makedirs, staging, 0o750, True)
                await registered.client.stage(dataclasses.replace(request, staging_path=staging))
                log.info("csi_volume_staged", driver=driver, volume=request.volume_id)
            if not await asyncio.to_thread(is_mount_point, request.target_path):
                await registered.client.publish(dataclasses.replace(request, staging_path=staging))
                log.info("csi_volume_published", driver=driver, pod_uid=pod_uid, volume=volume_name)
        return request.target_path

    # -- unmounting -------------------------------------------------------------------------

    async def unmount_pod(self, pod_uid: str) -> None:
        """Unpublish every CSI volume of the pod, and unstage what no other pod uses."""
        records = await asyncio.to_thread(_records_of, self.state_dir, pod_uid)
        if not records:
            return
        await self._scanned()
        for record in records:
            await self._unmount(record)

    async def _unmount(self, record: VolumeRecord) -> None:
        client = self.registry.client(record.driver)
        async with self._lock(record.volume_handle):
            await client.unpublish(record.volume_handle, record.target_path)
            if await asyncio.to_thread(is_mount_point, record.target_path):
                raise CSIError(
                    f"CSI driver {record.driver!r}: NodeUnpublishVolume left "
                    f"{record.target_path} mounted"
                )
            await asyncio.to_thread(_remove_record, self.state_dir, record)
            log.info(
                "csi_volume_unpublished",
                driver=record.driver,
                pod_uid=record.pod_uid,
                volume=record.volume_name,
            )
            if not record.staging_path:
                return
            others = await asyncio.to_thread(all_records, self.state_dir)
            if layout.still_staged(record.staging_path, others):
                return
            await client.unstage(record.volume_handle, record.staging_path)
            await asyncio.to_thread(_remove_staging, record.staging_path)
            log.info("csi_volume_unstaged", driver=record.driver, volume=record.volume_handle)

    # -- helpers ----------------------------------------------------------------------------

    async def _policy(self, driver: str) -> DriverPolicy:
        if self.hooks is None:
            return DriverPolicy.standalone()
        return await self.hooks.policy(driver)

    async def _scanned(self) -> None:
        try:
            async with asyncio.timeout(SCAN_WAIT_S):
                await self.registry.scanned()
        except TimeoutError:
            raise CSIError("the CSI plugins directory has not been scanned yet") from None

    @contextlib.asynccontextmanager
    async def _lock(self, volume_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(volume_id, (asyncio.Lock(), 0))
        self._locks[volume_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[volume_id]
            if users == 1:
                del self._locks[volume_id]  # the last one: the map does not grow forever
            else:
                self._locks[volume_id] = (lock, users - 1)


def is_mount_point(path: str) -> bool:
    """Whether ``path`` is a mount point, from the mount table: a bind mount of a directory
    on the same filesystem (what most plugins publish) looks like any directory to stat,
    so ``os.path.ismount`` misses it."""
    wanted = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as table:
        for line in table:
            point = line.split()[4]
            if "\\" in point:
                point = point.encode().decode("unicode_escape")
            if point == wanted:
                return True
    return False


def pods_with_records(state_dir: Path) -> set[str]:
    """The uids of pods that have a CSI volume record (published, or maybe half so)."""
    return {r.pod_uid for r in all_records(state_dir).values()}


def all_records(state_dir: Path) -> dict[str, VolumeRecord]:
    """Every record under the state dir, by target path."""
    found: dict[str, VolumeRecord] = {}
    pods = state_dir / "pods"
    try:
        uids = os.listdir(pods)
    except FileNotFoundError:
        return found
    for uid in uids:
        for record in _records_of(state_dir, uid):
            found[record.target_path] = record
    return found


def _records_of(state_dir: Path, pod_uid: str) -> list[VolumeRecord]:
    directory = layout.volumes_dir(state_dir, pod_uid)
    try:
        names = sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    records = []
    for name in names:
        path = directory / name / layout.RECORD
        try:
            records.append(VolumeRecord.from_json(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            continue
        except ValueError as exc:
            log.warning("csi_record_unreadable", path=str(path), error=str(exc))
    return records


def _write_record(state_dir: Path, record: VolumeRecord) -> None:
    directory = layout.volume_dir(state_dir, record.pod_uid, record.volume_name)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / layout.RECORD
    temporary = path.with_suffix(".tmp")
    temporary.write_text(record.to_json(), encoding="utf-8")
    os.replace(temporary, path)


def _remove_record(state_dir: Path, record: VolumeRecord) -> None:
    directory = layout.volume_dir(state_dir, record.pod_uid, record.volume_name)
    (directory / layout.RECORD).unlink(missing_ok=True)
    for path in (Path(record.target_path), directory):
        with contextlib.suppress(FileNotFoundError):
            path.rmdir()  # only empty ones: never remove what a mount still shows


def _remove_staging(staging: str) -> None:
    try:
        os.rmdir(staging)
        os.rmdir(os.path.dirname(staging))
    except OSError:
        pass  # gone already, or not empty: left as it is


def _pod_info(pod: Pod, *, ephemeral: bool) -> dict[str, str]:
    return layout.pod_info(
        name=pod.name,
        namespace=pod.namespace,
        uid=pod.uid,
        service_account=pod.spec.service_account_name,
        ephemeral=ephemeral,
    )
