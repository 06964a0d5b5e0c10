"""Container log rotation: the plan (pure), the files it leaves, reading across them."""

from __future__ import annotations

import asyncio
import calendar
import gzip
import os
from pathlib import Path

from nodeagent import podlogs
from nodeagent.kubelet.logplan import LiveLog, LogPolicy, live_logs, log_files, plan_rotation
from nodeagent.kubelet.logrotation import LogRotator
from nodeagent.kubelet.runtimepod import RuntimePod
from nodeagent.model.pod import PodUID
from nodeagent.runtime.base import (
    LABEL_POD_NAME,
    LABEL_POD_NAMESPACE,
    ContainerID,
    ContainerInfo,
    ContainerState,
    SandboxID,
)
from nodeagent.runtime.fake import FakeRuntime

LOG = "/logs/ns_web_u1/main/0.log"
NOW = calendar.timegm((2026, 12, 6, 22, 40, 5))
POLICY = LogPolicy(max_bytes=100, max_files=3)


def test_a_small_log_is_left_alone() -> None:
    assert plan_rotation(LOG, 99, [], POLICY, NOW) is None


def test_a_full_log_is_renamed_with_the_time() -> None:
    plan = plan_rotation(LOG, 100, [], POLICY, NOW)
    assert plan is not None
    assert plan.rotate_to == LOG + ".20261206-224005"
    assert plan.remove == () and plan.compress == ()


def test_older_files_are_compressed_and_the_oldest_removed() -> None:
    rotated = [LOG + ".20261206-224001.gz", LOG + ".20261206-224002.gz", LOG + ".20261206-224003"]
    plan = plan_rotation(LOG, 150, rotated, POLICY, NOW)
    assert plan is not None
    # max_files 3: the new live file, the one rotated now, and one older (compressed).
    assert plan.remove == (LOG + ".20261206-224001.gz", LOG + ".20261206-224002.gz")
    assert plan.compress == (LOG + ".20261206-224003",)


def test_leftovers_of_an_interrupted_pass_go_first() -> None:
    names = [LOG + ".20261206-224001", LOG + ".20261206-224001.gz", LOG + ".20261206-224002.tmp"]
    plan = plan_rotation(LOG, 150, names, LogPolicy(100, 5), NOW)
    assert plan is not None
    assert set(plan.remove) == {LOG + ".20261206-224001", LOG + ".20261206-224002.tmp"}
    assert plan.compress == ()


def test_a_name_taken_this_second_waits_for_the_next_pass() -> None:
    assert plan_rotation(LOG, 150, [LOG + ".20261206-224005"], POLICY, NOW) is None
    assert plan_rotation(LOG, 150, [LOG + ".20261206-224005"], POLICY, NOW + 1) is not None


def test_log_files_are_oldest_first_and_the_live_one_last() -> None:
    names = [LOG + ".20261206-224003", LOG + ".20261206-224001.gz", LOG + ".x.tmp"]
    assert log_files(LOG, names) == [names[1], names[0], LOG]


def running(name: str, attempt: int, state: ContainerState) -> ContainerInfo:
    labels = {LABEL_POD_NAME: "web", LABEL_POD_NAMESPACE: "ns"}
    return ContainerInfo(
        ContainerID(f"c-{name}-{attempt}"),
        SandboxID("s1"),
        PodUID("u1"),
        name,
        attempt,
        "img",
        state,
        0,
        labels,
    )


def test_only_running_containers_are_rotated() -> None:
    pod = RuntimePod(
        PodUID("u1"),
        containers=(
            running("main", 1, ContainerState.RUNNING),
            running("main", 0, ContainerState.EXITED),
        ),
    )
    assert live_logs([pod], "/logs") == [
        LiveLog(ContainerID("c-main-1"), "/logs/ns_web_u1/main/1.log")
    ]


def cri_line(text: str) -> str:
    return f"2026-12-06T22:40:05.000000000Z stdout F {text}\n"


async def test_rotation_keeps_max_files_and_the_log_reads_across_them(tmp_path: Path) -> None:
    fake = FakeRuntime()
    container = ContainerID("c1")
    path = tmp_path / "0.log"
    clock = [float(NOW)]
    rotator = LogRotator(
        fake,
        POLICY,
        logs=lambda: [LiveLog(container, str(path))],
        interval_s=1,
        clock=lambda: clock[0],
    )
    fake.reopen_container_log = _reopen(path)  # type: ignore[method-assign]
    written = []
    for n in range(6):
        with path.open("a") as f:
            for i in range(10):
                line = f"line {n}-{i}"
                written.append(line)
                f.write(cri_line(line))
        await rotator.rotate_all()
        clock[0] += 1
    files = sorted(os.listdir(tmp_path))
    assert len(files) == POLICY.max_files
    live, older, newest = files
    assert live == "0.log" and older.endswith(".gz") and not newest.endswith(".gz")
    with gzip.open(tmp_path / older, "rt") as f:
        assert cri_line("line 4-0") in f.read()
    # The reader sees the last two rounds, in order, across the gzip and plain files (the
    # live file was reopened empty by the last rotation).
    with path.open("a") as f:
        f.write(cri_line("live"))
    texts = [r.text for r in podlogs.tail(path, None)]
    assert texts == [*written[-20:], "live"]
    assert [r.text for r in podlogs.tail(path, 2)] == [written[-1], "live"]
    assert rotator.rotations == 6


def _reopen(path: Path):  # type: ignore[no-untyped-def]
    async def reopen(container_id: ContainerID) -> None:
        await asyncio.to_thread(path.touch)  # as the runtime does: a new, empty live file

    return reopen


async def test_a_failed_reopen_puts_the_file_back(tmp_path: Path) -> None:
    fake = FakeRuntime()  # knows no container: ReopenContainerLog fails with NotFound
    path = tmp_path / "0.log"
    path.write_text(cri_line("x" * 200))
    rotator = LogRotator(
        fake, POLICY, logs=lambda: [LiveLog(ContainerID("gone"), str(path))], interval_s=1
    )
    assert not await rotator.rotate(LiveLog(ContainerID("gone"), str(path)))
    assert os.listdir(tmp_path) == ["0.log"]


def test_docker_rotated_files_are_read_oldest_first(tmp_path: Path) -> None:
    target = tmp_path / "abc-json.log"
    for suffix, text in ((".2", "one"), (".1", "two"), ("", "three")):
        (tmp_path / f"abc-json.log{suffix}").write_text(
            f'{{"log":"{text}\\n","stream":"stdout"}}\n'
        )
    link = tmp_path / "0.log"
    link.symlink_to(target)
    assert [r.text for r in podlogs.tail(link, None)] == ["one", "two", "three"]
