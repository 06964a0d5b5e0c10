"""Image pulls by policy, with the kubelet's pull backoff and reasons.

One ``ImageManager`` per node: backoff is per image, so ten pods waiting on the same bad
image back off together instead of hammering the runtime. Concurrent pulls of one image
share a single pull.

What each waiter saw is told per container (``Puller``) to the ``listeners``, as the kubelet
records its image events on each pod: ``Pulling`` when the container starts waiting (also when
it joins a pull already under way), then ``Pulled`` (with the pull's own time and the time
including the wait) or ``Failed`` (the pull's error, then ``Error: ErrImagePull``); an image
already present under IfNotPresent is ``Pulled`` "already present on machine". The cluster
link turns these into Events; standalone, nobody listens.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from nodeagent.kubelet import backoff
from nodeagent.model.pod import PullPolicy
from nodeagent.runtime.base import InvalidInput, Runtime, RuntimeFailure

log = structlog.get_logger("nodeagent.images")


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
    reason: str  # Pulling, Pulled, Failed
    message: str


PullListener = Callable[[PullNote], None]


class ImageManager:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._backoffs: dict[str, tuple[backoff.Backoff, float]] = {}
        self._pulls: dict[str, asyncio.Task[float]] = {}  # image -> pull, returns its seconds
        self.listeners: list[PullListener] = []

    def listen(self, listener: PullListener) -> None:
        """``listener`` is told every pull note from now on."""
        self.listeners.append(listener)

    def retry_at(self, image: str) -> float | None:
        """When a backed-off image may be pulled again (wall clock), if it is backing off."""
        entry = self._backoffs.get(image)
        if entry is None:
            return None
        return backoff.wait_until(entry[0], failed_at=entry[1], now=time.time())

    async def ensure(self, image: str, policy: PullPolicy, puller: Puller | None = None) -> None:
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
            raise ImageError("ImagePullBackOff", f'Back-off pulling image "{image}"')
        await self._pull(image, puller)

    async def _present(self, image: str) -> bool:
        try:
            return await self._runtime.image_present(image)
        except InvalidInput as exc:
            raise ImageError(
                "InvalidImageName", f'Failed to apply default image tag "{image}": {exc}'
            ) from exc

    async def _pull(self, image: str, puller: Puller | None) -> None:
        task = self._pulls.get(image)
        if task is None:
            task = asyncio.create_task(self._pull_once(image))
            self._pulls[image] = task
            task.add_done_callback(lambda _: self._pulls.pop(image, None))
        waiting_since = time.monotonic()
        self._note(puller, "Normal", "Pulling", f'Pulling image "{image}"')
        try:
            took = await asyncio.shield(task)
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
            f'Successfully pulled image "{image}" in {took:.3f}s ({waited:.3f}s including waiting)',
        )

    async def _pull_once(self, image: str) -> float:
        """One pull shared by every waiter; it alone records the outcome in the backoff."""
        started = time.monotonic()
        try:
            await self._runtime.pull_image(image)
        except RuntimeFailure:
            now = time.time()
            previous = self._backoffs.get(image)
            self._backoffs[image] = (backoff.advance(previous and previous[0], now=now), now)
            raise
        self._backoffs.pop(image, None)
        return time.monotonic() - started

    def _note(self, puller: Puller | None, kind: str, reason: str, message: str) -> None:
        if puller is None:
            return
        note = PullNote(puller, kind, reason, message)
        for listener in self.listeners:
            try:
                listener(note)
            except Exception:  # a listener's bug must not fail the pod's start
                log.exception("image_listener_failed", reason=reason)
