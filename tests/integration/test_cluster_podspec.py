"""Pod spec semantics a real cluster relies on (issue 17), on containerd and on Docker Engine
(``runtime_target``): the Service environment variables in cluster mode (from the Services
the agent watches for its proxy) and in standalone mode (the manifest directory's Services),
and the fields the API accepts and fills in (os, readinessGates, imagePullSecrets,
setHostnameAsFQDN), which must never fail a pod.

Each container prints what it sees (its environment, its hostname) and the test reads it back
with ``nodeagent logs``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from lightkube import AsyncClient
from lightkube.resources.core_v1 import Event, PodStatus, Service
from lightkube.resources.node_v1 import RuntimeClass
from lightkube.types import PatchType

from tests.apiserver.process import ApiServerProcess
from tests.harness import TestNode, async_wait_for, cluster, wait_for
from tests.harness.agent import Agent, RuntimeTarget, is_ready
from tests.harness.cluster import SLEEP, create, get_pod, pod_manifest, ready
from tests.harness.manifests import static_pod_yaml
from tests.harness.typed import present

GATE = "example.com/load-balancer"


@pytest.fixture
def cluster_agent(
    node: TestNode, api: ApiServerProcess, runtime_target: RuntimeTarget
) -> Iterator[Agent]:
    with cluster.cluster_agent(node, api, runtime=runtime_target) as a:
        yield a


def logs(agent: Agent, pod: str, namespace: str = "default") -> str:
    argv = [sys.executable, "-m", "nodeagent", "logs", pod, "-n", namespace]
    argv += ["--status-socket", str(agent.socket)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    return result.stdout if result.returncode == 0 else ""


def printed(agent: Agent, pod: str, marker: str = "done") -> list[str]:
    """The lines the pod printed before ``marker``."""
    out = wait_for(
        lambda: (text := logs(agent, pod)) and marker in text.splitlines() and text,
        30,
        message=lambda: f"{pod} printed {marker!r}: {logs(agent, pod)!r}\n{agent.log_tail()}",
    )
    lines = str(out).splitlines()
    return lines[: lines.index(marker)]


def env_lines(agent: Agent, pod: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in printed(agent, pod) if "=" in line)


def known_service(agent: Agent, name: str) -> str:
    """The cluster IP the agent's proxy shows for default/``name``, once it knows it."""

    def find() -> str:
        for service in agent.status()["services"]:
            meta, spec = service["metadata"], service["spec"]
            if (meta["namespace"], meta["name"]) == ("default", name) and spec.get("clusterIP"):
                return str(spec["clusterIP"])
        return ""

    return str(wait_for(find, 30, message=lambda: f"the agent knows {name}\n{agent.log_tail()}"))


ENV_SCRIPT = f"env | grep -E '^(KUBERNETES|SVC_A|URL)' | sort; echo done; {SLEEP}"


async def test_pods_see_the_kubernetes_service_and_their_namespaces_services(
    admin: AsyncClient, cluster_agent: Agent
) -> None:
    agent = cluster_agent
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "svc-a", "namespace": "default"},
        "spec": {"selector": {"app": "none"}, "ports": [{"name": "http", "port": 8080}]},
    }
    created = await admin.create(Service.from_dict(service))  # type: ignore[call-overload]
    ip = str(created.spec.clusterIP)
    kubernetes = await admin.get(Service, "kubernetes", namespace="default")
    api_ip = str(present(kubernetes.spec).clusterIP)
    # Env is read when a container is created: wait until the agent has the Service.
    assert await asyncio.to_thread(known_service, agent, "svc-a") == ip
    linked = pod_manifest("linked", ENV_SCRIPT, grace=1)
    linked["spec"]["containers"][0]["env"] = [
        {"name": "SVC_A_PORT", "value": "mine"},
        {"name": "URL", "value": "http://$(SVC_A_SERVICE_HOST):$(SVC_A_SERVICE_PORT_HTTP)"},
    ]
    unlinked = pod_manifest("unlinked", ENV_SCRIPT, grace=1, enableServiceLinks=False)
    await create(admin, linked)
    await create(admin, unlinked)

    env = await asyncio.to_thread(env_lines, agent, "linked")
    assert env["KUBERNETES_SERVICE_HOST"] == api_ip
    assert env["KUBERNETES_SERVICE_PORT"] == "443"
    assert env["KUBERNETES_PORT_443_TCP"] == f"tcp://{api_ip}:443"
    assert {k: v for k, v in env.items() if k.startswith("SVC_A")} == {
        "SVC_A_SERVICE_HOST": ip,
        "SVC_A_SERVICE_PORT": "8080",
        "SVC_A_SERVICE_PORT_HTTP": "8080",
        "SVC_A_PORT": "mine",  # the container's own variable wins
        "SVC_A_PORT_8080_TCP": f"tcp://{ip}:8080",
        "SVC_A_PORT_8080_TCP_PROTO": "tcp",
        "SVC_A_PORT_8080_TCP_PORT": "8080",
        "SVC_A_PORT_8080_TCP_ADDR": ip,
    }
    assert env["URL"] == f"http://{ip}:8080"

    plain = await asyncio.to_thread(env_lines, agent, "unlinked")
    assert plain["KUBERNETES_SERVICE_HOST"] == api_ip
    assert plain["KUBERNETES_SERVICE_PORT"] == "443"
    assert not [k for k in plain if k.startswith("SVC_A")]


async def test_a_pod_with_the_fields_the_api_fills_in_runs_and_its_gate_holds_ready(
    admin: AsyncClient, cluster_agent: Agent
) -> None:
    agent = cluster_agent
    body = pod_manifest(
        "gated",
        f"hostname; echo done; {SLEEP}",
        grace=1,
        os={"name": "linux"},
        readinessGates=[{"conditionType": GATE}],
        imagePullSecrets=[{"name": "regcred"}],
        hostname="web",
        subdomain="sub",
        setHostnameAsFQDN=True,
    )
    await create(admin, body)
    lines = await asyncio.to_thread(printed, agent, "gated")
    assert lines == ["web.sub.default.svc.cluster.local"]

    async def gate_holds_ready() -> dict[str, Any] | None:
        pod = await get_pod(admin, "gated")
        status = (pod or {}).get("status") or {}
        by_type = {c["type"]: c for c in status.get("conditions") or []}
        containers = by_type.get("ContainersReady", {}).get("status") == "True"
        held = by_type.get("Ready", {}).get("reason") == "ReadinessGatesNotReady"
        return pod if status.get("phase") == "Running" and containers and held else None

    pod = await async_wait_for(
        gate_holds_ready, 30, interval=0.2, message=lambda: f"gate holds Ready\n{agent.log_tail()}"
    )
    assert not ready(pod)

    condition = {"type": GATE, "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}
    patch = {"status": {"conditions": [condition]}}
    await admin.patch(
        PodStatus, "gated", patch, namespace="default", patch_type=PatchType.STRATEGIC
    )

    async def ready_with_gate() -> dict[str, Any] | None:
        pod = await get_pod(admin, "gated")
        return pod if ready(pod) else None

    pod = await async_wait_for(
        ready_with_gate, 30, interval=0.2, message=lambda: f"Ready\n{agent.log_tail()}"
    )
    gates = [c for c in pod["status"]["conditions"] if c["type"] == GATE]
    assert [c["status"] for c in gates] == ["True"]  # our status patches leave it alone


@pytest.mark.runtime_independent
async def test_a_windows_pod_fails_with_a_message_naming_the_field(
    admin: AsyncClient, cluster_agent: Agent
) -> None:
    await create(admin, pod_manifest("win", SLEEP, os={"name": "windows"}))

    async def failed() -> dict[str, Any] | None:
        pod = await get_pod(admin, "win")
        return pod if ((pod or {}).get("status") or {}).get("phase") == "Failed" else None

    pod = await async_wait_for(
        failed, 30, interval=0.2, message=lambda: f"win Failed\n{cluster_agent.log_tail()}"
    )
    assert "spec.os.name" in pod["status"]["message"]
    assert "windows" in pod["status"]["message"]


async def test_runtime_classes_of_runc_run_and_another_handler_fails_the_pod_with_an_event(
    admin: AsyncClient, cluster_agent: Agent
) -> None:
    for name, handler in (("plain", "runc"), ("sandboxed", "kata")):
        body = {"metadata": {"name": name}, "handler": handler}
        await admin.create(RuntimeClass.from_dict(body))  # type: ignore[call-overload]
    await create(admin, pod_manifest("runc-pod", SLEEP, grace=1, runtimeClassName="plain"))
    await create(admin, pod_manifest("kata-pod", SLEEP, grace=1, runtimeClassName="sandboxed"))
    await cluster.wait_ready(admin, cluster_agent, "runc-pod")

    async def refused() -> tuple[dict[str, Any], list[str]] | None:
        pod = await get_pod(admin, "kata-pod")
        if ((pod or {}).get("status") or {}).get("phase") != "Failed":
            return None
        told = [
            e.message or ""
            async for e in admin.list(Event, namespace="default")
            if e.involvedObject.name == "kata-pod" and e.type == "Warning"
        ]
        return (pod, told) if pod is not None and told else None

    pod, told = await async_wait_for(
        refused, 30, interval=0.2, message=lambda: f"kata-pod refused\n{cluster_agent.log_tail()}"
    )
    for message in (pod["status"]["message"], *told):
        assert 'spec.runtimeClassName: RuntimeClass "sandboxed" has handler "kata"' in message


SERVICE_YAML = """apiVersion: v1
kind: Service
metadata: {name: svc-a}
spec:
  selector: {app: none}
  ports: [{name: http, port: 8080}]
"""
KUBERNETES_YAML = """apiVersion: v1
kind: Service
metadata: {name: kubernetes, namespace: default}
spec:
  clusterIP: 10.96.0.1
  ports: [{name: https, port: 443}]
"""
ENV_POD_YAML = static_pod_yaml("env", script=ENV_SCRIPT)


def test_standalone_pods_see_the_manifest_directorys_services(agent: Agent) -> None:
    agent.write_manifest("svc-a.yaml", SERVICE_YAML)
    agent.write_manifest("kubernetes.yaml", KUBERNETES_YAML)
    ip = known_service(agent, "svc-a")  # allocated by the agent from --service-cidr
    assert known_service(agent, "kubernetes") == "10.96.0.1"
    agent.write_manifest("env.yaml", ENV_POD_YAML)
    agent.wait_pod("env", is_ready, what="ready")
    env = env_lines(agent, "env")
    assert env["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"
    assert env["KUBERNETES_SERVICE_PORT"] == "443"
    assert env["SVC_A_SERVICE_HOST"] == ip
    assert env["SVC_A_SERVICE_PORT_HTTP"] == "8080"
    assert env["SVC_A_PORT"] == f"tcp://{ip}:8080"
    assert env["SVC_A_PORT_8080_TCP_ADDR"] == ip
