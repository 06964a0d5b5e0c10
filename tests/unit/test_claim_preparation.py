"""PodReferences resolving claims against the test API server, as a node reads them: the
pod held (FailedMount) until its claim can be used, a CSI PV waiting for a CSI mounter, and
ReadWriteOncePod held by another live pod of this node."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from nodeagent.apiserver.admission import NodeView
from nodeagent.apiserver.client import ApiClient
from nodeagent.apiserver.podrefs import PodReferences
from nodeagent.apiserver.pods import Hold
from tests.apiserver import ApiServer
from tests.apiserver.resources import NODES, PERSISTENTVOLUMECLAIMS, PERSISTENTVOLUMES, PODS
from tests.unit.rig import eventually

Obj = dict[str, Any]
NODE = "n1"
MERGE = "application/merge-patch+json"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[ApiServer]:
    async with ApiServer(state_dir=tmp_path / "api", service_account_admission=False) as server:
        server.store.create(NODES, None, {"metadata": {"name": NODE}})
        yield server


@pytest.fixture
async def refs(api: ApiServer, tmp_path: Path) -> AsyncIterator[PodReferences]:
    client = ApiClient.from_file(api.node_kubeconfig(tmp_path / "n1.kubeconfig", NODE))
    made = PodReferences(
        client,
        state_dir=tmp_path / "state",
        on_change=lambda: None,
        active=lambda uid: True,
        node=lambda: NodeView.from_allocatable(NODE, {"kubernetes.io/hostname": NODE}, {}),
    )
    try:
        yield made
    finally:
        await made.close()
        await client.close()


def claimed(api: ApiServer, name: str, claim: str) -> Obj:
    body = {
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": NODE,
            "containers": [
                {"name": "c", "image": "i", "volumeMounts": [{"name": "d", "mountPath": "/d"}]}
            ],
            "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": claim}}],
        },
    }
    return api.store.create(PODS, "default", body)


def bound(api: ApiServer, claim: str, pv: str, source: Obj, mode: str = "ReadWriteOnce") -> None:
    spec = {"accessModes": [mode], "resources": {"requests": {"storage": "1Gi"}}}
    made = api.store.create(
        PERSISTENTVOLUMECLAIMS, "default", {"metadata": {"name": claim}, "spec": spec}
    )
    ref = {"namespace": "default", "name": claim, "uid": made["metadata"]["uid"]}
    pv_spec = {"capacity": {"storage": "1Gi"}, "accessModes": [mode], "claimRef": ref, **source}
    api.store.create(PERSISTENTVOLUMES, None, {"metadata": {"name": pv}, "spec": pv_spec})
    api.store.patch(PERSISTENTVOLUMECLAIMS, "default", claim, MERGE, {"spec": {"volumeName": pv}})
    api.store.patch(
        PERSISTENTVOLUMECLAIMS,
        "default",
        claim,
        MERGE,
        {"status": {"phase": "Bound"}},
        subresource="status",
    )


async def held(refs: PodReferences, pod: Obj, text: str) -> Hold:
    def check() -> Hold | None:
        answer = refs.prepare(pod)
        return answer if isinstance(answer, Hold) and text in answer.message else None

    return await eventually(check, what=f"held: {text}")


async def test_a_claim_is_waited_for_then_its_pv_mounted(
    api: ApiServer, refs: PodReferences, tmp_path: Path
) -> None:
    pod = claimed(api, "web", "data")
    hold = await held(refs, pod, 'persistentvolumeclaim "data" not found')
    assert hold.reason == "ContainerCreating" and hold.error
    bound(api, "data", "pv1", {"hostPath": {"path": str(tmp_path / "pv")}})

    def ready() -> Obj | None:
        answer = refs.prepare(pod)
        return answer if not isinstance(answer, Hold) else None

    doc = await eventually(ready, within=10, what="prepared after the retry")
    assert doc["spec"]["volumes"] == [
        {"name": "d", "hostPath": {"path": str(tmp_path / "pv"), "type": ""}}
    ]
    assert refs.volumes_in_use() == []  # hostPath: not reported


async def test_a_csi_pv_waits_for_its_driver(api: ApiServer, refs: PodReferences) -> None:
    pod = claimed(api, "web", "data")
    bound(api, "data", "pv1", {"csi": {"driver": "d.example.com", "volumeHandle": "h"}})
    hold = await held(refs, pod, "CSI driver")
    assert hold.message == "CSI driver not registered: d.example.com"


async def test_read_write_once_pod_serves_one_live_pod(
    api: ApiServer, refs: PodReferences, tmp_path: Path
) -> None:
    bound(api, "solo", "pv1", {"hostPath": {"path": str(tmp_path)}}, mode="ReadWriteOncePod")
    first, second = claimed(api, "a", "solo"), claimed(api, "b", "solo")
    await eventually(lambda: not isinstance(refs.prepare(first), Hold), what="first prepared")
    hold = await held(refs, second, "ReadWriteOncePod")
    assert "pod default/a on this node uses it" in hold.message
    refs.keep({second["metadata"]["uid"]})  # the first pod is gone from the API
    await eventually(
        lambda: not isinstance(refs.prepare(second), Hold), within=10, what="second prepared"
    )
