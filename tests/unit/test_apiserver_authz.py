"""Node authorization on the test API server (Node authorizer, RBAC, NodeRestriction), over
HTTP with real client certificates, and the agent's answer to a forbidden watch."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from nodeagent.apiserver.client import ApiClient, ApiFailure
from nodeagent.apiserver.reflector import NODE_PROXIER, Collection, Reflector
from nodeagent.server.nodeview import render_node
from tests.apiserver import ApiServer
from tests.apiserver.authz import binding_body
from tests.apiserver.errors import ApiError
from tests.apiserver.resources import (
    CLUSTERROLEBINDINGS,
    CONFIGMAPS,
    NODES,
    PERSISTENTVOLUMECLAIMS,
    PERSISTENTVOLUMES,
    PODS,
    SECRETS,
)
from tests.unit.rig import eventually

Obj = dict[str, Any]
NODE, OTHER = "n1", "n2"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[ApiServer]:
    async with ApiServer(state_dir=tmp_path / "api", service_account_admission=False) as server:
        for name in (NODE, OTHER):
            server.store.create(NODES, None, {"metadata": {"name": name}})
        yield server


@contextlib.asynccontextmanager
async def node_client(
    api: ApiServer, tmp_path: Path, *, proxier: bool, node: str = NODE
) -> AsyncIterator[ApiClient]:
    path = api.node_kubeconfig(
        tmp_path / f"{node}-{proxier}.kubeconfig", node, node_proxier=proxier
    )
    client = ApiClient.from_file(path)
    try:
        yield client
    finally:
        await client.close()


async def refused(call: Any) -> ApiFailure:
    with pytest.raises(ApiFailure) as caught:
        await call
    assert caught.value.code == 403 and caught.value.reason == "Forbidden"
    return caught.value


def pod(name: str, node: str, **spec: Any) -> Obj:
    return {
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}], **spec},
    }


async def test_a_node_reads_only_its_own_node_without_node_proxier(
    api: ApiServer, tmp_path: Path
) -> None:
    async with node_client(api, tmp_path, proxier=False) as c:
        exc = await refused(c.list("/api/v1/nodes", {}))
        assert exc.message == (
            'nodes is forbidden: User "system:node:n1" cannot list resource "nodes" in API '
            "group \"\" at the cluster scope: node 'n1' cannot read all nodes, only its own "
            "Node object"
        )
        exc = await refused(c.request("GET", f"/api/v1/nodes/{OTHER}"))
        assert exc.message.startswith('nodes "n2" is forbidden: User "system:node:n1" cannot get')
        assert (await c.request("GET", f"/api/v1/nodes/{NODE}"))["metadata"]["name"] == NODE
        own, _ = await c.list("/api/v1/nodes", {"fieldSelector": f"metadata.name={NODE}"})
        assert [n["metadata"]["name"] for n in own] == [NODE]
        # Services: the Node authorizer's static rules; EndpointSlices: only through RBAC.
        services, _ = await c.list("/api/v1/services", {})
        assert "kubernetes" in [s["metadata"]["name"] for s in services]
        exc = await refused(c.list("/apis/discovery.k8s.io/v1/endpointslices", {}))
        assert exc.message.startswith(
            'endpointslices.discovery.k8s.io is forbidden: User "system:node:n1" cannot list '
            'resource "endpointslices" in API group "discovery.k8s.io" at the cluster scope'
        )


async def test_node_proxier_grants_nodes_and_endpoint_slices(
    api: ApiServer, tmp_path: Path
) -> None:
    async with node_client(api, tmp_path, proxier=True) as c:
        nodes, _ = await c.list("/api/v1/nodes", {})
        assert {n["metadata"]["name"] for n in nodes} == {NODE, OTHER}
        await c.list("/apis/discovery.k8s.io/v1/endpointslices", {})
        # Not more than the role gives: other nodes stay read-only.
        await refused(c.request("DELETE", f"/api/v1/nodes/{OTHER}"))


async def test_a_binding_to_system_nodes_made_through_the_api_grants_every_node(
    api: ApiServer, tmp_path: Path
) -> None:
    async with node_client(api, tmp_path, proxier=False, node=OTHER) as c:
        await refused(c.list("/api/v1/nodes", {}))
        admin = ApiClient.from_file(api.write_kubeconfig(tmp_path / "admin.kubeconfig"))
        try:
            body = binding_body("nodes-proxier", NODE_PROXIER, [("Group", "system:nodes")])
            await admin.request(
                "POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", body=body
            )
        finally:
            await admin.close()
        nodes, _ = await c.list("/api/v1/nodes", {})
        assert len(nodes) == 2


async def test_pods_only_with_the_node_field_selector_and_only_bound_ones(
    api: ApiServer, tmp_path: Path
) -> None:
    api.store.create(PODS, "default", pod("mine", NODE))
    api.store.create(PODS, "default", pod("theirs", OTHER))
    async with node_client(api, tmp_path, proxier=True) as c:
        exc = await refused(c.list("/api/v1/pods", {}))
        assert exc.message.endswith("can only list/watch pods with spec.nodeName field selector")
        pods, _ = await c.list("/api/v1/pods", {"fieldSelector": f"spec.nodeName={NODE}"})
        assert [p["metadata"]["name"] for p in pods] == ["mine"]
        await c.request("GET", "/api/v1/namespaces/default/pods/mine")
        exc = await refused(c.request("GET", "/api/v1/namespaces/default/pods/theirs"))
        assert exc.message.endswith("no relationship found between node 'n1' and this object")


async def test_secrets_and_config_maps_only_of_the_nodes_pods(
    api: ApiServer, tmp_path: Path
) -> None:
    for rt, name in ((SECRETS, "s-mine"), (SECRETS, "s-theirs"), (CONFIGMAPS, "cm-mine")):
        api.store.create(rt, "default", {"metadata": {"name": name}})
    env = [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cm-mine", "key": "k"}}}]
    mine = pod("mine", NODE, volumes=[{"name": "v", "secret": {"secretName": "s-mine"}}])
    mine["spec"]["containers"][0]["env"] = env
    api.store.create(PODS, "default", mine)
    api.store.create(
        PODS,
        "default",
        pod("theirs", OTHER, volumes=[{"name": "v", "secret": {"secretName": "s-theirs"}}]),
    )
    async with node_client(api, tmp_path, proxier=True) as c:
        await c.request("GET", "/api/v1/namespaces/default/secrets/s-mine")
        await c.request("GET", "/api/v1/namespaces/default/configmaps/cm-mine")
        await refused(c.request("GET", "/api/v1/namespaces/default/secrets/s-theirs"))
        await refused(c.list("/api/v1/namespaces/default/secrets", {}))


async def test_node_restriction_on_writes(api: ApiServer, tmp_path: Path) -> None:
    node_uid = api.store.get(NODES, None, NODE)["metadata"]["uid"]
    owner = {"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": node_uid, "controller": True}
    mirror = pod("static-n1", NODE)
    mirror["metadata"]["annotations"] = {"kubernetes.io/config.mirror": "hash"}
    mirror["metadata"]["ownerReferences"] = [owner]
    path = "/api/v1/namespaces/default/pods"
    async with node_client(api, tmp_path, proxier=True) as c:
        exc = await refused(c.request("POST", path, body=pod("plain", NODE)))
        assert exc.message == (
            'pods "plain" is forbidden: pod does not have "kubernetes.io/config.mirror" '
            'annotation, node "n1" can only create mirror pods'
        )
        with_secret = {**mirror, "spec": {**mirror["spec"], "imagePullSecrets": [{"name": "s"}]}}
        exc = await refused(c.request("POST", path, body=with_secret))
        assert exc.message.endswith('node "n1" can not create pods that reference secrets')
        unowned = {**mirror, "metadata": {**mirror["metadata"], "ownerReferences": []}}
        exc = await refused(c.request("POST", path, body=unowned))
        assert exc.message.endswith("can only create pods with an owner reference set to itself")
        await c.request("POST", path, body=mirror)

        api.store.create(PODS, "default", pod("theirs", OTHER))
        status = {"status": {"phase": "Running"}}
        exc = await refused(
            c.request(
                "PATCH",
                f"{path}/theirs/status",
                body=status,
                content_type="application/strategic-merge-patch+json",
            )
        )
        assert exc.message.endswith(
            'node "n1" can only update pod status for pods with spec.nodeName set to itself'
        )
        exc = await refused(
            c.request(
                "PATCH",
                f"/api/v1/nodes/{OTHER}/status",
                body={"status": {"phase": "Running"}},
                content_type="application/strategic-merge-patch+json",
            )
        )
        assert exc.message == (
            'nodes "n2" is forbidden: node "n1" is not allowed to modify node "n2"'
        )
        await refused(c.request("DELETE", f"{path}/theirs"))


async def test_the_admin_may_do_everything(api: ApiServer, tmp_path: Path) -> None:
    admin = ApiClient.from_file(api.write_kubeconfig(tmp_path / "admin.kubeconfig"))
    try:
        await admin.list("/api/v1/nodes", {})
        await admin.list("/api/v1/pods", {})
        await admin.request("POST", "/api/v1/namespaces/default/pods", body=pod("p", NODE))
        await admin.list("/apis/rbac.authorization.k8s.io/v1/clusterroles", {})
    finally:
        await admin.close()


# -- the agent's side -------------------------------------------------------------------------


async def test_a_forbidden_watch_is_reported_and_retried_until_a_binding_allows_it(
    api: ApiServer, tmp_path: Path
) -> None:
    async with node_client(api, tmp_path, proxier=False) as c:
        nodes = Reflector(
            c,
            Collection("/api/v1/nodes", needs=NODE_PROXIER),
            on_change=lambda: None,
            forbidden_retry_s=0.05,
        )
        task = asyncio.create_task(nodes.run())
        try:
            await eventually(lambda: nodes.forbidden, what="the 403 noted")
            assert not nodes.synced.is_set()
            report = nodes.report()
            assert report["resource"] == "/api/v1/nodes"
            assert report["clusterRole"] == NODE_PROXIER
            assert "cannot read all nodes" in report["message"]
            api.store.create(
                CLUSTERROLEBINDINGS,
                None,
                binding_body("late", NODE_PROXIER, [("User", f"system:node:{NODE}")]),
            )
            await eventually(nodes.synced.is_set, what="the list allowed once bound")
            assert nodes.forbidden == "" and nodes.report() == {}
            assert set(nodes.objects) == {NODE, OTHER}
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def test_status_node_names_the_refused_collection_and_the_cluster_role() -> None:
    refusal = {
        "resource": "/apis/discovery.k8s.io/v1/endpointslices",
        "message": "endpointslices.discovery.k8s.io is forbidden: ...",
        "clusterRole": NODE_PROXIER,
    }
    snapshot: dict[str, Any] = {
        "node": {"name": NODE},
        "cluster": {"server": "https://api:6443", "watching": True, "forbidden": [refusal]},
        "network": {"forbidden": [{**refusal, "resource": "/api/v1/nodes"}]},
    }
    text = render_node(snapshot, datetime.now(UTC))
    warnings = [line for line in text.splitlines() if line.startswith("WARNING:")]
    assert warnings == [
        "WARNING:      API refuses /apis/discovery.k8s.io/v1/endpointslices (403 Forbidden): "
        "bind ClusterRole system:node-proxier to this node (docs/rbac.md)",
        "WARNING:      API refuses /api/v1/nodes (403 Forbidden): bind ClusterRole "
        "system:node-proxier to this node (docs/rbac.md)",
    ]
    del snapshot["cluster"]["forbidden"], snapshot["network"]
    assert "WARNING" not in render_node(snapshot, datetime.now(UTC))


async def test_a_node_gets_only_the_claims_and_volumes_of_its_pods(
    api: ApiServer, tmp_path: Path
) -> None:
    claim_spec = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    for name in ("mine", "theirs", "web-scratch"):
        api.store.create(
            PERSISTENTVOLUMECLAIMS, "default", {"metadata": {"name": name}, "spec": claim_spec}
        )
    pv_spec = {
        "capacity": {"storage": "1Gi"},
        "accessModes": ["ReadWriteOnce"],
        "hostPath": {"path": "/srv/pv"},
    }
    for name in ("pv-mine", "pv-theirs"):
        api.store.create(PERSISTENTVOLUMES, None, {"metadata": {"name": name}, "spec": pv_spec})
    for claim, pv in (("mine", "pv-mine"), ("theirs", "pv-theirs")):
        api.store.patch(
            PERSISTENTVOLUMECLAIMS,
            "default",
            claim,
            "application/merge-patch+json",
            {"spec": {"volumeName": pv}},
        )
    volumes = [
        {"name": "data", "persistentVolumeClaim": {"claimName": "mine"}},
        {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": claim_spec}}},
    ]
    api.store.create(PODS, "default", pod("web", NODE, volumes=volumes))
    other = [{"name": "data", "persistentVolumeClaim": {"claimName": "theirs"}}]
    api.store.create(PODS, "default", pod("db", OTHER, volumes=other))
    base = "/api/v1/namespaces/default/persistentvolumeclaims"
    async with node_client(api, tmp_path, proxier=False) as c:
        for name in ("mine", "web-scratch"):
            assert (await c.request("GET", f"{base}/{name}"))["metadata"]["name"] == name
        assert (await c.request("GET", "/api/v1/persistentvolumes/pv-mine"))["spec"]
        exc = await refused(c.request("GET", f"{base}/theirs"))
        assert exc.message.endswith("no relationship found between node 'n1' and this object")
        await refused(c.request("GET", "/api/v1/persistentvolumes/pv-theirs"))
        exc = await refused(c.list(base, {}))
        assert exc.message.endswith("can only get individual resources of this type")


async def test_claims_and_volumes_are_validated_and_defaulted_as_upstream(
    api: ApiServer,
) -> None:
    with pytest.raises(ApiError) as caught:
        api.store.create(PERSISTENTVOLUMECLAIMS, "default", {"metadata": {"name": "c"}})
    assert "spec.accessModes: Required value" in caught.value.message
    local = {
        "capacity": {"storage": "1Gi"},
        "accessModes": ["ReadWriteOnce"],
        "local": {"path": "/srv/local"},
    }
    with pytest.raises(ApiError) as caught:
        api.store.create(PERSISTENTVOLUMES, None, {"metadata": {"name": "l"}, "spec": local})
    assert caught.value.message == (
        'PersistentVolume "l" is invalid: spec.nodeAffinity: Required value: Local volumes '
        "require node affinity"
    )
    hostpath = {**local, "hostPath": {"path": "/srv/h"}}
    del hostpath["local"]
    made = api.store.create(PERSISTENTVOLUMES, None, {"metadata": {"name": "h"}, "spec": hostpath})
    assert made["status"] == {"phase": "Pending"}
    assert made["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
    assert made["spec"]["volumeMode"] == "Filesystem"
    with pytest.raises(ApiError) as caught:
        api.store.patch(
            PERSISTENTVOLUMES,
            None,
            "h",
            "application/merge-patch+json",
            {"spec": {"hostPath": {"path": "/srv/other"}}},
        )
    assert "spec.persistentvolumesource is immutable" in caught.value.message
    claim_spec = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    api.store.create(
        PERSISTENTVOLUMECLAIMS, "default", {"metadata": {"name": "c"}, "spec": claim_spec}
    )
    merge = "application/merge-patch+json"
    bound = api.store.patch(
        PERSISTENTVOLUMECLAIMS, "default", "c", merge, {"spec": {"volumeName": "h"}}
    )
    assert bound["spec"]["volumeName"] == "h"
    with pytest.raises(ApiError) as caught:
        api.store.patch(
            PERSISTENTVOLUMECLAIMS, "default", "c", merge, {"spec": {"volumeName": "x"}}
        )
    assert "spec is immutable after creation" in caught.value.message
    # Status only through the subresource.
    kept = api.store.patch(
        PERSISTENTVOLUMECLAIMS, "default", "c", merge, {"status": {"phase": "Bound"}}
    )
    assert kept["status"]["phase"] == "Pending"
    bound = api.store.patch(
        PERSISTENTVOLUMECLAIMS,
        "default",
        "c",
        merge,
        {"status": {"phase": "Bound"}},
        subresource="status",
    )
    assert bound["status"]["phase"] == "Bound"
