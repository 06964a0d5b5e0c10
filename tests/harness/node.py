"""A private node for integration tests: a network namespace with its own containerd.

``TestNode.start`` builds, under one directory (``root``):

- a network namespace ``na-test-<pid>-<n>`` with ``lo`` up: the node's own interfaces,
  routes and iptables, so tests never touch the machine's;
- a containerd (config from ``nodeagent.devenv``) with its own root, state and socket,
  running in that network namespace, with its CNI conflist (a bridge on the node's pod CIDR,
  10.244.<n>.0/24, IPAM leases under the node's directory) and the local images imported.

Why ``nsenter --net`` and not ``ip netns exec``: ``ip netns exec`` also unshares the mount
namespace and mounts a fresh sysfs on /sys, which hides /sys/fs/cgroup, and runc then fails
with "no cgroup mount found in mountinfo". Entering only the network namespace keeps
containerd's mounts (overlay rootfs, sandbox /dev/shm, pod network-namespace bind mounts) in
the host's mount namespace, where teardown can see them and unmount them. containerd is
configured to put the pod netns bind mounts under its state dir
(``netns_mounts_under_state_dir``) and runc's state under it too, so everything it mounts or
writes lies below ``root``, with exceptions: shim sockets in /run/containerd/s (a hard-coded
path; teardown removes those of killed shims), and for ``ctr run`` the runc root and stdio
FIFOs under /run/containerd unless given ``--runc-root``/``--fifo-dir``: use ``ctr_run``.

Teardown (``close``) leaves nothing behind, even after a crash: it removes pods through CRI
and tasks/containers through ctr while containerd lives, then stops containerd, kills any
shim started with this node's address and everything below it, unmounts everything under
``root``, removes the cgroups and runc state of this node's containers, deletes the network
namespace and the directory. ``reset`` is the per-test part: remove every pod and container,
keep containerd.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import itertools
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from nodeagent import devenv, localimages
from nodeagent.network import cni
from tests.harness.wait import WaitTimeout, wait_for

CRI_NAMESPACE = "k8s.io"
SHIM_SOCKET_DIR = Path("/run/containerd/s")
DEFAULT_RUNC_ROOT = Path("/run/containerd/runc")
CGROUP_ROOT = Path("/sys/fs/cgroup")
NETNS_DIR = Path("/run/netns")
MAX_SOCKET_PATH = 100  # sun_path is 108 bytes; containerd adds ".ttrpc"

_counter = itertools.count(1)


class TestNodeError(Exception):
    """A test node could not be set up."""


def _check(argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=timeout)


@dataclass(frozen=True)
class Shim:
    """A containerd-shim-runc-v2 process and the containers it serves."""

    pid: int
    namespace: str
    id: str


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[1])


def shims_for(address: str) -> list[Shim]:
    """The shims containerd at address started (they stay alive without it)."""
    found = []
    for pid in _pids():
        argv = _cmdline(pid)
        if not argv or not argv[0].endswith("containerd-shim-runc-v2"):
            continue
        opts = dict(zip(argv[1::2], argv[2::2], strict=False))
        if opts.get("-address") == address:
            found.append(Shim(pid, opts.get("-namespace", ""), opts.get("-id", "")))
    return found


def descendants(pid: int) -> list[int]:
    """Every process below pid, children first found first."""
    children: dict[int, list[int]] = {}
    for p in _pids():
        parent = _ppid(p)
        if parent is not None:
            children.setdefault(parent, []).append(p)
    out: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def alive(pid: int) -> bool:
    """Whether pid is a live process (a zombie is not: it only waits to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _kill(pid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below path in our mount namespace, deepest first."""
    prefix = str(path).rstrip("/")
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        # Field 5 is the mount point, with spaces and the like escaped as \\ooo.
        point = line.split()[4].encode().decode("unicode_escape")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return sorted(set(points), key=lambda p: (p.count("/"), p), reverse=True)


def stop_process(
    proc: subprocess.Popen[bytes] | None,
    *,
    sig: signal.Signals = signal.SIGTERM,
    timeout: float,
) -> None:
    """Send sig to a daemon we started, KILL it if it outlives timeout; reap it."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def kill_shims(address: str, namespace: str | None = None) -> list[Shim]:
    """Kill the shims serving address (of one containerd namespace, or all) and every process
    below them; wait until all are gone; return the shims."""
    doomed: set[int] = set()
    found: dict[int, Shim] = {}

    def gone() -> bool:
        for shim in shims_for(address):
            if namespace is not None and shim.namespace != namespace:
                continue
            found[shim.pid] = shim
            doomed.add(shim.pid)
            doomed.update(descendants(shim.pid))
        for pid in doomed:
            _kill(pid)
        return not [pid for pid in doomed if alive(pid)]

    wait_for(gone, 10, 0.05, message=f"shims of {address} to exit")
    return list(found.values())


def unmount_below(root: Path) -> list[str]:
    """Unmount everything below root (lazily if need be); return what would not go."""

    def unmounted() -> bool:
        for point in mounts_under(root):
            subprocess.run(["umount", point], capture_output=True, check=False)
        for point in mounts_under(root):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
        return not mounts_under(root)

    with contextlib.suppress(WaitTimeout):
        wait_for(unmounted, 10, 0.1, message=f"mounts under {root} to go")
    return mounts_under(root)


def shim_socket(address: str, namespace: str, container_id: str) -> Path:
    """Where containerd 1.6 puts the ttrpc socket of a shim (a hash, under /run)."""
    path = os.path.join(address + ".ttrpc", namespace, container_id)
    return SHIM_SOCKET_DIR / hashlib.sha256(path.encode()).hexdigest()


@dataclass
class TestNode:
    """One node: a network namespace, a containerd in it, CNI config, images."""

    __test__ = False  # not a test class, whatever its name says

    netns: str
    root: Path  # the node's own directory; everything of the node lives below it
    pod_cidr: str
    layout: devenv.ContainerdLayout
    images: Mapping[str, Path] = field(default_factory=dict)
    _containerd: subprocess.Popen[bytes] | None = None
    _closed: bool = False
    _netns_created: bool = False  # never delete a namespace someone else made

    # -- paths and names the agent and tests need ------------------------------------------

    @property
    def address(self) -> str:
        """containerd's socket path."""
        return self.layout.address

    @property
    def endpoint(self) -> str:
        """The CRI endpoint, as the agent's config takes it."""
        return "unix://" + self.layout.address

    @property
    def cni_conf_dir(self) -> Path:
        return self.layout.cni_conf_dir

    @property
    def cni_bin_dir(self) -> Path:
        return self.layout.cni_bin_dir

    @property
    def runc_root(self) -> Path:
        """Pass as `ctr run --runc-root` so runc state stays below root."""
        return self.layout.runc_root

    @property
    def fifo_dir(self) -> Path:
        """Pass as `ctr run --fifo-dir` so the stdio FIFOs stay below root."""
        return self.root / "fifo"

    @property
    def state_dir(self) -> Path:
        """A directory for the agent's own state."""
        return self.root / "agent"

    @property
    def pod_log_dir(self) -> Path:
        return self.root / "pods"

    @property
    def ipam_dir(self) -> Path:
        return self.root / "cni" / "ipam"

    @property
    def log_path(self) -> Path:
        """containerd's log."""
        return self.root / "containerd.log"

    @property
    def cgroup_root(self) -> str:
        """The agent's --cgroup-root on this node: its pods' cgroups stay apart from others'."""
        return f"/{self.netns}"

    @property
    def netns_argv(self) -> list[str]:
        """Prefix that runs a command in the node's network namespace (and nothing else)."""
        return ["nsenter", f"--net={NETNS_DIR / self.netns}"]

    # -- life cycle ---------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        root: Path,
        *,
        images: Mapping[str, Path],
        index: int | None = None,
        pause_image: str = localimages.PAUSE_IMAGE,
        timeout: float = 30.0,
        cni_config: bool = True,
    ) -> TestNode:
        """Create the node below root (which must not hold another node); images: name->tar.

        ``cni_config``: write the pod network's conflist for ``pod_cidr`` (False: leave it to
        the agent, which writes it once it knows the Node's podCIDR)."""
        n = next(_counter) if index is None else index
        root = root.resolve()
        layout = devenv.ContainerdLayout.under(root / "containerd", sandbox_image=pause_image)
        if len(layout.address) > MAX_SOCKET_PATH:
            raise TestNodeError(f"socket path too long for a unix socket: {layout.address}")
        node = cls(
            netns=f"na-test-{os.getpid()}-{n}",
            root=root,
            pod_cidr=f"10.244.{n % 256}.0/24",
            layout=layout,
            images=dict(images),
        )
        try:
            node._setup(timeout, cni_config=cni_config)
        except BaseException:
            node.close()
            raise
        return node

    def _setup(self, timeout: float, *, cni_config: bool = True) -> None:
        for d in (self.root, self.state_dir, self.pod_log_dir, self.ipam_dir):
            d.mkdir(parents=True, exist_ok=True)
        _check(["ip", "netns", "add", self.netns])
        self._netns_created = True
        _check(["ip", "-n", self.netns, "link", "set", "lo", "up"])
        self.cni_conf_dir.mkdir(parents=True, exist_ok=True)  # containerd watches it
        if cni_config:
            conflist = cni.render_conflist(pod_cidr=self.pod_cidr, ipam_data_dir=str(self.ipam_dir))
            cni.write_conflist(self.cni_conf_dir, conflist)
        try:
            self._containerd = devenv.start_containerd(
                self.layout, log_path=self.log_path, netns_argv=self.netns_argv, timeout=timeout
            )
        except devenv.DevEnvError as exc:
            raise TestNodeError(f"{exc}\n{self.log_tail()}") from exc
        try:
            localimages.import_containerd(dict(self.images), address=self.address)
        except localimages.ImageToolError as exc:
            raise TestNodeError(str(exc)) from exc

    def __enter__(self) -> TestNode:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- running things -----------------------------------------------------------------------

    def run(self, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run argv in the node's network namespace.

        Defaults: check=True, capture_output=True, text=True, timeout=60 (override any).
        """
        opts: dict[str, Any] = {"check": True, "capture_output": True, "text": True}
        opts.setdefault("timeout", 60)
        opts.update(kw)
        result: subprocess.CompletedProcess[str] = subprocess.run([*self.netns_argv, *argv], **opts)
        return result

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[bytes]:
        """Start argv in the node's network namespace (e.g. the agent under test)."""
        proc: subprocess.Popen[bytes] = subprocess.Popen([*self.netns_argv, *argv], **kw)
        return proc

    def ctr(
        self, *args: str, namespace: str = CRI_NAMESPACE, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """`ctr -a <socket> -n <namespace> args...`, in the node's network namespace."""
        argv = ["ctr", "-a", self.address, "-n", namespace, *args]
        return self.run(argv, check=check, timeout=timeout)

    def ctr_run(
        self, image: str, container_id: str, *argv: str, detach: bool = False, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """`ctr run` with runc state and stdio FIFOs below root (`--rm` unless detached).

        Plain `ctr run` would leave both under /run/containerd, outside the node.
        """
        mode = ["-d"] if detach else ["--rm"]
        args = ["--runc-root", str(self.runc_root), "--fifo-dir", str(self.fifo_dir)]
        return self.ctr("run", *mode, *args, image, container_id, *argv, timeout=timeout)

    def image_names(self) -> set[str]:
        return localimages.containerd_images(self.address)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no containerd log)"

    def containerd_alive(self) -> bool:
        return self._containerd is not None and self._containerd.poll() is None

    # -- faults -------------------------------------------------------------------------------

    def kill_containerd(self) -> None:
        """SIGKILL containerd, as a crash would; its shims and their containers live on."""
        stop_process(self._containerd, sig=signal.SIGKILL, timeout=10)

    def restart_containerd(self, timeout: float = 30.0) -> None:
        """Start containerd again on the same root, state and socket (after kill_containerd)."""
        if self.containerd_alive():
            raise TestNodeError("containerd is still running")
        try:
            self._containerd = devenv.start_containerd(
                self.layout, log_path=self.log_path, netns_argv=self.netns_argv, timeout=timeout
            )
        except devenv.DevEnvError as exc:
            raise TestNodeError(f"{exc}\n{self.log_tail()}") from exc

    # -- cleaning up --------------------------------------------------------------------------

    def reset(self) -> None:
        """Remove every pod sandbox, container and task; containerd keeps running."""
        self._remove_cri_pods()
        for ns in self._lines(self.ctr("namespaces", "ls", "-q", namespace="default")):
            tasks = self._lines(self.ctr("tasks", "ls", "-q", namespace=ns))
            for task in tasks:
                self.ctr("tasks", "rm", "-f", task, namespace=ns, check=False)
            for container in self._lines(self.ctr("containers", "ls", "-q", namespace=ns)):
                self.ctr("containers", "rm", container, namespace=ns, check=False)
        leftover = {
            ns: self._lines(self.ctr("containers", "ls", "-q", namespace=ns))
            for ns in self._lines(self.ctr("namespaces", "ls", "-q", namespace="default"))
        }
        if any(leftover.values()):
            raise TestNodeError(f"containers left after reset: {leftover}")

    @staticmethod
    def _lines(result: subprocess.CompletedProcess[str]) -> list[str]:
        return [line.strip() for line in result.stdout.splitlines() if line.strip()]

    def _remove_cri_pods(self) -> None:
        """Stop and remove every CRI pod, so CRI releases its IPs, netns and mounts.

        Through the agent's own CRI client: its remove_container outwaits a task containerd
        still holds (a container whose agent was killed while starting it)."""
        # A thread of its own: a test may call this from inside a running event loop.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, _remove_cri_pods(self.endpoint)).result()

    def close(self) -> None:
        """Tear the node down completely. Safe to call twice and after partial setup.

        Raises TestNodeError if something could not be removed (the directory is then kept:
        deleting through a live mount would reach outside it).
        """
        if self._closed:
            return
        self._closed = True
        if self.containerd_alive():
            with contextlib.suppress(Exception):
                self.reset()
        containers = self._known_containers()
        self._stop_containerd()
        self._kill_shims()
        stuck = self._unmount_all()
        self._remove_container_leftovers(containers)
        remove_cgroup_tree(self.cgroup_root)
        if self._netns_created:
            subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, check=False)
        if stuck:
            raise TestNodeError(f"could not unmount {stuck}; kept {self.root}")
        shutil.rmtree(self.root, ignore_errors=True)

    def _stop_containerd(self) -> None:
        stop_process(self._containerd, timeout=10)

    def _kill_shims(self) -> None:
        """Kill leftover shims of this node and every process below them; wait until gone."""
        kill_shims(self.address)

    def _known_containers(self) -> list[tuple[str, str, str]]:
        """(namespace, id, cgroupsPath) of every task bundle below the state dir."""
        found = []
        tasks = self.layout.state / "io.containerd.runtime.v2.task"
        for config in tasks.glob("*/*/config.json"):
            try:
                spec = json.loads(config.read_text())
            except (OSError, ValueError):
                spec = {}
            cgroups = spec.get("linux", {}).get("cgroupsPath", "")
            found.append((config.parent.parent.name, config.parent.name, cgroups))
        return found

    def _unmount_all(self) -> list[str]:
        """Unmount everything below root; return what would not go."""
        return unmount_below(self.root)

    def _remove_container_leftovers(self, containers: list[tuple[str, str, str]]) -> None:
        """cgroups, runc state and shim sockets of containers whose clean-up was skipped."""
        for ns, cid, cgroups_path in containers:
            shim_socket(self.address, ns, cid).unlink(missing_ok=True)
            for runc_root in (DEFAULT_RUNC_ROOT, self.runc_root):
                shutil.rmtree(runc_root / ns / cid, ignore_errors=True)
            if not cgroups_path or ":" in cgroups_path:
                continue  # systemd-style paths are not ours to guess
            rel = cgroups_path.lstrip("/")
            for hierarchy in _cgroup_hierarchies():
                target = hierarchy / rel
                if target.is_dir():
                    with contextlib.suppress(OSError):
                        target.rmdir()


async def _remove_cri_pods(endpoint: str) -> None:
    from nodeagent.runtime.base import NotFound
    from nodeagent.runtime.cri import CRIRuntime
    from nodeagent.runtime.cri import api_pb2 as pb

    runtime = CRIRuntime(endpoint, timeout_s=30)
    try:
        # Everything, not only what carries the agent's labels (crictl and ctr made some).
        stubs = runtime._open()  # the harness reaches past the seam: everything, unlabelled too
        listed = await stubs.runtime.ListContainers(pb.ListContainersRequest(), timeout=10)
        for container in listed.containers:
            with contextlib.suppress(NotFound):
                await runtime.stop_container(container.id, 0)
                await runtime.remove_container(container.id)
        sandboxes = await stubs.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10)
        for sandbox in sandboxes.items:
            with contextlib.suppress(NotFound):
                await runtime.stop_sandbox(sandbox.id)
                await runtime.remove_sandbox(sandbox.id)
    finally:
        await runtime.close()


def remove_cgroup_tree(path: str) -> None:
    """Remove a cgroup and every cgroup below it, deepest first, in every hierarchy."""
    rel = path.strip("/")
    if not rel:
        return  # never the root
    for hierarchy in _cgroup_hierarchies():
        top = hierarchy / rel
        if not top.is_dir():
            continue
        below = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for directory in [*below, top]:
            with contextlib.suppress(OSError):
                directory.rmdir()


def _cgroup_hierarchies() -> Iterator[Path]:
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        yield CGROUP_ROOT  # pure cgroup v2
        return
    for entry in sorted(CGROUP_ROOT.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            yield entry


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def processes_mentioning(text: str) -> list[int]:
    """pids whose command line contains text (e.g. a node's socket path)."""
    return [pid for pid in _pids() if any(text in arg for arg in _cmdline(pid))]
