"""CSI in cluster mode, on containerd and on Docker Engine (``runtime_target``): the test
plugin (tests/harness/csiplugin.py) registers, the agent writes the CSINode object, and an
inline ephemeral volume is refused while no CSIDriver allows Ephemeral, then published with
the pod's info (podInfoOnMount) and unpublished when the pod is deleted in the API; a claim
bound to a PersistentVolume with a ``csi`` source is published for its pod (the pod's data
lands in the plugin's volume) and unpublished when the pod goes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Pod
from lightkube.resources.storage_v1 import CSIDriver, CSINode

from nodeagent.csi import layout
from tests.apiserver.process import ApiServerProcess
from tests.harness import TestNode, async_wait_for, cluster
from tests.harness.agent import Agent, RuntimeTarget
from tests.harness.claims import bind, claim_pod, finished, make_claim, pv_body
from tests.harness.cluster import NODE_NAME, SLEEP, create, get_pod, pod_manifest, wait_ready
from tests.harness.csiplugin import DRIVER, ZONE_KEY, CSIPlugin
from tests.harness.node import mounts_under


@pytest.fixture
def plugin(node: TestNode) -> Iterator[CSIPlugin]:
    started = CSIPlugin(node.root, node.root / "plugins_registry", node_id="csi-id-7").start()
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def cluster_agent(
    node: TestNode, api: ApiServerProcess, runtime_target: RuntimeTarget
) -> Iterator[Agent]:
    with cluster.cluster_agent(node, api, runtime=runtime_target) as a:
        yield a


def with_volume(name: str) -> dict[str, Any]:
    body = pod_manifest(name, SLEEP, grace=1, volumes=[{"name": "data", "csi": {"driver": DRIVER}}])
    body["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    return body


async def csinode_drivers(admin: AsyncClient) -> list[dict[str, Any]] | None:
    try:
        obj = await admin.get(CSINode, NODE_NAME)
    except ApiError:
        return None
    return [dict(d.to_dict()) for d in obj.spec.drivers] or None


async def gone(admin: AsyncClient, name: str) -> bool:
    return await get_pod(admin, name) is None


async def waiting_message(admin: AsyncClient, name: str) -> str:
    pod = await get_pod(admin, name) or {}
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        message = ((status.get("state") or {}).get("waiting") or {}).get("message") or ""
        if message:
            return str(message)
    return ""


async def test_csinode_then_inline_volume_with_pod_info(
    node: TestNode, admin: AsyncClient, plugin: CSIPlugin, cluster_agent: Agent
) -> None:
    drivers = await async_wait_for(
        lambda: csinode_drivers(admin), 30, message=lambda: f"CSINode\n{cluster_agent.log_tail()}"
    )
    assert drivers == [{"name": DRIVER, "nodeID": "csi-id-7", "topologyKeys": [ZONE_KEY]}]

    # Without a CSIDriver the driver is persistent-only (the kubelet's default).
    await create(admin, with_volume("refused"))
    message = await async_wait_for(
        lambda: waiting_message(admin, "refused"),
        30,
        message=lambda: f"a waiting message\n{cluster_agent.log_tail()}",
    )
    assert "volumeLifecycleModes" in message and DRIVER in message
    assert not plugin.calls("NodePublishVolume")
    await admin.delete(Pod, "refused", namespace="default")

    modes = ["Persistent", "Ephemeral"]
    spec = {"attachRequired": False, "podInfoOnMount": True, "volumeLifecycleModes": modes}
    driver = CSIDriver.from_dict({"metadata": {"name": DRIVER}, "spec": spec})
    await admin.create(driver)  # type: ignore[call-overload]
    uid = await create(admin, with_volume("csi"))
    await wait_ready(admin, cluster_agent, "csi")
    (published,) = plugin.calls("NodePublishVolume")
    assert published["volume_id"] == layout.inline_volume_handle(uid, "data")
    assert published["volume_context"] == {
        layout.POD_NAME: "csi",
        layout.POD_NAMESPACE: "default",
        layout.POD_UID: uid,
        layout.SERVICE_ACCOUNT: "default",
        layout.EPHEMERAL: "true",
    }

    await admin.delete(Pod, "csi", namespace="default")
    await async_wait_for(
        lambda: gone(admin, "csi"),
        30,
        message=lambda: f"the pod gone\n{cluster_agent.log_tail()}",
    )
    (unpublished,) = plugin.calls("NodeUnpublishVolume")
    assert unpublished["target_path"] == published["target_path"]
    assert not mounts_under(node.state_dir / "pods")

    # A PersistentVolume of the driver, bound to a claim: the pod writes into it.
    await make_claim(admin, "csi-claim")
    source = {"csi": {"driver": DRIVER, "volumeHandle": "pv-handle-1"}}
    await bind(admin, "csi-claim", pv_body("csi-pv", source))
    await create(admin, claim_pod("writer", "echo written > /data/f", claim="csi-claim"))
    assert await finished(admin, cluster_agent, "writer") == "Succeeded"
    publishes = plugin.calls("NodePublishVolume")
    assert len(publishes) == 2  # the inline volume's, then the claim's
    persistent = publishes[-1]
    assert persistent["volume_id"] == "pv-handle-1"
    assert (plugin.data_dir("pv-handle-1") / "f").read_text() == "written\n"
    await admin.delete(Pod, "writer", namespace="default")
    await async_wait_for(
        lambda: gone(admin, "writer"),
        30,
        message=lambda: f"the writer gone\n{cluster_agent.log_tail()}",
    )

    def claim_unpublished() -> bool:
        targets = [c["target_path"] for c in plugin.calls("NodeUnpublishVolume")]
        return persistent["target_path"] in targets

    # A pod that had ended is removed from the API at once; its volume goes with its worker.
    await async_wait_for(claim_unpublished, 30, message=lambda: f"unpublished\n{plugin.calls()}")
    assert not mounts_under(node.state_dir / "pods")
