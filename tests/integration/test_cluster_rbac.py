"""A node with only what the Node authorizer gives (no system:node-proxier binding): the API
refuses its lists of Nodes and EndpointSlices (403), and the agent says so in ``status node``
while its API pods, its static pods and the manifest directory's Services keep working.

Uses the cluster rig's veth link (tests/harness/cluster.py); the test API server runs as
strict as kube-apiserver (Node authorizer, NodeRestriction) with the node's credential left
unbound. Runs once per runtime (containerd over CRI, Docker).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from lightkube import AsyncClient, KubeConfig

from tests.apiserver.process import ApiServerProcess
from tests.harness import TestNode, wait_for
from tests.harness.agent import Agent, RuntimeTarget, cli
from tests.harness.cluster import (
    NODE_NAME,
    SLEEP,
    Link,
    cluster_agent,
    create,
    http_get,
    pod_manifest,
    wait_ready,
)
from tests.harness.manifests import static_pod_yaml

WEB = static_pod_yaml(
    "web",
    script=f"echo {NODE_NAME} > /tmp/index.html && exec httpd -f -p 8080 -h /tmp",
    labels="{app: web}",
    container="      ports: [{name: http, containerPort: 8080}]\n",
)
SERVICE = """apiVersion: v1
kind: Service
metadata: {name: web-local}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
"""
REFUSED = {"/api/v1/nodes", "/apis/discovery.k8s.io/v1/endpointslices"}


@pytest.fixture
async def api(link: Link, tmp_path: Path) -> AsyncIterator[ApiServerProcess]:
    server = ApiServerProcess(tmp_path / "api", host=link.host_ip)
    server.node_kubeconfig(NODE_NAME, node_proxier=False)
    async with server:
        yield server


@pytest.fixture
def agent(node: TestNode, api: ApiServerProcess, runtime_target: RuntimeTarget) -> Iterator[Agent]:
    # --cluster-cidr: the agent watches all Nodes for host-gw routes (refused here).
    extra = ["--cluster-cidr", "10.244.0.0/16"]
    with cluster_agent(node, api, runtime=runtime_target, extra=extra) as a:
        yield a


def _service(agent: Agent, name: str) -> dict[str, Any] | None:
    for s in agent.status()["services"]:
        if s["metadata"]["name"] == name and s["endpoints"]:
            return dict(s)
    return None


async def test_without_node_proxier_pods_and_manifest_services_work_and_the_403_is_told(
    node: TestNode, api: ApiServerProcess, agent: Agent
) -> None:
    admin = AsyncClient(KubeConfig.from_file(api.kubeconfig))
    try:
        agent.write_manifest("web.yaml", WEB)
        agent.write_manifest("web-local.yaml", SERVICE)
        await create(admin, pod_manifest("from-api", SLEEP, grace=1))
        await wait_ready(admin, agent, "from-api")
        await wait_ready(admin, agent, f"web-{NODE_NAME}")  # the static pod's mirror
    finally:
        await admin.close()

    svc = await asyncio.to_thread(
        lambda: wait_for(
            lambda: _service(agent, "web-local"), 30, interval=0.2, message=agent.log_tail
        )
    )
    ip = svc["spec"]["clusterIP"]
    answer = await asyncio.to_thread(
        lambda: wait_for(
            lambda: http_get(node, f"http://{ip}:80/"),
            30,
            message=lambda: f"an answer from the manifest Service {ip}\n{agent.log_tail()}",
        )
    )
    assert answer == NODE_NAME

    def warned() -> str | None:
        text = cli(agent, "status", "node").stdout
        refused = {r for r in REFUSED if f"API refuses {r} (403 Forbidden)" in text}
        return text if refused == REFUSED else None

    view = await asyncio.to_thread(
        lambda: wait_for(warned, 30, interval=0.5, message=agent.log_tail)
    )
    assert "bind ClusterRole system:node-proxier to this node (docs/rbac.md)" in view
    doc = json.loads(cli(agent, "status", "node", "--json").stdout)
    [slices] = doc["cluster"]["forbidden"]
    assert slices["resource"] == "/apis/discovery.k8s.io/v1/endpointslices"
    assert "cannot list resource" in slices["message"]
    [nodes] = doc["network"]["forbidden"]
    assert "cannot read all nodes, only its own Node object" in nodes["message"]
    assert doc["cluster"]["registered"] is True and doc["cluster"]["podsListed"] is True
