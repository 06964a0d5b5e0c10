"""PersistentVolumeClaims in cluster mode (issue 22), on containerd and on Docker Engine.

One test API server and one agent serve the whole story, so that the module stays fast: the
test plays kube-controller-manager's PV binder (it sets the claim's ``volumeName``, the PV's
``claimRef`` and both phases) and the ephemeral volume controller (it creates
``<pod>-<volume>`` owned by the pod). Each pod writes or checks files and exits; its phase
says how it went (restartPolicy Never), and the host directory behind each PV is read back.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from lightkube import AsyncClient
from lightkube.resources.core_v1 import (
    Event,
    Node,
)
from lightkube.types import PatchType

from tests.apiserver.process import ApiServerProcess
from tests.harness import TestNode, async_wait_for, cluster
from tests.harness.agent import Agent, RuntimeTarget
from tests.harness.claims import bind, claim_pod, finished, make_claim, on_node, pv_body
from tests.harness.cluster import NODE_NAME, create, get_pod, pod_manifest

MERGE = PatchType.MERGE
FS_GROUP = 2345


@pytest.fixture
def cluster_agent(
    node: TestNode, api: ApiServerProcess, runtime_target: RuntimeTarget
) -> Iterator[Agent]:
    with cluster.cluster_agent(node, api, runtime=runtime_target) as a:
        yield a


async def failed_mount(admin: AsyncClient, agent: Agent, name: str, text: str) -> str:
    """A FailedMount event of pod ``name`` holding ``text``, while the pod stays Pending."""

    async def told() -> str | None:
        phase = ((await get_pod(admin, name) or {}).get("status") or {}).get("phase")
        assert phase == "Pending", f"{name} is {phase}"
        for event in [e async for e in admin.list(Event, namespace="default")]:
            mine = event.involvedObject.name == name and event.reason == "FailedMount"
            if mine and text in (event.message or ""):
                return event.message
        return None

    return await async_wait_for(
        told, 30, interval=0.2, message=lambda: f"{name}: FailedMount {text!r}\n{agent.log_tail()}"
    )


async def test_claims_bound_to_hostpath_and_local_volumes(
    admin: AsyncClient, cluster_agent: Agent, tmp_path: Path
) -> None:
    agent = cluster_agent
    kept, late, local = tmp_path / "kept", tmp_path / "late", tmp_path / "local"
    local.mkdir()

    # An unbound claim holds its pod Pending (never Failed) with the kubelet's message...
    await make_claim(admin, "late")
    await create(admin, claim_pod("late", "echo ok > /data/ok", claim="late"))
    await failed_mount(admin, agent, "late", 'persistentvolumeclaim "late" not bound')
    # ...and a local PV for another node is refused, naming the field and this node.
    await make_claim(admin, "far")
    await bind(admin, "far", pv_body("pv-far", {"local": {"path": "/"}}, nodeAffinity=on_node("x")))
    await create(admin, claim_pod("far", "true", claim="far"))
    message = await failed_mount(admin, agent, "far", "spec.nodeAffinity")
    assert f'no matching NodeSelectorTerms for node "{NODE_NAME}"' in message

    # A hostPath PV: what one pod writes, the next pod reads; a read-only claim is really so.
    await make_claim(admin, "kept")
    source = {"hostPath": {"path": str(kept), "type": "DirectoryOrCreate"}}
    await bind(admin, "kept", pv_body("pv-kept", source))
    writer = claim_pod("writer", "echo hello > /data/f; echo sub > /sub/g", claim="kept")
    sub = {"name": "data", "mountPath": "/sub", "subPathExpr": "$(POD)"}
    writer["spec"]["containers"][0]["volumeMounts"].append(sub)
    writer["spec"]["containers"][0]["env"] = [
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    ]
    await create(admin, writer)
    assert await finished(admin, agent, "writer") == "Succeeded"
    assert (kept / "f").read_text() == "hello\n"
    assert (kept / "writer" / "g").read_text() == "sub\n"  # subPathExpr, as for any volume
    await create(admin, claim_pod("reader", "grep -qx hello /data/f", claim="kept"))
    assert await finished(admin, agent, "reader") == "Succeeded"
    refused = "if touch /data/x; then exit 1; fi; grep -qx hello /data/f"
    await create(admin, claim_pod("ro", refused, claim="kept", read_only=True))
    assert await finished(admin, agent, "ro") == "Succeeded"
    assert not (kept / "x").exists()

    # ReadWriteOncePod: while one pod of this node uses the claim, the next one waits.
    await make_claim(admin, "solo", "ReadWriteOncePod")
    solo = pv_body("pv-solo", {"hostPath": {"path": str(kept)}}, accessModes=["ReadWriteOncePod"])
    await bind(admin, "solo", solo)
    await create(admin, claim_pod("first", "touch /data/first; sleep 3600", claim="solo"))
    await async_wait_for(
        lambda: (kept / "first").exists(), 60, message=lambda: f"first runs\n{agent.log_tail()}"
    )
    await create(admin, claim_pod("second", "true", claim="solo"))
    message = await failed_mount(admin, agent, "second", "ReadWriteOncePod")
    assert "default/first" in message

    # The late claim is bound now: its pod starts on a later retry.
    await bind(admin, "late", pv_body("pv-late", {"hostPath": {"path": str(late)}}))
    late.mkdir()
    assert await finished(admin, agent, "late") == "Succeeded"
    assert (late / "ok").read_text() == "ok\n"

    # A generic ephemeral volume on a local PV of this node: the claim the pod owns, the
    # pod's fsGroup on its files, and the volume in the Node's volumesInUse while it runs.
    body = pod_manifest(
        "eph",
        "echo e > /data/e; sleep 3600",
        grace=1,
        restartPolicy="Never",
        securityContext={"fsGroup": FS_GROUP, "fsGroupChangePolicy": "OnRootMismatch"},
    )
    body["spec"]["containers"][0]["volumeMounts"] = [{"name": "scratch", "mountPath": "/data"}]
    template = {
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }
    body["spec"]["volumes"] = [{"name": "scratch", "ephemeral": {"volumeClaimTemplate": template}}]
    uid = await create(admin, body)
    owner = {"apiVersion": "v1", "kind": "Pod", "name": "eph", "uid": uid, "controller": True}
    await make_claim(admin, "eph-scratch", ownerReferences=[owner])
    pv = pv_body("pv-local", {"local": {"path": str(local)}}, nodeAffinity=on_node(NODE_NAME))
    await bind(admin, "eph-scratch", pv)

    async def in_use() -> list[str] | None:
        node = await admin.get(Node, NODE_NAME)
        names = list((node.status and node.status.volumesInUse) or [])
        return names if (local / "e").exists() and names else None

    names = await async_wait_for(
        in_use, 60, interval=0.2, message=lambda: f"eph runs\n{agent.log_tail()}"
    )
    assert names == ["kubernetes.io/local-volume/pv-local"]
    assert os.stat(local).st_gid == FS_GROUP
    assert os.stat(local / "e").st_gid == FS_GROUP  # the setgid directory gives it the group
