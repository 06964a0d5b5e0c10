"""kubelet/imagegc: the kubelet's image GC policy, and its flags."""

from __future__ import annotations

import argparse

import pytest

from nodeagent.config import Config, ConfigError, add_flags, load_config
from nodeagent.kubelet.imagegc import FsUsage, GcPolicy, Record, in_use, pinned, plan, track
from nodeagent.runtime.base import ImageInfo

GIB = 1024**3
OLD = ImageInfo("sha256:old", ("docker.io/library/old:1",), (), 3 * GIB)
MID = ImageInfo("sha256:mid", ("docker.io/library/mid:1",), (), 2 * GIB)
NEW = ImageInfo("sha256:new", ("docker.io/library/new:1",), (), 1 * GIB)
USED = ImageInfo(
    "sha256:used", ("docker.io/library/app:1",), ("docker.io/library/app@sha256:d",), 5 * GIB
)
PAUSE = ImageInfo("sha256:pause", ("registry.k8s.io/pause:3.6",), (), GIB)
ALL = [OLD, MID, NEW, USED, PAUSE]
RECORDS = {
    "sha256:old": Record(first_seen=0, last_used=100),
    "sha256:mid": Record(first_seen=0, last_used=200),
    "sha256:new": Record(first_seen=0, last_used=300),
    "sha256:used": Record(first_seen=0, last_used=1000),
    "sha256:pause": Record(first_seen=0),
}
POLICY = GcPolicy(high_percent=85, low_percent=80, min_age_s=120)


def usage(percent: int) -> FsUsage:
    return FsUsage(capacity_bytes=100 * GIB, available_bytes=(100 - percent) * GIB)


def test_below_the_high_threshold_nothing_is_removed() -> None:
    assert plan(ALL, RECORDS, set(), usage(84), POLICY, now=1000) == []


def test_least_recently_used_go_first_until_down_to_the_low_threshold() -> None:
    keep = {"sha256:used", "sha256:pause"}
    # 86 % used: 6 GiB to free; old (3) + mid (2) = 5 is not enough, new (1) makes 6.
    assert plan(ALL, RECORDS, keep, usage(86), POLICY, now=1000) == [OLD, MID, NEW]
    # 85 % used: 5 GiB to free.
    assert plan(ALL, RECORDS, keep, usage(85), POLICY, now=1000) == [OLD, MID]


def test_images_in_use_pinned_or_too_young_stay() -> None:
    young = {**RECORDS, "sha256:old": Record(first_seen=950, last_used=0)}
    keep = in_use(ALL, ["app:1"]) | pinned(ALL, "registry.k8s.io/pause:3.6")
    assert keep == {"sha256:used", "sha256:pause"}
    assert plan(ALL, young, keep, usage(100), POLICY, now=1000) == [MID, NEW]


def test_a_container_naming_the_image_by_digest_or_id_uses_it() -> None:
    assert in_use(ALL, ["docker.io/library/app@sha256:d"]) == {"sha256:used"}
    assert in_use(ALL, ["sha256:mid"]) == {"sha256:mid"}


def test_track_remembers_first_seen_and_last_used_and_forgets_gone_images() -> None:
    first = track({}, [OLD, MID], {"sha256:mid"}, now=10)
    assert first == {"sha256:old": Record(10, 0), "sha256:mid": Record(10, 10)}
    second = track(first, [MID], set(), now=20)
    assert second == {"sha256:mid": Record(10, 10)}


def parse(*argv: str) -> Config:
    parser = argparse.ArgumentParser()
    add_flags(parser)
    return load_config(parser.parse_args(["--node-name", "n1", *argv]))


def test_gc_flags_parse_like_the_kubelets() -> None:
    config = parse(
        "--image-gc-high-threshold", "90", "--image-gc-low-threshold", "0",
        "--image-minimum-gc-age", "1h30m",
    )  # fmt: skip
    assert config.image_gc_high_threshold == 90
    assert config.image_gc_low_threshold == 0
    assert config.image_minimum_gc_age == 5400.0


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (("--image-gc-high-threshold", "101"), "0 to 100"),
        (("--image-gc-low-threshold", "90"), "below image_gc_high_threshold"),
        (("--image-minimum-gc-age", "soon"), "not a duration"),
        (("--max-parallel-image-pulls", "3"), "needs serialize_image_pulls false"),
    ],
)
def test_bad_gc_flags_are_named(argv: tuple[str, ...], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse(*argv)


def test_the_node_view_shows_the_images_and_their_filesystem() -> None:
    from datetime import UTC, datetime

    from nodeagent.kubelet.nodestatus import NodeFacts, node_status
    from nodeagent.server.nodeview import render_node

    facts = NodeFacts(
        name="n1",
        max_pods=110,
        runtime_name="containerd",
        runtime_version="1.6",
        runtime_healthy=True,
        runtime_error="",
        state_dir="/",
        now=0.0,
        images=(OLD, NEW),
        image_fs=FsUsage(100 * GIB, 40 * GIB, "/var/lib/containerd"),
    )
    text = render_node({"node": node_status(facts)}, datetime.now(UTC))
    (line,) = [line for line in text.splitlines() if line.startswith("IMAGES:")]
    assert "2 using 4.0GiB" in line
    assert "image filesystem 60% of 100.0GiB (/var/lib/containerd)" in line
