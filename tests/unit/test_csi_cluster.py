"""Cluster mode's CSI objects against the in-process test API server: the CSINode kept for
registered drivers, CSIDriver policies with upstream's defaults, waiting for a
VolumeAttachment, and the test server's Node authorizer for these kinds."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from nodeagent.apiserver import csi as csi_module
from nodeagent.apiserver.client import ApiClient, ApiFailure
from nodeagent.apiserver.csi import ClusterCSI
from nodeagent.csi import layout
from nodeagent.csi.client import CSIError, NodeInfo
from nodeagent.csi.mounter import DriverPolicy
from tests.apiserver import ApiServer
from tests.apiserver.resources import (
    CSIDRIVERS,
    CSINODES,
    NODES,
    PODS,
    SECRETS,
    VOLUMEATTACHMENTS,
)
from tests.unit.rig import eventually

NODE = "node-1"
DRIVER = "csi.example.com"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[ApiServer]:
    async with ApiServer(state_dir=tmp_path / "api", service_account_admission=False) as server:
        server.store.create(NODES, None, {"metadata": {"name": NODE}})
        yield server


@pytest.fixture
async def client(api: ApiServer, tmp_path: Path) -> AsyncIterator[ApiClient]:
    c = ApiClient.from_file(api.node_kubeconfig(tmp_path / "node.kubeconfig", NODE))
    yield c
    await c.close()


def csinode(api: ApiServer) -> dict[str, Any] | None:
    return api.store.find(CSINODES, None, NODE)


async def test_csinode_created_owned_by_the_node_then_updated_and_pruned(
    api: ApiServer, client: ApiClient
) -> None:
    csi = ClusterCSI(client, node_name=NODE)
    info = NodeInfo(node_id="n-1", max_volumes=16, topology={"zone": "a", "rack": "r1"})
    await csi.driver_changed(DRIVER, info)
    obj = csinode(api)
    assert obj is not None
    node_uid = api.store.get(NODES, None, NODE)["metadata"]["uid"]
    assert obj["metadata"]["ownerReferences"][0] == {
        "apiVersion": "v1",
        "kind": "Node",
        "name": NODE,
        "uid": node_uid,
    }
    assert obj["spec"]["drivers"] == [
        {
            "name": DRIVER,
            "nodeID": "n-1",
            "topologyKeys": ["rack", "zone"],
            "allocatable": {"count": 16},
        }
    ]
    await csi.driver_changed("other.example.com", NodeInfo(node_id="o-1"))
    await csi.driver_changed(DRIVER, NodeInfo(node_id="n-2"))  # re-registered, new id
    drivers = {d["name"]: d for d in (csinode(api) or {})["spec"]["drivers"]}
    assert drivers[DRIVER] == {"name": DRIVER, "nodeID": "n-2", "topologyKeys": []}
    assert drivers["other.example.com"]["nodeID"] == "o-1"
    await csi.driver_changed(DRIVER, None)
    assert [d["name"] for d in (csinode(api) or {})["spec"]["drivers"]] == ["other.example.com"]


async def test_driver_policy_defaults_without_and_with_a_csidriver(
    api: ApiServer, client: ApiClient
) -> None:
    csi = ClusterCSI(client, node_name=NODE)
    # No CSIDriver object: attach required, no pod info, persistent volumes only (kubelet).
    assert await csi.policy(DRIVER) == DriverPolicy(
        attach_required=True, pod_info_on_mount=False, ephemeral=False
    )
    spec = {"attachRequired": False, "podInfoOnMount": True, "volumeLifecycleModes": ["Ephemeral"]}
    api.store.create(CSIDRIVERS, None, {"metadata": {"name": DRIVER}, "spec": spec})
    assert await csi.policy(DRIVER) == DriverPolicy(
        attach_required=False, pod_info_on_mount=True, ephemeral=True
    )


async def test_attached_waits_for_the_volumeattachment_and_returns_its_metadata(
    api: ApiServer, client: ApiClient
) -> None:
    csi = ClusterCSI(client, node_name=NODE)
    name = layout.attachment_name("vol-1", DRIVER, NODE)
    va = {
        "metadata": {"name": name},
        "spec": {"attacher": DRIVER, "nodeName": NODE, "source": {"persistentVolumeName": "pv"}},
    }
    api.store.create(VOLUMEATTACHMENTS, None, va)
    waiting = asyncio.create_task(csi.attached(DRIVER, "vol-1"))
    await eventually(lambda: sum(name in r.path for r in api.requests) >= 2, what="polled twice")
    assert not waiting.done()  # seen, but not attached: it keeps waiting
    stored = api.store.get(VOLUMEATTACHMENTS, None, name)
    stored = {**stored, "status": {"attached": True, "attachmentMetadata": {"lun": "3"}}}
    api.store.update(VOLUMEATTACHMENTS, None, name, stored, subresource="status")
    assert await asyncio.wait_for(waiting, 10) == {"lun": "3"}


async def test_attached_gives_up_with_the_attachment_named(
    api: ApiServer, client: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(csi_module, "ATTACH_WAIT_S", 0.3)
    csi = ClusterCSI(client, node_name=NODE)
    with pytest.raises(CSIError, match=layout.attachment_name("vol-9", DRIVER, NODE)):
        await csi.attached(DRIVER, "vol-9")


async def test_node_reads_only_its_own_volumeattachments(api: ApiServer, client: ApiClient) -> None:
    name = layout.attachment_name("vol-2", DRIVER, "node-2")
    va = {"metadata": {"name": name}, "spec": {"attacher": DRIVER, "nodeName": "node-2"}}
    api.store.create(VOLUMEATTACHMENTS, None, va)
    with pytest.raises(ApiFailure) as refused:
        await client.request("GET", f"/apis/storage.k8s.io/v1/volumeattachments/{name}")
    assert refused.value.code == 403


async def test_secret_of_an_inline_volume_readable_when_a_pod_names_it(
    api: ApiServer, client: ApiClient
) -> None:
    data = {"token": base64.b64encode(b"s3cret").decode()}
    api.store.create(SECRETS, "default", {"metadata": {"name": "creds"}, "data": data})
    csi = ClusterCSI(client, node_name=NODE)
    with pytest.raises(CSIError, match="creds"):  # no pod of this node names it yet
        await csi.secret("default", "creds")
    volume = {"name": "v", "csi": {"driver": DRIVER, "nodePublishSecretRef": {"name": "creds"}}}
    pod = {
        "metadata": {"name": "p"},
        "spec": {
            "nodeName": NODE,
            "containers": [{"name": "c", "image": "b"}],
            "volumes": [volume],
        },
    }
    api.store.create(PODS, "default", pod)
    assert await csi.secret("default", "creds") == {"token": "s3cret"}


async def test_node_may_write_only_its_own_csinode(client: ApiClient) -> None:
    body = {"apiVersion": "storage.k8s.io/v1", "kind": "CSINode", "metadata": {"name": "node-2"}}
    with pytest.raises(ApiFailure) as refused:
        await client.request("POST", "/apis/storage.k8s.io/v1/csinodes", body={**body, "spec": {}})
    assert refused.value.code == 403
