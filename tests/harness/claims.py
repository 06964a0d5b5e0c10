"""PersistentVolumes and claims as a test plays kube-controller-manager's PV binder: the
objects, the binding, and a pod that mounts a claim and exits."""

from __future__ import annotations

from typing import Any

from lightkube import AsyncClient
from lightkube.resources.core_v1 import (
    PersistentVolume,
    PersistentVolumeClaim,
    PersistentVolumeClaimStatus,
    PersistentVolumeStatus,
)
from lightkube.types import PatchType

from tests.harness.agent import Agent
from tests.harness.cluster import get_pod, pod_manifest
from tests.harness.typed import present
from tests.harness.wait import async_wait_for

MERGE = PatchType.MERGE


def pv_body(name: str, source: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            **source,
            **spec,
        },
    }


def on_node(node: str) -> dict[str, Any]:
    expr = {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
    return {"required": {"nodeSelectorTerms": [{"matchExpressions": [expr]}]}}


async def make_claim(
    admin: AsyncClient, name: str, mode: str = "ReadWriteOnce", **meta: Any
) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": "default", **meta},
        "spec": {"accessModes": [mode], "resources": {"requests": {"storage": "1Gi"}}},
    }
    await admin.create(PersistentVolumeClaim.from_dict(body))  # type: ignore[call-overload]


async def bind(admin: AsyncClient, claim: str, pv: dict[str, Any]) -> None:
    """What the PV controller does when it binds ``claim`` to a new PV."""
    await admin.create(PersistentVolume.from_dict(pv))  # type: ignore[call-overload]
    name = pv["metadata"]["name"]
    pvc = await admin.patch(
        PersistentVolumeClaim,
        claim,
        {"spec": {"volumeName": name}},
        namespace="default",
        patch_type=MERGE,
    )
    ref = {"namespace": "default", "name": claim, "uid": present(pvc.metadata).uid}
    await admin.patch(PersistentVolume, name, {"spec": {"claimRef": ref}}, patch_type=MERGE)
    await admin.patch(
        PersistentVolumeStatus, name, {"status": {"phase": "Bound"}}, patch_type=MERGE
    )
    await admin.patch(
        PersistentVolumeClaimStatus,
        claim,
        {"status": {"phase": "Bound"}},
        namespace="default",
        patch_type=MERGE,
    )


def claim_pod(name: str, script: str, *, claim: str, read_only: bool = False) -> dict[str, Any]:
    body = pod_manifest(name, script, grace=1, restartPolicy="Never")
    body["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    source = {"claimName": claim, **({"readOnly": True} if read_only else {})}
    body["spec"]["volumes"] = [{"name": "data", "persistentVolumeClaim": source}]
    return body


async def finished(admin: AsyncClient, agent: Agent, name: str) -> str:
    async def phase() -> str | None:
        found = (await get_pod(admin, name) or {}).get("status") or {}
        return found.get("phase") if found.get("phase") in ("Succeeded", "Failed") else None

    return await async_wait_for(
        phase, 60, interval=0.2, message=lambda: f"{name} finished\n{agent.log_tail()}"
    )
