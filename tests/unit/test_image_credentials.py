"""ImageManager with credentials and limits: pull secrets and node credentials tried in turn,
unusable secrets told to the pod, the registry's reason kept through the backoff, and the
serialize / max-parallel pull limits."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest

from nodeagent.kubelet.images import ImageError, ImageManager, ImageSettings, Puller, PullNote
from nodeagent.model.pod import PullPolicy
from nodeagent.runtime.base import RegistryAuth
from nodeagent.runtime.fake import FakeRuntime
from tests.unit.rig import eventually

A = Puller("team", "a", "uid-a", "app")
IMAGE = "reg.example.com/team/app:1"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def pull_secret(user: str, host: str = "reg.example.com") -> dict[str, Any]:
    config = {"auths": {host: {"auth": b64(f"{user}:pw")}}}
    return {
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": b64(json.dumps(config))},
    }


def manager(
    fake: FakeRuntime, secrets: dict[str, dict[str, Any]], settings: ImageSettings | None = None
) -> tuple[ImageManager, list[PullNote]]:
    images = ImageManager(fake, settings or ImageSettings(node_credentials=Path("/nonexistent")))
    notes: list[PullNote] = []
    images.listen(notes.append)

    async def source(namespace: str, name: str) -> dict[str, Any] | None:
        return secrets.get(f"{namespace}/{name}")

    images.set_secret_source(source)
    return images, notes


def users(fake: FakeRuntime) -> list[str | None]:
    return [a.username if a else None for a in fake.pull_auths]


async def test_the_pods_secret_is_handed_to_the_runtime() -> None:
    fake = FakeRuntime(registry_users={"alice"})
    images, notes = manager(fake, {"team/regcred": pull_secret("alice")})
    await images.ensure(IMAGE, PullPolicy.ALWAYS, A, ("regcred",))
    assert users(fake) == ["alice"]
    pulled = notes[-1]
    assert pulled.reason == "Pulled" and pulled.message.endswith(f"Image size: {len(IMAGE)} bytes.")


async def test_each_matching_credential_is_tried_until_one_works(tmp_path: Path) -> None:
    node = tmp_path / "config.json"
    entry = {"username": "alice", "password": "p"}
    node.write_text(json.dumps({"auths": {"*.example.com": entry}}))
    fake = FakeRuntime(registry_users={"alice"})
    settings = ImageSettings(node_credentials=node)
    images, _ = manager(fake, {"team/old": pull_secret("bob")}, settings)
    await images.ensure(IMAGE, PullPolicy.ALWAYS, A, ("old",))
    assert users(fake) == ["bob", "alice"]  # the pod's secret first, then the node's


async def test_no_matching_credential_pulls_anonymously() -> None:
    fake = FakeRuntime()
    images, _ = manager(fake, {"team/regcred": pull_secret("alice", host="other.io")})
    await images.ensure(IMAGE, PullPolicy.ALWAYS, A, ("regcred",))
    assert users(fake) == [None]


async def test_all_failing_names_each_error_and_the_backoff_keeps_the_reason() -> None:
    fake = FakeRuntime(registry_users={"carol"})
    secrets = {"team/one": pull_secret("alice"), "team/two": pull_secret("bob", "*.example.com")}
    images, _ = manager(fake, secrets)
    with pytest.raises(ImageError) as failed:
        await images.ensure(IMAGE, PullPolicy.ALWAYS, A, ("one", "two"))
    assert failed.value.reason == "ErrImagePull"
    assert failed.value.message.count("401 Unauthorized") == 2
    with pytest.raises(ImageError) as backing_off:
        await images.ensure(IMAGE, PullPolicy.ALWAYS, A, ("one", "two"))
    assert backing_off.value.reason == "ImagePullBackOff"
    assert backing_off.value.message.startswith(f'Back-off pulling image "{IMAGE}": ErrImagePull')
    assert "401 Unauthorized" in backing_off.value.message
    assert len(fake.pull_auths) == 2  # backing off: no pull


@pytest.mark.parametrize(
    ("secret", "needle"),
    [
        (None, "not found"),
        ({"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": "!"}}, "base64"),
        (
            {"type": "kubernetes.io/dockercfg", "data": {".dockercfg": b64("[1")}},
            "'.dockercfg': not valid JSON",
        ),
    ],
)
async def test_an_unusable_secret_is_told_naming_it_and_the_pull_goes_on(
    secret: dict[str, Any] | None, needle: str
) -> None:
    fake = FakeRuntime()
    images, notes = manager(fake, {"team/bad": secret} if secret else {})
    await images.ensure(IMAGE, PullPolicy.ALWAYS, A, ("bad",))
    (warning,) = [n for n in notes if n.reason == "FailedToRetrieveImagePullSecret"]
    assert warning.type == "Warning"
    assert '"team/bad"' in warning.message and needle in warning.message
    assert users(fake) == [None] and notes[-1].reason == "Pulled"


class GatedRuntime(FakeRuntime):
    """Pulls wait for ``gate``; ``most`` is the most pulls seen under way at once."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.running = 0
        self.most = 0
        self.started = 0

    async def pull_image(self, image: str, auth: RegistryAuth | None = None) -> int:
        self.running += 1
        self.started += 1
        self.most = max(self.most, self.running)
        try:
            await self.gate.wait()
            return await super().pull_image(image, auth)
        finally:
            self.running -= 1


@pytest.mark.parametrize(
    ("settings", "most"),
    [
        (ImageSettings(serialize=True), 1),
        (ImageSettings(serialize=False, max_parallel=2), 2),
        (ImageSettings(serialize=False), 3),
    ],
)
async def test_pull_limits(settings: ImageSettings, most: int) -> None:
    fake = GatedRuntime()
    images = ImageManager(fake, settings)
    pulls = [
        asyncio.create_task(images.ensure(f"img{i}:1", PullPolicy.ALWAYS, A)) for i in range(3)
    ]
    pulls += [asyncio.create_task(images.ensure("img0:1", PullPolicy.ALWAYS, A))]
    for _ in range(50):  # every pull the limit lets through begins; no further one does
        await asyncio.sleep(0)
    assert fake.started == most
    fake.gate.set()
    await asyncio.gather(*pulls)
    assert fake.most == most and fake.count("pull_image") == 3  # img0 pulled once


async def test_the_image_list_feeds_the_nodes_status_images_largest_first() -> None:
    from nodeagent.kubelet.nodestatus import MAX_NODE_IMAGES, node_images

    fake = FakeRuntime(images={f"img{i:02d}:{'x' * i}" for i in range(1, 61)})
    images = ImageManager(fake)
    runner = asyncio.create_task(images.run())
    try:
        await eventually(lambda: images.images, what="the image list read")
    finally:
        runner.cancel()
    listed = node_images(images.images)
    assert len(images.images) == 60 and len(listed) == MAX_NODE_IMAGES
    sizes = [entry["sizeBytes"] for entry in listed]
    assert sizes == sorted(sizes, reverse=True)
    assert listed[0]["names"] == [f"docker.io/library/img60:{'x' * 60}"]
