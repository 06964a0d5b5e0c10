"""Image pulls by policy and credentials, with the kubelet's pull backoff, events and limits;
the node's image list (``run`` reads it every LIST_INTERVAL_S for the node's status, and
notes which images containers use); and image GC (``collect``, every ``gc_interval_s``: the
policy is ``imagegc.py``'s, the removals are logged as ``image_removed``).

One ``ImageManager`` per node: backoff is per image, so ten pods waiting on the same bad
image back off together instead of hammering the runtime. Concurrent pulls of one image with
the same credentials share a single pull, however many pods wait for it.

Credentials (``credentials.py`` has the matching rules): the pod's ``imagePullSecrets``,
fetched through the ``secret source`` (the manifest directory standalone, the API in cluster
mode), then the node's docker config. Every matching credential is tried in turn until one
works; with none the pull is anonymous. A pull secret that is missing or cannot be parsed is
told to the pod (``FailedToRetrieveImagePullSecret``, naming the secret and key) and skipped:
the pull goes on with what is left, as the kubelet does for a missing one.

Concurrency (the kubelet's ``--serialize-image-pulls``, ``--max-parallel-image-pulls``): one
pull at a time when serialized, else at most ``max_parallel`` (0: no limit). A pull waiting
for its turn counts as "waiting" in the Pulled message, not as pull time.

What each waiter saw is told per container (``Puller``) to the ``listeners``, as the kubelet
records its image events on each pod: ``Pulling`` when the container starts waiting (also when
it joins a pull already under way), then ``Pulled`` (with the pull's own time, the time
including the wait and the image's size) or ``Failed`` (the pull's error, then ``Error:
ErrImagePull``); an image already present under IfNotPresent is ``Pulled`` "already present on
machine". The cluster link turns these into Events; standalone, the status socket keeps them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from nodeagent.kubelet import backoff, credentials, imagegc
from nodeagent.kubelet.credentials import Credential, CredentialError
from nodeagent.model.pod import PullPolicy
from nodeagent.runtime.base import (
    ImageInfo,
    InvalidInput,
    NotFound,
    RegistryAuth,
    Runtime,
    RuntimeFailure,
)

log = structlog.get_logger("nodeagent.images")

LIST_INTERVAL_S = 10.0  # how often the node's image list (status.images) is read again

# (namespace, name) -> the Secret as the API serves it (base64 ``data``); None: not found.
SecretSource = Callable[[str, str], Awaitable[Mapping[str, Any] | None]]


@dataclass(frozen=True)
class ImageError(Exception):
    reason: str  # ErrImagePull, ImagePullBackOff, ErrImageNeverPull, InvalidImageName
    message: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


@dataclass(frozen=True)
class Puller:
    """Who needs an image: one container of one pod."""

    namespace: str
    name: str
    uid: str
    container: str
    init: bool = False


@dataclass(frozen=True)
class PullNote:
    """Something a pod's container saw of an image pull, for its events."""

    puller: Puller
    type: str  # Normal or Warning
    reason: str  # Pulling, Pulled, Failed, FailedToRetrieveImagePullSecret
    message: str


PullListener = Callable[[PullNote], None]


@dataclass(frozen=True)
class ImageSettings:
    """How images are pulled and collected on this node (the kubelet's flags)."""

    serialize: bool = True
    max_parallel: int = 0  # when not serialized; 0: no limit
    # The node's docker config; None: the kubelet's default paths (credentials.py).
    node_credentials: Path | None = None
    gc: imagegc.GcPolicy = field(default_factory=imagegc.GcPolicy)
    gc_interval_s: float = 300.0  # the kubelet's ImageGCPeriod
    sandbox_image: str = ""  # pinned: never collected


class ImageManager:
    def __init__(self, runtime: Runtime, settings: ImageSettings | None = None) -> None:
        self._runtime = runtime
        self._settings = settings or ImageSettings()
        limit = 1 if self._settings.serialize else self._settings.max_parallel
        self._slots = asyncio.Semaphore(limit) if limit > 0 else None
        self._backoffs: dict[str, tuple[backoff.Backoff, float]] = {}
        self._last_error: dict[str, str] = {}  # image -> its last failed pull's message
        # (image, credentials) -> the pull under way: its seconds and the image's size.
        self._pulls: dict[tuple[str, tuple[RegistryAuth, ...]], asyncio.Task[tuple[float, int]]]
        self._pulls = {}
        self._secrets: SecretSource | None = None
        self._node_keyring = _NodeKeyring(self._settings.node_credentials)
        self.listeners: list[PullListener] = []
        self.images: tuple[ImageInfo, ...] = ()  # the runtime's images, as last listed
        self.image_fs: imagegc.FsUsage | None = None  # their filesystem, as last read
        self._records: dict[str, imagegc.Record] = {}  # image id -> first seen, last used
        self._used: set[str] = set()  # ids of images containers use, as last listed

    async def run(self) -> None:
        """Keep ``images`` current (the Node's status.images, ``nodeagent status node``) and
        collect unused images every ``gc_interval_s`` (see imagegc.py)."""
        interval = self._settings.gc_interval_s
        next_gc = time.monotonic() + interval
        while True:
            try:
                await self._observe()
                if time.monotonic() >= next_gc:
                    next_gc = time.monotonic() + interval
                    await self.collect()
            except RuntimeFailure as exc:
                log.debug("image_list_failed", error=str(exc))
            await asyncio.sleep(min(LIST_INTERVAL_S, interval))

    async def _observe(self) -> None:
        images = tuple(await self._runtime.list_images())
        containers = await self._runtime.list_containers()
        refs = [c.image for c in containers] + [c.image_ref for c in containers if c.image_ref]
        self._used = imagegc.in_use(images, refs)
        self._records = imagegc.track(self._records, images, self._used, time.time())
        self.images = images
        self.image_fs = await self._image_fs()

    async def _image_fs(self) -> imagegc.FsUsage | None:
        path = await self._runtime.image_fs_path()
        if not path:
            return None
        try:
            stat = await asyncio.to_thread(os.statvfs, path)
        except OSError as exc:
            log.warning("image_fs_unreadable", path=path, error=str(exc))
            return None
        capacity, available = stat.f_blocks * stat.f_frsize, stat.f_bavail * stat.f_frsize
        return imagegc.FsUsage(capacity, available, path)

    async def reclaim(self) -> int:
        """An image GC pass for disk pressure (``kubelet/gc.py``); the bytes it freed."""
        return sum(image.size for image in await self.collect())

    async def collect(self) -> list[ImageInfo]:
        """One image GC pass over what ``_observe`` saw last; the images removed."""
        usage = await self._image_fs()
        if usage is None:
            return []
        keep = self._used | imagegc.pinned(self.images, self._settings.sandbox_image)
        chosen = imagegc.plan(
            self.images, self._records, keep, usage, self._settings.gc, time.time()
        )
        removed: list[ImageInfo] = []
        for image in chosen:
            try:
                await self._runtime.remove_image(image.id)
            except NotFound:
                continue
            except RuntimeFailure as exc:  # in use after all (a container just made): skip
                log.warning("image_gc_remove_failed", id=image.id, error=str(exc))
                continue
            log.info(
                "image_removed",
                id=image.id,
                names=list(image.names),
                size=image.size,
                fs_used_percent=usage.percent,
            )
            removed.append(image)
        return removed

    def listen(self, listener: PullListener) -> None:
        """``listener`` is told every pull note from now on."""
        self.listeners.append(listener)

    def set_secret_source(self, source: SecretSource | None) -> None:
        """Where pods' ``imagePullSecrets`` are read from; None: nowhere (only node ones)."""
        self._secrets = source

    def retry_at(self, image: str) -> float | None:
        """When a backed-off image may be pulled again (wall clock), if it is backing off."""
        entry = self._backoffs.get(image)
        if entry is None:
            return None
        return backoff.wait_until(entry[0], failed_at=entry[1], now=time.time())

    def backoff_message(self, image: str) -> str:
        """The waiting message while ``image`` backs off: with the last pull's error, so
        that the registry's reason stays in sight after ErrImagePull turns ImagePullBackOff."""
        message = f'Back-off pulling image "{image}"'
        last = self._last_error.get(image)
        return f"{message}: ErrImagePull: {last}" if last else message

    async def ensure(
        self,
        image: str,
        policy: PullPolicy,
        puller: Puller | None = None,
        pull_secrets: Sequence[str] = (),
    ) -> None:
        if policy is not PullPolicy.ALWAYS and await self._present(image):
            self._note(
                puller, "Normal", "Pulled", f'Container image "{image}" already present on machine'
            )
            return
        if policy is PullPolicy.NEVER:
            raise ImageError(
                "ErrImageNeverPull",
                f'Container image "{image}" is not present with pull policy of Never',
            )
        if self.retry_at(image) is not None:
            raise ImageError("ImagePullBackOff", self.backoff_message(image))
        keyrings = [await self._pod_keyring(puller, pull_secrets), self._node_keyring.read()]
        await self._pull(image, credentials.lookup(keyrings, image), puller)

    async def _present(self, image: str) -> bool:
        try:
            return await self._runtime.image_present(image)
        except InvalidInput as exc:
            raise ImageError(
                "InvalidImageName", f'Failed to apply default image tag "{image}": {exc}'
            ) from exc

    async def _pod_keyring(self, puller: Puller | None, names: Sequence[str]) -> list[Credential]:
        found: list[Credential] = []
        if not names or puller is None or self._secrets is None:
            return found
        for name in names:
            try:
                secret = await self._secrets(puller.namespace, name)
            except Exception as exc:  # the API out of reach: pull with what there is
                secret, problem = None, str(exc)
            else:
                problem = "not found"
            if secret is None:
                self._secret_problem(puller, name, problem)
                continue
            try:
                found.extend(credentials.parse_secret(secret))
            except CredentialError as exc:
                self._secret_problem(puller, name, str(exc))
        return found

    def _secret_problem(self, puller: Puller, name: str, problem: str) -> None:
        message = (
            f'Unable to retrieve image pull secret "{puller.namespace}/{name}": {problem}; '
            "attempting to pull the image may not succeed."
        )
        log.warning(
            "pull_secret_unusable",
            pod=puller.name,
            namespace=puller.namespace,
            secret=name,
            error=problem,
        )
        self._note(puller, "Warning", "FailedToRetrieveImagePullSecret", message)

    async def _pull(self, image: str, auths: list[RegistryAuth], puller: Puller | None) -> None:
        key = (image, tuple(auths))
        task = self._pulls.get(key)
        if task is None:
            task = asyncio.create_task(self._pull_once(image, auths))
            self._pulls[key] = task
            task.add_done_callback(lambda _: self._pulls.pop(key, None))
        waiting_since = time.monotonic()
        self._note(puller, "Normal", "Pulling", f'Pulling image "{image}"')
        try:
            took, size = await asyncio.shield(task)
        except RuntimeFailure as exc:
            message = f'Failed to pull image "{image}": {exc}'
            self._note(puller, "Warning", "Failed", message)
            self._note(puller, "Warning", "Failed", "Error: ErrImagePull")
            raise ImageError("ErrImagePull", message) from exc
        waited = time.monotonic() - waiting_since
        self._note(
            puller,
            "Normal",
            "Pulled",
            f'Successfully pulled image "{image}" in {took:.3f}s ({waited:.3f}s including '
            f"waiting). Image size: {size} bytes.",
        )

    async def _pull_once(self, image: str, auths: list[RegistryAuth]) -> tuple[float, int]:
        """One pull shared by every waiter; it alone records the outcome in the backoff."""
        async with self._slot():
            started = time.monotonic()
            try:
                size = await self._try_each(image, auths)
            except RuntimeFailure as exc:
                now = time.time()
                previous = self._backoffs.get(image)
                self._backoffs[image] = (backoff.advance(previous and previous[0], now=now), now)
                self._last_error[image] = f'Failed to pull image "{image}": {exc}'
                raise
        self._backoffs.pop(image, None)
        self._last_error.pop(image, None)
        took = time.monotonic() - started
        log.info("image_pulled", image=image, size=size, seconds=round(took, 3))
        return took, size

    async def _try_each(self, image: str, auths: list[RegistryAuth]) -> int:
        """Anonymous when nothing matches; else each credential until one works. All
        failing, the error names each attempt, as the kubelet aggregates them."""
        if not auths:
            return await self._runtime.pull_image(image)
        errors: list[RuntimeFailure] = []
        for auth in auths:
            try:
                return await self._runtime.pull_image(image, auth)
            except RuntimeFailure as exc:
                log.info("image_pull_credential_failed", image=image, auth=repr(auth))
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise type(errors[-1])("[" + ", ".join(str(e) for e in errors) + "]")

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        if self._slots is None:
            yield
            return
        async with self._slots:
            yield

    def _note(self, puller: Puller | None, kind: str, reason: str, message: str) -> None:
        if puller is None:
            return
        note = PullNote(puller, kind, reason, message)
        for listener in self.listeners:
            try:
                listener(note)
            except Exception:  # a listener's bug must not fail the pod's start
                log.exception("image_listener_failed", reason=reason)


class _NodeKeyring:
    """The node's docker config, read again when the file changes (it is small: a stat per
    pull). A config that cannot be parsed is logged once per version and counts as empty."""

    def __init__(self, path: Path | None) -> None:
        self._explicit = path
        self._seen: tuple[Path, float] | None = None
        self._keyring: list[Credential] = []

    def _path(self) -> Path | None:
        if self._explicit is not None:
            return self._explicit
        home = os.environ.get("HOME", "/root")
        return next((p for p in credentials.node_config_paths(home) if p.is_file()), None)

    def read(self) -> list[Credential]:
        path = self._path()
        try:
            stamp = (path, path.stat().st_mtime) if path is not None else None
        except OSError:
            stamp = None
        if stamp == self._seen:
            return self._keyring
        self._seen, self._keyring = stamp, []
        if path is None or stamp is None:
            if self._explicit is not None:
                log.warning("image_credentials_missing", path=str(path))
            return self._keyring
        try:
            raw = path.read_bytes()
            wrapped = path.name != ".dockercfg"
            self._keyring = credentials.parse_config(raw, key=str(path), wrapped=wrapped)
        except (OSError, CredentialError) as exc:
            log.warning("image_credentials_unusable", path=str(path), error=str(exc))
        return self._keyring
