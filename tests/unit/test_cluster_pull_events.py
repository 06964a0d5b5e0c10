"""Image pulls tell each waiting container what it saw (the kubelet's per-pod image events),
and the cluster link turns those notes into Events."""

from __future__ import annotations

import asyncio

import pytest

from nodeagent.apiserver.events import pull_event
from nodeagent.kubelet.images import ImageError, ImageManager, Puller, PullNote
from nodeagent.model.pod import PullPolicy
from nodeagent.runtime.fake import FakeRuntime

A = Puller("default", "a", "uid-a", "app")
B = Puller("default", "b", "uid-b", "init", init=True)


def manager(fake: FakeRuntime) -> tuple[ImageManager, list[PullNote]]:
    images = ImageManager(fake)
    notes: list[PullNote] = []
    images.listeners.append(notes.append)
    return images, notes


def told(notes: list[PullNote], who: Puller) -> list[tuple[str, str, str]]:
    return [(n.type, n.reason, n.message) for n in notes if n.puller == who]


async def test_two_pods_sharing_one_pull_each_get_pulling_and_pulled() -> None:
    fake = FakeRuntime()
    images, notes = manager(fake)
    await asyncio.gather(
        images.ensure("web:1", PullPolicy.ALWAYS, A), images.ensure("web:1", PullPolicy.ALWAYS, B)
    )
    assert fake.count("pull_image") == 1
    for who in (A, B):
        (pulling, pulled) = told(notes, who)
        assert pulling == ("Normal", "Pulling", 'Pulling image "web:1"')
        assert pulled[:2] == ("Normal", "Pulled")
        assert pulled[2].startswith('Successfully pulled image "web:1" in ')
        assert pulled[2].endswith("s including waiting). Image size: 5 bytes.")


async def test_a_failed_pull_is_told_to_every_waiter_with_its_error() -> None:
    fake = FakeRuntime(registry=set())
    images, notes = manager(fake)
    results = await asyncio.gather(
        images.ensure("nope:1", PullPolicy.IF_NOT_PRESENT, A),
        images.ensure("nope:1", PullPolicy.IF_NOT_PRESENT, B),
        return_exceptions=True,
    )
    assert all(isinstance(r, ImageError) and r.reason == "ErrImagePull" for r in results)
    for who in (A, B):
        assert told(notes, who)[0][1:] == ("Pulling", 'Pulling image "nope:1"')
        failed = told(notes, who)[1:]
        assert failed[0][:2] == ("Warning", "Failed")
        assert failed[0][2].startswith('Failed to pull image "nope:1": ')
        assert failed[0][2].count("Failed to pull image") == 1
        assert failed[1] == ("Warning", "Failed", "Error: ErrImagePull")
    # Backing off: no pull, no Pulling; the worker's status tells ImagePullBackOff.
    before = len(notes)
    with pytest.raises(ImageError, match="ImagePullBackOff"):
        await images.ensure("nope:1", PullPolicy.IF_NOT_PRESENT, A)
    assert len(notes) == before and fake.count("pull_image") == 1


async def test_an_image_already_present_is_said_so_and_nobody_listening_is_fine() -> None:
    fake = FakeRuntime(images={"web:1"})
    images, notes = manager(fake)
    await images.ensure("web:1", PullPolicy.IF_NOT_PRESENT, A)
    assert told(notes, A) == [
        ("Normal", "Pulled", 'Container image "web:1" already present on machine')
    ]
    await images.ensure("web:1", PullPolicy.IF_NOT_PRESENT)  # no puller: no note
    assert len(notes) == 1


async def test_a_broken_listener_does_not_fail_the_pull() -> None:
    images, notes = manager(FakeRuntime())

    def broken(_: PullNote) -> None:
        raise RuntimeError("bug")

    images.listeners.insert(0, broken)
    await images.ensure("web:1", PullPolicy.ALWAYS, A)
    assert [n.reason for n in notes] == ["Pulling", "Pulled"]


def test_a_note_becomes_an_event_on_the_container() -> None:
    event = pull_event(PullNote(B, "Normal", "Pulling", 'Pulling image "x"'))
    assert (event.pod.namespace, event.pod.name, event.pod.uid) == ("default", "b", "uid-b")
    assert event.field_path == "spec.initContainers{init}"
    assert (event.type, event.reason, event.message) == ("Normal", "Pulling", 'Pulling image "x"')
