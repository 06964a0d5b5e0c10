"""The real agent as a subprocess inside a test node's network namespace.

Tests drive it the way a user does: manifests in a directory, ``nodeagent run`` with flags,
and the status socket for observation. Nothing here reaches into the agent's memory.

``RuntimeTarget`` says which runtime the agent drives (the node's containerd over CRI, or a
``DockerDaemon`` in the node) and gives tests the runtime-neutral ways to look at it and to
hurt it (list sandboxes, SIGKILL a container), so one test body checks both runtimes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodeagent import devenv
from nodeagent.runtime.base import ContainerInfo, Runtime, SandboxInfo
from nodeagent.server.client import StatusUnavailable, fetch_status
from tests.harness.dockerd import DockerDaemon
from tests.harness.node import TestNode
from tests.harness.wait import wait_for


@dataclass(frozen=True)
class RuntimeTarget:
    """The runtime an agent under test drives, and a test's direct line to it."""

    __test__ = False

    kind: str  # "cri" or "docker", as --runtime takes it
    node: TestNode
    docker: DockerDaemon | None = None

    @classmethod
    def cri(cls, node: TestNode) -> RuntimeTarget:
        return cls("cri", node)

    @classmethod
    def for_docker(cls, node: TestNode, daemon: DockerDaemon) -> RuntimeTarget:
        return cls("docker", node, daemon)

    @property
    def endpoint(self) -> str:
        return self.docker.endpoint if self.docker is not None else self.node.endpoint

    @property
    def id_scheme(self) -> str:
        """The prefix of containerIDs in pod status: ``<scheme>://<id>``."""
        return "docker" if self.docker is not None else "containerd"

    def agent_args(self) -> list[str]:
        return ["--runtime", self.kind, "--runtime-endpoint", self.endpoint]

    def backend(self) -> Runtime:
        """A runtime client of our own (the agent's code, not the agent's process)."""
        if self.docker is None:
            from nodeagent.runtime.cri import CRIRuntime

            return CRIRuntime(self.endpoint)
        from nodeagent.network.cniexec import CNIExec
        from nodeagent.runtime.docker import DockerRuntime

        # Reads the agent's CNI records (for sandbox readiness and IPs); never attaches.
        network = CNIExec(
            conf_dir=self.node.cni_conf_dir,
            bin_dirs=(devenv.default_cni_bin_dir(),),
            cache_dir=self.docker.cni_cache_dir,
        )
        return DockerRuntime(self.endpoint, network=network)

    def sandboxes(self) -> list[SandboxInfo]:
        async def go() -> list[SandboxInfo]:
            runtime = self.backend()
            try:
                return list(await runtime.list_sandboxes())
            finally:
                await runtime.close()

        return asyncio.run(go())

    def containers(self) -> list[ContainerInfo]:
        async def go() -> list[ContainerInfo]:
            runtime = self.backend()
            try:
                return list(await runtime.list_containers())
            finally:
                await runtime.close()

        return asyncio.run(go())

    def kill(self, container_id: str) -> None:
        """SIGKILL a container's main process behind the agent's back."""
        if self.docker is None:
            self.node.ctr("tasks", "kill", "-s", "KILL", container_id)
        else:
            self.docker.docker("kill", "--signal", "KILL", container_id)

    def reset(self) -> None:
        """Remove everything of the runtime's that a test left (the node resets containerd)."""
        if self.docker is not None:
            self.docker.reset()


class Agent:
    __test__ = False

    def __init__(
        self,
        node: TestNode,
        *,
        name: str = "node-a",
        extra: Sequence[str] = (),
        runtime: RuntimeTarget | None = None,
        allow_privileged: bool = True,
        pod_cidr: bool = True,
    ) -> None:
        self.node = node
        # --pod-cidr with the node's range; False: none (cluster mode waits for the Node's).
        self.pod_cidr = pod_cidr
        # The suites watch pods through hostPath volumes and use hostNetwork, so the test
        # agent allows them unless a test checks the refusal.
        self.allow_privileged = allow_privileged
        self.runtime = runtime or RuntimeTarget.cri(node)
        self.name = name
        self.manifests = node.root / "manifests"
        self.manifests.mkdir(exist_ok=True)
        self.socket = node.root / "status.sock"
        self.log_path = node.root / "agent.log"
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        node = self.node
        return [
            *node.netns_argv,
            sys.executable,
            "-m",
            "nodeagent",
            "run",
            "--node-name",
            self.name,
            *self.runtime.agent_args(),
            "--manifests",
            str(self.manifests),
            "--state-dir",
            str(node.state_dir),
            "--status-socket",
            str(self.socket),
            *(("--pod-cidr", node.pod_cidr) if self.pod_cidr else ()),
            "--cni-conf-dir",
            str(node.cni_conf_dir),
            "--pod-log-dir",
            str(node.pod_log_dir),
            "--csi-plugins-dir",
            str(node.root / "plugins_registry"),
            "--log-format",
            "json",
            "--allow-privileged",
            "true" if self.allow_privileged else "false",
            # Each node's kubepods under a cgroup of its own, removed with the node.
            "--cgroup-root",
            node.cgroup_root,
            *self.extra,
        ]

    def start(self) -> Agent:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it from here
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        wait_for(self._answers, 20, message=lambda: f"agent status socket\n{self.log_tail()}")
        return self

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"agent exited with {self.proc.returncode}\n{self.log_tail()}")
        try:
            fetch_status(str(self.socket), timeout=2)
        except StatusUnavailable:
            return False
        return True

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc is None:
            return 0
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        return code

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- observation ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return fetch_status(str(self.socket), timeout=5)

    def pod(self, name: str, namespace: str = "default") -> dict[str, Any] | None:
        for pod in self.status()["pods"]:
            meta = pod["metadata"]
            if meta["name"] == name and meta["namespace"] == namespace:
                return dict(pod)
        return None

    def wait_pod(
        self, name: str, predicate: Any, timeout: float = 20, what: str = ""
    ) -> dict[str, Any]:
        """Wait until the pod exists and predicate(pod) holds; return the pod."""

        def check() -> dict[str, Any] | None:
            pod = self.pod(name)
            return pod if pod is not None and predicate(pod) else None

        return wait_for(
            check,
            timeout,
            interval=0.1,
            message=lambda: f"pod {name}: {what}\nlast: {self.pod(name)}\n{self.log_tail()}",
            ignore=(KeyError,),  # a status not yet published has no containerStatuses
        )

    def write_manifest(self, filename: str, text: str) -> Path:
        """Write atomically, as an editor or a config tool would."""
        target = self.manifests / filename
        tmp = self.manifests / f".{filename}.tmp"
        tmp.write_text(text)
        tmp.rename(target)
        return target


def container_status(pod: dict[str, Any], name: str) -> dict[str, Any]:
    for status in pod["status"].get("containerStatuses", []) + pod["status"].get(
        "initContainerStatuses", []
    ):
        if status["name"] == name:
            return dict(status)
    raise KeyError(name)


def condition(pod: dict[str, Any], kind: str) -> str:
    for cond in pod["status"].get("conditions", []):
        if cond["type"] == kind:
            return str(cond["status"])
    return "Unknown"


def is_ready(pod: dict[str, Any]) -> bool:
    return pod["status"].get("phase") == "Running" and condition(pod, "Ready") == "True"


def waiting_reason(pod: dict[str, Any], name: str) -> str:
    state = container_status(pod, name)["state"]
    return str(state.get("waiting", {}).get("reason", ""))


def local_pod(agent: Agent, name: str) -> dict[str, Any] | None:
    """The agent's own view of a pod (in cluster mode a static pod's name ends in the node's)."""
    return agent.pod(name) or agent.pod(f"{name}-{agent.name}")


def waiting_message(agent: Agent, name: str) -> str:
    """The first container's waiting message in the agent's view of the pod ("" if none)."""
    for status in ((local_pod(agent, name) or {}).get("status") or {}).get(
        "containerStatuses"
    ) or []:
        return str(status.get("state", {}).get("waiting", {}).get("message", ""))
    return ""


def cli(agent: Agent, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``python -m nodeagent ARGS`` against the agent's status socket."""
    argv = [sys.executable, "-m", "nodeagent", *args, "--status-socket", str(agent.socket)]
    root = str(Path(__file__).resolve().parents[2])
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=check, cwd=root)


_SCRAPE = """
import sys, urllib.request
with urllib.request.urlopen("http://127.0.0.1:10255" + sys.argv[1], timeout=10) as r:
    sys.stdout.write(r.read().decode())
"""


def scrape(node: TestNode, path: str) -> str:
    """GET ``path`` of the agent's read-only port, from inside the node's namespace."""
    return node.run([sys.executable, "-c", _SCRAPE, path]).stdout


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the first sample ``name{labels...}`` in an exposition (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            head = line.split(" ", 1)[0]
            if head == name or head.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0
