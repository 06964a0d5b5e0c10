"""What the kubelet's admission, deletion and mirror-pod rules look like from the API, with
the real agent on both runtimes: a DaemonSet-shaped pod (privileged on containerd,
hostNetwork, hostPath, ``matchFields``, the DaemonSet tolerations) runs on a node tainted
not-ready, without ``--allow-privileged``; a label added to our Node admits a pod that
selects it, and one removed while the agent is down does not evict a pod that runs; the
second pod on a host port fails ``NodePorts``; a second DELETE with a
shorter grace period hurries a termination under way; a mirror pod deleted with
``kubectl delete`` comes back; the Node reports a Kubernetes ``kubeletVersion``.

Uses the cluster rig (tests/harness/cluster.py: a test API server on a private veth link to
the node).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from lightkube import AsyncClient
from lightkube.models.core_v1 import NodeSystemInfo
from lightkube.resources.core_v1 import Node, Pod
from lightkube.types import PatchType

from tests.apiserver.process import ApiServerProcess
from tests.harness import TestNode, async_wait_for
from tests.harness.agent import Agent, RuntimeTarget
from tests.harness.cluster import (
    NODE_NAME,
    SLEEP,
    cluster_agent,
    container_id,
    create,
    get_pod,
    pod_manifest,
    wait_ready,
)
from tests.harness.manifests import static_pod_yaml

DAEMONSET_TOLERATIONS = [
    {"key": f"node.kubernetes.io/{key}", "operator": "Exists", "effect": effect}
    for key, effect in (
        ("not-ready", "NoExecute"),
        ("unreachable", "NoExecute"),
        ("disk-pressure", "NoSchedule"),
        ("memory-pressure", "NoSchedule"),
        ("pid-pressure", "NoSchedule"),
        ("unschedulable", "NoSchedule"),
        ("network-unavailable", "NoSchedule"),
    )
]


@pytest.fixture
def agent(node: TestNode, api: ApiServerProcess, runtime_target: RuntimeTarget) -> Iterator[Agent]:
    """The agent in cluster mode on the module's runtime, WITHOUT --allow-privileged."""
    with cluster_agent(node, api, runtime=runtime_target, allow_privileged=False) as a:
        yield a


async def our_node(admin: AsyncClient, agent: Agent) -> Node:
    async def found() -> Node | None:
        try:
            return await admin.get(Node, NODE_NAME)
        except Exception:
            return None

    return await async_wait_for(found, 20, message=lambda: f"the Node\n{agent.log_tail()}")


async def failed(admin: AsyncClient, agent: Agent, name: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        pod = await get_pod(admin, name)
        return pod if (pod or {}).get("status", {}).get("phase") == "Failed" else None

    return await async_wait_for(
        check, 30, interval=0.2, message=lambda: f"{name} Failed\n{agent.log_tail()}"
    )


async def test_a_daemonset_pod_runs_on_a_not_ready_node_without_allow_privileged(
    node: TestNode, admin: AsyncClient, agent: Agent, runtime_target: RuntimeTarget
) -> None:
    await our_node(admin, agent)
    # What the node lifecycle controller puts on a node that is not Ready.
    taints = [
        {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"},
        {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"},
    ]
    await admin.patch(Node, NODE_NAME, {"spec": {"taints": taints}}, patch_type=PatchType.MERGE)
    logs = node.root / "ds-logs"
    logs.mkdir(exist_ok=True)
    (logs / "seen").unlink(missing_ok=True)
    term = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [NODE_NAME]}]}
    body = pod_manifest(
        "agent-ds",
        f"touch /host/seen; {SLEEP}",
        hostNetwork=True,
        tolerations=DAEMONSET_TOLERATIONS,
        affinity={
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}
            }
        },
        volumes=[{"name": "host", "hostPath": {"path": str(logs)}}],
    )
    body["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "name": "agent",
            "uid": "00000000-0000-4000-8000-000000000001",
            "controller": True,
        }
    ]
    main = body["spec"]["containers"][0]
    main["volumeMounts"] = [{"name": "host", "mountPath": "/host"}]
    if runtime_target.kind == "cri":  # Docker here lacks CAP_SYS_RESOURCE for privileged
        main["securityContext"] = {"privileged": True}
    await create(admin, body)
    pod = await wait_ready(admin, agent, "agent-ds")
    assert (logs / "seen").exists()
    assert pod["status"]["phase"] == "Running"


@pytest.mark.runtime_independent
async def test_a_label_added_to_our_node_admits_a_pod_that_selects_it(
    admin: AsyncClient, agent: Agent
) -> None:
    await our_node(admin, agent)
    labels = {"metadata": {"labels": {"disktype": "ssd"}}}
    await admin.patch(Node, NODE_NAME, labels, patch_type=PatchType.MERGE)  # kubectl label

    def seen() -> bool:
        cluster_view = agent.status().get("cluster") or {}
        return (cluster_view.get("nodeLabels") or {}).get("disktype") == "ssd"

    await async_wait_for(seen, 20, message=lambda: f"the label seen\n{agent.log_tail()}")
    await create(admin, pod_manifest("picky", SLEEP, grace=1, nodeSelector={"disktype": "ssd"}))
    await create(admin, pod_manifest("pickier", SLEEP, grace=1, nodeSelector={"disktype": "nvme"}))
    await wait_ready(admin, agent, "picky")
    pod = await failed(admin, agent, "pickier")
    assert pod["status"]["reason"] == "NodeAffinity"


async def test_a_running_pod_is_not_judged_again_when_the_agent_restarts(
    admin: AsyncClient, agent: Agent
) -> None:
    await our_node(admin, agent)
    label = {"metadata": {"labels": {"zone-role": "edge"}}}
    await admin.patch(Node, NODE_NAME, label, patch_type=PatchType.MERGE)

    def seen(value: str | None) -> bool:
        cluster_view = agent.status().get("cluster") or {}
        return (cluster_view.get("nodeLabels") or {}).get("zone-role") == value

    await async_wait_for(lambda: seen("edge"), 20, message=lambda: agent.log_tail())
    await create(admin, pod_manifest("edge", SLEEP, grace=1, nodeSelector={"zone-role": "edge"}))
    before = container_id(await wait_ready(admin, agent, "edge"))
    agent.stop()  # its pods keep running
    unlabel = {"metadata": {"labels": {"zone-role": None}}}
    await admin.patch(Node, NODE_NAME, unlabel, patch_type=PatchType.MERGE)
    agent.start()
    await async_wait_for(lambda: seen(None), 20, message=lambda: agent.log_tail())
    # A new pod is judged by today's labels; the running one was admitted once, for good.
    await create(admin, pod_manifest("later", SLEEP, grace=1, nodeSelector={"zone-role": "edge"}))
    assert (await failed(admin, agent, "later"))["status"]["reason"] == "NodeAffinity"
    pod = await wait_ready(admin, agent, "edge")
    assert container_id(pod) == before


@pytest.mark.runtime_independent
async def test_the_second_pod_on_a_host_port_fails(admin: AsyncClient, agent: Agent) -> None:
    port = [{"containerPort": 8080, "hostPort": 18080, "protocol": "TCP"}]
    first = pod_manifest("first", SLEEP, grace=1)
    first["spec"]["containers"][0]["ports"] = port
    await create(admin, first)
    await wait_ready(admin, agent, "first")
    second = pod_manifest("second", SLEEP, grace=1)
    second["spec"]["containers"][0]["ports"] = port
    await create(admin, second)
    pod = await failed(admin, agent, "second")
    assert pod["status"]["reason"] == "NodePorts"
    assert "didn't have free ports" in pod["status"]["message"]
    assert not pod["status"].get("containerStatuses", [{}])[0].get("containerID")


async def test_a_shorter_grace_period_asked_later_wins(admin: AsyncClient, agent: Agent) -> None:
    # The container ignores TERM: only KILL ends it, when the grace period does.
    await create(
        admin, pod_manifest("stubborn", "trap '' TERM; while true; do sleep 1; done", grace=600)
    )
    await wait_ready(admin, agent, "stubborn")
    await admin.delete(Pod, "stubborn", namespace="default", grace_period=600)

    async def terminating() -> bool:
        pod = await get_pod(admin, "stubborn")
        return bool(pod and pod["metadata"].get("deletionGracePeriodSeconds") == 600)

    await async_wait_for(terminating, 10, message="the first DELETE")
    await async_wait_for(
        lambda: "pod_deleting" in agent.log_tail(200), 20, message="the termination begun"
    )
    await admin.delete(Pod, "stubborn", namespace="default", grace_period=3)

    async def gone() -> bool:
        return await get_pod(admin, "stubborn") is None

    # Far below the first 600 s: the second DELETE's 3 s (2 s at the least) decided.
    await async_wait_for(gone, 60, message=lambda: f"the pod gone\n{agent.log_tail()}")
    assert {"event": "pod_grace_shortened", "grace_s": 3} in events(agent)


def events(agent: Agent) -> list[dict[str, Any]]:
    """The agent's JSON log records, each as its event and grace period."""
    found = []
    for line in agent.log_tail(400).splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            found.append({"event": record.get("event"), "grace_s": record.get("grace_s")})
    return found


STATIC = static_pod_yaml("mirrored")


@pytest.mark.runtime_independent
async def test_a_deleted_mirror_pod_comes_back_and_the_static_pod_runs_on(
    admin: AsyncClient, agent: Agent
) -> None:
    agent.write_manifest("mirrored.yaml", STATIC)
    name = f"mirrored-{NODE_NAME}"
    mirror = await wait_ready(admin, agent, name)
    container = mirror["status"]["containerStatuses"][0]["containerID"]
    await admin.delete(Pod, name, namespace="default")  # as kubectl delete: a grace period

    async def remade() -> dict[str, Any] | None:
        pod = await get_pod(admin, name)
        meta = (pod or {}).get("metadata") or {}
        fresh = meta.get("uid") not in (None, mirror["metadata"]["uid"])
        return pod if fresh and not meta.get("deletionTimestamp") else None

    await async_wait_for(remade, 30, message=lambda: f"the mirror again\n{agent.log_tail()}")
    again = await wait_ready(admin, agent, name)
    assert again["status"]["containerStatuses"][0]["containerID"] == container  # never stopped


@pytest.mark.runtime_independent
async def test_the_node_reports_a_kubernetes_kubelet_version(
    admin: AsyncClient, agent: Agent
) -> None:
    async def info() -> NodeSystemInfo | None:
        node = await our_node(admin, agent)
        return node.status.nodeInfo if node.status and node.status.nodeInfo else None

    found: NodeSystemInfo = await async_wait_for(info, 30, message="nodeInfo")
    assert re.fullmatch(r"v1\.\d+\.\d+-nodeagent\.\d+\.\d+\.\d+", found.kubeletVersion)
    assert found.kubeProxyVersion == ""  # deprecated: the kubelet leaves it empty
