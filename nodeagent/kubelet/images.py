"""Image pulls by policy, with the kubelet's pull backoff and reasons.

One ``ImageManager`` per node: backoff is per image, so ten pods waiting on the same bad
image back off together instead of hammering the runtime. Concurrent pulls of one image
share a single pull.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from nodeagent.kubelet import backoff
from nodeagent.model.pod import PullPolicy
from nodeagent.runtime.base import InvalidInput, Runtime, RuntimeFailure


@dataclass(frozen=True)
class ImageError(Exception):
    reason: str  # ErrImagePull, ImagePullBackOff, ErrImageNeverPull, InvalidImageName
    message: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class ImageManager:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._backoffs: dict[str, tuple[backoff.Backoff, float]] = {}
        self._pulls: dict[str, asyncio.Task[None]] = {}

    def retry_at(self, image: str) -> float | None:
        """When a backed-off image may be pulled again (wall clock), if it is backing off."""
        entry = self._backoffs.get(image)
        if entry is None:
            return None
        return backoff.wait_until(entry[0], failed_at=entry[1], now=time.time())

    async def ensure(self, image: str, policy: PullPolicy) -> None:
        if policy is not PullPolicy.ALWAYS and await self._present(image):
            return
        if policy is PullPolicy.NEVER:
            raise ImageError(
                "ErrImageNeverPull",
                f'Container image "{image}" is not present with pull policy of Never',
            )
        if self.retry_at(image) is not None:
            raise ImageError("ImagePullBackOff", f'Back-off pulling image "{image}"')
        await self._pull(image)

    async def _present(self, image: str) -> bool:
        try:
            return await self._runtime.image_present(image)
        except InvalidInput as exc:
            raise ImageError(
                "InvalidImageName", f'Failed to apply default image tag "{image}": {exc}'
            ) from exc

    async def _pull(self, image: str) -> None:
        task = self._pulls.get(image)
        if task is None:
            task = asyncio.create_task(self._pull_once(image))
            self._pulls[image] = task
            task.add_done_callback(lambda _: self._pulls.pop(image, None))
        try:
            await asyncio.shield(task)
        except RuntimeFailure as exc:
            raise ImageError("ErrImagePull", f'Failed to pull image "{image}": {exc}') from exc

    async def _pull_once(self, image: str) -> None:
        """One pull shared by every waiter; it alone records the outcome in the backoff."""
        try:
            await self._runtime.pull_image(image)
        except RuntimeFailure:
            now = time.time()
            previous = self._backoffs.get(image)
            self._backoffs[image] = (backoff.advance(previous and previous[0], now=now), now)
            raise
        self._backoffs.pop(image, None)
