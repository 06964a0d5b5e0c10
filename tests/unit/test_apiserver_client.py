"""The agent's API connection against the in-process test API server: kubeconfig, the
reflector (list, watch, resume, bookmarks, 410, outages), Node registration and the Lease."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodeagent.apiserver import client as client_module
from nodeagent.apiserver.client import ApiClient, ApiFailure, KubeconfigError, load_kubeconfig
from nodeagent.apiserver.events import Event, PodRef, node_event
from nodeagent.apiserver.eventsender import BURST, EventRecorder
from nodeagent.apiserver.node import (
    KUBELET_VERSION,
    LEASE_DURATION_S,
    HostInfo,
    LeaseHeartbeat,
    NodeRegistration,
    node_status,
    status_changed,
)
from nodeagent.apiserver.reflector import Backoff, Collection, Reflector
from nodeagent.kubelet.nodestatus import NodeFacts
from tests.apiserver import ApiServer
from tests.apiserver.resources import EVENTS, LEASES, NODES, PODS
from tests.unit.rig import eventually

NODE = "node-1"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[ApiServer]:
    async with ApiServer(
        state_dir=tmp_path / "api", bookmark_interval=0.2, service_account_admission=False
    ) as server:
        yield server


@pytest.fixture
async def client(api: ApiServer, tmp_path: Path) -> AsyncIterator[ApiClient]:
    c = ApiClient.from_file(api.node_kubeconfig(tmp_path / "node.kubeconfig", NODE))
    yield c
    await c.close()


def pod_body(name: str, node: str = NODE) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox:1.36"}]},
    }


def facts(**overrides: Any) -> NodeFacts:
    base: dict[str, Any] = {
        "name": NODE,
        "max_pods": 110,
        "runtime_name": "containerd",
        "runtime_version": "1.6.20",
        "runtime_healthy": True,
        "runtime_error": "",
        "state_dir": "/",
        "now": time.time(),
    }
    return NodeFacts(**{**base, **overrides})


class Watched:
    """A reflector on the pods of NODE, running as a task."""

    def __init__(self, client: ApiClient) -> None:
        self.changes = 0
        self.reflector = Reflector(
            client,
            Collection("/api/v1/pods", field_selector=f"spec.nodeName={NODE}"),
            on_change=self._changed,
            backoff=Backoff(initial_s=0.05, cap_s=0.2),
        )
        self.task = asyncio.create_task(self.reflector.run())

    def _changed(self) -> None:
        self.changes += 1

    def names(self) -> set[str]:
        return {o["metadata"]["name"] for o in self.reflector.objects.values()}

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


# --- kubeconfig ----------------------------------------------------------------------------


async def test_token_and_client_certificate_kubeconfigs_both_work(
    api: ApiServer, tmp_path: Path
) -> None:
    for path in (
        api.write_kubeconfig(tmp_path / "token.kubeconfig"),
        api.node_kubeconfig(tmp_path / "cert.kubeconfig", NODE),
    ):
        client = ApiClient.from_file(path)
        try:
            # Services: what a node credential may list (the Node authorizer's rules).
            items, version = await client.list("/api/v1/services", {})
        finally:
            await client.close()
        assert "kubernetes" in {i["metadata"]["name"] for i in items}
        assert version.isdigit()
    users = {r.user for r in api.requests if r.path == "/api/v1/services"}
    assert users == {"kubernetes-admin", f"system:node:{NODE}"}


async def test_the_server_certificate_is_verified(api: ApiServer, tmp_path: Path) -> None:
    path = api.write_kubeconfig(tmp_path / "k")
    doc = yaml.safe_load(path.read_text())
    del doc["clusters"][0]["cluster"]["certificate-authority-data"]  # system CAs only
    path.write_text(yaml.safe_dump(doc))
    client = ApiClient.from_file(path)
    try:
        with pytest.raises(ApiFailure) as caught:
            await client.list("/api/v1/namespaces", {})
    finally:
        await client.close()
    assert caught.value.code == 0 and caught.value.retryable


def test_unusable_kubeconfigs_are_refused_with_the_reason(tmp_path: Path) -> None:
    def write(doc: Any) -> Path:
        path = tmp_path / "k"
        path.write_text(yaml.safe_dump(doc))
        return path

    cluster = {"server": "https://127.0.0.1:6443"}
    ctx = {"name": "c", "context": {"cluster": "c", "user": "u"}}
    good = {
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [ctx],
        "current-context": "c",
    }
    assert load_kubeconfig(write(good)).cluster.server == cluster["server"]
    insecure = {
        **good,
        "clusters": [{"name": "c", "cluster": {**cluster, "insecure-skip-tls-verify": True}}],
    }
    with pytest.raises(KubeconfigError, match="insecure-skip-tls-verify"):
        load_kubeconfig(write(insecure))
    with pytest.raises(KubeconfigError, match="not an http"):
        load_kubeconfig(write({**good, "clusters": [{"name": "c", "cluster": {"server": "x"}}]}))
    with pytest.raises(KubeconfigError, match="needs its key"):
        cert_only = {"client-certificate-data": "eA=="}
        load_kubeconfig(write({**good, "users": [{"name": "u", "user": cert_only}]}))
    with pytest.raises(KubeconfigError, match="usable"):
        load_kubeconfig(write({**good, "current-context": "nope"}))
    with pytest.raises(KubeconfigError):
        load_kubeconfig(tmp_path / "missing")


# --- the reflector ---------------------------------------------------------------------------


async def test_lists_then_follows_the_watch(api: ApiServer, client: ApiClient) -> None:
    api.store.create(PODS, "default", pod_body("a"))
    api.store.create(PODS, "default", pod_body("elsewhere", node="node-2"))
    watched = Watched(client)
    try:
        await eventually(lambda: watched.names() == {"a"}, what="the first list")
        api.store.create(PODS, "default", pod_body("b"))
        await eventually(lambda: watched.names() == {"a", "b"}, what="b added")
        api.store.delete(PODS, "default", "a", grace_period=0)
        await eventually(lambda: watched.names() == {"b"}, what="a deleted")
        assert watched.reflector.relists == 1
        watches = [r for r in api.requests if "watch=true" in r.query]
        assert all("allowWatchBookmarks=true" in r.query for r in watches)
    finally:
        await watched.close()


async def test_bookmarks_move_the_resume_version(api: ApiServer, client: ApiClient) -> None:
    watched = Watched(client)
    try:
        await eventually(lambda: watched.reflector.connected, what="the watch")
        before = watched.reflector.resource_version
        api.store.create(PODS, "default", pod_body("x", node="node-2"))  # not ours: no event
        await eventually(
            lambda: int(watched.reflector.resource_version) > int(before), what="a bookmark"
        )
        assert watched.names() == set()
    finally:
        await watched.close()


async def test_an_api_restart_resumes_the_watch_and_loses_nothing(
    api: ApiServer, client: ApiClient
) -> None:
    api.store.create(PODS, "default", pod_body("a"))
    watched = Watched(client)
    try:
        await eventually(lambda: watched.reflector.connected, what="the watch")
        await api.stop()
        await eventually(lambda: not watched.reflector.connected, what="the watch to break")
        assert watched.names() == {"a"}  # an outage is not a deletion
        api.store.create(PODS, "default", pod_body("b"))  # while the server is down
        api.store.delete(PODS, "default", "a", grace_period=0)
        await api.start()
        await eventually(lambda: watched.names() == {"b"}, within=10, what="the missed events")
        assert watched.reflector.relists == 1  # resumed from its version, no relist
    finally:
        await watched.close()


async def test_410_gone_relists(api: ApiServer, client: ApiClient) -> None:
    api.store.create(PODS, "default", pod_body("a"))
    watched = Watched(client)
    try:
        await eventually(lambda: watched.reflector.connected, what="the watch")
        await api.stop()
        api.store.delete(PODS, "default", "a", grace_period=0)
        api.store.create(PODS, "default", pod_body("c"))
        api.drop_history()  # as after an etcd compaction or a restart that lost the cache
        await api.start()
        await eventually(lambda: watched.names() == {"c"}, within=10, what="the relist")
        assert watched.reflector.relists == 2
    finally:
        await watched.close()


async def test_failed_relists_keep_the_last_known_objects(
    api: ApiServer, client: ApiClient
) -> None:
    api.store.create(PODS, "default", pod_body("a"))
    watched = Watched(client)
    try:
        await eventually(lambda: watched.reflector.connected, what="the watch")
        api.faults.fail_requests(3, code=503, methods={"GET"}, resource="pods")
        await api.stop()
        api.store.create(PODS, "default", pod_body("x", node="node-2"))
        api.drop_history()
        await api.start()
        await eventually(lambda: watched.reflector.relists == 2, within=10, what="a relist")
        assert watched.names() == {"a"}
        assert sum(r.fired for r in api.faults.rules) == 3
    finally:
        await watched.close()


# --- the Node --------------------------------------------------------------------------------


async def test_registers_the_node_with_labels_addresses_info_and_conditions(
    api: ApiServer, client: ApiClient
) -> None:
    cidrs: list[str] = []
    reg = NodeRegistration(client, name=NODE, facts=facts, on_pod_cidr=cidrs.append)
    task = asyncio.create_task(reg.run())
    try:
        await asyncio.wait_for(reg.registered.wait(), 5)
        node = api.store.get(NODES, None, NODE)
        labels = node["metadata"]["labels"]
        assert labels["kubernetes.io/hostname"] == NODE
        assert labels["kubernetes.io/os"] == "linux"
        assert labels["kubernetes.io/arch"] in ("amd64", "arm64")
        status = await eventually(lambda: api.store.get(NODES, None, NODE).get("status"))
        info = status["nodeInfo"]
        assert info["containerRuntimeVersion"] == "containerd://1.6.20"
        assert info["kubeletVersion"] == KUBELET_VERSION
        assert {a["type"] for a in status["addresses"]} >= {"Hostname"}
        assert {c["type"] for c in status["conditions"]} >= {"Ready", "MemoryPressure"}
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True" and ready["lastTransitionTime"]
        assert int(status["allocatable"]["pods"]) == 110 and status["capacity"]["cpu"]
        assert cidrs == []
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_node_being_deleted_is_told(api: ApiServer, client: ApiClient) -> None:
    # A finalizer holds the Node: a DELETE gives it a deletionTimestamp, as a drain tool's
    # or the cloud controller's delete would while something still holds it.
    api.store.create(NODES, None, {"metadata": {"name": NODE, "finalizers": ["test/hold"]}})
    told: list[bool] = []
    reg = NodeRegistration(
        client, name=NODE, facts=facts, on_pod_cidr=lambda cidr: None, on_deleting=told.append
    )
    tasks = [asyncio.create_task(reg.run()), asyncio.create_task(reg.watch())]
    try:
        await asyncio.wait_for(reg.registered.wait(), 5)
        await eventually(lambda: reg.node is not None and reg.node.get("metadata"))
        assert told == [] and not reg.deleting
        api.store.delete(NODES, None, NODE)
        await eventually(lambda: told == [True])
        assert reg.deleting
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_adopts_an_existing_node_and_takes_its_pod_cidr(
    api: ApiServer, client: ApiClient
) -> None:
    api.store.create(
        NODES,
        None,
        {"metadata": {"name": NODE, "labels": {"team": "a"}}, "spec": {"podCIDR": "10.244.7.0/24"}},
    )
    cidrs: list[str] = []
    reg = NodeRegistration(client, name=NODE, facts=facts, on_pod_cidr=cidrs.append)
    task = asyncio.create_task(reg.run())
    try:
        await asyncio.wait_for(reg.registered.wait(), 5)
        labels = api.store.get(NODES, None, NODE)["metadata"]["labels"]
        assert labels["team"] == "a" and labels["kubernetes.io/hostname"] == NODE
        assert cidrs == ["10.244.7.0/24"] and reg.pod_cidr == "10.244.7.0/24"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_node_status_changes_ignore_heartbeats() -> None:
    old = {"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": "1"}]}
    same = {"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": "2"}]}
    other = {"conditions": [{"type": "Ready", "status": "False", "lastHeartbeatTime": "2"}]}
    assert not status_changed(old, same)
    assert status_changed(old, other)
    assert status_changed(None, same)


async def test_the_lease_is_created_owned_by_the_node_and_renewed(
    api: ApiServer, client: ApiClient
) -> None:
    reg = NodeRegistration(client, name=NODE, facts=facts, on_pod_cidr=lambda _: None)
    lease = LeaseHeartbeat(client, reg, renew_s=0.1)
    tasks = [asyncio.create_task(reg.run()), asyncio.create_task(lease.run())]
    try:
        await eventually(lambda: lease.renewals >= 1, what="the first renewal")
        obj = api.store.get(LEASES, "kube-node-lease", NODE)
        first = obj["spec"]["renewTime"]
        assert obj["spec"]["holderIdentity"] == NODE
        assert obj["spec"]["leaseDurationSeconds"] == LEASE_DURATION_S
        (owner,) = obj["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("Node", NODE, reg.uid)
        await eventually(lambda: lease.renewals >= 3, what="renewals")
        api.faults.conflict_next_write(1, resource="leases")
        renewed = lease.renewals
        await eventually(lambda: lease.renewals > renewed + 1, what="a renewal after a conflict")
        assert api.store.get(LEASES, "kube-node-lease", NODE)["spec"]["renewTime"] > first
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# --- events ----------------------------------------------------------------------------------


async def test_events_count_repeats_and_drop_spam(api: ApiServer, client: ApiClient) -> None:
    recorder = EventRecorder(client, node_name=NODE)
    task = asyncio.create_task(recorder.run())
    try:
        pod = PodRef("default", "p", "uid-p")
        same = Event(pod, "spec.containers{c}", "Warning", "BackOff", "back-off")
        recorder.record([same, same, same])
        await eventually(lambda: recorder.sent == 3, what="three sends")
        (stored,) = api.store.list(EVENTS, "default")
        assert stored["count"] == 3 and stored["involvedObject"]["uid"] == "uid-p"
        assert stored["source"] == {"component": "kubelet", "host": NODE}
        recorder.record([Event(pod, "", "Normal", "Other", f"m{i}") for i in range(BURST)])
        await eventually(lambda: recorder.sent == BURST, what="the rest of the burst")
        assert recorder.dropped == 3  # one bucket per pod: 25 at once, then one per 5 min
        other = PodRef("default", "q", "uid-q")
        recorder.record([Event(other, "", "Normal", "Fine", "another pod's own bucket")])
        await eventually(lambda: recorder.sent == BURST + 1, what="another pod's event")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_node_event_names_the_node_and_lives_in_default(
    api: ApiServer, client: ApiClient
) -> None:
    recorder = EventRecorder(client, node_name=NODE)
    task = asyncio.create_task(recorder.run())
    try:
        recorder.record([node_event(NODE, "NodeHasInsufficientMemory")])
        await eventually(lambda: recorder.sent == 1, what="the node's event")
        (stored,) = api.store.list(EVENTS, "default")
        assert stored["involvedObject"] == {
            "apiVersion": "v1",
            "kind": "Node",
            "name": NODE,
            "uid": NODE,
        }  # the kubelet's node reference: no namespace, the name as uid
        assert stored["reason"] == "NodeHasInsufficientMemory"
        assert stored["message"] == f"Node {NODE} status is now: NodeHasInsufficientMemory"
        assert stored["type"] == "Normal"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_node_status_holds_still_between_real_changes() -> None:
    host = HostInfo.read()
    first = node_status(facts(now=1000.0), host=host, host_ip="192.0.2.1", previous=None)
    later = node_status(facts(now=1010.0), host=host, host_ip="192.0.2.1", previous=first)
    assert not status_changed(first, later)  # live numbers stay out of the API's messages
    ready = next(c for c in later["conditions"] if c["type"] == "Ready")
    assert ready["lastTransitionTime"] == "1970-01-01T00:16:40Z"  # carried over
    down = facts(now=1020.0, runtime_healthy=False, runtime_error="socket gone")
    broken = node_status(down, host=host, host_ip="192.0.2.1", previous=later)
    assert status_changed(later, broken)
    ready = next(c for c in broken["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["lastTransitionTime"] == "1970-01-01T00:17:00Z"


# -- client certificate rotation ---------------------------------------------------------


def rotated_kubeconfig(api: ApiServer, directory: Path, cn: str) -> Path:
    """A kubelet-style kubeconfig: cert and key both in ``pki/kubelet-client-current.pem``,
    a symlink to the current pair (what the kubelet's certificate manager leaves)."""
    pki = directory / "pki"
    pki.mkdir(parents=True)
    install_pair(pki, "1", *api.pki.issue(cn, ("system:nodes",)))
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "c",
                "cluster": {"server": api.url, "certificate-authority": str(api.pki.ca_path)},
            }
        ],
        "users": [
            {
                "name": "u",
                "user": {
                    "client-certificate": "pki/kubelet-client-current.pem",
                    "client-key": "pki/kubelet-client-current.pem",
                },
            }
        ],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path = directory / "kubelet.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


def install_pair(pki: Path, serial: str, cert: bytes, key: bytes) -> None:
    """Write a pair under a new name and re-point the current link at it, atomically."""
    (pki / f"kubelet-client-{serial}.pem").write_bytes(cert + key)
    tmp = pki / "current.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(f"kubelet-client-{serial}.pem")
    tmp.replace(pki / "kubelet-client-current.pem")


def users_of(api: ApiServer, path: str, *, watch: bool = False) -> list[str | None]:
    return [r.user for r in api.requests if r.path == path and ("watch=true" in r.query) == watch]


async def test_a_rotated_client_certificate_is_used_without_a_restart(
    api: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "ROTATION_CHECK_S", 0.0)
    old_user, new_user = f"system:node:{NODE}", f"system:node:{NODE}-renewed"
    client = ApiClient.from_file(rotated_kubeconfig(api, tmp_path, old_user))
    pods = Reflector(client, Collection("/api/v1/services"), on_change=lambda: None)
    watching = asyncio.create_task(pods.run())
    try:
        await client.list("/api/v1/services", {})
        await eventually(lambda: pods.connected and pods.watches == 1, what="a watch")
        pki = tmp_path / "pki"
        old_cert_key = (pki / "kubelet-client-1.pem").read_bytes()
        new_cert, new_key = api.pki.issue(new_user, ("system:nodes",))

        # Caught half-written (the new certificate with the old key): the old pair stays.
        old_key = old_cert_key[old_cert_key.index(b"-----BEGIN", 1) :]
        install_pair(pki, "2", new_cert, old_key)
        await client.list("/api/v1/services", {})
        assert client.rotations == 0
        assert users_of(api, "/api/v1/services")[-1] == old_user

        # The whole pair: the next call uses it, and the open watch is re-opened with it.
        install_pair(pki, "3", new_cert, new_key)
        await client.list("/api/v1/services", {})
        assert client.rotations == 1
        assert users_of(api, "/api/v1/services")[-1] == new_user
        # (The server logs a watch when it ends: the old one was cut, the new one is open.)
        await eventually(
            lambda: users_of(api, "/api/v1/services", watch=True) == [old_user], what="the old cut"
        )
        await eventually(lambda: pods.connected and pods.watches == 2, what="a new watch")
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        await client.close()
