"""What the cluster-mode integration tests share: the link to the test API server, the
cluster agent, and API pods built, created and awaited.

The API server runs as a process in the root network namespace, listening on one end of a
veth pair whose other end is in the node's namespace: a private link-local /30 per module,
so nothing touches the machine's own addresses or routes. The machine's resolvers are
unreachable from the node (refused at once, not timed out). The fixtures over these helpers
(``link``, ``api``, ``admin``) live in ``tests/integration/conftest.py``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.resources.core_v1 import Pod

from tests.apiserver.process import ApiServerProcess
from tests.harness.agent import Agent, RuntimeTarget
from tests.harness.manifests import SLEEP
from tests.harness.node import TestNode
from tests.harness.wait import async_wait_for

__all__ = [
    "CLUSTER_DNS",
    "NODE_NAME",
    "SLEEP",
    "Link",
    "admin_client",
    "cluster_agent",
    "container_id",
    "create",
    "get_pod",
    "http_get",
    "pod_manifest",
    "ready",
    "veth_link",
    "wait_ready",
]

NODE_NAME = "node-a"
CLUSTER_DNS = "10.96.0.10"


@dataclass(frozen=True)
class Link:
    """A veth pair: ``host_ip`` in the root namespace, ``node_ip`` in the node's."""

    host_dev: str
    host_ip: str
    node_ip: str


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


@contextlib.contextmanager
def veth_link(node: TestNode, *, network: str | None = None, tag: str = "na") -> Iterator[Link]:
    """A /30 from the root namespace into ``node``'s, with the node's default route over it.

    The /30 is link-local, or in ``network`` (a /16) when the node needs a real address.
    Each test process picks its own /30 and device names (``tag``), from its pid.
    """
    if network is None:
        n = os.getpid() % 60000
        first = ipaddress.IPv4Address(f"169.254.{16 + n // 64 % 200}.{(n % 64) * 4}")
    else:
        n = os.getpid() % 16000
        first = ipaddress.IPv4Address(network) + n * 4
    host_ip, node_ip = str(first + 1), str(first + 2)
    host_dev, node_dev = f"{tag}{n}h", f"{tag}{n}n"
    _ip("link", "add", host_dev, "type", "veth", "peer", "name", node_dev)
    try:
        _ip("link", "set", node_dev, "netns", node.netns)
        _ip("addr", "add", f"{host_ip}/30", "dev", host_dev)
        _ip("link", "set", host_dev, "up")
        _ip("-n", node.netns, "addr", "add", f"{node_ip}/30", "dev", node_dev)
        _ip("-n", node.netns, "link", "set", node_dev, "up")
        # A service IP must be routable for a packet to reach the nat OUTPUT chain at all.
        _ip("-n", node.netns, "route", "add", "default", "via", host_ip)
        # The machine's resolvers never answer a node (their replies have no way back), so
        # they are refused at once: else every name lookup in the node (the agent's own
        # hostname, when its default route gives no node IP) waits out the resolver's retries.
        for server in _machine_nameservers():
            _ip("-n", node.netns, "route", "add", "unreachable", f"{server}/32")
        yield Link(host_dev, host_ip, node_ip)
    finally:
        subprocess.run(["ip", "link", "del", host_dev], capture_output=True, check=False)


def _machine_nameservers() -> list[str]:
    """The IPv4 nameservers of /etc/resolv.conf, but loopback ones (refused in a node)."""
    try:
        lines = Path("/etc/resolv.conf").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            with contextlib.suppress(ValueError):
                address = ipaddress.ip_address(words[1])
                if address.version == 4 and not address.is_loopback:
                    found.append(str(address))
    return list(dict.fromkeys(found))


def admin_client(api: ApiServerProcess) -> AsyncClient:
    """A new client: after a server restart, pooled connections are dead ones."""
    return AsyncClient(KubeConfig.from_file(api.kubeconfig))


@contextlib.contextmanager
def cluster_agent(
    node: TestNode,
    api: ApiServerProcess,
    *,
    name: str = NODE_NAME,
    runtime: RuntimeTarget | None = None,
    extra: Sequence[str] = (),
    cluster_dns: str | None = CLUSTER_DNS,
    allow_privileged: bool = True,
    pod_cidr: bool = True,
) -> Iterator[Agent]:
    """The agent of ``api`` as node ``name``, started with an empty manifest directory."""
    args = ["--kubeconfig", str(api.workdir / f"{name}.kubeconfig"), *extra]
    if cluster_dns is not None:
        args += ["--cluster-dns", cluster_dns]
    agent = Agent(
        node,
        name=name,
        extra=args,
        runtime=runtime,
        allow_privileged=allow_privileged,
        pod_cidr=pod_cidr,
    )
    for old in agent.manifests.iterdir():
        old.unlink()
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


def pod_manifest(
    name: str,
    script: str,
    *,
    grace: int = 10,
    token: bool = False,
    node_name: str = NODE_NAME,
    **spec: Any,
) -> dict[str, Any]:
    """An API pod bound to ``node_name``: one busybox container running ``script``."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": node_name,
            "automountServiceAccountToken": token,
            "terminationGracePeriodSeconds": grace,
            "containers": [
                {
                    "name": "main",
                    "image": "busybox",
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["sh", "-c", script],
                }
            ],
            **spec,
        },
    }


async def create(admin: AsyncClient, body: dict[str, Any]) -> str:
    """Create the pod; its uid."""
    pod = await admin.create(Pod.from_dict(body))  # type: ignore[call-overload]
    return str(pod.metadata.uid)


async def get_pod(admin: AsyncClient, name: str) -> dict[str, Any] | None:
    try:
        pod = await admin.get(Pod, name, namespace="default")
    except ApiError as exc:
        if exc.status.code == 404:
            return None
        raise
    return dict(pod.to_dict())


def ready(pod: dict[str, Any] | None) -> bool:
    status = (pod or {}).get("status") or {}
    conditions = status.get("conditions") or []
    return status.get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in conditions
    )


async def wait_ready(
    admin: AsyncClient, agent: Agent, name: str, within: float = 30
) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        pod = await get_pod(admin, name)
        return pod if ready(pod) else None

    return await async_wait_for(
        check, within, interval=0.2, message=lambda: f"{name} Ready in the API\n{agent.log_tail()}"
    )


def container_id(pod: dict[str, Any]) -> str:
    return str(pod["status"]["containerStatuses"][0]["containerID"])


def http_get(node: TestNode, url: str) -> str:
    """GET from inside the node's network namespace ("" on any failure)."""
    code = f"import urllib.request as u; print(u.urlopen({url!r}, timeout=2).read().decode())"
    result = node.run([sys.executable, "-c", code], check=False)
    return result.stdout.strip() if result.returncode == 0 else ""
