"""A Docker Engine for integration tests, inside a test node's network namespace.

``DockerDaemon.start(node, images=...)`` runs ``dockerd`` in the node's network namespace
(``nsenter --net``, for the reason node.py gives) with everything of its own below
``<node root>/docker``:

- ``--data-root``, ``--exec-root``, ``-H unix://.../docker.sock`` and ``--pidfile``, so it
  never meets a system Docker;
- ``--bridge=none --iptables=false --ip6tables=false --ip-masq=false --userland-proxy=false``:
  Docker makes no bridge, no rules and no proxies; pods get their network from the agent's
  CNI run, exactly as under containerd;
- ``--containerd`` pointing at the node's containerd, as Debian's docker.service points it at
  the system one. Without it dockerd 20.10 starts a containerd of its own under the
  exec-root, *unless* /run/containerd/containerd.sock exists: then it silently uses that
  one (a containerd left running by ``make run``, say), and tests would share it. Docker's
  containers live in that containerd's ``moby`` namespace, their runc state under our
  exec-root;
- ``--cgroup-parent /<netns>-docker``: the containers' cgroups under one parent per node, so
  teardown finds and removes them (Docker leaves the parent behind).

Then it loads the local images with ``docker load`` (``localimages.load_docker``).

``reset`` (per test) detaches every CNI attachment the agent recorded, which frees the IPs,
and removes every container. The detaching runs in a child process entered into the node's
network namespace (``python -m tests.harness.dockerd detach-all``): the plugins act on the
namespace they run in, and must never run in ours.

``close`` leaves nothing: it resets, stops dockerd, kills whatever shim of the ``moby``
namespace survived (the node's own pods' shims are the node's), unmounts everything below
its directory (overlay rootfs, network namespace files), removes its cgroups and shim
sockets, and deletes the directory. Close it before the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import docker

from nodeagent import devenv, localimages
from nodeagent.network.cniexec import CACHE_DIRNAME, CNIExec
from tests.harness.node import (
    TestNode,
    TestNodeError,
    _cgroup_hierarchies,
    kill_shims,
    shim_socket,
    stop_process,
    unmount_below,
)
from tests.harness.wait import wait_for

API_VERSION = "1.41"
REPO = Path(__file__).resolve().parents[2]
DOCKER_NAMESPACE = "moby"  # dockerd's containerd namespace


@dataclass
class DockerDaemon:
    """One dockerd for one TestNode."""

    __test__ = False

    node: TestNode
    root: Path
    # Containers outlive a dockerd restart (tests of a daemon restarted under the agent).
    live_restore: bool = False
    _proc: subprocess.Popen[bytes] | None = None
    _closed: bool = False

    # -- paths ----------------------------------------------------------------------------

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def endpoint(self) -> str:
        """As the agent's --runtime-endpoint and docker's -H take it."""
        return f"unix://{self.socket}"

    @property
    def data_root(self) -> Path:
        return self.root / "data"

    @property
    def exec_root(self) -> Path:
        return self.root / "exec"

    @property
    def cgroup_parent(self) -> str:
        return f"/{self.node.netns}-docker"

    @property
    def log_path(self) -> Path:
        return self.root / "dockerd.log"

    @property
    def cni_cache_dir(self) -> Path:
        """Where the agent (run with the node's state dir) records its CNI attachments."""
        return self.node.state_dir / CACHE_DIRNAME

    # -- life cycle -------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        node: TestNode,
        *,
        images: Mapping[str, Path],
        timeout: float = 30.0,
        live_restore: bool = False,
    ) -> DockerDaemon:
        daemon = cls(node=node, root=node.root / "docker", live_restore=live_restore)
        try:
            daemon._setup(images, timeout)
        except BaseException:
            daemon.close()
            raise
        return daemon

    def _setup(self, images: Mapping[str, Path], timeout: float) -> None:
        for d in (self.root, self.data_root, self.exec_root):
            d.mkdir(parents=True, exist_ok=True)
        self._launch(timeout)
        try:
            localimages.load_docker(dict(images), host=self.endpoint)
        except localimages.ImageToolError as exc:
            raise TestNodeError(str(exc)) from exc

    def _launch(self, timeout: float) -> None:
        argv = [
            "dockerd",
            "--data-root",
            str(self.data_root),
            "--exec-root",
            str(self.exec_root),
            "-H",
            self.endpoint,
            "--containerd",
            self.node.address,
            "--pidfile",
            str(self.root / "docker.pid"),
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-masq=false",
            "--userland-proxy=false",
            "--cgroup-parent",
            self.cgroup_parent,
            "--shutdown-timeout",
            "2",
            *(["--live-restore"] if self.live_restore else []),
        ]
        with self.log_path.open("ab") as log:
            self._proc = self.node.popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        wait_for(self._answers, timeout, 0.05, message=lambda: f"dockerd\n{self.log_tail()}")

    # -- faults -------------------------------------------------------------------------------

    def kill_dockerd(self) -> None:
        """SIGKILL dockerd, as a crash would (its containers live on under live_restore)."""
        stop_process(self._proc, sig=signal.SIGKILL, timeout=10)
        (self.root / "docker.pid").unlink(missing_ok=True)

    def restart_dockerd(self, timeout: float = 30.0) -> None:
        """Start dockerd again on the same data (after kill_dockerd); images are kept."""
        if self.alive():
            raise TestNodeError("dockerd is still running")
        self._launch(timeout)

    def _answers(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise TestNodeError(f"dockerd exited with {self._proc.returncode}\n{self.log_tail()}")
        if not self.socket.exists():
            return False
        try:
            with self.client(timeout=2) as api:
                return bool(api.ping())
        except Exception:
            return False

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- using it ---------------------------------------------------------------------------

    def client(self, timeout: float = 30) -> docker.APIClient:
        return docker.APIClient(base_url=self.endpoint, version=API_VERSION, timeout=timeout)

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The docker CLI against this daemon."""
        argv = ["docker", "-H", self.endpoint, *args]
        return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=60)

    def image_names(self) -> set[str]:
        with self.client() as api:
            return {tag for image in api.images() for tag in image.get("RepoTags") or ()}

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no dockerd log)"

    # -- cleaning up --------------------------------------------------------------------------

    def reset(self) -> None:
        """Detach every recorded CNI attachment, then remove every container."""
        # The plugins must run in the node's network namespace (its bridge, its iptables),
        # never in ours: a child process entered there does the detaching.
        argv = [sys.executable, "-m", __name__, "detach-all", self.endpoint]
        argv += [str(self.node.cni_conf_dir), str(self.cni_cache_dir)]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        result = self.node.run(argv, check=False, env=env, cwd=REPO)
        if result.returncode != 0:
            raise TestNodeError(f"CNI detach failed: {result.stderr.strip()[-2000:]}")
        with self.client() as api:
            for item in api.containers(all=True):
                api.remove_container(item["Id"], force=True, v=True)
            left = api.containers(all=True)
        if left:
            raise TestNodeError(f"containers left after reset: {[c['Id'][:12] for c in left]}")

    def close(self) -> None:
        """Tear dockerd down completely; safe twice and after a partial start."""
        if self._closed:
            return
        self._closed = True
        if self.alive():
            with contextlib.suppress(Exception):
                self.reset()
        self._stop_dockerd()
        self._kill_leftovers()
        stuck = self._unmount_all()
        self._remove_cgroups()
        if stuck:
            raise TestNodeError(f"could not unmount {stuck}; kept {self.root}")
        subprocess.run(["rm", "-rf", str(self.root)], check=False, capture_output=True)

    def _stop_dockerd(self) -> None:
        stop_process(self._proc, timeout=20)

    def _kill_leftovers(self) -> None:
        """Kill the shims of Docker's containers and everything below them; remove sockets."""
        address = self.node.address
        for shim in kill_shims(address, DOCKER_NAMESPACE):
            shim_socket(address, shim.namespace, shim.id).unlink(missing_ok=True)

    def _unmount_all(self) -> list[str]:
        return unmount_below(self.root)

    def _remove_cgroups(self) -> None:
        rel = self.cgroup_parent.lstrip("/")
        for hierarchy in _cgroup_hierarchies():
            parent = hierarchy / rel
            if not parent.is_dir():
                continue
            for child in sorted(parent.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if child.is_dir():
                    with contextlib.suppress(OSError):
                        child.rmdir()
            with contextlib.suppress(OSError):
                parent.rmdir()

    def cgroups_left(self) -> list[Path]:
        rel = self.cgroup_parent.lstrip("/")
        return [h / rel for h in _cgroup_hierarchies() if (h / rel).exists()]


async def _detach_all(endpoint: str, conf_dir: Path, cache_dir: Path) -> None:
    """DEL every attachment recorded in cache_dir (run inside the node's namespace)."""
    network = CNIExec(
        conf_dir=conf_dir, bin_dirs=(devenv.default_cni_bin_dir(),), cache_dir=cache_dir
    )
    with docker.APIClient(base_url=endpoint, version=API_VERSION, timeout=30) as api:
        for container_id in await asyncio.to_thread(network.recorded):
            netns = ""
            with contextlib.suppress(docker.errors.NotFound):
                state = api.inspect_container(container_id)["State"]
                if state.get("Running") and state.get("Pid"):
                    netns = f"/proc/{state['Pid']}/ns/net"
            await network.delete(container_id, netns)


def main(argv: Sequence[str]) -> int:
    if len(argv) != 4 or argv[0] != "detach-all":
        print("usage: python -m tests.harness.dockerd detach-all ENDPOINT CONF_DIR CACHE_DIR")
        return 2
    asyncio.run(_detach_all(argv[1], Path(argv[2]), Path(argv[3])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
