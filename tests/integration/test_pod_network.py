"""The pod network in cluster mode without --pod-cidr and --node-ip, on both runtimes.

The test API server runs node IPAM (tests/apiserver/ipam.py) with a long delay, so the test
decides when the Node's podCIDR comes: pods created before it (an API pod, a static pod) wait
in Pending while the Node is NotReady with the kubelet's network reason, a hostNetwork pod
runs, and no CNI config exists; once the podCIDR comes, the pods run with addresses from it.
Then the Node is deleted and registered again with another podCIDR under running pods: the
old range stays until they are gone (NetworkUnavailable says why), and the next pod gets an
address of the new range on a bridge made again.

The API server listens on one end of a veth pair whose other end is in the node's namespace,
on a private /30 that is not link-local: the agent must find that address as its InternalIP
(the default route's interface) without being told.
"""

from __future__ import annotations

import functools
import ipaddress
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from lightkube import ApiError, AsyncClient
from lightkube.resources.core_v1 import Event, Node, Pod

from nodeagent.network import cni
from tests.apiserver.process import ApiServerProcess
from tests.harness import TestNode, async_wait_for
from tests.harness.agent import Agent, RuntimeTarget, local_pod, waiting_message
from tests.harness.cluster import Link, cluster_agent, pod_manifest, veth_link
from tests.harness.manifests import SLEEP, static_pod_yaml

NODE_NAME = "node-net"
CLUSTER_CIDR = "10.244.0.0/16"
NOT_READY = "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady"


@pytest.fixture(scope="module")
def link(module_node: TestNode) -> Iterator[Link]:
    """A veth to the node on a /30 of 10.253.0.0/16 (not link-local: a real node address)."""
    with veth_link(module_node, network="10.253.0.0", tag="nn") as made:
        yield made


@pytest.fixture
async def api(link: Link, tmp_path: Path) -> AsyncIterator[ApiServerProcess]:
    ipam = ("--node-ipam", f"{CLUSTER_CIDR}/24", "--node-ipam-delay", "3600")
    server = ApiServerProcess(tmp_path / "api", host=link.host_ip, extra_args=ipam)
    server.node_kubeconfig(NODE_NAME)
    async with server:
        yield server


@pytest.fixture
def agent(node: TestNode, api: ApiServerProcess, runtime_target: RuntimeTarget) -> Iterator[Agent]:
    # The node starts as a new machine: no CNI config, no pod bridge.
    (node.cni_conf_dir / cni.CONFLIST_NAME).unlink(missing_ok=True)
    subprocess.run([*node.netns_argv, "ip", "link", "del", cni.DEFAULT_BRIDGE], capture_output=True)
    extra = ["--cluster-cidr", CLUSTER_CIDR]
    with cluster_agent(
        node,
        api,
        name=NODE_NAME,
        runtime=runtime_target,
        extra=extra,
        cluster_dns=None,
        pod_cidr=False,
    ) as a:
        yield a


def pod_body(name: str, *, host_network: bool = False) -> dict[str, Any]:
    return pod_manifest(name, SLEEP, grace=1, node_name=NODE_NAME, hostNetwork=host_network)


STATIC_POD = static_pod_yaml("static-web")
STATIC_NAME = f"static-web-{NODE_NAME}"  # as the agent names a static pod in cluster mode


async def node_obj(admin: AsyncClient) -> dict[str, Any]:
    """Our Node as the API has it; {} until the agent has registered it (a busy machine
    may take a while to start the agent)."""
    try:
        return dict((await admin.get(Node, NODE_NAME)).to_dict())
    except ApiError as exc:
        if exc.status.code == 404:
            return {}
        raise


def condition(node: dict[str, Any], kind: str) -> dict[str, Any]:
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond["type"] == kind:
            return dict(cond)
    return {}


def running_ip(pod: dict[str, Any] | None) -> str:
    status = (pod or {}).get("status") or {}
    if status.get("phase") != "Running":
        return ""
    return str(status.get("podIP") or "")


async def api_pod(admin: AsyncClient, name: str) -> dict[str, Any] | None:
    try:
        return dict((await admin.get(Pod, name, namespace="default")).to_dict())
    except ApiError as exc:
        if exc.status.code == 404:
            return None
        raise


async def wait_running_in(agent: Agent, name: str, cidr: str) -> str:
    def in_range() -> str:
        ip = running_ip(local_pod(agent, name))
        return ip if ip and ipaddress.ip_address(ip) in ipaddress.ip_network(cidr) else ""

    return await async_wait_for(
        in_range,
        60,
        0.2,
        message=lambda: f"{name} running in {cidr}: {local_pod(agent, name)}\n{agent.log_tail()}",
    )


async def test_pods_created_before_the_pod_cidr_run_in_it(
    agent: Agent, api: ApiServerProcess, admin: AsyncClient, link: Link, node: TestNode
) -> None:
    agent.write_manifest("static.yaml", STATIC_POD)
    await admin.create(Pod.from_dict(pod_body("web")))  # type: ignore[call-overload]
    await admin.create(Pod.from_dict(pod_body("host", host_network=True)))  # type: ignore[call-overload]

    async def not_ready() -> dict[str, Any] | None:
        ready = condition(await node_obj(admin), "Ready")
        return ready if NOT_READY in str(ready.get("message")) else None

    ready = await async_wait_for(not_ready, 30, 0.2, message=lambda: agent.log_tail())
    assert (ready["status"], ready["reason"]) == ("False", "KubeletNotReady")
    for name in ("web", "static-web"):
        message = await async_wait_for(
            functools.partial(waiting_message, agent, name),
            30,
            0.2,
            message=lambda: agent.log_tail(),
        )
        assert message.startswith(f"network is not ready: {NOT_READY}")

    def host_running() -> bool:  # hostNetwork pods do not wait
        return bool((agent.pod("host") or {}).get("status", {}).get("phase") == "Running")

    await async_wait_for(host_running, 60, 0.2, message=lambda: str(agent.pod("host")))
    assert not (node.cni_conf_dir / cni.CONFLIST_NAME).exists()

    async def network_event() -> bool:
        events = admin.list(Event, namespace="default", fields={"involvedObject.name": "web"})
        return any([e.reason == "NetworkNotReady" async for e in events])

    await async_wait_for(network_event, 30, 0.2, message="a NetworkNotReady event for web")
    web = await api_pod(admin, "web")
    assert web is not None and web["status"]["phase"] == "Pending"

    assert await api.assign_pod_cidrs() == [NODE_NAME]
    cidr = str((await node_obj(admin))["spec"]["podCIDR"])
    ips = {name: await wait_running_in(agent, name, cidr) for name in ("web", "static-web")}
    assert len(set(ips.values())) == 2

    async def api_ip() -> str:
        return running_ip(await api_pod(admin, "web"))

    assert await async_wait_for(api_ip, 30, 0.2) == ips["web"]

    async def ready_now() -> dict[str, Any] | None:
        node_now = await node_obj(admin)
        return node_now if condition(node_now, "Ready").get("status") == "True" else None

    ready_node = await async_wait_for(ready_now, 30, 0.2, message=lambda: agent.log_tail())
    addresses = {a["type"]: a["address"] for a in ready_node["status"]["addresses"]}
    assert addresses["InternalIP"] == link.node_ip  # the default route's, never the bridge's
    assert condition(ready_node, "NetworkUnavailable")["status"] == "False"


async def test_a_changed_pod_cidr_waits_for_the_old_pods_then_serves_the_new_range(
    agent: Agent, api: ApiServerProcess, admin: AsyncClient
) -> None:
    await admin.create(Pod.from_dict(pod_body("old")))  # type: ignore[call-overload]

    async def registered() -> bool:
        return bool(await node_obj(admin))

    await async_wait_for(registered, 30, 0.2, message=lambda: agent.log_tail())
    assert await api.assign_pod_cidrs() == [NODE_NAME]
    first = str((await node_obj(admin))["spec"]["podCIDR"])
    await wait_running_in(agent, "old", first)

    # The Node is deleted and registered again (an operator's `kubectl delete node`); another
    # Node, waiting for IPAM since before, takes the freed range, so ours gets a new one.
    blocker = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "blocker"}}
    await admin.create(Node.from_dict(blocker))  # type: ignore[call-overload]
    await admin.delete(Node, NODE_NAME)
    await api.assign_pod_cidrs()

    async def new_cidr() -> str:
        try:
            cidr = str(((await node_obj(admin)).get("spec") or {}).get("podCIDR") or "")
        except ApiError:
            return ""  # not registered again yet
        if not cidr:
            await api.assign_pod_cidrs()
        return cidr if cidr and cidr != first else ""

    second = await async_wait_for(new_cidr, 60, 0.2, message=lambda: agent.log_tail())

    async def pending() -> dict[str, Any] | None:
        cond = condition(await node_obj(admin), "NetworkUnavailable")
        return cond if cond.get("reason") == "PodCIDRChangePending" else None

    cond = await async_wait_for(pending, 30, 0.2, message=lambda: agent.log_tail())
    assert cond["status"] == "True" and first in cond["message"] and second in cond["message"]
    # Pods still start meanwhile, on the range the bridge serves.
    await admin.create(Pod.from_dict(pod_body("meanwhile")))  # type: ignore[call-overload]
    await wait_running_in(agent, "meanwhile", first)

    for name in ("old", "meanwhile"):
        await admin.delete(Pod, name, namespace="default")
    await async_wait_for(
        lambda: agent.pod("old") is None and agent.pod("meanwhile") is None,
        60,
        0.2,
        message=lambda: agent.log_tail(),
    )

    def applied() -> bool:  # the agent re-checks every few seconds
        return bool(agent.status()["node"]["podNetwork"]["podCIDR"] == second)

    await async_wait_for(applied, 30, 0.2, message=lambda: agent.log_tail())
    await admin.create(Pod.from_dict(pod_body("new")))  # type: ignore[call-overload]
    await wait_running_in(agent, "new", second)

    async def settled() -> bool:
        return condition(await node_obj(admin), "NetworkUnavailable").get("status") == "False"

    await async_wait_for(settled, 30, 0.2, message=lambda: agent.log_tail())
