"""Pulls from a real private registry, on each runtime (``runtime_target``), standalone and
in cluster mode (the pod's pull secret from the test API server).

One registry per module (``tests/harness/registry.py``: Debian's docker-registry with
htpasswd auth on 127.0.0.1:5000 in the node's netns), holding the local busybox image pushed
with skopeo. Pods name it with ``imagePullPolicy: Always`` so that every test pulls, whatever
an earlier test left in the runtime's image store.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lightkube import AsyncClient
from lightkube.resources.core_v1 import Event, Node, Secret

from nodeagent import localimages
from tests.apiserver.process import ApiServerProcess
from tests.harness import TestNode, async_wait_for, cluster, wait_for
from tests.harness.agent import Agent, RuntimeTarget, cli, container_status, is_ready
from tests.harness.manifests import SLEEP
from tests.harness.registry import HOST, Registry, docker_config, missing_tools

SECRET_NAME = "regcred"


@pytest.fixture(scope="module")
def registry(
    module_node: TestNode, image_archives: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Registry, dict[str, str]]]:
    """The module's registry and the digest of each pushed repo:tag."""
    missing = missing_tools()
    if missing:
        pytest.skip(f"registry tests need {', '.join(missing)} (tools/setup-host.sh)")
    made = Registry.start(module_node, tmp_path_factory.mktemp("registry"))
    try:
        busybox = image_archives[localimages.BUSYBOX_IMAGE]
        digests = {"private/busybox:1": made.push(busybox, "private/busybox", "1")}
        yield made, digests
    finally:
        made.close()


@pytest.fixture
def registry_agent(
    node: TestNode, runtime_target: RuntimeTarget, tmp_path: Path
) -> Iterator[Agent]:
    """An agent whose node credentials (``--image-credentials``) hold the registry's user."""
    credentials = tmp_path / "config.json"
    credentials.write_text(docker_config())
    a = Agent(node, runtime=runtime_target, extra=["--image-credentials", str(credentials)])
    for old in a.manifests.iterdir():
        old.unlink()
    a.start()
    try:
        yield a
    finally:
        a.stop()


def pod_yaml(name: str, image: str, *, secret: str = "") -> str:
    pull_secrets = f"  imagePullSecrets: [{{name: {secret}}}]\n" if secret else ""
    return f"""apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 1
{pull_secrets}  containers:
    - name: main
      image: {image}
      imagePullPolicy: Always
      command: ["sh", "-c", {json.dumps(SLEEP)}]
"""


def secret_yaml(name: str, config: str) -> str:
    encoded = base64.b64encode(config.encode()).decode()
    return f"""apiVersion: v1
kind: Secret
metadata: {{name: {name}}}
type: kubernetes.io/dockerconfigjson
data:
  .dockerconfigjson: {encoded}
"""


def test_a_pod_secret_pulls_a_private_image_and_image_id_is_its_digest(
    registry: tuple[Registry, dict[str, str]], agent: Agent
) -> None:
    _, digests = registry
    agent.write_manifest("secret.yaml", secret_yaml(SECRET_NAME, docker_config()))
    agent.write_manifest(
        "p.yaml", pod_yaml("private", f"{HOST}/private/busybox:1", secret=SECRET_NAME)
    )
    pod = agent.wait_pod("private", is_ready, timeout=60, what="pulled and ready")
    status = container_status(pod, "main")
    assert status["imageID"] == f"{HOST}/private/busybox@{digests['private/busybox:1']}"
    # The node view counts the runtime's images (the image list is read every 10 s).
    wait_for(
        lambda: re.search(r"IMAGES: +[1-9][0-9]* using ", cli(agent, "status", "node").stdout),
        30,
        message=lambda: cli(agent, "status", "node").stdout,
    )


def test_by_digest_with_node_credentials(
    registry: tuple[Registry, dict[str, str]], registry_agent: Agent
) -> None:
    _, digests = registry
    by_digest = f"{HOST}/private/busybox@{digests['private/busybox:1']}"
    registry_agent.write_manifest("p.yaml", pod_yaml("pinned", by_digest))
    pod = registry_agent.wait_pod("pinned", is_ready, timeout=60, what="pulled and ready")
    assert container_status(pod, "main")["imageID"] == by_digest


def test_a_wrong_password_is_err_image_pull_then_backoff_with_the_registrys_reason(
    registry: tuple[Registry, dict[str, str]], agent: Agent
) -> None:
    agent.write_manifest("secret.yaml", secret_yaml(SECRET_NAME, docker_config(password="nope")))
    agent.write_manifest(
        "p.yaml", pod_yaml("denied", f"{HOST}/private/busybox:1", secret=SECRET_NAME)
    )

    def backing_off(pod: dict[str, Any]) -> bool:
        waiting = container_status(pod, "main").get("state", {}).get("waiting", {})
        return bool(waiting.get("reason") == "ImagePullBackOff")

    pod = agent.wait_pod("denied", backing_off, timeout=60, what="ImagePullBackOff")
    message = container_status(pod, "main")["state"]["waiting"]["message"]
    assert "ErrImagePull" in message and f"{HOST}/private/busybox:1" in message
    assert "401" in message or "unauthorized" in message.lower(), message


def test_always_pulls_a_moved_tag_again(
    registry: tuple[Registry, dict[str, str]],
    image_archives: dict[str, Path],
    registry_agent: Agent,
) -> None:
    reg, _ = registry
    first = reg.push(image_archives[localimages.BUSYBOX_IMAGE], "moving/app", "v1")
    registry_agent.write_manifest("a.yaml", pod_yaml("first", f"{HOST}/moving/app:v1"))
    pod = registry_agent.wait_pod("first", is_ready, timeout=60, what="pulled and ready")
    assert container_status(pod, "main")["imageID"].endswith(first)
    # The tag moves to another image (the pause image; it runs its own command).
    second = reg.push(image_archives[localimages.PAUSE_IMAGE], "moving/app", "v1")
    assert second != first
    registry_agent.write_manifest(
        "b.yaml",
        pod_yaml("second", f"{HOST}/moving/app:v1").replace(
            f'      command: ["sh", "-c", {json.dumps(SLEEP)}]\n', ""
        ),
    )
    pod = registry_agent.wait_pod("second", is_ready, timeout=60, what="pulled again and ready")
    assert container_status(pod, "main")["imageID"].endswith(second)


async def test_cluster_mode_reads_the_pull_secret_from_the_api_and_records_the_pull(
    registry: tuple[Registry, dict[str, str]],
    node: TestNode,
    api: ApiServerProcess,
    admin: AsyncClient,
    runtime_target: RuntimeTarget,
) -> None:
    _, digests = registry
    encoded = base64.b64encode(docker_config().encode()).decode()
    secret = {
        "metadata": {"name": SECRET_NAME, "namespace": "default"},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": encoded},
    }
    await admin.create(Secret.from_dict(secret))  # type: ignore[call-overload]
    image = f"{HOST}/private/busybox:1"
    with cluster.cluster_agent(node, api, runtime=runtime_target) as agent:
        body = cluster.pod_manifest(
            "private", cluster.SLEEP, grace=1, imagePullSecrets=[{"name": SECRET_NAME}]
        )
        body["spec"]["containers"][0].update(image=image, imagePullPolicy="Always")
        await cluster.create(admin, body)
        pod = await cluster.wait_ready(admin, agent, "private", within=60)
        status = pod["status"]["containerStatuses"][0]
        # containerd names the first repo the content was pulled as (an earlier test pulled
        # the same image under another name); the digest is the image's either way.
        assert status["imageID"].startswith(f"{HOST}/")
        assert status["imageID"].endswith(f"@{digests['private/busybox:1']}")

        async def pulled() -> str | None:
            async for event in admin.list(Event, namespace="default"):
                if event.reason == "Pulled" and event.involvedObject.name == "private":
                    return str(event.message)
            return None

        message = await async_wait_for(pulled, 30, interval=0.2, message="a Pulled event")
        assert message.startswith(f'Successfully pulled image "{image}" in ')
        assert "including waiting). Image size: " in message and message.endswith(" bytes.")

        # The Node lists the pulled image by its digest (status.images, largest first).
        async def listed() -> list[dict[str, Any]] | None:
            node = await admin.get(Node, cluster.NODE_NAME)
            found = [i.to_dict() for i in (node.status.images or [])]  # type: ignore[union-attr]
            return found if any(status["imageID"] in i["names"] for i in found) else None

        images = await async_wait_for(listed, 40, interval=0.5, message="status.images")
        sizes = [i["sizeBytes"] for i in images]
        assert sizes == sorted(sizes, reverse=True)


def image_names(target: RuntimeTarget) -> set[str]:
    """Every name (tags and repo digests) of every image the runtime holds."""

    async def go() -> set[str]:
        runtime = target.backend()
        try:
            return {name for image in await runtime.list_images() for name in image.names}
        finally:
            await runtime.close()

    return asyncio.run(go())


# Last in the module: its GC removes every unused image of the node's runtime.
def test_image_gc_removes_an_unused_image_and_keeps_a_used_one(
    registry: tuple[Registry, dict[str, str]],
    registry_agent: Agent,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    reg, _ = registry
    # An image of its own (a label makes its id differ from busybox's, which stays in use).
    spec = dataclasses.replace(localimages.busybox_spec(), labels={"test": "gc"})
    localimages.write_archive([spec], tmp_path / "variant.tar")
    reg.push(tmp_path / "variant.tar", "gc/unused", "1")
    kept, dropped = f"{HOST}/private/busybox:1", f"{HOST}/gc/unused:1"
    agent = registry_agent
    agent.write_manifest("keeper.yaml", pod_yaml("keeper", kept))
    agent.write_manifest("brief.yaml", pod_yaml("brief", dropped))
    agent.wait_pod("keeper", is_ready, timeout=60, what="pulled and ready")
    agent.wait_pod("brief", is_ready, timeout=60, what="pulled and ready")
    (agent.manifests / "brief.yaml").unlink()
    wait_for(lambda: agent.pod("brief") is None, 30, message="brief removed")
    assert {kept, dropped} <= image_names(agent.runtime)
    # The same node, now with GC at any use of the filesystem and no minimum age: the pod
    # still running keeps its image, the sandbox image stays, the unused one goes.
    agent.stop()
    monkeypatch.setenv("NODEAGENT_IMAGE_GC_INTERVAL_S", "1")
    agent.extra += [
        "--image-gc-high-threshold", "1",
        "--image-gc-low-threshold", "0",
        "--image-minimum-gc-age", "0s",
    ]  # fmt: skip
    agent.start()
    wait_for(
        lambda: dropped not in image_names(agent.runtime),
        30,
        message=lambda: f"{dropped} collected\n{agent.log_tail()}",
    )
    names = image_names(agent.runtime)
    assert kept in names and localimages.PAUSE_IMAGE in names
    assert is_ready(agent.wait_pod("keeper", is_ready, what="still running"))
    removed = [line for line in agent.log_path.read_text().splitlines() if "image_removed" in line]
    assert any(dropped in line for line in removed)
