"""Image garbage collection, the kubelet's policy (``image_gc_manager.go``), as pure functions.

When the image filesystem is at least ``high`` percent used, free enough to bring it down to
``low`` percent: remove unused images, least recently used first (never used: the one
detected first goes first), skipping images younger than ``min_age_s`` (since first
detected), images a container uses (running or exited: its image must stay for a restart),
and pinned ones (the sandbox image; CRI's ``pinned``). Removal stops once enough is freed.

``track`` carries what the kubelet remembers between passes (first detected, last used) for
each image id; ``plan`` picks the images to remove. ``ImageManager.collect`` does the I/O.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from nodeagent.runtime.base import ImageInfo
from nodeagent.runtime.image import InvalidImageReference, normalize_image


@dataclass(frozen=True)
class GcPolicy:
    high_percent: int = 85  # --image-gc-high-threshold
    low_percent: int = 80  # --image-gc-low-threshold
    min_age_s: float = 120.0  # --image-minimum-gc-age


@dataclass(frozen=True)
class FsUsage:
    capacity_bytes: int
    available_bytes: int
    path: str = ""  # the mountpoint or directory it was read at

    @property
    def percent(self) -> int:
        """Used percent, rounded as the kubelet: 100 - available * 100 / capacity."""
        if self.capacity_bytes <= 0:
            return 0
        return 100 - self.available_bytes * 100 // self.capacity_bytes


@dataclass(frozen=True)
class Record:
    """What is remembered of one image id between passes."""

    first_seen: float
    last_used: float = 0.0  # 0: never seen in use


def _names(image: ImageInfo) -> set[str]:
    names = {image.id, *image.repo_digests}
    for tag in image.repo_tags:
        try:
            names.add(normalize_image(tag))
        except InvalidImageReference:
            names.add(tag)
    return names


def in_use(images: Sequence[ImageInfo], used_refs: Iterable[str]) -> set[str]:
    """Ids of the images that the given container image names or refs point at."""
    refs: set[str] = set()
    for ref in used_refs:
        refs.add(ref)  # an image id, or a name as the runtime spelled it
        with contextlib.suppress(InvalidImageReference):
            refs.add(normalize_image(ref))
    return {image.id for image in images if _names(image) & refs}


def pinned(images: Sequence[ImageInfo], sandbox_image: str) -> set[str]:
    return in_use(images, [sandbox_image])


def track(
    records: Mapping[str, Record], images: Sequence[ImageInfo], used: set[str], now: float
) -> dict[str, Record]:
    """The records after a pass: new images first seen now, used ones last used now, gone
    ones forgotten."""
    out: dict[str, Record] = {}
    for image in images:
        record = records.get(image.id) or Record(first_seen=now)
        if image.id in used:
            record = Record(record.first_seen, last_used=now)
        out[image.id] = record
    return out


def plan(
    images: Sequence[ImageInfo],
    records: Mapping[str, Record],
    keep: set[str],
    usage: FsUsage,
    policy: GcPolicy,
    now: float,
) -> list[ImageInfo]:
    """The images to remove, in order; empty below the high threshold. ``keep``: ids in use
    or pinned."""
    if usage.percent < policy.high_percent:
        return []
    to_free = usage.capacity_bytes - usage.available_bytes
    to_free -= usage.capacity_bytes * policy.low_percent // 100
    candidates = [
        i
        for i in images
        if i.id not in keep
        and i.id in records
        and now - records[i.id].first_seen >= policy.min_age_s
    ]
    candidates.sort(key=lambda i: (records[i.id].last_used, records[i.id].first_seen))
    chosen: list[ImageInfo] = []
    freed = 0
    for image in candidates:
        if freed >= to_free:
            break
        chosen.append(image)
        freed += image.size
    return chosen
