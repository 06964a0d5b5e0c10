"""Three nodes on one machine (tests/harness/lab.py): the pod network and Services across
nodes, and a node whose agent stops.

Each node is a network namespace with its own containerd and agent, on one lab bridge; the
agents join the test API server, route to each other's pod CIDRs (host-gw) and program the
Services from the API's EndpointSlices. Requests "from outside" come from the lab segment,
as from another machine on it; requests "from a pod" are execs in a pod on node A.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from lightkube import ApiError, AsyncClient
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Node, Pod, Service

from nodeagent.runtime.base import ContainerID, ContainerState
from nodeagent.runtime.cri import CRIRuntime
from tests.harness.cluster import get_pod, pod_manifest
from tests.harness.cluster import ready as is_ready
from tests.harness.lab import GATEWAY, Lab, LabNode
from tests.harness.manifests import SLEEP
from tests.harness.wait import async_wait_for

pytestmark = pytest.mark.asyncio(loop_scope="module")

WEB_SCRIPT = "hostname > /tmp/index.html && exec httpd -f -p 8080 -h /tmp"

HTTP_CLIENT = """
import json, sys, urllib.request
url, n = sys.argv[1], int(sys.argv[2])
answers = []
for _ in range(n):
    try:
        answers.append(urllib.request.urlopen(url, timeout=2).read().decode().strip())
    except Exception as exc:
        answers.append(f"error: {type(exc).__name__}")
print(json.dumps(answers))
"""


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["iptables", "nftables"])
async def lab(
    request: pytest.FixtureRequest,
    image_archives: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Lab]:
    """Three nodes, once with the agents' proxy in each mode."""
    root = tmp_path_factory.mktemp("lab")
    async with Lab(root, count=3, images=image_archives, proxy_mode=request.param) as lab:
        yield lab


@pytest_asyncio.fixture(loop_scope="module")
async def admin(lab: Lab) -> AsyncIterator[AsyncClient]:
    async with lab.admin() as client:
        yield client


def pod_body(name: str, node: LabNode, script: str, app: str = "") -> dict[str, Any]:
    body = pod_manifest(name, script, grace=1, node_name=node.name)
    body["metadata"]["labels"] = {"app": app or name}
    body["spec"]["containers"][0]["ports"] = [{"name": "http", "containerPort": 8080}]
    return body


async def ensure_pod(
    admin: AsyncClient, lab_node: LabNode, name: str, script: str = WEB_SCRIPT, app: str = ""
) -> dict[str, Any]:
    """The pod Ready in the API (created once per module; tests share them)."""
    if await get_pod(admin, name) is None:
        await admin.create(Pod.from_dict(pod_body(name, lab_node, script, app)))  # type: ignore[call-overload]

    async def ready() -> dict[str, Any] | None:
        pod = await get_pod(admin, name)
        return pod if is_ready(pod) else None

    return await async_wait_for(
        ready, 60, 0.2, message=lambda: f"{name} Ready\n{lab_node.agent.log_tail()}"
    )


async def ensure_service(admin: AsyncClient, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    try:
        svc = await admin.get(Service, name, namespace="default")
    except ApiError:
        body = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}
        svc = await admin.create(Service.from_dict(body))  # type: ignore[call-overload]
    return dict(svc.to_dict())


def container_id(pod: dict[str, Any]) -> str:
    return str(pod["status"]["containerStatuses"][0]["containerID"]).split("://", 1)[1]


async def exec_in(lab_node: LabNode, pod: dict[str, Any], *command: str) -> str:
    runtime = CRIRuntime(lab_node.node.endpoint)
    try:
        result = await runtime.exec_sync(ContainerID(container_id(pod)), command, 10)
    finally:
        await runtime.close()
    return result.stdout.decode().strip() if result.exit_code == 0 else f"exit {result.exit_code}"


async def fetch_from_pod(lab_node: LabNode, pod: dict[str, Any], url: str) -> str:
    # busybox wget's own -T crashes in Debian's static build; timeout(1) does the job
    return await exec_in(lab_node, pod, "timeout", "3", "wget", "-q", "-O", "-", url)


def fetch_from_lab(lab: Lab, url: str, n: int = 1) -> list[str]:
    out = lab.run_in_lab([sys.executable, "-c", HTTP_CLIENT, url, str(n)], timeout=120).stdout
    answers: list[str] = json.loads(out)
    return answers


async def node_port(admin: AsyncClient, name: str) -> int:
    async def assigned() -> int:
        svc = await admin.get(Service, name, namespace="default")
        ports = svc.spec.ports if svc.spec else None
        return int(ports[0].nodePort or 0) if ports else 0

    return await async_wait_for(assigned, 10, message=f"a nodePort for {name}")


async def wait_endpoints(lab: Lab, service: str, count: int) -> None:
    """Until every agent's proxy has the Service with ``count`` endpoints."""
    for lab_node in lab.nodes:

        def programmed(lab_node: LabNode) -> bool:
            for svc in lab_node.agent.status().get("services") or []:
                if svc["metadata"]["name"] == service:
                    return len(svc["endpoints"]) == count
            return False

        def problem(lab_node: LabNode) -> str:
            services = lab_node.agent.status().get("services")
            return f"{service} with {count} endpoints on {lab_node.name}: {services}"

        await async_wait_for(
            functools.partial(programmed, lab_node),
            60,
            0.2,
            message=functools.partial(problem, lab_node),
        )


# --- tests -----------------------------------------------------------------------------------


async def test_every_node_routes_to_the_others_pod_cidrs(lab: Lab) -> None:
    for lab_node in lab.nodes:
        network = lab_node.agent.status()["network"]
        routes = {(r["dst"], r["via"]) for r in network["routes"]}
        assert routes == {(n.pod_cidr, n.ip) for n in lab.nodes if n is not lab_node}
        assert network["sysctlProblems"] == []
        kernel = lab_node.node.run(["ip", "route", "show", "proto", "77"]).stdout
        for other in lab.nodes:
            if other is not lab_node:
                assert f"{other.pod_cidr} via {other.ip}" in kernel


async def test_pod_on_node_a_reaches_a_pod_ip_on_node_c(lab: Lab, admin: AsyncClient) -> None:
    a, _, c = lab.nodes
    web = await ensure_pod(admin, c, "web-c", app="web")
    client = await ensure_pod(admin, a, "client-a", SLEEP)
    assert web["status"]["podIP"].startswith(c.pod_cidr.rsplit(".", 2)[0])

    async def answered() -> str | None:
        text = await fetch_from_pod(a, client, f"http://{web['status']['podIP']}:8080/")
        return text if text == "web-c" else None

    await async_wait_for(answered, 30, 0.5, message="web-c's pod IP from a pod on lab-1")


async def test_pods_keep_their_source_ip_across_nodes(lab: Lab, admin: AsyncClient) -> None:
    # Pod -> pod stays un-NATed (NA-POD-EGRESS accepts it before the CNI bridge's masquerade).
    a, _, c = lab.nodes
    # The server cannot tell its peer's address (busybox httpd logs nothing), so node C's
    # conntrack table tells what arrived.
    web = await ensure_pod(admin, c, "web-c", app="web")
    client = await ensure_pod(admin, a, "client-a", SLEEP)
    await fetch_from_pod(a, client, f"http://{web['status']['podIP']}:8080/")
    entries = c.node.run(["conntrack", "-L", "-p", "tcp", "--dport", "8080"], check=False).stdout
    seen = [line for line in entries.splitlines() if f"dst={web['status']['podIP']}" in line]
    assert seen, entries
    assert any(f"src={client['status']['podIP']} " in line for line in seen), seen


async def test_cluster_ip_with_endpoints_only_on_b_and_c_answers_from_a_pod_on_a(
    lab: Lab, admin: AsyncClient
) -> None:
    a, b, c = lab.nodes
    await ensure_pod(admin, b, "web-b", app="web")
    await ensure_pod(admin, c, "web-c", app="web")
    client = await ensure_pod(admin, a, "client-a", SLEEP)
    svc = await ensure_service(
        admin,
        "web",
        {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]},
    )
    await wait_endpoints(lab, "web", 2)
    url = f"http://{svc['spec']['clusterIP']}/"
    seen: set[str] = set()

    async def both() -> bool:
        seen.add(await fetch_from_pod(a, client, url))
        return {"web-b", "web-c"} <= seen

    await async_wait_for(both, 60, 0.1, message=lambda: f"both endpoints, seen {seen}")
    assert seen <= {"web-b", "web-c", "exit 1", "exit 143"}, seen


async def test_node_port_on_node_a_reaches_a_pod_on_node_c(lab: Lab, admin: AsyncClient) -> None:
    a, _, c = lab.nodes
    await ensure_pod(admin, c, "only-c")
    await ensure_service(
        admin,
        "only-c",
        {
            "type": "NodePort",
            "selector": {"app": "only-c"},
            "ports": [{"port": 80, "targetPort": 8080}],
        },
    )
    port = await node_port(admin, "only-c")
    await wait_endpoints(lab, "only-c", 1)

    def answered() -> list[str] | None:
        answers = fetch_from_lab(lab, f"http://{a.ip}:{port}/", 3)
        return answers if answers == ["only-c"] * 3 else None

    await async_wait_for(answered, 30, 0.5, message=f"NodePort {port} on lab-1 from the lab")


async def test_external_traffic_policy_local_answers_only_where_an_endpoint_is(
    lab: Lab, admin: AsyncClient
) -> None:
    a, b, c = lab.nodes
    await ensure_pod(admin, b, "only-b")
    await ensure_service(
        admin,
        "local-b",
        {
            "type": "NodePort",
            "externalTrafficPolicy": "Local",
            "selector": {"app": "only-b"},
            "ports": [{"port": 80, "targetPort": 8080}],
        },
    )
    port = await node_port(admin, "local-b")
    await wait_endpoints(lab, "local-b", 1)

    def answered_on_b() -> bool:
        return fetch_from_lab(lab, f"http://{b.ip}:{port}/", 3) == ["only-b"] * 3

    await async_wait_for(answered_on_b, 30, 0.5, message=f"NodePort {port} on lab-2")
    for other in (a, c):
        # The node knows the Service and drops it on purpose (no local endpoint): the
        # refusal below is the policy, not a node that has not caught up.
        def dropping(other: LabNode = other) -> bool:
            if lab.proxy_mode == "nftables":
                listing = ["nft", "list", "map", "ip", "nodeagent", "no-endpoint-nodeports"]
                return f"tcp . {port} : drop" in other.node.run(listing).stdout
            rules = other.node.run(["iptables-save", "-t", "filter"]).stdout
            return f"--dport {port} -j DROP" in rules

        await async_wait_for(dropping, 30, 0.2, message=f"{other.name} drops NodePort {port}")
        answers = fetch_from_lab(lab, f"http://{other.ip}:{port}/", 2)
        assert all(x.startswith("error") for x in answers), (other.name, answers)


async def test_health_check_node_port_answers_200_only_where_an_endpoint_is(
    lab: Lab, admin: AsyncClient
) -> None:
    # What a cloud balancer asks of every node before sending it Local-policy traffic.
    a, b, c = lab.nodes
    await ensure_pod(admin, b, "hc-b")
    await ensure_service(
        admin,
        "hc-b",
        {
            "type": "LoadBalancer",
            "externalTrafficPolicy": "Local",
            "selector": {"app": "hc-b"},
            "ports": [{"port": 80, "targetPort": 8080}],
        },
    )
    svc = await admin.get(Service, "hc-b", namespace="default")
    port = int(svc.spec.healthCheckNodePort or 0) if svc.spec else 0
    assert port
    await wait_endpoints(lab, "hc-b", 1)
    body = '{"service":{"namespace":"default","name":"hc-b"},"localEndpoints":1,'
    body += '"serviceProxyHealthy":true}'

    def healthy_on_b() -> bool:
        return fetch_from_lab(lab, f"http://{b.ip}:{port}/") == [body]

    await async_wait_for(healthy_on_b, 30, 0.5, message=f"health check {port} on lab-2")
    for other in (a, c):  # listening (a refusal would be URLError), and 503: no local endpoint

        def unhealthy(other: LabNode = other) -> bool:
            return fetch_from_lab(lab, f"http://{other.ip}:{port}/") == ["error: HTTPError"]

        await async_wait_for(unhealthy, 30, 0.5, message=f"503 from {other.name}")


async def _running_containers(lab_node: LabNode) -> dict[str, str]:
    runtime = CRIRuntime(lab_node.node.endpoint)
    try:
        containers = await runtime.list_containers()
    finally:
        await runtime.close()
    return {c.id: c.name for c in containers if c.state is ContainerState.RUNNING}


def _ready_status(node: Node) -> str:
    for cond in (node.status.conditions if node.status else None) or []:
        if cond.type == "Ready":
            return str(cond.status)
    return ""


async def test_stopped_agent_lets_the_lease_expire_while_its_pods_keep_running(
    lab: Lab, admin: AsyncClient
) -> None:
    a, _, c = lab.nodes
    web = await ensure_pod(admin, c, "web-c", app="web")
    client = await ensure_pod(admin, a, "client-a", SLEEP)
    before = await _running_containers(c)
    assert container_id(web) in before

    async def ready_is(value: str) -> bool:
        return _ready_status(await admin.get(Node, c.name)) == value

    await async_wait_for(lambda: ready_is("True"), 30, message="lab-3 Ready first")
    c.agent.stop()
    try:
        lease = await admin.get(Lease, c.name, namespace="kube-node-lease")
        renewed = lease.spec.renewTime if lease.spec else None
        await async_wait_for(
            lambda: ready_is("Unknown"), 60, 0.2, message="lab-3 NotReady after its Lease"
        )
        node = await admin.get(Node, c.name)
        taints = {(t.key, t.effect) for t in (node.spec.taints if node.spec else None) or []}
        assert ("node.kubernetes.io/unreachable", "NoSchedule") in taints
        lease = await admin.get(Lease, c.name, namespace="kube-node-lease")
        assert (lease.spec.renewTime if lease.spec else None) == renewed  # nobody renewed it
        # The pods run on: same containers in C's containerd, still answering across nodes.
        assert await _running_containers(c) == before
        url = f"http://{web['status']['podIP']}:8080/"
        assert await fetch_from_pod(a, client, url) == "web-c"
    finally:
        c.agent.start()
    await async_wait_for(
        lambda: ready_is("True"), 60, 0.2, message=lambda: f"lab-3 Ready\n{c.agent.log_tail()}"
    )
    node = await admin.get(Node, c.name)
    assert not [t for t in (node.spec.taints if node.spec else None) or []]
    assert await _running_containers(c) == before  # adopted, not restarted


ECHO_SERVER = """
import http.server, sys
class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = self.client_address[0].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), Echo).serve_forever()
"""


async def test_pod_traffic_leaving_the_cluster_cidr_is_masqueraded(
    lab: Lab, admin: AsyncClient
) -> None:
    a = lab.nodes[0]
    client = await ensure_pod(admin, a, "client-a", SLEEP)
    # A server outside the cluster: on the lab segment's gateway address.
    server = await asyncio.create_subprocess_exec(
        *lab.lab_argv,
        *(sys.executable, "-c", ECHO_SERVER, GATEWAY, "8099"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:

        async def seen() -> str | None:
            text = await fetch_from_pod(a, client, f"http://{GATEWAY}:8099/")
            return text if not text.startswith("exit") else None

        source = await async_wait_for(seen, 30, 0.5, message="the lab's echo server")
    finally:
        server.terminate()
        await server.wait()
    assert source == a.ip  # the node's address, not the pod's
    # ... and by our rule, not by the CNI plugin's ipMasq (which would do the same).
    if lab.proxy_mode == "nftables":
        chain = a.node.run(["nft", "list", "chain", "ip", "nodeagent", "pod-egress"]).stdout
        packets = re.search(r"counter packets (\d+) .* masquerade", chain)
        assert packets and int(packets.group(1)) > 0, chain
        return
    counters = a.node.run(["iptables", "-t", "nat", "-L", "NA-POD-EGRESS", "-v", "-x", "-n"])
    masquerade = [line for line in counters.stdout.splitlines() if "MASQUERADE" in line]
    assert masquerade and int(masquerade[0].split()[0]) > 0, counters.stdout


async def test_routes_follow_a_node_that_appears_moves_and_goes(
    lab: Lab, admin: AsyncClient
) -> None:
    from lightkube.resources.core_v1 import NodeStatus
    from lightkube.types import PatchType

    cidr = "10.244.99.0/24"

    def kernel_route(lab_node: LabNode) -> str:
        return lab_node.node.run(["ip", "route", "show", cidr, "proto", "77"]).stdout.strip()

    def routed(lab_node: LabNode, expected: str) -> bool:
        return kernel_route(lab_node) == expected

    def route_problem(lab_node: LabNode, expected: str) -> str:
        return f"{lab_node.name}: {expected!r}, has {kernel_route(lab_node)!r}"

    async def set_address(ip: str) -> None:
        status = {"status": {"addresses": [{"type": "InternalIP", "address": ip}]}}
        await admin.patch(NodeStatus, "ghost", status, patch_type=PatchType.MERGE)

    async def everywhere(expected: str) -> None:
        for lab_node in lab.nodes:
            await async_wait_for(
                functools.partial(routed, lab_node, expected),
                30,
                0.2,
                message=functools.partial(route_problem, lab_node, expected),
            )

    body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "ghost"}}
    body["spec"] = {"podCIDR": cidr, "podCIDRs": [cidr]}
    await admin.create(Node.from_dict(body))  # type: ignore[call-overload]
    try:
        await set_address(node_ip_on_lab(99))
        await everywhere(f"{cidr} via {node_ip_on_lab(99)} dev lab0")
        await set_address(node_ip_on_lab(98))  # the node moved: the route follows
        await everywhere(f"{cidr} via {node_ip_on_lab(98)} dev lab0")
    finally:
        await admin.delete(Node, "ghost")
    await everywhere("")  # gone with the Node
    # Routes nodeagent did not make are never touched: the lab's own connected route stays.
    assert "10.250.0.0/24 dev lab0" in lab.nodes[0].node.run(["ip", "route"]).stdout


def node_ip_on_lab(host: int) -> str:
    return f"10.250.0.{host}"
