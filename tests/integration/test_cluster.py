"""The real agent joins the test API server: node registration and Lease, API pods that run
on containerd and report back, graceful deletion, and API restarts in the middle of a watch.

The API server runs as a process in the root network namespace, listening on one end of a
veth pair whose other end is in the node's namespace: a private link-local /30 made for the
module (tests/harness/cluster.py, fixtures in conftest.py), so nothing here touches the
machine's own addresses or routes. The agent reaches it
with a node kubeconfig (a client certificate for ``system:node:node-a``); the test reads and
writes through the admin kubeconfig.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Iterator
from typing import Any

import pytest
from lightkube import ApiError, AsyncClient
from lightkube.operators import BinaryOperator, SequenceOperator
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Event, Node, Pod, Service

from tests.apiserver.process import ApiServerProcess
from tests.harness import TestNode, async_wait_for, wait_for
from tests.harness.agent import Agent, RuntimeTarget
from tests.harness.cluster import (
    CLUSTER_DNS,
    NODE_NAME,
    SLEEP,
    Link,
    admin_client,
    cluster_agent,
    container_id,
    create,
    get_pod,
    http_get,
    pod_manifest,
    ready,
    wait_ready,
)
from tests.harness.manifests import static_pod_yaml


@pytest.fixture
def agent(node: TestNode, api: ApiServerProcess) -> Iterator[Agent]:
    with cluster_agent(node, api) as a:
        yield a


async def web_answers_on(admin: AsyncClient, agent: Agent, node: TestNode, cluster_ip: str) -> None:
    """A pod labelled app=web serving its name on 8080 answers through ``cluster_ip``:80."""
    script = "hostname > /tmp/index.html && exec httpd -f -p 8080 -h /tmp"
    body = pod_manifest("web-1", script, grace=1)
    body["metadata"]["labels"] = {"app": "web"}
    await create(admin, body)
    await wait_ready(admin, agent, "web-1")
    answer = await asyncio.to_thread(
        lambda: wait_for(
            lambda: http_get(node, f"http://{cluster_ip}:80/"),
            30,
            message=lambda: f"an answer from {cluster_ip}\n{agent.log_tail()}",
        )
    )
    assert answer == "web-1"


# --- tests ---------------------------------------------------------------------------------


async def test_node_registers_and_renews_its_lease(admin: AsyncClient, agent: Agent) -> None:
    async def registered() -> Node | None:
        try:
            return await admin.get(Node, NODE_NAME)
        except ApiError:
            return None

    node = await async_wait_for(registered, 20, message=lambda: f"the Node\n{agent.log_tail()}")
    assert node.metadata is not None and node.metadata.labels is not None
    assert node.metadata.labels["kubernetes.io/hostname"] == NODE_NAME
    assert node.metadata.labels["kubernetes.io/os"] == "linux"

    async def reported() -> Node | None:
        node = await admin.get(Node, NODE_NAME)
        info = node.status.nodeInfo if node.status else None
        return node if info and info.containerRuntimeVersion.startswith("containerd://1.") else None

    node = await async_wait_for(reported, 30, message="the runtime version in nodeInfo")

    async def ready() -> str | None:
        # The first status may say NotReady (the runtime not yet listed), as a kubelet's does.
        node = await admin.get(Node, NODE_NAME)
        conditions = node.status.conditions if node.status else None
        found = next((c for c in conditions or [] if c.type == "Ready"), None)
        return "ready" if found is not None and found.status == "True" else None

    await async_wait_for(ready, 30, message=lambda: f"the Node Ready\n{agent.log_tail()}")

    async def node_told() -> Event | None:
        # A starting kubelet tells its node's first pressure statuses, as events on the Node.
        async for event in admin.list(Event, namespace="default"):
            if event.involvedObject.kind == "Node" and event.reason == "NodeHasSufficientMemory":
                return event
        return None

    told = await async_wait_for(node_told, 30, message=lambda: f"a Node event\n{agent.log_tail()}")
    assert told.involvedObject.name == NODE_NAME and told.involvedObject.uid == NODE_NAME
    assert told.message == f"Node {NODE_NAME} status is now: NodeHasSufficientMemory"

    async def lease_time() -> Any:
        lease = await admin.get(Lease, NODE_NAME, namespace="kube-node-lease")
        return lease.spec.renewTime if lease.spec else None

    first = await async_wait_for(lease_time, 20, message="the Lease")
    lease = await admin.get(Lease, NODE_NAME, namespace="kube-node-lease")
    assert lease.spec is not None and lease.spec.leaseDurationSeconds == 40
    assert lease.spec.holderIdentity == NODE_NAME

    async def renewed() -> bool:
        return bool((await lease_time()) > first)

    await async_wait_for(renewed, 25, message="the Lease renewed")
    assert agent.status()["cluster"]["registered"] is True


async def test_api_pod_runs_and_its_status_reaches_the_api(
    node: TestNode, admin: AsyncClient, agent: Agent
) -> None:
    # The pod gets what ServiceAccount admission gives every pod: a projected volume with a
    # bound token, the cluster CA and its namespace. It copies them out through a hostPath.
    out = node.root / "sa-out"
    out.mkdir(exist_ok=True)
    sa = "/var/run/secrets/kubernetes.io/serviceaccount"
    script = f"cp {sa}/namespace {sa}/token {sa}/ca.crt /etc/resolv.conf /out/; {SLEEP}"
    body = pod_manifest(
        "web", script, token=True, volumes=[{"name": "out", "hostPath": {"path": str(out)}}]
    )
    body["spec"]["containers"][0]["volumeMounts"] = [{"name": "out", "mountPath": "/out"}]
    started = time.monotonic()
    await create(admin, body)
    pod = await wait_ready(admin, agent, "web")
    print(f"API pod Ready in the API {time.monotonic() - started:.2f} s after it was created")
    status = pod["status"]
    assert status["podIP"].startswith(node.pod_cidr.rsplit(".", 2)[0])
    (container,) = status["containerStatuses"]
    assert container["containerID"].startswith("containerd://") and container["ready"]
    assert {c["type"] for c in status["conditions"]} >= {"Ready", "ContainersReady", "Initialized"}
    local = agent.pod("web")
    assert local is not None and local["metadata"]["uid"] == pod["metadata"]["uid"]
    assert (out / "namespace").read_text() == "default"
    assert (out / "token").read_text().count(".") == 2  # a JWT
    assert "BEGIN CERTIFICATE" in (out / "ca.crt").read_text()
    resolv = (out / "resolv.conf").read_text()  # dnsPolicy ClusterFirst, the API's default
    assert f"nameserver {CLUSTER_DNS}" in resolv
    assert "search default.svc.cluster.local svc.cluster.local cluster.local" in resolv


async def test_a_deleted_pod_terminates_gracefully_and_disappears(
    node: TestNode, admin: AsyncClient, agent: Agent
) -> None:
    marker_dir = node.root / "marker"
    marker_dir.mkdir(exist_ok=True)
    (marker_dir / "bye").unlink(missing_ok=True)
    script = "trap 'echo bye > /m/bye; exit 0' TERM; while true; do sleep 1; done"
    body = pod_manifest(
        "leaving", script, grace=20, volumes=[{"name": "m", "hostPath": {"path": str(marker_dir)}}]
    )
    body["spec"]["containers"][0]["volumeMounts"] = [{"name": "m", "mountPath": "/m"}]
    await create(admin, body)
    await wait_ready(admin, agent, "leaving")
    seen: list[dict[str, Any]] = []

    async def watch() -> None:
        fields: dict[str, str | BinaryOperator | SequenceOperator] = {"metadata.name": "leaving"}
        async for _, pod in admin.watch(Pod, namespace="default", fields=fields):
            seen.append(pod.to_dict())

    watcher = asyncio.create_task(watch())
    deleted_at = time.monotonic()
    await admin.delete(Pod, "leaving", namespace="default")  # the pod's own 20 s grace

    async def gone() -> bool:
        return await get_pod(admin, "leaving") is None

    try:
        await async_wait_for(gone, 20, message=lambda: f"the pod gone\n{agent.log_tail()}")
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    took = time.monotonic() - deleted_at
    # Before the final DELETE the agent wrote how the pod ended: TERM, exit 0, Succeeded.
    phases = [(p.get("status") or {}).get("phase") for p in seen]
    assert "Succeeded" in phases, phases
    final = next(p["status"] for p in seen if p["status"].get("phase") == "Succeeded")
    assert final["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    assert not any(c["status"] == "True" for c in final["conditions"] if c["type"] == "Ready")
    assert (marker_dir / "bye").read_text().strip() == "bye"  # TERM reached the container
    assert took < 15, f"the agent waited out the grace period ({took:.1f} s) instead of TERM"
    assert not await asyncio.to_thread(agent.runtime.sandboxes)
    assert agent.pod("leaving") is None


async def test_an_api_restart_in_the_middle_of_a_watch_loses_nothing(
    api: ApiServerProcess, admin: AsyncClient, agent: Agent
) -> None:
    await create(admin, pod_manifest("steady", SLEEP, grace=2))
    before = container_id(await wait_ready(admin, agent, "steady"))

    # The listener restarts, the history stays: the agent's watch resumes from its version.
    await api.restart(down_seconds=1.0)
    client = admin_client(api)
    try:
        await create(client, pod_manifest("after-restart", SLEEP, grace=2))
        await wait_ready(client, agent, "after-restart")
        # A write the agent does not see (another node's pod) makes its version older than
        # the state the restarted process restores ...
        other = pod_manifest("elsewhere", SLEEP)
        other["spec"]["nodeName"] = "node-z"
        await create(client, other)
    finally:
        await client.close()

    # ... so when the whole process restarts, its history gone, the agent's resume gets
    # 410 Gone and it relists.
    await api.stop()
    await api.start()
    client = admin_client(api)
    try:
        await client.delete(Pod, "after-restart", namespace="default")
        await create(client, pod_manifest("after-relist", SLEEP, grace=2))
        await wait_ready(client, agent, "after-relist")

        async def gone() -> bool:
            return await get_pod(client, "after-restart") is None

        await async_wait_for(gone, 20, message=lambda: f"after-restart gone\n{agent.log_tail()}")
        steady = await get_pod(client, "steady")
    finally:
        await client.close()
    assert steady is not None and container_id(steady) == before  # never restarted
    names = {p["metadata"]["name"] for p in agent.status()["pods"]}
    assert names == {"steady", "after-relist"}  # and not "elsewhere"
    # One list at start, one after the 410 of the new process; the first restart resumed.
    assert agent.status()["cluster"]["podRelists"] == 2


async def test_a_service_and_its_endpoint_slice_program_rules_that_forward(
    node: TestNode, admin: AsyncClient, agent: Agent
) -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    created = await admin.create(Service.from_dict(service))  # type: ignore[call-overload]
    cluster_ip = created.spec.clusterIP
    await web_answers_on(admin, agent, node, cluster_ip)
    shown = {s["metadata"]["name"] for s in agent.status()["services"]}
    assert {"web", "kubernetes"} <= shown


STATIC = static_pod_yaml("static")


async def test_a_static_pod_runs_under_its_cluster_name_with_a_mirror_pod(
    admin: AsyncClient, agent: Agent
) -> None:
    agent.write_manifest("static.yaml", STATIC)
    name = f"static-{NODE_NAME}"
    mirror = await wait_ready(admin, agent, name)
    annotations = mirror["metadata"]["annotations"]
    assert annotations["kubernetes.io/config.source"] == "file"
    assert annotations["kubernetes.io/config.mirror"] == annotations["kubernetes.io/config.hash"]
    local = agent.pod(name)
    assert (
        local is not None and local["metadata"]["uid"] == annotations["kubernetes.io/config.hash"]
    )
    (agent.manifests / "static.yaml").unlink()

    async def gone() -> bool:
        return await get_pod(admin, name) is None

    await async_wait_for(gone, 20, message=lambda: f"the mirror gone\n{agent.log_tail()}")


async def test_image_pulls_and_a_missing_config_map_are_told_in_events(
    admin: AsyncClient, agent: Agent
) -> None:
    # No registry is reachable: pull policy Always makes the pull fail for real.
    pulling = pod_manifest("pulling", SLEEP, grace=1)
    pulling["spec"]["containers"][0]["imagePullPolicy"] = "Always"
    waiting = pod_manifest("waiting", SLEEP, grace=1)
    waiting["spec"]["containers"][0]["env"] = [
        {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "x"}}}
    ]
    present = pod_manifest("present", SLEEP, grace=1)
    for body in (pulling, waiting, present):
        await create(admin, body)

    async def told() -> dict[str, list[tuple[str, str]]] | None:
        seen: dict[str, list[tuple[str, str]]] = {}
        async for event in admin.list(Event, namespace="default"):
            name = event.involvedObject.name or ""
            seen.setdefault(name, []).append((event.reason or "", event.message or ""))
        reasons = {name: {r for r, _ in items} for name, items in seen.items()}
        done = (
            {"Pulling", "Failed"} <= reasons.get("pulling", set())
            and "Failed" in reasons.get("waiting", set())
            and {"Pulled", "Started"} <= reasons.get("present", set())
        )
        return seen if done else None

    seen = await async_wait_for(told, 40, interval=0.5, message=lambda: agent.log_tail())
    assert ("Pulling", 'Pulling image "busybox"') in seen["pulling"]
    assert any(
        r == "Failed" and m.startswith('Failed to pull image "busybox": ')
        for r, m in seen["pulling"]
    )
    assert ("Failed", "Error: ErrImagePull") in seen["pulling"]
    assert any(r == "Failed" and '"absent" not found' in m for r, m in seen["waiting"])
    assert ("Pulled", 'Container image "busybox" already present on machine') in seen["present"]


# --- pod status the API accepts, on both runtimes ------------------------------------------


@pytest.fixture
def runtime_agent(
    node: TestNode, api: ApiServerProcess, link: Link, runtime_target: RuntimeTarget
) -> Iterator[Agent]:
    """An agent of the test API server on the module's runtime: containerd, then Docker."""
    extra = ["--node-ip", link.node_ip]
    with cluster_agent(node, api, runtime=runtime_target, extra=extra, cluster_dns=None) as a:
        yield a


async def test_a_replaced_sandbox_shows_its_new_ip_in_the_api(
    node: TestNode, admin: AsyncClient, runtime_agent: Agent, runtime_target: RuntimeTarget
) -> None:
    agent = runtime_agent
    uid = await create(admin, pod_manifest("moved", SLEEP, grace=2))
    first = await wait_ready(admin, agent, "moved")
    old_ip = first["status"]["podIP"]
    assert first["status"]["podIPs"] == [{"ip": old_ip}]
    # The runtime helpers run their own event loop: in a thread, beside this test's.
    [sandbox] = [s for s in await asyncio.to_thread(runtime_target.sandboxes) if s.uid == uid]
    runtime_target.kill(sandbox.id)  # the pause process dies: the agent makes a new sandbox

    async def moved() -> dict[str, Any] | None:
        pod = await get_pod(admin, "moved")
        ip = ((pod or {}).get("status") or {}).get("podIP")
        return pod if ready(pod) and ip and ip != old_ip else None

    pod = await async_wait_for(
        moved, 60, interval=0.2, message=lambda: f"a new pod IP in the API\n{agent.log_tail()}"
    )
    new_ip = pod["status"]["podIP"]
    assert pod["status"]["podIPs"] == [{"ip": new_ip}]  # the old IP gone, not listed first
    sandboxes = await asyncio.to_thread(runtime_target.sandboxes)
    live = [s.id for s in sandboxes if s.uid == uid and s.state.value == "ready"]
    assert len(live) == 1 and live != [sandbox.id]
    # The new IP is one the CNI hands out: from the node's pod CIDR.
    assert ipaddress.ip_address(new_ip) in ipaddress.ip_network(node.pod_cidr)

    # The status keeps reaching the API: a container killed now shows up restarted there.
    before = container_id(pod)
    runtime_target.kill(before.split("://", 1)[1])

    async def restarted() -> dict[str, Any] | None:
        pod = await get_pod(admin, "moved")
        return pod if ready(pod) and container_id(pod or {}) != before else None

    pod = await async_wait_for(
        restarted, 60, interval=0.2, message=lambda: f"the restart in the API\n{agent.log_tail()}"
    )
    assert pod["status"]["podIP"] == new_ip and pod["status"]["podIPs"] == [{"ip": new_ip}]


async def test_a_host_network_pod_reports_the_node_ip(
    admin: AsyncClient, runtime_agent: Agent, link: Link
) -> None:
    await create(admin, pod_manifest("hostnet", SLEEP, grace=2, hostNetwork=True))
    pod = await wait_ready(admin, runtime_agent, "hostnet")
    status = pod["status"]
    assert status["hostIP"] == link.node_ip and status["hostIPs"] == [{"ip": link.node_ip}]
    assert status["podIP"] == link.node_ip and status["podIPs"] == [{"ip": link.node_ip}]


async def test_api_services_keep_their_cluster_ips_whatever_the_service_cidr(
    node: TestNode, api: ApiServerProcess, admin: AsyncClient
) -> None:
    # The API server allocates from 10.96.0.0/16; the agent is told another range (k3s's):
    # it matters to standalone allocation only, never to the API's Services.
    kubeconfig = str(api.workdir / f"{NODE_NAME}.kubeconfig")
    extra = ["--kubeconfig", kubeconfig, "--service-cidr", "10.43.0.0/16"]
    agent = Agent(node, name=NODE_NAME, extra=extra)
    for old in agent.manifests.iterdir():
        old.unlink()
    agent.start()
    try:
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "lb", "namespace": "default"},
            "spec": {
                "type": "LoadBalancer",
                "externalTrafficPolicy": "Local",
                "selector": {"app": "web"},
                "ports": [{"port": 80, "targetPort": 8080}],
            },
        }
        created = await admin.create(Service.from_dict(service))  # type: ignore[call-overload]
        cluster_ip, hc_port = created.spec.clusterIP, created.spec.healthCheckNodePort
        assert cluster_ip.startswith("10.96.") and hc_port
        await web_answers_on(admin, agent, node, cluster_ip)
        assert not [e for e in agent.status()["errors"] if e["object"].startswith("Service")]
        health = await asyncio.to_thread(
            lambda: wait_for(
                lambda: http_get(node, f"http://127.0.0.1:{hc_port}/"),
                30,
                message=lambda: f"the health check node port\n{agent.log_tail()}",
            )
        )
        assert '"localEndpoints":1' in health
    finally:
        agent.stop()
