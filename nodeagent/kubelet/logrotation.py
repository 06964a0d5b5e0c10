"""Container log rotation, the kubelet's scheme (its container log manager), for CRI runtimes.

The runtime writes each container's output to ``<pod log dir>/<container>/<attempt>.log``
and never stops growing it. Every ``interval_s`` each running container's live file is
looked at; one at ``--container-log-max-size`` or more is rotated:

1. leftovers of an interrupted pass go: ``*.tmp`` files, and a plain rotated file whose
   ``.gz`` exists already (the compression finished, the removal did not);
2. the oldest rotated files go, so that at most ``max_files - 2`` rotated files remain: with
   the file about to be rotated and the new live one that makes ``max_files``;
3. the rotated files still plain are gzipped (written to ``.tmp``, renamed to ``.gz``, so a
   reader never sees half a file under the final name);
4. the live file is renamed ``<attempt>.log.<YYYYmmdd-HHMMSS>`` (UTC) and the runtime asked to
   reopen it (CRI ``ReopenContainerLog``); when that fails the rename is undone, so the
   container keeps writing where readers look.

The newest rotated file stays plain, as upstream: the runtime may still be writing to it
until the reopen took effect. Rotated names sort by time, so sorting names is sorting age.
Two rotations of one file within a second would take the same name; the second waits for
the next pass (upstream overwrites).

Docker rotates its own json-file logs (``max-size``/``max-file`` log options, given at
container creation), so this runs for CRI runtimes only. The plan (``logplan``) is pure;
``LogRotator`` reads the files, applies the plan in a thread, and calls the runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import structlog

from nodeagent.kubelet.logplan import (
    COMPRESS_SUFFIX,
    TMP_SUFFIX,
    LiveLog,
    LogPolicy,
    RotationPlan,
    plan_rotation,
)
from nodeagent.runtime.base import Runtime, RuntimeFailure

log = structlog.get_logger("nodeagent.logrotation")


def siblings(log_path: str) -> list[str]:
    directory, base = os.path.split(log_path)
    try:
        entries = os.listdir(directory)
    except OSError:
        return []
    return [os.path.join(directory, e) for e in entries if e.startswith(base + ".")]


def _prepare(log_path: str, policy: LogPolicy, now: float) -> RotationPlan | None:
    """Read the files, plan, and do all but the reopen (blocking: run in a thread)."""
    try:
        size = os.stat(log_path).st_size
    except OSError:
        return None
    if size < policy.max_bytes:
        return None  # the usual case: one stat, no listing
    plan = plan_rotation(log_path, size, siblings(log_path), policy, now)
    if plan is None:
        return None
    for name in plan.remove:
        with contextlib.suppress(FileNotFoundError):
            os.remove(name)
    for name in plan.compress:
        compress(name)
    os.rename(log_path, plan.rotate_to)
    return plan


def compress(path: str) -> None:
    tmp = path + TMP_SUFFIX
    with open(path, "rb") as src, gzip.open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.rename(tmp, path + COMPRESS_SUFFIX)
    os.remove(path)


class LogRotator:
    """Every ``interval_s``, rotates the live logs ``logs()`` names that grew too big."""

    def __init__(
        self,
        runtime: Runtime,
        policy: LogPolicy,
        *,
        logs: Callable[[], Sequence[LiveLog]],
        interval_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._runtime = runtime
        self.policy = policy
        self._logs = logs
        self.interval_s = interval_s
        self._clock = clock
        self.rotations = 0

    async def rotate_all(self) -> None:
        # One thread hop for every file (a stat each, mostly): 110 pods cost one hop a pass.
        logs = self._logs()
        plans = await asyncio.to_thread(self._prepare_all, logs, self._clock())
        for live, plan in zip(logs, plans, strict=True):
            if plan is not None:
                await self._reopen(live, plan)

    def _prepare_all(self, logs: Sequence[LiveLog], now: float) -> list[RotationPlan | None]:
        plans: list[RotationPlan | None] = []
        for live in logs:
            try:
                plans.append(_prepare(live.path, self.policy, now))
            except OSError as exc:  # one container's files must not stop the others'
                log.warning("log_rotation_failed", path=live.path, error=str(exc))
                plans.append(None)
        return plans

    async def rotate(self, live: LiveLog) -> bool:
        plan = await asyncio.to_thread(_prepare, live.path, self.policy, self._clock())
        return plan is not None and await self._reopen(live, plan)

    async def _reopen(self, live: LiveLog, plan: RotationPlan) -> bool:
        try:
            await self._runtime.reopen_container_log(live.container_id)
        except RuntimeFailure as exc:
            # The container still writes to the renamed file: put it back where readers look.
            log.warning("log_reopen_failed", path=live.path, error=str(exc))
            with contextlib.suppress(OSError):
                await asyncio.to_thread(os.rename, plan.rotate_to, live.path)
            return False
        self.rotations += 1
        log.debug("log_rotated", path=live.path, to=plan.rotate_to)
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.rotate_all()


def read_files(paths: Sequence[Path]) -> Iterable[str]:
    """The lines of ``paths`` in order, gzipped ones decompressed."""
    for path in paths:
        try:
            if path.name.endswith(COMPRESS_SUFFIX):
                with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
                    yield from f
            else:
                with path.open(encoding="utf-8", errors="replace") as f:
                    yield from f
        except FileNotFoundError:
            continue  # removed by a rotation while we read: the next file goes on
