"""The one-machine lab: N nodes on one L2 segment, each with its own containerd and agent.

    lab netns  na-lab-<pid>:  bridge lab0 10.250.0.1/24, forwarding, masquerade to "up0"
       |  veth per node (node side "lab0", 10.250.0.(10+i)/24, default route via .1)
    node netns (TestNode):    containerd, agent with --cluster-cidr 10.244.0.0/16,
                              pod bridge on 10.244.<n>.0/24 (the Node's spec.podCIDR)
       |
    root netns: only the test API server's end of one veth ("up0"'s peer, a link-local /30),
                as in tests/harness/cluster.py; nothing else of the machine's network is touched

Every node's agent joins the test API server with its own node kubeconfig (system:node:<name>,
bound to system:node-proxier as docs/rbac.md asks; ``node_proxier=False`` leaves the binding
out), and the lab sets
each Node's ``spec.podCIDR`` to the node's pod CIDR, as the controller-manager's node IPAM
would; the agents get ``--pod-cidr`` and ``--node-ip`` too. With ``node_ipam`` (seconds) the
lab runs as a new user's cluster does instead: the API server's node IPAM assigns the
podCIDRs that long after each Node registers (tests/apiserver/ipam.py), the agents run with
neither flag (each finds its address and waits for its podCIDR), and ``wait_pod_cidrs``
learns the CIDRs from the Nodes. The agents then route to each other's pod CIDRs (host-gw)
over lab0. The API server
runs with a short ``--node-monitor-grace-period`` so a stopped agent's node turns NotReady
within seconds.

For people without VMs::

    python3 -m tests.harness.lab up --nodes 3      # prints how to reach it; Ctrl-C tears down
    python3 -m tests.harness.lab up --node-ipam 2  # podCIDRs from node IPAM, no agent flags
    python3 -m tests.harness.lab down --dir DIR    # clean up after an `up` that was killed

Needs root, like the integration tests (network namespaces, containerd, iptables).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import ipaddress
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightkube import AsyncClient, KubeConfig
from lightkube.resources.core_v1 import Node
from lightkube.types import PatchType

from nodeagent import devenv, localimages
from tests.apiserver.process import ApiServerProcess
from tests.harness.agent import Agent
from tests.harness.node import NETNS_DIR, TestNode, TestNodeError
from tests.harness.wait import async_wait_for

REPO = Path(__file__).resolve().parents[2]
LAB_NET = ipaddress.IPv4Network("10.250.0.0/24")
GATEWAY = "10.250.0.1"
CLUSTER_CIDR = "10.244.0.0/16"
LAB_BRIDGE = "lab0"
UPLINK = "up0"  # the lab's end of the link to the API server
STATE_FILE = "lab.json"
DEFAULT_GRACE_S = 15.0  # past the agents' 10 s Lease renewal, well short of upstream 40 s


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=15)


def node_ip(index: int) -> str:
    return str(LAB_NET.network_address + 10 + index)


@dataclass
class LabNode:
    """One node of the lab: its network namespace and containerd, its agent, its address."""

    name: str
    ip: str
    node: TestNode
    agent: Agent
    pod_cidr: str = ""  # the Node's spec.podCIDR ("" until node IPAM assigned it)


class Lab:
    def __init__(
        self,
        root: Path,
        *,
        count: int = 3,
        images: dict[str, Path],
        grace_s: float = DEFAULT_GRACE_S,
        proxy_mode: str = "iptables",
        node_proxier: bool = True,
        node_ipam: float | None = None,
    ) -> None:
        """``node_proxier=False``: the nodes get only what the Node authorizer grants (no
        system:node-proxier binding, so no Node or EndpointSlice lists)."""
        if not 1 <= count <= 200:
            raise ValueError("a lab has 1 to 200 nodes")
        self.root = root.resolve()
        self.count = count
        self.images = images
        self.grace_s = grace_s
        self.proxy_mode = proxy_mode
        self.node_proxier = node_proxier
        self.node_ipam = node_ipam  # None: the lab assigns podCIDRs and passes the flags
        n = os.getpid() % 100000
        self.netns = f"na-lab-{n}"
        self.host_dev = f"nalab{n}"
        # A link-local /30 of our own for the API server (same scheme as tests/harness/cluster.py,
        # in a range that one does not use).
        third, fourth = 216 + n % 32, (n // 32 % 64) * 4
        self.api_ip, self.uplink_ip = (
            f"169.254.{third}.{fourth + 1}",
            f"169.254.{third}.{fourth + 2}",
        )
        self.nodes: list[LabNode] = []
        self.api: ApiServerProcess | None = None
        self._netns_created = False
        self._link_created = False

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> Lab:
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self._make_segment()
            names = [f"lab-{i + 1}" for i in range(self.count)]
            ipam = () if self.node_ipam is None else (
                *("--node-ipam", f"{CLUSTER_CIDR}/24", "--node-ipam-delay", str(self.node_ipam)),
            )  # fmt: skip
            api = ApiServerProcess(
                self.root / "api",
                host=self.api_ip,
                extra_args=("--node-monitor-grace-period", str(self.grace_s), *ipam),
            )
            for name in names:
                api.node_kubeconfig(name, node_proxier=self.node_proxier)
            await api.start()
            self.api = api
            for i, name in enumerate(names):
                self.nodes.append(self._add_node(i, name))
            self.save_state()
            async with self.admin() as client:
                for lab_node in self.nodes:
                    await self._registered(client, lab_node)
                    if self.node_ipam is None:
                        await self._assign_pod_cidr(client, lab_node)
            if self.node_ipam is None:
                await self.wait_routes()
        except BaseException:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        errors: list[BaseException] = []
        for lab_node in reversed(self.nodes):
            with contextlib.suppress(Exception):
                lab_node.agent.stop()
            try:
                lab_node.node.close()
            except TestNodeError as exc:
                errors.append(exc)
        self.nodes = []
        if self.api is not None:
            await self.api.stop()
            self.api = None
        self._remove_segment()
        (self.root / STATE_FILE).unlink(missing_ok=True)
        if errors:
            raise errors[0]

    async def __aenter__(self) -> Lab:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _make_segment(self) -> None:
        lab = self.netns
        _ip("netns", "add", lab)
        self._netns_created = True
        _ip("-n", lab, "link", "set", "lo", "up")
        _ip("-n", lab, "link", "add", LAB_BRIDGE, "type", "bridge")
        _ip("-n", lab, "addr", "add", f"{GATEWAY}/{LAB_NET.prefixlen}", "dev", LAB_BRIDGE)
        _ip("-n", lab, "link", "set", LAB_BRIDGE, "up")
        _ip("link", "add", self.host_dev, "type", "veth", "peer", "name", UPLINK, "netns", lab)
        self._link_created = True
        _ip("addr", "add", f"{self.api_ip}/30", "dev", self.host_dev)
        _ip("link", "set", self.host_dev, "up")
        _ip("-n", lab, "addr", "add", f"{self.uplink_ip}/30", "dev", UPLINK)
        _ip("-n", lab, "link", "set", UPLINK, "up")
        self.run_in_lab(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        # Nodes reach the API server from their lab addresses; the root namespace has no route
        # back to the lab, so the lab hides them behind its uplink address.
        masquerade = ["-t", "nat", "-A", "POSTROUTING", "-o", UPLINK, "-j", "MASQUERADE"]
        self.run_in_lab(["iptables", *masquerade])

    def _remove_segment(self) -> None:
        if self._link_created:
            subprocess.run(["ip", "link", "del", self.host_dev], capture_output=True, check=False)
            self._link_created = False
        if self._netns_created:
            subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, check=False)
            self._netns_created = False

    def _add_node(self, index: int, name: str) -> LabNode:
        flags = self.node_ipam is None
        node = TestNode.start(self.root / name, images=self.images, cni_config=flags)
        try:
            ip = node_ip(index)
            port = f"p{index + 1}"
            # Made inside the namespaces: nothing of it ever exists in the root namespace.
            _ip(
                "link", "add", "name", "lab0", "netns", node.netns,
                "type", "veth", "peer", "name", port, "netns", self.netns,
            )  # fmt: skip
            _ip("-n", self.netns, "link", "set", port, "master", LAB_BRIDGE, "up")
            _ip("-n", node.netns, "addr", "add", f"{ip}/{LAB_NET.prefixlen}", "dev", "lab0")
            _ip("-n", node.netns, "link", "set", "lab0", "up")
            _ip("-n", node.netns, "route", "add", "default", "via", GATEWAY)
            agent = Agent(node, name=name, extra=self._agent_args(name, ip), pod_cidr=flags)
            agent.start()
        except BaseException:
            node.close()
            raise
        return LabNode(name, ip, node, agent, pod_cidr=node.pod_cidr if flags else "")

    def _agent_args(self, name: str, ip: str) -> list[str]:
        if self.api is None:
            raise RuntimeError("the API server must run before the agents")
        kubeconfig = self.api.workdir / f"{name}.kubeconfig"
        return [
            *("--kubeconfig", str(kubeconfig), "--cluster-cidr", CLUSTER_CIDR),
            *(("--node-ip", ip) if self.node_ipam is None else ()),
            *("--proxy-mode", self.proxy_mode),
        ]

    def node(self, name: str) -> LabNode:
        return next(n for n in self.nodes if n.name == name)

    # -- helpers ------------------------------------------------------------------------------

    @property
    def lab_argv(self) -> list[str]:
        return ["nsenter", f"--net={NETNS_DIR / self.netns}"]

    def run_in_lab(self, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        opts: dict[str, Any] = {"check": True, "capture_output": True, "text": True, "timeout": 60}
        opts.update(kw)
        result: subprocess.CompletedProcess[str] = subprocess.run([*self.lab_argv, *argv], **opts)
        return result

    @contextlib.asynccontextmanager
    async def admin(self) -> Any:
        if self.api is None:
            raise RuntimeError("the lab is not running")
        client = AsyncClient(KubeConfig.from_file(self.api.kubeconfig))
        try:
            yield client
        finally:
            await client.close()

    async def _registered(self, client: AsyncClient, lab_node: LabNode) -> None:
        async def registered() -> bool:
            try:
                await client.get(Node, lab_node.name)
            except Exception:
                return False
            return True

        await async_wait_for(
            registered,
            60,
            0.2,
            message=lambda: f"{lab_node.name} registered\n{lab_node.agent.log_tail()}",
        )

    async def _assign_pod_cidr(self, client: AsyncClient, lab_node: LabNode) -> None:
        cidr = lab_node.pod_cidr
        await client.patch(
            Node,
            lab_node.name,
            {"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}},
            patch_type=PatchType.STRATEGIC,
        )

    async def wait_pod_cidrs(self, within: float = 60) -> None:
        """Until node IPAM has given every Node its podCIDR; learn them, save the state."""
        async with self.admin() as client:
            for lab_node in self.nodes:

                async def assigned(lab_node: LabNode = lab_node) -> str:
                    node = await client.get(Node, lab_node.name)
                    return str((node.spec.podCIDR if node.spec else "") or "")

                lab_node.pod_cidr = await async_wait_for(
                    assigned, within, 0.2, message=f"{lab_node.name}'s podCIDR"
                )
        self.save_state()

    async def wait_routes(self, within: float = 60) -> None:
        """Until every agent routes to every other node's pod CIDR."""
        for lab_node in self.nodes:
            want = {(n.pod_cidr, n.ip) for n in self.nodes if n is not lab_node}

            await async_wait_for(
                functools.partial(_routed, lab_node, want),
                within,
                0.2,
                message=functools.partial(_routes_problem, lab_node),
            )

    def save_state(self) -> None:
        """What `down` needs after an `up` that was killed: processes, namespaces, dirs."""
        state = {
            "netns": self.netns,
            "host_dev": self.host_dev,
            "api_pid": (self.api.info.get("pid") if self.api else None),
            "nodes": [
                {
                    "name": n.name,
                    "netns": n.node.netns,
                    "root": str(n.node.root),
                    "pod_cidr": n.pod_cidr,
                    "agent_pid": n.agent.proc.pid if n.agent.proc else None,
                    "containerd_pid": n.node._containerd.pid if n.node._containerd else None,
                }
                for n in self.nodes
            ],
        }
        (self.root / STATE_FILE).write_text(json.dumps(state, indent=2))


# --- the command line -------------------------------------------------------------------------


def _routed(lab_node: LabNode, want: set[tuple[str, str]]) -> bool:
    network = lab_node.agent.status().get("network") or {}
    have = {(r["dst"], r["via"]) for r in network.get("routes") or []}
    return have == want


def _routes_problem(lab_node: LabNode) -> str:
    return f"routes on {lab_node.name}\n{lab_node.agent.log_tail()}"


def describe(lab: Lab) -> str:
    api = lab.api
    assert api is not None
    lines = [
        f"lab of {len(lab.nodes)} nodes on {LAB_NET} (bridge {LAB_BRIDGE} in netns {lab.netns})",
        f"API server:  {api.url}   admin kubeconfig: {api.kubeconfig}",
        f"             e.g. KUBECONFIG={api.kubeconfig} kubectl get nodes -o wide",
        f"cluster CIDR {CLUSTER_CIDR}; every node's agent runs with --cluster-cidr",
        "",
        f"{'NODE':8} {'IP':12} {'POD CIDR':16} NETNS / STATUS SOCKET",
    ]
    for n in lab.nodes:
        lines.append(f"{n.name:8} {n.ip:12} {n.pod_cidr:16} {n.node.netns}")
        lines.append(f"{'':38} nodeagent status --status-socket {n.agent.socket}")
    lines += [
        "",
        "Reach NodePorts and pod IPs from the lab segment, as another machine on it would:",
        f"  nsenter --net=/run/netns/{lab.netns} wget -qO- http://{lab.nodes[0].ip}:<nodePort>/",
        f"Run a command in a node: nsenter --net=/run/netns/{lab.nodes[0].node.netns} ...",
        f"Agent logs: {lab.nodes[0].agent.log_path} (one per node). Ctrl-C tears the lab down.",
    ]
    return "\n".join(lines)


async def _up(
    root: Path, count: int, grace_s: float, proxy_mode: str, node_ipam: float | None
) -> None:
    images = localimages.build_all(localimages.BuildOptions(build_dir=REPO / "build" / "images"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Lab(
        root,
        count=count,
        images=images,
        grace_s=grace_s,
        proxy_mode=proxy_mode,
        node_ipam=node_ipam,
    ) as lab:
        if node_ipam is not None:
            await lab.wait_pod_cidrs()
            await lab.wait_routes()
        print(describe(lab), flush=True)
        await stop.wait()
        print("tearing the lab down", flush=True)


def _down(root: Path) -> int:
    """Remove what an `up` that was killed left: processes, nodes, namespaces, the link."""
    path = root / STATE_FILE
    if not path.is_file():
        print(f"no {STATE_FILE} under {root}: nothing to do", file=sys.stderr)
        return 1
    state = json.loads(path.read_text())
    pids = [n.get("agent_pid") for n in state["nodes"]] + [state.get("api_pid")]
    pids += [n.get("containerd_pid") for n in state["nodes"]]
    for pid in pids:
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    for entry in state["nodes"]:
        node_root = Path(entry["root"])
        node = TestNode(
            netns=entry["netns"],
            root=node_root,
            pod_cidr=entry["pod_cidr"],
            layout=devenv.ContainerdLayout.under(node_root / "containerd"),
            _netns_created=True,
        )
        try:
            node.close()
        except TestNodeError as exc:
            print(f"{entry['name']}: {exc}", file=sys.stderr)
    subprocess.run(["ip", "link", "del", state["host_dev"]], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "del", state["netns"]], capture_output=True, check=False)
    path.unlink()
    print(f"lab under {root} removed")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.harness.lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a lab and keep it running until Ctrl-C")
    up.add_argument("--nodes", type=int, default=3, help="how many nodes (default 3)")
    up.add_argument("--dir", type=Path, default=None, help="where the lab lives (default: new)")
    up.add_argument(
        "--grace", type=float, default=DEFAULT_GRACE_S, help="node monitor grace period, s"
    )
    up.add_argument(
        "--proxy-mode", choices=("iptables", "nftables"), default="iptables", help="agents' mode"
    )
    up.add_argument(
        "--node-ipam",
        type=float,
        default=None,
        metavar="SECONDS",
        help="the API server assigns podCIDRs this long after registration; no --pod-cidr or"
        " --node-ip for the agents",
    )
    down = sub.add_parser("down", help="clean up after an `up` that did not exit cleanly")
    down.add_argument("--dir", type=Path, required=True, help="the lab's directory")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("the lab needs root (network namespaces, containerd, iptables)")
    if args.command == "down":
        return _down(args.dir)
    root = args.dir or Path(tempfile.mkdtemp(prefix="nodeagent-lab-"))
    print(f"lab directory: {root} (`down --dir {root}` cleans up after a crash)", flush=True)
    asyncio.run(_up(root, args.nodes, args.grace, args.proxy_mode, args.node_ipam))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
