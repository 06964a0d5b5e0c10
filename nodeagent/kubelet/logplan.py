"""Log rotation decisions (pure): when a container's log file is rotated, what goes, and
which files make up its log. ``logrotation`` carries them out; the scheme is described there.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

from nodeagent.kubelet.runtimepod import RuntimePod
from nodeagent.runtime.base import LABEL_POD_NAME, LABEL_POD_NAMESPACE, ContainerID, ContainerState

TIMESTAMP_FORMAT = "%Y%m%d-%H%M%S"  # the kubelet's rotated-file suffix
COMPRESS_SUFFIX = ".gz"
TMP_SUFFIX = ".tmp"


@dataclass(frozen=True)
class LogPolicy:
    max_bytes: int  # --container-log-max-size
    max_files: int  # --container-log-max-files, the live file included (at least 2)


@dataclass(frozen=True)
class RotationPlan:
    """What one rotation does, in this order; paths are whole paths."""

    remove: tuple[str, ...]  # leftovers and the oldest rotated files
    compress: tuple[str, ...]  # rotated files still plain (each becomes <name>.gz)
    rotate_to: str  # the live file's new name


def rotated_name(log_path: str, now: float) -> str:
    return f"{log_path}.{time.strftime(TIMESTAMP_FORMAT, time.gmtime(now))}"


def plan_rotation(
    log_path: str, size: int, siblings: Iterable[str], policy: LogPolicy, now: float
) -> RotationPlan | None:
    """The rotation of ``log_path`` (``size`` bytes) whose other files are ``siblings``
    (every ``<log_path>.*``); None when it is not due (or its name is taken this second)."""
    if size < policy.max_bytes:
        return None
    target = rotated_name(log_path, now)
    names = sorted(set(siblings))
    if target in names or target + COMPRESS_SUFFIX in names:
        return None
    leftovers = [
        n
        for n in names
        if n.endswith(TMP_SUFFIX)
        or (not n.endswith(COMPRESS_SUFFIX) and n + COMPRESS_SUFFIX in names)
    ]
    rotated = [n for n in names if n not in leftovers]
    keep = max(policy.max_files - 2, 0)
    excess = rotated[: len(rotated) - keep] if len(rotated) > keep else []
    kept = rotated[len(excess) :]
    return RotationPlan(
        remove=(*leftovers, *excess),
        compress=tuple(n for n in kept if not n.endswith(COMPRESS_SUFFIX)),
        rotate_to=target,
    )


def log_files(log_path: str, siblings: Iterable[str]) -> list[str]:
    """A container instance's log files, oldest first: rotated ones, then the live file."""
    rotated = sorted(n for n in siblings if not n.endswith(TMP_SUFFIX))
    # A plain file and its .gz both exist only between compressing and removing: read one.
    names = set(rotated)
    rotated = [
        n for n in rotated if n.endswith(COMPRESS_SUFFIX) or n + COMPRESS_SUFFIX not in names
    ]
    return [*rotated, log_path]


@dataclass(frozen=True)
class LiveLog:
    """A running container and where its live log file is."""

    container_id: ContainerID
    path: str


def live_logs(pods: Iterable[RuntimePod], pod_log_dir: str) -> list[LiveLog]:
    """The running containers' live log files, by the kubelet's layout."""
    found = []
    for pod in pods:
        for c in pod.containers:
            name, namespace = c.labels.get(LABEL_POD_NAME), c.labels.get(LABEL_POD_NAMESPACE)
            if c.state is not ContainerState.RUNNING or not name or not namespace:
                continue
            directory = os.path.join(pod_log_dir, f"{namespace}_{name}_{pod.uid}", c.name)
            found.append(LiveLog(c.id, os.path.join(directory, f"{c.attempt}.log")))
    return found
