"""Two nodes as a new user starts them: no --pod-cidr, no --node-ip, podCIDRs from node IPAM.

The lab (tests/harness/lab.py) runs with ``node_ipam``: the test API server assigns each Node
its podCIDR only when the test says so (a long IPAM delay, then the ``ipam`` hook), so pods
created before it (an API pod on each node, a static pod) are certain to have waited. Then
each pod runs with an address from its own Node's podCIDR, the two nodes' addresses differ,
pods reach each other across the nodes (host-gw routes via each Node's InternalIP), and each
InternalIP is the node's lab address, never a bridge's.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from lightkube import ApiError, AsyncClient
from lightkube.resources.core_v1 import Node, Pod

from nodeagent.network import cni
from nodeagent.runtime.base import ContainerID
from nodeagent.runtime.cri import CRIRuntime
from tests.harness.agent import waiting_message
from tests.harness.cluster import pod_manifest
from tests.harness.lab import Lab, LabNode
from tests.harness.manifests import static_pod_yaml
from tests.harness.wait import async_wait_for

pytestmark = pytest.mark.asyncio(loop_scope="module")

WEB = "hostname > /tmp/index.html && exec httpd -f -p 8080 -h /tmp"
NOT_READY = "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady"
STATIC_POD = static_pod_yaml("static-web", script=WEB)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab(
    image_archives: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Lab]:
    root = tmp_path_factory.mktemp("lab")
    async with Lab(root, count=2, images=image_archives, node_ipam=3600) as lab:
        yield lab


@pytest_asyncio.fixture(loop_scope="module")
async def admin(lab: Lab) -> AsyncIterator[AsyncClient]:
    async with lab.admin() as client:
        yield client


def pod_body(name: str, node: LabNode) -> dict[str, Any]:
    return pod_manifest(name, WEB, grace=1, node_name=node.name)


async def running_pod(admin: AsyncClient, name: str, lab_node: LabNode) -> dict[str, Any]:
    async def running() -> dict[str, Any] | None:
        try:
            pod = dict((await admin.get(Pod, name, namespace="default")).to_dict())
        except ApiError:
            return None
        status = pod.get("status") or {}
        return pod if status.get("phase") == "Running" and status.get("podIP") else None

    return await async_wait_for(
        running, 60, 0.2, message=lambda: f"{name} running\n{lab_node.agent.log_tail()}"
    )


async def fetch(lab_node: LabNode, pod: dict[str, Any], url: str) -> str:
    cid = str(pod["status"]["containerStatuses"][0]["containerID"]).split("://", 1)[1]
    runtime = CRIRuntime(lab_node.node.endpoint)
    try:
        command = ("timeout", "3", "wget", "-q", "-O", "-", url)
        result = await runtime.exec_sync(ContainerID(cid), command, 10)
    finally:
        await runtime.close()
    return result.stdout.decode().strip() if result.exit_code == 0 else f"exit {result.exit_code}"


async def test_late_pod_cidrs_distinct_pod_ips_across_nodes(lab: Lab, admin: AsyncClient) -> None:
    one, two = lab.nodes
    assert lab.api is not None
    one.agent.write_manifest("static.yaml", STATIC_POD)
    for name, lab_node in (("web-1", one), ("web-2", two)):
        await admin.create(Pod.from_dict(pod_body(name, lab_node)))  # type: ignore[call-overload]
    for name, lab_node in (("web-1", one), ("static-web", one), ("web-2", two)):
        message = await async_wait_for(
            functools.partial(waiting_message, lab_node.agent, name),
            30,
            0.2,
            message=lab_node.agent.log_tail,
        )
        assert message.startswith(f"network is not ready: {NOT_READY}"), message
    for lab_node in lab.nodes:
        assert not (lab_node.node.cni_conf_dir / cni.CONFLIST_NAME).exists()

    assert sorted(await lab.api.assign_pod_cidrs()) == ["lab-1", "lab-2"]
    await lab.wait_pod_cidrs()
    assert one.pod_cidr != two.pod_cidr
    await lab.wait_routes()

    pods = {
        "web-1": await running_pod(admin, "web-1", one),
        "static-web": await running_pod(admin, f"static-web-{one.name}", one),
        "web-2": await running_pod(admin, "web-2", two),
    }
    ips = {name: pod["status"]["podIP"] for name, pod in pods.items()}
    assert len(set(ips.values())) == 3
    for name, lab_node in (("web-1", one), ("static-web", one), ("web-2", two)):
        assert ipaddress.ip_address(ips[name]) in ipaddress.ip_network(lab_node.pod_cidr)

    # Across the nodes, both ways: pod to pod over the host-gw routes.
    assert await fetch(one, pods["web-1"], f"http://{ips['web-2']}:8080/") == "web-2"
    assert await fetch(two, pods["web-2"], f"http://{ips['static-web']}:8080/") == (
        f"static-web-{one.name}"
    )

    for lab_node in lab.nodes:
        node = (await admin.get(Node, lab_node.name)).to_dict()
        addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
        assert addresses["InternalIP"] == lab_node.ip
