"""The test API server over HTTPS, driven by a real client (lightkube) and by raw HTTP."""

from __future__ import annotations

import asyncio
import datetime
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import pytest
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.models.authentication_v1 import TokenRequestSpec
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.core_v1 import Container, PodSpec, ServicePort, ServiceSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import (
    ConfigMap,
    Node,
    NodeStatus,
    Pod,
    PodStatus,
    Service,
    ServiceAccountToken,
)
from lightkube.resources.discovery_v1 import EndpointSlice
from lightkube.types import PatchType

from tests.apiserver import ApiServer
from tests.apiserver.resources import PODS
from tests.harness.typed import present
from tests.harness.wait import async_wait_for, first_items

Obj = dict[str, Any]


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[ApiServer]:
    async with ApiServer(state_dir=tmp_path / "api", bookmark_interval=0.2) as server:
        yield server


@pytest.fixture
async def client(api: ApiServer, tmp_path: Path) -> AsyncIterator[AsyncClient]:
    config = KubeConfig.from_file(api.write_kubeconfig(tmp_path / "admin.kubeconfig"))
    c = AsyncClient(config)
    yield c
    await c.close()


def new_pod(name: str, *, node: str | None = "n1", labels: dict[str, str] | None = None) -> Pod:
    return Pod(
        metadata=ObjectMeta(name=name, labels=labels),
        spec=PodSpec(nodeName=node, containers=[Container(name="c", image="busybox:1.36")]),
    )


class Raw:
    """kubectl-style raw HTTP against the server."""

    def __init__(self, api: ApiServer, *, token: str | None = None) -> None:
        self.api = api
        self.token = api.token if token is None else token
        self.ssl = ssl.create_default_context(cafile=str(api.pki.ca_path))

    async def request(
        self, method: str, path: str, body: Any = None, **headers: str
    ) -> tuple[int, Any]:
        hdrs = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        hdrs.update({k.replace("_", "-"): v for k, v in headers.items()})
        data = None if body is None else json.dumps(body)
        if data is not None:
            hdrs.setdefault("Content-Type", "application/json")
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method, self.api.url + path, data=data, headers=hdrs, ssl=self.ssl
            ) as resp,
        ):
            text = await resp.text()
            assert resp.headers.get("Content-Type", "").startswith(
                ("application/json", "text/plain")
            )
            return resp.status, json.loads(text) if text.startswith(("{", "[")) else text

    async def watch(self, path: str, *, until: int, within: float = 5.0) -> list[Obj]:
        """Read ``until`` events (or until the stream ends), for at most ``within`` seconds."""
        events: list[Obj] = []
        hdrs = {"Authorization": f"Bearer {self.token}"}
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.api.url + path, headers=hdrs, ssl=self.ssl) as resp,
        ):
            assert resp.status == 200
            async with asyncio.timeout(within):
                async for line in resp.content:
                    events.append(json.loads(line))
                    if len(events) >= until:
                        break
        return events


async def test_crud_list_and_status_patch(client: AsyncClient, api: ApiServer) -> None:
    created = await client.create(new_pod("web"))
    uid = present(created.metadata).uid
    assert uid and present(created.status).phase == "Pending"
    listing = client.list(Pod, namespace="default")
    names = [present(p.metadata).name async for p in listing]
    assert names == ["web"] and int(listing.resourceVersion) == api.store.rv
    patch = {
        "metadata": {"uid": uid},
        "status": {
            "phase": "Running",
            "podIP": "10.244.0.7",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    await client.patch(PodStatus, "web", patch, patch_type=PatchType.STRATEGIC)
    patch2 = {"status": {"conditions": [{"type": "Initialized", "status": "True"}]}}
    out = await client.patch(PodStatus, "web", patch2, patch_type=PatchType.STRATEGIC)
    # A condition new to the list goes before the live ones (strategicpatch mergeSlice).
    assert [c.type for c in present(present(out.status).conditions)] == ["Initialized", "Ready"]
    out = await client.patch(
        PodStatus, "web", {"status": {"conditions": []}}, patch_type=PatchType.MERGE
    )
    status = present(out.status)
    assert not status.conditions and status.podIP == "10.244.0.7"
    with pytest.raises(ApiError) as exc:
        await client.create(new_pod("web"))
    assert exc.value.status.code == 409 and exc.value.status.reason == "AlreadyExists"
    with pytest.raises(ApiError) as exc:
        await client.get(Pod, "nope")
    assert exc.value.status.code == 404


async def test_nodes_leases_events_configmaps(client: AsyncClient, api: ApiServer) -> None:
    node = await client.create(
        Node(metadata=ObjectMeta(name="n1", labels={"kubernetes.io/hostname": "n1"}))
    )
    conditions = [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]
    out = await client.patch(NodeStatus, "n1", {"status": {"conditions": conditions}})
    assert present(present(out.status).conditions)[0].reason == "KubeletReady"
    assert present(node.metadata).uid == present(out.metadata).uid
    lease = Lease(
        metadata=ObjectMeta(name="n1", namespace="kube-node-lease"),
        spec=LeaseSpec(
            holderIdentity="n1",
            leaseDurationSeconds=40,
            renewTime=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
        ),
    )
    lease = await client.create(lease)
    present(lease.spec).renewTime = None
    renewed = await client.replace(lease)
    assert int(present(present(renewed.metadata).resourceVersion)) > int(
        present(present(lease.metadata).resourceVersion)
    )
    with pytest.raises(ApiError) as exc:
        await client.replace(lease)  # stale resourceVersion
    assert exc.value.status.code == 409
    cm = await client.get(ConfigMap, "kube-root-ca.crt", namespace="kube-system")
    assert "BEGIN CERTIFICATE" in present(cm.data)["ca.crt"]
    raw = Raw(api)
    event = {
        "metadata": {"generateName": "web."},
        "involvedObject": {"kind": "Pod", "name": "web", "namespace": "default"},
        "reason": "Started",
        "type": "Normal",
        "source": {"component": "kubelet", "host": "n1"},
    }
    code, body = await raw.request("POST", "/api/v1/namespaces/default/events", event)
    assert code == 201 and body["metadata"]["name"].startswith("web.")
    code, body = await raw.request(
        "GET", "/api/v1/events?fieldSelector=involvedObject.name%3Dweb,reason%3DStarted"
    )
    assert code == 200 and len(body["items"]) == 1 and "kind" not in body["items"][0]


async def test_watch_resumes_from_a_resource_version(client: AsyncClient, api: ApiServer) -> None:
    start = str(api.store.rv)
    await client.create(new_pod("a"))
    middle = str(api.store.rv)
    await client.create(new_pod("b"))
    await client.delete(Pod, "a", grace_period=0)
    seen = []
    async for kind, obj in client.watch(Pod, namespace="default", resource_version=start):
        meta = present(obj.metadata)
        seen.append((kind, meta.name, meta.resourceVersion))
        if len(seen) == 3:
            break
    assert [s[:2] for s in seen] == [("ADDED", "a"), ("ADDED", "b"), ("DELETED", "a")]
    assert seen[2][2] == str(api.store.rv)  # DELETED carries the delete's version
    resumed = []
    async for kind, obj in client.watch(Pod, namespace="default", resource_version=middle):
        resumed.append((kind, present(obj.metadata).name))
        if len(resumed) == 2:
            break
    assert resumed == [("ADDED", "b"), ("DELETED", "a")]


async def test_watch_without_version_starts_with_the_current_state(client: AsyncClient) -> None:
    await client.create(new_pod("a"))
    [(kind, obj)] = await first_items(client.watch(Pod, namespace="default"), 1)
    assert (kind, present(obj.metadata).name) == ("ADDED", "a")


async def test_410_gone_after_the_history_is_dropped(client: AsyncClient, api: ApiServer) -> None:
    old = str(api.store.rv)
    await client.create(new_pod("a"))
    api.drop_history()
    with pytest.raises(ApiError) as exc:
        async for _ in client.watch(Pod, namespace="default", resource_version=old):
            pass
    assert exc.value.status.code == 410 and exc.value.status.reason == "Expired"
    raw = Raw(api)
    [event] = await raw.watch(
        f"/api/v1/namespaces/default/pods?watch=1&resourceVersion={old}", until=1
    )
    assert event["type"] == "ERROR" and event["object"]["code"] == 410
    code, body = await raw.request("GET", "/api/v1/pods")  # a relist works
    assert code == 200 and body["metadata"]["resourceVersion"] == str(api.store.rv)
    api.set_history(1)
    now = str(api.store.rv)
    await client.create(new_pod("b"))
    await client.create(new_pod("c"))
    with pytest.raises(ApiError):
        async for _ in client.watch(Pod, namespace="default", resource_version=now):
            pass


async def test_bookmarks_and_timeout(api: ApiServer) -> None:
    raw = Raw(api)
    rv = api.store.rv
    path = f"/api/v1/pods?watch=true&resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=1"
    events = await raw.watch(path, until=100, within=5)  # ends at the timeout
    assert events and all(e["type"] == "BOOKMARK" for e in events)
    assert events[0]["object"] == {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": str(rv)},
    }
    path = (
        "/api/v1/pods?watch=1&sendInitialEvents=true&allowWatchBookmarks=true"
        "&resourceVersionMatch=NotOlderThan"
    )
    api.store.create(PODS, "default", new_pod("a").to_dict())
    events = await raw.watch(path, until=2)
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"]
    assert events[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


async def test_selectors_over_http(client: AsyncClient, api: ApiServer) -> None:
    await client.create(new_pod("a", labels={"app": "web", "tier": "fe"}))
    await client.create(new_pod("b", node="n2", labels={"app": "db"}))
    await client.create(new_pod("c", node=None, labels={"app": "web"}))
    names = [
        present(p.metadata).name
        async for p in client.list(Pod, namespace="*", fields={"spec.nodeName": "n1"})
    ]
    assert names == ["a"]
    web = [
        present(p.metadata).name
        async for p in client.list(Pod, labels={"app": "web", "tier": None})
    ]
    raw = Raw(api)
    code, body = await raw.request("GET", "/api/v1/pods?labelSelector=app+in+(web,db),!tier")
    assert [i["metadata"]["name"] for i in body["items"]] == ["b", "c"]
    code, body = await raw.request("GET", "/api/v1/pods?fieldSelector=spec.foo%3Dx")
    assert code == 400 and body["reason"] == "BadRequest"
    rv = api.store.rv
    await raw.request(
        "POST",
        "/api/v1/namespaces/default/pods/c/binding",
        {"target": {"kind": "Node", "name": "n1"}},
    )
    events = await raw.watch(
        f"/api/v1/pods?watch=1&resourceVersion={rv}&fieldSelector=spec.nodeName%3Dn1", until=1
    )
    assert (events[0]["type"], events[0]["object"]["metadata"]["name"]) == ("ADDED", "c")
    assert web == ["a"]


async def test_graceful_delete_flow_with_uid_precondition(
    client: AsyncClient, api: ApiServer
) -> None:
    pod = new_pod("p")
    present(pod.spec).terminationGracePeriodSeconds = 15
    uid = present((await client.create(pod)).metadata).uid
    rv = api.store.rv
    raw = Raw(api)
    code, body = await raw.request("DELETE", "/api/v1/namespaces/default/pods/p")
    assert code == 200 and body["metadata"]["deletionGracePeriodSeconds"] == 15
    still = await client.get(Pod, "p")
    assert present(still.metadata).deletionTimestamp is not None
    opts = {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0}
    code, body = await raw.request(
        "DELETE", "/api/v1/namespaces/default/pods/p", {**opts, "preconditions": {"uid": "other"}}
    )
    assert code == 409 and body["reason"] == "Conflict"
    code, body = await raw.request(
        "DELETE", "/api/v1/namespaces/default/pods/p", {**opts, "preconditions": {"uid": uid}}
    )
    assert code == 200 and body["metadata"]["uid"] == uid
    events = await raw.watch(
        f"/api/v1/namespaces/default/pods?watch=1&resourceVersion={rv}", until=2
    )
    assert [e["type"] for e in events] == ["MODIFIED", "DELETED"]
    code, body = await raw.request(
        "DELETE", "/api/v1/namespaces/default/configmaps/kube-root-ca.crt"
    )
    assert code == 200 and body["kind"] == "Status" and body["status"] == "Success"


async def test_endpointslices_follow_pods(client: AsyncClient, api: ApiServer) -> None:
    svc = Service(
        metadata=ObjectMeta(name="web"),
        spec=ServiceSpec(
            selector={"app": "web"},
            ports=[ServicePort(name="http", port=80, targetPort=8080)],
        ),
    )
    svc = await client.create(svc)
    assert present(present(svc.spec).clusterIP).startswith("10.96.")
    await client.create(new_pod("web-1", labels={"app": "web"}))
    rv = str(api.store.rv)
    status = {"podIP": "10.244.1.2", "conditions": [{"type": "Ready", "status": "True"}]}
    await client.patch(PodStatus, "web-1", {"status": status})
    watch = client.watch(
        EndpointSlice,
        namespace="default",
        labels={"kubernetes.io/service-name": "web"},
        resource_version=rv,
    )
    [(kind, eps)] = await first_items(watch, 1)
    assert kind == "MODIFIED"
    [ep] = present(eps.endpoints)
    assert ep.addresses == ["10.244.1.2"] and present(ep.conditions).ready and ep.nodeName == "n1"
    [port] = present(eps.ports)
    assert port.port == 8080 and port.name == "http"


async def test_tls_and_authentication(api: ApiServer, tmp_path: Path) -> None:
    code, body = await Raw(api, token="").request("GET", "/api/v1/pods")
    assert code == 401 and body["reason"] == "Unauthorized"
    code, _ = await Raw(api, token="wrong").request("GET", "/api/v1/pods")
    assert code == 401
    code, text = await Raw(api, token="").request("GET", "/readyz")
    assert (code, text) == (200, "ok")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.get(api.url + "/healthz", ssl=ssl.create_default_context())
    node_client = AsyncClient(
        KubeConfig.from_file(api.node_kubeconfig(tmp_path / "n1.kubeconfig", "n1"))
    )
    try:
        assert [present(s.metadata).name async for s in node_client.list(Service)]
    finally:
        await node_client.close()
    assert api.requests[-1].user == "system:node:n1"


async def test_token_request(client: AsyncClient, api: ApiServer) -> None:
    request = ServiceAccountToken(
        metadata=ObjectMeta(), spec=TokenRequestSpec(audiences=["api"], expirationSeconds=3600)
    )
    out = await client.create(request, "default", namespace="default")
    status = present(out.status)
    assert status.token and status.expirationTimestamp
    code, _ = await Raw(api, token=status.token).request(
        "GET", "/api/v1/namespaces/default/configmaps"
    )
    assert code == 200
    assert api.requests[-1].user == "system:serviceaccount:default:default"


async def test_restart_in_the_middle_of_a_watch(client: AsyncClient, api: ApiServer) -> None:
    port = api.port
    seen: list[str] = []
    rv = str(api.store.rv)

    async def watch_once() -> None:
        async for _kind, obj in client.watch(Pod, namespace="default", resource_version=rv):
            seen.append(present(present(obj.metadata).name))

    task = asyncio.create_task(watch_once())
    await client.create(new_pod("before"))
    await async_wait_for(lambda: seen, 5, 0.02, message="the first event")
    await api.stop()
    with pytest.raises(httpx2.TransportError):  # the stream is cut mid-body
        await asyncio.wait_for(task, 5)
    api.store.create(PODS, "default", new_pod("while-down").to_dict())
    await api.start()
    assert api.port == port
    resumed = []
    async for _kind, obj in client.watch(Pod, namespace="default", resource_version=rv):
        resumed.append(present(present(obj.metadata).name))
        if len(resumed) == 2:
            break
    assert seen == ["before"] and resumed == ["before", "while-down"]


async def test_injected_faults(client: AsyncClient, api: ApiServer) -> None:
    await client.create(new_pod("a"))
    api.faults.fail_status_writes(2)
    for _ in range(2):
        with pytest.raises(ApiError) as exc:
            await client.patch(PodStatus, "a", {"status": {"phase": "Running"}})
        assert exc.value.status.code == 500
    await client.patch(PodStatus, "a", {"status": {"phase": "Running"}})
    api.faults.conflict_next_write()
    with pytest.raises(ApiError) as exc:
        await client.patch(Pod, "a", {"metadata": {"labels": {"x": "y"}}})
    assert exc.value.status.code == 409
    await client.patch(Pod, "a", {"metadata": {"labels": {"x": "y"}}})
    patches = [r for r in api.requests if r.method == "PATCH" and r.path.endswith("/status")]
    assert [r.code for r in patches] == [500, 500, 200]


async def test_discovery_version_and_pagination(client: AsyncClient, api: ApiServer) -> None:
    raw = Raw(api)
    _, body = await raw.request("GET", "/api")
    assert body["versions"] == ["v1"]
    _, body = await raw.request("GET", "/api/v1")
    names = {r["name"] for r in body["resources"]}
    assert {"pods", "pods/status", "nodes/status", "serviceaccounts/token", "events"} <= names
    _, body = await raw.request("GET", "/apis")
    groups = {g["name"] for g in body["groups"]}
    assert groups == {
        "coordination.k8s.io",
        "discovery.k8s.io",
        "node.k8s.io",
        "rbac.authorization.k8s.io",
        "storage.k8s.io",
    }
    _, body = await raw.request("GET", "/apis/discovery.k8s.io/v1")
    assert body["resources"][0]["kind"] == "EndpointSlice"
    _, body = await raw.request("GET", "/version")
    assert body["major"] == "1"
    code, _ = await raw.request("GET", "/api/v1/widgets")
    assert code == 404
    for i in range(5):
        await client.create(ConfigMap(metadata=ObjectMeta(name=f"c{i}")))
    chunked = [present(c.metadata).name async for c in client.list(ConfigMap, chunk_size=2)]
    assert chunked == ["c0", "c1", "c2", "c3", "c4", "kube-root-ca.crt"]
    code, body = await raw.request(
        "PATCH", "/api/v1/namespaces/default/configmaps/c0", {"data": {}}
    )
    assert code == 415


async def test_ephemeral_containers_subresource(client: AsyncClient, api: ApiServer) -> None:
    await client.create(new_pod("a"))
    raw = Raw(api)
    path = "/api/v1/namespaces/default/pods/a/ephemeralcontainers"
    # As kubectl debug sends it: empty resources are no resources.
    debugger = {
        "name": "debugger",
        "image": "busybox:1.36",
        "targetContainerName": "c",
        "resources": {},
    }
    smp = "application/strategic-merge-patch+json"
    # What kubectl debug sends: a strategic merge patch of the Pod.
    patch = {"spec": {"ephemeralContainers": [debugger]}}
    code, pod = await raw.request("PATCH", path, patch, Content_Type=smp)
    assert code == 200, pod
    (added,) = pod["spec"]["ephemeralContainers"]
    assert added["targetContainerName"] == "c" and added["imagePullPolicy"] == "IfNotPresent"
    assert added["terminationMessagePolicy"] == "File"
    code, got = await raw.request("GET", path)
    assert code == 200 and got["kind"] == "Pod" and got["spec"]["ephemeralContainers"]

    # PUT a Pod: only ephemeral containers are taken, and only additions.
    second = {"name": "second", "image": "busybox:1.36"}
    got["spec"]["ephemeralContainers"].append(second)
    got["spec"]["activeDeadlineSeconds"] = 5  # not this subresource's business: ignored
    code, pod = await raw.request("PUT", path, got)
    assert code == 200, pod
    assert [c["name"] for c in pod["spec"]["ephemeralContainers"]] == ["debugger", "second"]
    assert "activeDeadlineSeconds" not in pod["spec"]

    refused = [
        {"spec": {"ephemeralContainers": [{**added, "image": "busybox:1.37"}]}},  # changed
        {"spec": {"ephemeralContainers": [{"name": "c", "image": "busybox"}]}},  # name taken
        {
            "spec": {
                "ephemeralContainers": [
                    {"name": "x", "image": "b", "ports": [{"containerPort": 80}]}
                ]
            }
        },
        {
            "spec": {
                "ephemeralContainers": [{"name": "x", "image": "b", "targetContainerName": "z"}]
            }
        },
        {"spec": {"ephemeralContainers": [{"name": "x"}]}},  # no image
    ]
    for body in refused:
        code, answer = await raw.request("PATCH", path, body, Content_Type=smp)
        assert code == 422 and answer["reason"] == "Invalid", (body, answer)
    merge = "application/merge-patch+json"
    code, answer = await raw.request(
        "PATCH", path, {"spec": {"ephemeralContainers": []}}, Content_Type=merge
    )
    assert code == 422 and "may not be removed" in answer["message"]
    # The pod itself may not take them: only the subresource adds ephemeral containers.
    code, answer = await raw.request(
        "PATCH",
        "/api/v1/namespaces/default/pods/a",
        {"spec": {"ephemeralContainers": [{"name": "y", "image": "busybox"}]}},
        Content_Type=smp,
    )
    assert code == 422
    stored = api.store.get(PODS, "default", "a")
    assert [c["name"] for c in stored["spec"]["ephemeralContainers"]] == ["debugger", "second"]
    code, discovery = await raw.request("GET", "/api/v1")
    names = {r["name"] for r in discovery["resources"]}
    assert "pods/ephemeralcontainers" in names
