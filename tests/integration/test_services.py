"""Services with real packets: the agent's rules in a node's own network namespace.

Each test runs in both proxy modes (iptables, nftables); the nftables mode on containerd only.

Topology (everything in network namespaces; the machine's own rules are never touched)::

    client netns  192.168.77.2 --veth-- 192.168.77.1  node netns (agent, containerd)
    ("another host": NodePort tests)                   na0 bridge 10.244.n.1 -- pods

The node's default route points at the client, as a real node's points at its gateway: a
service IP must be routable for the kernel to send a packet into the nat OUTPUT chain at all.
Pods run busybox httpd serving their own hostname (the pod name), so each answer tells which
endpoint served it. UDP is served by the host's python3 (Debian's busybox ``nc`` has no
``-u``), run in a busybox pod with the host's /usr mounted read-only.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nodeagent.proxy.proxier import POLL_S
from nodeagent.runtime.base import ContainerID, ExecResult
from tests.harness import TestNode, wait_for
from tests.harness.agent import Agent, RuntimeTarget, container_status, is_ready

NODE_ADDR, CLIENT_ADDR = "192.168.77.1", "192.168.77.2"
REPO = Path(__file__).resolve().parents[2]

WEB = """
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: {app}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: httpd
      image: busybox
      imagePullPolicy: IfNotPresent
      command:
        - sh
        - -c
        - hostname > /tmp/index.html && touch /tmp/ready && exec httpd -f -p 8080 -h /tmp
      ports:
        - {{name: http, containerPort: 8080{host_port}}}
{probe}"""

READINESS = """      readinessProbe:
        exec: {command: ["cat", "/tmp/ready"]}
        periodSeconds: 1
        failureThreshold: 1
"""

UDP_SERVER = (
    "import socket\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.bind(('0.0.0.0', 5353))\n"
    "name = socket.gethostname().encode()\n"
    "while True:\n"
    "    data, peer = s.recvfrom(512)\n"
    "    s.sendto(name, peer)\n"
)


def udp_pod(name: str) -> str:
    return f"""
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: dns}}
spec:
  terminationGracePeriodSeconds: 1
  volumes:
    - {{name: usr, hostPath: {{path: /usr, type: Directory}}}}
    - {{name: lib, hostPath: {{path: /usr/lib, type: Directory}}}}
    - {{name: lib64, hostPath: {{path: /usr/lib64, type: Directory}}}}
  containers:
    - name: server
      image: busybox
      imagePullPolicy: IfNotPresent
      command: ["/usr/bin/python3", "-c", {json.dumps(UDP_SERVER)}]
      ports:
        - {{name: dns, containerPort: 5353, protocol: UDP}}
      volumeMounts:
        - {{name: usr, mountPath: /usr, readOnly: true}}
        - {{name: lib, mountPath: /lib, readOnly: true}}
        - {{name: lib64, mountPath: /lib64, readOnly: true}}
"""


def web(name: str, app: str = "web", *, probe: bool = False, host_port: int = 0) -> str:
    return WEB.format(
        name=name,
        app=app,
        probe=READINESS if probe else "",
        host_port=f", hostPort: {host_port}" if host_port else "",
    )


def service(name: str, *, app: str = "web", spec: str = "", ports: str = "") -> str:
    ports = ports or "[{name: http, port: 80, targetPort: http}]"
    return (
        f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\n"
        f"spec:\n  selector: {{app: {app}}}\n  ports: {ports}\n{spec}"
    )


# --- Clients ---------------------------------------------------------------------------------

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

UDP_CLIENT = """
import json, socket, sys
ip, port, n, sport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
answers = []
for _ in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", sport))
    s.settimeout(1)
    s.sendto(b"who", (ip, port))
    try:
        answers.append(s.recvfrom(512)[0].decode())
    except OSError as exc:
        answers.append(f"error: {type(exc).__name__}")
    s.close()
print(json.dumps(answers))
"""

CONNECT = """
import socket, sys, time
start = time.monotonic()
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()
    result = "connected"
except OSError as exc:
    result = type(exc).__name__
print(result, round(time.monotonic() - start, 3))
"""


def run_py(prefix: Sequence[str], code: str, *args: object) -> str:
    argv = [*prefix, sys.executable, "-c", code, *(str(a) for a in args)]
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120).stdout


def http(prefix: Sequence[str], url: str, n: int = 1) -> list[str]:
    answers: list[str] = json.loads(run_py(prefix, HTTP_CLIENT, url, n))
    return answers


def udp(prefix: Sequence[str], ip: str, port: int, n: int = 1, sport: int = 0) -> list[str]:
    answers: list[str] = json.loads(run_py(prefix, UDP_CLIENT, ip, port, n, sport))
    return answers


# --- Fixtures --------------------------------------------------------------------------------


@dataclass
class Net:
    node: TestNode
    client_netns: str

    @property
    def client(self) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.client_netns}"]

    @property
    def on_node(self) -> list[str]:
        return self.node.netns_argv


@pytest.fixture(scope="module")
def net(module_node: TestNode) -> Iterator[Net]:
    """A second netns linked to the node by a veth pair: another host on the node's LAN."""
    name = f"na-cli-{os.getpid()}"
    node_ns = module_node.netns
    steps = [
        ["ip", "netns", "add", name],
        ["ip", "-n", name, "link", "set", "lo", "up"],
        [
            "ip",
            "-n",
            node_ns,
            "link",
            "add",
            "up0",
            "type",
            "veth",
            "peer",
            "name",
            "up0c",
            "netns",
            name,
        ],
        ["ip", "-n", node_ns, "addr", "add", f"{NODE_ADDR}/24", "dev", "up0"],
        ["ip", "-n", name, "addr", "add", f"{CLIENT_ADDR}/24", "dev", "up0c"],
        ["ip", "-n", node_ns, "link", "set", "up0", "up"],
        ["ip", "-n", name, "link", "set", "up0c", "up"],
        ["ip", "-n", node_ns, "route", "add", "default", "via", CLIENT_ADDR],
        ["ip", "-n", name, "route", "add", "default", "via", NODE_ADDR],
        [*module_node.netns_argv, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"],
    ]
    try:
        for argv in steps:
            subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30)
        yield Net(module_node, name)
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


@pytest.fixture(params=["iptables", "nftables"])
def proxy_mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def agent(
    node: TestNode, net: Net, runtime_target: RuntimeTarget, proxy_mode: str
) -> Iterator[Agent]:
    a = Agent(node, runtime=runtime_target, extra=["--proxy-mode", proxy_mode])
    for old in a.manifests.iterdir():
        old.unlink()
    a.start()
    try:
        yield a
    finally:
        a.stop()


def svc(agent: Agent, name: str) -> dict[str, Any] | None:
    for s in agent.status()["services"]:
        if s["metadata"]["name"] == name:
            return dict(s)
    return None


def wait_endpoints(agent: Agent, name: str, ready: int, timeout: float = 30) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        s = svc(agent, name)
        return s if s is not None and len(s["endpoints"]) == ready else None

    return wait_for(
        check, timeout, 0.2, message=lambda: f"{name} with {ready} endpoints: {svc(agent, name)}"
    )


def start_pods(agent: Agent, *names: str, **kw: Any) -> None:
    for name in names:
        agent.write_manifest(f"{name}.yaml", web(name, **kw))
    for name in names:
        agent.wait_pod(name, is_ready, timeout=30, what="ready")


def exec_in(agent: Agent, pod: dict[str, Any], *command: str) -> ExecResult:
    cid = str(container_status(pod, pod["status"]["containerStatuses"][0]["name"])["containerID"])

    async def go() -> ExecResult:
        runtime = agent.runtime.backend()
        try:
            return await runtime.exec_sync(ContainerID(cid.split("://", 1)[1]), command, 10)
        finally:
            await runtime.close()

    return asyncio.run(go())


def spread(prefix: Sequence[str], url: str, expected: set[str], n: int = 24) -> list[str]:
    """Wait until n requests are answered by exactly the expected endpoints; return them."""

    def check() -> list[str] | None:
        answers = http(prefix, url, n)
        return answers if set(answers) == expected else None

    return wait_for(check, 20, 0.2, message=f"answers from exactly {sorted(expected)}")


# --- Tests -----------------------------------------------------------------------------------


def test_cluster_ip_spreads_over_endpoints(node: TestNode, net: Net, agent: Agent) -> None:
    start_pods(agent, "web-1", "web-2", "web-3")
    agent.write_manifest("svc.yaml", service("web"))
    s = wait_endpoints(agent, "web", 3)
    ip = s["spec"]["clusterIP"]
    assert ip.startswith("10.96.")
    assert all(e.endswith(":8080") for e in s["endpoints"])
    answers = spread(net.on_node, f"http://{ip}/", {"web-1", "web-2", "web-3"}, n=40)
    assert len(answers) == 40
    proxy = agent.status()["proxy"]
    assert proxy["backend"] in ("nft", "legacy", "nftables") and proxy["lastError"] is None
    assert proxy["fullSyncs"] >= 1 and proxy["rules"] > 0


def test_node_port_from_another_host(node: TestNode, net: Net, agent: Agent) -> None:
    start_pods(agent, "web-1", "web-2")
    agent.write_manifest("svc.yaml", service("web", spec="  type: NodePort\n"))
    s = wait_endpoints(agent, "web", 2)
    node_port = s["spec"]["ports"][0]["nodePort"]
    assert 30000 <= node_port <= 32767
    url = f"http://{NODE_ADDR}:{node_port}/"
    spread(net.client, url, {"web-1", "web-2"})
    # The same port answers on the node's own addresses, loopback included.
    assert http(net.on_node, f"http://127.0.0.1:{node_port}/")[0] in {"web-1", "web-2"}


def test_pod_reaches_its_own_service(node: TestNode, net: Net, agent: Agent) -> None:
    start_pods(agent, "solo")
    agent.write_manifest("svc.yaml", service("web"))
    ip = wait_endpoints(agent, "web", 1)["spec"]["clusterIP"]
    pod = agent.pod("solo")
    assert pod is not None

    def hairpin() -> str:
        # (busybox wget's own -T crashes in Debian's static build; timeout(1) does the job)
        result = exec_in(agent, pod, "timeout", "3", "wget", "-q", "-O", "-", f"http://{ip}/")
        return result.stdout.decode().strip() if result.exit_code == 0 else ""

    assert wait_for(hairpin, 20, 0.3, message="the pod answering itself") == "solo"


def test_endpoint_failing_readiness_gets_no_traffic(node: TestNode, net: Net, agent: Agent) -> None:
    start_pods(agent, "web-1", "web-2", probe=True)
    agent.write_manifest("svc.yaml", service("web"))
    ip = wait_endpoints(agent, "web", 2)["spec"]["clusterIP"]
    spread(net.on_node, f"http://{ip}/", {"web-1", "web-2"})
    pod = agent.pod("web-2")
    assert pod is not None
    assert exec_in(agent, pod, "rm", "/tmp/ready").exit_code == 0
    s = wait_endpoints(agent, "web", 1)
    assert len(s["notReadyEndpoints"]) == 1
    spread(net.on_node, f"http://{ip}/", {"web-1"}, n=30)
    assert exec_in(agent, pod, "touch", "/tmp/ready").exit_code == 0
    # Nothing changes in the runtime, only the probe's verdict: the worker's status publish
    # wakes the proxy, so the endpoint is back well before the proxy's safety-net poll.
    wait_endpoints(agent, "web", 2, timeout=POLL_S)
    spread(net.on_node, f"http://{ip}/", {"web-1", "web-2"})


@pytest.mark.runtime_independent
def test_no_endpoints_is_rejected_fast(node: TestNode, net: Net, agent: Agent) -> None:
    agent.write_manifest("svc.yaml", service("nobody", app="nothing", spec="  type: NodePort\n"))
    s = wait_endpoints(agent, "nobody", 0)
    ip, node_port = s["spec"]["clusterIP"], s["spec"]["ports"][0]["nodePort"]

    def rejected(prefix: list[str], host: str, port: int) -> float | None:
        result, elapsed = run_py(prefix, CONNECT, host, port).split()
        return float(elapsed) if result == "ConnectionRefusedError" else None

    # Wait for the rules (a SYN sent before them is retried after 1 s), then measure.
    wait_for(lambda: rejected(net.on_node, ip, 80), 20, 0.3, message="REJECT")
    elapsed = rejected(net.on_node, ip, 80)
    assert elapsed is not None and elapsed < 0.5
    wait_for(lambda: rejected(net.client, NODE_ADDR, node_port), 20, 0.3, message="NodePort")
    elapsed = rejected(net.client, NODE_ADDR, node_port)
    assert elapsed is not None and elapsed < 0.5


def test_udp_service_and_stale_flows(node: TestNode, net: Net, agent: Agent) -> None:
    for name in ("dns-1", "dns-2"):
        agent.write_manifest(f"{name}.yaml", udp_pod(name))
    for name in ("dns-1", "dns-2"):
        agent.wait_pod(name, is_ready, timeout=30, what="ready")
    ports = "[{name: dns, port: 53, targetPort: dns, protocol: UDP}]"
    agent.write_manifest("svc.yaml", service("dns", app="dns", ports=ports))
    ip = wait_endpoints(agent, "dns", 2)["spec"]["clusterIP"]

    def both() -> list[str] | None:
        answers = udp(net.on_node, ip, 53, n=30)
        return answers if set(answers) == {"dns-1", "dns-2"} else None

    wait_for(both, 20, 0.3, message="UDP answers from both pods")
    # A client that keeps its source port keeps its conntrack flow (and its DNAT decision).
    [first] = udp(net.on_node, ip, 53, n=1, sport=40053)
    assert first in ("dns-1", "dns-2")
    (agent.manifests / f"{first}.yaml").unlink()
    wait_endpoints(agent, "dns", 1)
    other = "dns-2" if first == "dns-1" else "dns-1"
    # Without the conntrack clean-up this flow would stay DNATed to the dead pod.
    answer = wait_for(
        lambda: udp(net.on_node, ip, 53, n=1, sport=40053)[0] == other,
        15,
        0.2,
        message="the same flow answered by the remaining pod",
    )
    assert answer


def test_session_affinity_sticks(node: TestNode, net: Net, agent: Agent) -> None:
    start_pods(agent, "web-1", "web-2", "web-3")
    spec = (
        "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n"
    )
    agent.write_manifest("svc.yaml", service("web", spec=spec))
    ip = wait_endpoints(agent, "web", 3)["spec"]["clusterIP"]
    answers = wait_for(
        lambda: (
            (a := http(net.on_node, f"http://{ip}/", 20)) and not a[0].startswith("error") and a
        ),
        20,
        0.3,
        message="answers",
    )
    assert len(set(answers)) == 1, answers
    # Another client (the other host, routed through the node) sticks too, to some endpoint.
    assert len(set(http(net.client, f"http://{ip}/", 20))) == 1


@pytest.mark.runtime_independent
def test_allocations_survive_restart_and_collisions_are_errors(
    node: TestNode, net: Net, agent: Agent
) -> None:
    agent.write_manifest("a.yaml", service("alpha", spec="  type: NodePort\n"))
    wait_for(lambda: svc(agent, "alpha"), 10, message="alpha")
    wait_for(lambda: (s := svc(agent, "alpha")) and s["spec"].get("clusterIP"), 10, message="ip")
    first = svc(agent, "alpha")
    assert first is not None
    taken = first["spec"]["clusterIP"]
    clash = f"  clusterIP: {taken}\n"
    agent.write_manifest("b.yaml", service("beta", spec=clash))

    def clash_error() -> dict[str, Any] | None:
        return next(
            (e for e in agent.status()["errors"] if e["object"] == "Service default/beta"), None
        )

    error = wait_for(clash_error, 10, message="collision reported")
    assert error["field"] == "spec.clusterIP"
    assert "alpha" in error["message"] and error["source"].endswith("b.yaml")
    agent.stop()
    agent.start()
    after = wait_for(
        lambda: (s := svc(agent, "alpha")) and s["spec"].get("clusterIP") and s, 10, message="alpha"
    )
    assert after["spec"]["clusterIP"] == taken
    assert after["spec"]["ports"][0]["nodePort"] == first["spec"]["ports"][0]["nodePort"]
    assert wait_for(clash_error, 10, message="collision still reported")


def test_external_flush_is_repaired(node: TestNode, net: Net, agent: Agent) -> None:
    start_pods(agent, "web-1")
    agent.write_manifest("svc.yaml", service("web"))
    ip = wait_endpoints(agent, "web", 1)["spec"]["clusterIP"]
    spread(net.on_node, f"http://{ip}/", {"web-1"}, n=2)
    full_before = agent.status()["proxy"]["fullSyncs"]
    if agent.status()["proxy"]["backend"] == "nftables":
        node.run(["nft", "delete", "table", "ip", "nodeagent"])
    else:
        node.run(["iptables", "-t", "nat", "-F"])
        node.run(["iptables", "-F"])
    started = time.monotonic()
    spread(net.on_node, f"http://{ip}/", {"web-1"}, n=2)
    assert time.monotonic() - started < 30
    assert agent.status()["proxy"]["fullSyncs"] > full_before


def test_host_port_through_cni_portmap(node: TestNode, net: Net, agent: Agent) -> None:
    agent.write_manifest("hp.yaml", web("hp", host_port=18080))
    agent.wait_pod("hp", is_ready, timeout=30, what="ready")
    answer = wait_for(
        lambda: http(net.client, f"http://{NODE_ADDR}:18080/")[0] == "hp",
        20,
        0.3,
        message="hostPort",
    )
    assert answer


def _rules_of(node: TestNode, mode: str) -> bool:
    """Whether the node holds rules of the proxy in ``mode``."""
    if mode == "nftables":
        return "table ip nodeagent" in node.run(["nft", "list", "tables"]).stdout
    return ":NA-SERVICES" in node.run(["iptables-save"]).stdout


def test_switching_modes_removes_the_other_modes_rules(
    node: TestNode, net: Net, runtime_target: RuntimeTarget, proxy_mode: str
) -> None:
    other = "nftables" if proxy_mode == "iptables" else "iptables"
    first = Agent(node, runtime=runtime_target, extra=["--proxy-mode", proxy_mode])
    for old in first.manifests.iterdir():
        old.unlink()
    first.start()
    try:
        start_pods(first, "web-1")
        first.write_manifest("svc.yaml", service("web"))
        ip = wait_endpoints(first, "web", 1)["spec"]["clusterIP"]
        spread(net.on_node, f"http://{ip}/", {"web-1"}, n=2)
    finally:
        first.stop()
    assert _rules_of(node, proxy_mode)  # a stopped agent leaves its rules, as kube-proxy does
    second = Agent(node, runtime=runtime_target, extra=["--proxy-mode", other])
    second.start()
    try:
        wait_for(
            lambda: not _rules_of(node, proxy_mode),
            30,
            0.2,
            message=f"the {proxy_mode} rules removed by the agent in {other} mode",
        )
        spread(net.on_node, f"http://{ip}/", {"web-1"}, n=2)
        assert _rules_of(node, other)
    finally:
        second.stop()


def test_the_examples_serve_through_their_service(node: TestNode, net: Net, agent: Agent) -> None:
    # What the README's quick start promises of `make run`: the web pod behind its Service.
    for example in ("web.yaml", "web-service.yaml"):
        shutil.copy(REPO / "examples" / example, agent.manifests / example)
    agent.wait_pod("web", is_ready, timeout=30, what="ready")
    wait_endpoints(agent, "web", 1)
    page = "hello from web on node-a"
    spread(net.on_node, "http://10.96.0.80/", {page}, n=3)
    spread(net.on_node, "http://127.0.0.1:30080/", {page}, n=3)
    spread(net.client, f"http://{NODE_ADDR}:30080/", {page}, n=3)


# --- Labels, dual-stack, source ranges --------------------------------------------------------

FROM_SOURCE = """
import socket, sys
source, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    s = socket.create_connection((host, port), timeout=2, source_address=(source, 0))
    s.sendall(b"GET / HTTP/1.0\\r\\nHost: test\\r\\n\\r\\n")
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    print(data.split(b"\\r\\n\\r\\n", 1)[-1].decode().strip())
except OSError as exc:
    print("error: " + type(exc).__name__)
"""


def http_from(prefix: Sequence[str], source: str, host: str, port: int) -> str:
    return run_py(prefix, FROM_SOURCE, source, host, port).strip()


def test_services_labelled_for_another_proxy_get_no_rules(
    node: TestNode, net: Net, agent: Agent
) -> None:
    start_pods(agent, "web-1")
    agent.write_manifest("svc.yaml", service("web", spec="  clusterIP: 10.96.0.61\n"))
    other = (
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: other\n"
        "  labels: {service.kubernetes.io/service-proxy-name: elsewhere}\n"
        "spec:\n  selector: {app: web}\n  clusterIP: 10.96.0.62\n"
        "  ports: [{name: http, port: 80, targetPort: http}]\n"
    )
    agent.write_manifest("other.yaml", other)
    wait_endpoints(agent, "web", 1)
    spread(net.on_node, "http://10.96.0.61/", {"web-1"}, n=2)  # the rules are in place
    shown = svc(agent, "other")
    assert shown is not None and shown["proxied"] is False
    assert http_from(net.on_node, NODE_ADDR, "10.96.0.62", 80).startswith("error")
    agent.write_manifest("other.yaml", other.replace("service-proxy-name", "not-a-proxy-name"))
    spread(net.on_node, "http://10.96.0.62/", {"web-1"}, n=2)


def test_dual_stack_service_serves_its_ipv4_side(node: TestNode, net: Net, agent: Agent) -> None:
    start_pods(agent, "web-1")
    dual = (
        "  ipFamilyPolicy: PreferDualStack\n  ipFamilies: [IPv4, IPv6]\n"
        "  clusterIP: 10.96.0.63\n  clusterIPs: [10.96.0.63, 'fd00::63']\n"
    )
    agent.write_manifest("dual.yaml", service("dual", spec=dual))
    required = "  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n"
    agent.write_manifest("req.yaml", service("required", spec=required))
    s = wait_endpoints(agent, "dual", 1)
    assert s["notProgrammed"] == ["spec.clusterIPs: fd00::63"]
    assert s["spec"]["clusterIPs"] == ["10.96.0.63", "fd00::63"]
    spread(net.on_node, "http://10.96.0.63/", {"web-1"}, n=2)
    errors = [e for e in agent.status()["errors"] if e["object"] == "Service default/required"]
    assert [e["field"] for e in errors] == ["spec.ipFamilyPolicy"]
    assert "RequireDualStack" in errors[0]["message"]
    shown = svc(agent, "required")
    assert shown is not None and shown["proxied"] is False


LB_IP = "203.0.113.10"
OTHER_CLIENT = "192.168.77.3"


def test_load_balancer_source_ranges(node: TestNode, net: Net, agent: Agent) -> None:
    subprocess.run(
        ["ip", "-n", net.client_netns, "addr", "add", f"{OTHER_CLIENT}/24", "dev", "up0c"],
        check=True,
        timeout=10,
    )
    try:
        start_pods(agent, "web-1")
        fenced = (
            "apiVersion: v1\nkind: Service\nmetadata: {name: lb}\n"
            "spec:\n  type: LoadBalancer\n  selector: {app: web}\n"
            f"  loadBalancerSourceRanges: [{CLIENT_ADDR}/32]\n"
            "  ports: [{name: http, port: 80, targetPort: http, nodePort: 30090}]\n"
            f"status: {{loadBalancer: {{ingress: [{{ip: {LB_IP}}}]}}}}\n"
        )
        agent.write_manifest("lb.yaml", fenced)
        wait_endpoints(agent, "lb", 1)
        wait_for(
            lambda: http_from(net.client, CLIENT_ADDR, LB_IP, 80) == "web-1",
            20,
            0.3,
            message="the listed source reaching the balancer IP",
        )
        assert http_from(net.client, OTHER_CLIENT, LB_IP, 80) == "error: TimeoutError"
        # The NodePort is not fenced (as kube-proxy's).
        assert http_from(net.client, OTHER_CLIENT, NODE_ADDR, 30090) == "web-1"
        agent.write_manifest("lb.yaml", fenced.replace(f"{CLIENT_ADDR}/32", "192.168.77.0/24"))
        wait_for(
            lambda: http_from(net.client, OTHER_CLIENT, LB_IP, 80) == "web-1",
            20,
            0.3,
            message="a widened range letting the other source in",
        )
    finally:
        subprocess.run(
            ["ip", "-n", net.client_netns, "addr", "del", f"{OTHER_CLIENT}/24", "dev", "up0c"],
            check=False,
            timeout=10,
        )


# --- Health ----------------------------------------------------------------------------------

HEALTH = """
import json, sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
        print(json.dumps([r.status, json.loads(r.read())]))
except urllib.error.HTTPError as e:
    print(json.dumps([e.code, json.loads(e.read())]))
except OSError as exc:
    print(json.dumps([0, type(exc).__name__]))
"""


def health(prefix: Sequence[str], url: str) -> tuple[int, Any]:
    status, body = json.loads(run_py(prefix, HEALTH, url))
    return int(status), body


def test_health_check_node_port_follows_local_readiness(
    node: TestNode, net: Net, agent: Agent
) -> None:
    start_pods(agent, "web-1", probe=True)
    lb = service("lb", spec="  type: LoadBalancer\n  externalTrafficPolicy: Local\n")
    agent.write_manifest("lb.yaml", lb)
    s = wait_endpoints(agent, "lb", 1)
    port = s["spec"]["healthCheckNodePort"]  # allocated: the manifest names none
    assert 30000 <= port <= 32767 and port != s["spec"]["ports"][0]["nodePort"]
    url = f"http://{NODE_ADDR}:{port}/"
    body = {
        "service": {"namespace": "default", "name": "lb"},
        "localEndpoints": 1,
        "serviceProxyHealthy": True,
    }
    assert wait_for(lambda: health(net.client, url) == (200, body), 20, 0.3, message="200")
    pod = agent.pod("web-1")
    assert pod is not None and exec_in(agent, pod, "rm", "/tmp/ready").exit_code == 0
    none = {**body, "localEndpoints": 0}
    assert wait_for(lambda: health(net.client, url) == (503, none), 20, 0.3, message="503")
    assert exec_in(agent, pod, "touch", "/tmp/ready").exit_code == 0
    assert wait_for(lambda: health(net.client, url) == (200, body), 20, 0.3, message="200 again")
    (agent.manifests / "lb.yaml").unlink()
    wait_for(lambda: health(net.client, url) == (0, "URLError"), 20, 0.3, message="the port closed")


@pytest.mark.runtime_independent
def test_proxy_healthz(node: TestNode, net: Net, agent: Agent) -> None:
    agent.write_manifest("svc.yaml", service("web"))
    wait_for(lambda: agent.status()["proxy"]["lastSync"], 20, 0.3, message="a sync")
    for path in ("/healthz", "/livez"):
        status, body = health(net.client, f"http://{NODE_ADDR}:10256{path}")
        assert status == 200, body
        assert body["lastUpdated"].endswith("Z") and body["currentTime"] >= body["lastUpdated"]
        assert body["nodeEligible"] is True


@pytest.mark.parametrize(
    "addresses", [["192.168.77.0/24"], ["primary", "--node-ip", NODE_ADDR]], ids=["cidr", "primary"]
)
def test_nodeport_addresses_limit_where_node_ports_answer(
    node: TestNode, net: Net, runtime_target: RuntimeTarget, proxy_mode: str, addresses: list[str]
) -> None:
    extra = ["--proxy-mode", proxy_mode, "--nodeport-addresses", *addresses]
    a = Agent(node, runtime=runtime_target, extra=extra)
    for old in a.manifests.iterdir():
        old.unlink()
    a.start()
    try:
        start_pods(a, "web-1")
        a.write_manifest("svc.yaml", service("web", spec="  type: NodePort\n"))
        s = wait_endpoints(a, "web", 1)
        node_port = s["spec"]["ports"][0]["nodePort"]
        spread(net.client, f"http://{NODE_ADDR}:{node_port}/", {"web-1"}, n=2)
        spread(net.on_node, f"http://{NODE_ADDR}:{node_port}/", {"web-1"}, n=2)
        # Loopback is a local address outside the CIDR: no NodePort there.
        assert http_from(net.on_node, "127.0.0.1", "127.0.0.1", node_port).startswith("error")
    finally:
        a.stop()
