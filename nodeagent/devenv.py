"""A containerd for development and tests: its config, and starting it.

``make run`` and the integration-test harness both need a containerd that nodeagent can talk
to, configured for the machines we develop on. This module is the one place that knows how:

- ``render_containerd_config`` writes a version-2 config.toml with what these machines need:
  ``restrict_oom_score_adj`` (no CAP_SYS_RESOURCE here: runc fails otherwise), the CNI
  binaries and conf dir, runc (io.containerd.runc.v2) as the default runtime, and the sandbox
  image we build locally (there is no registry to pull it from).
- ``start_containerd`` starts it with its own ``--root/--state/--address`` (optionally inside
  a network namespace), then waits until ``ctr version`` answers on the socket, not for a
  fixed time.
- ``python -m nodeagent.devenv up`` is the ``make run`` setup: if no containerd answers on
  the default socket, start one in the background (it outlives the command), write the CNI
  conflist, and import the local images.

To run containerd in a network namespace, pass ``netns_argv=["nsenter", "--net=..."]``, not
``ip netns exec``: that one also unshares the mount namespace and mounts a fresh sysfs on
/sys, which hides /sys/fs/cgroup (runc: "no cgroup mount found in mountinfo"), and it would
keep containerd's mounts out of sight of whoever must clean them up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nodeagent import localimages
from nodeagent.network import cni

DEFAULT_ADDRESS = "/run/containerd/containerd.sock"
DEFAULT_CONFIG = Path("/etc/nodeagent/containerd.toml")
DEFAULT_ROOT = Path("/var/lib/containerd")
DEFAULT_STATE = Path("/run/containerd")
DEFAULT_CNI_CONF_DIR = Path("/etc/cni/net.d")
DEFAULT_IPAM_DIR = Path("/var/lib/nodeagent/cni-ipam")
DEFAULT_LOG = Path("/var/log/nodeagent-containerd.log")
DEFAULT_POD_CIDR = "10.244.0.0/24"
CNI_BIN_CANDIDATES = (Path("/opt/cni/bin"), Path("/usr/lib/cni"))


class DevEnvError(Exception):
    """containerd could not be configured or started."""


def default_cni_bin_dir() -> Path:
    """/opt/cni/bin if it holds a bridge plugin, else Debian's /usr/lib/cni."""
    for candidate in CNI_BIN_CANDIDATES:
        if (candidate / "bridge").is_file():
            return candidate
    return CNI_BIN_CANDIDATES[-1]


@dataclass(frozen=True)
class ContainerdLayout:
    """Where one containerd keeps its config, data, state and socket."""

    config: Path
    root: Path
    state: Path
    address: str  # socket path
    cni_conf_dir: Path
    cni_bin_dir: Path
    sandbox_image: str = localimages.PAUSE_IMAGE
    # Pod network-namespace bind mounts under the state dir instead of /run/netns, so that
    # everything this containerd mounts lies below one directory (a test node's).
    netns_under_state: bool = False

    @property
    def runc_root(self) -> Path:
        """runc's state for CRI containers (by default runc would share /run/containerd/runc)."""
        return self.state / "runc"

    @classmethod
    def under(cls, base: Path, *, sandbox_image: str = localimages.PAUSE_IMAGE) -> ContainerdLayout:
        """Everything below one directory (a test node's private containerd)."""
        return cls(
            config=base / "containerd.toml",
            root=base / "root",
            state=base / "state",
            address=str(base / "containerd.sock"),
            cni_conf_dir=base / "cni" / "net.d",
            cni_bin_dir=default_cni_bin_dir(),
            sandbox_image=sandbox_image,
            netns_under_state=True,
        )


def _toml_str(value: str | Path) -> str:
    # A JSON string is a valid TOML basic string for everything we put here.
    return json.dumps(str(value))


def render_containerd_config(layout: ContainerdLayout) -> str:
    """config.toml (version 2) for layout."""
    cri = '[plugins."io.containerd.grpc.v1.cri"]'
    runtimes = '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]'
    return "\n".join(
        [
            "version = 2",
            f"root = {_toml_str(layout.root)}",
            f"state = {_toml_str(layout.state)}",
            "",
            "[grpc]",
            f"  address = {_toml_str(layout.address)}",
            "",
            cri,
            f"  sandbox_image = {_toml_str(layout.sandbox_image)}",
            # No CAP_SYS_RESOURCE on these machines: without this runc fails with
            # "can't get final child's PID from pipe: EOF".
            "  restrict_oom_score_adj = true",
            f"  netns_mounts_under_state_dir = {str(layout.netns_under_state).lower()}",
            "",
            '[plugins."io.containerd.grpc.v1.cri".cni]',
            f"  bin_dir = {_toml_str(layout.cni_bin_dir)}",
            f"  conf_dir = {_toml_str(layout.cni_conf_dir)}",
            "",
            '[plugins."io.containerd.grpc.v1.cri".containerd]',
            '  default_runtime_name = "runc"',
            "",
            runtimes,
            '  runtime_type = "io.containerd.runc.v2"',
            "",
            f"{runtimes[:-1]}.options]",
            f"  Root = {_toml_str(layout.runc_root)}",
            "",
        ]
    )


def ctr_answers(address: str, *, netns_argv: Sequence[str] = ()) -> bool:
    """Whether a containerd answers `ctr version` on address right now."""
    if not os.path.exists(address):
        return False
    try:
        result = subprocess.run(
            [*netns_argv, "ctr", "-a", address, "version"],
            capture_output=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def write_config(layout: ContainerdLayout) -> None:
    layout.config.parent.mkdir(parents=True, exist_ok=True)
    layout.config.write_text(render_containerd_config(layout))
    layout.cni_conf_dir.mkdir(parents=True, exist_ok=True)


def start_containerd(
    layout: ContainerdLayout,
    *,
    log_path: Path,
    netns_argv: Sequence[str] = (),
    timeout: float = 30.0,
    detach: bool = False,
) -> subprocess.Popen[bytes]:
    """Write the config, start containerd, wait until it answers; return its process.

    netns_argv prefixes the command (e.g. ``nsenter --net=/run/netns/X``). With detach, the
    process gets its own session so it outlives the caller's terminal.
    """
    write_config(layout)
    Path(layout.address).parent.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        *netns_argv,
        "containerd",
        "--config",
        str(layout.config),
        "--root",
        str(layout.root),
        "--state",
        str(layout.state),
        "--address",
        layout.address,
    ]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=detach,
        )
    deadline = time.monotonic() + timeout
    interval = 0.02
    while not ctr_answers(layout.address, netns_argv=netns_argv):
        if proc.poll() is not None:
            raise DevEnvError(f"containerd exited with {proc.returncode}; see {log_path}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise DevEnvError(f"containerd did not answer within {timeout} s; see {log_path}")
        time.sleep(interval)
        interval = min(interval * 2, 0.25)
    return proc


def up(args: argparse.Namespace) -> int:
    """The `make run` setup: a containerd on the default socket, CNI config, images."""
    layout = ContainerdLayout(
        config=args.config,
        root=args.root,
        state=args.state,
        address=args.address,
        cni_conf_dir=args.cni_conf_dir,
        cni_bin_dir=args.cni_bin_dir or default_cni_bin_dir(),
        sandbox_image=args.pause_image,
    )
    if ctr_answers(layout.address):
        print(f"containerd already answers on {layout.address}")
    else:
        proc = start_containerd(layout, log_path=args.log, detach=True)
        print(f"started containerd (pid {proc.pid}) on {layout.address}, log {args.log}")
    conflist = cni.render_conflist(pod_cidr=args.pod_cidr, ipam_data_dir=str(args.ipam_dir))
    print(f"wrote {cni.write_conflist(layout.cni_conf_dir, conflist)}")
    opts = localimages.BuildOptions(build_dir=args.build_dir, pause_image=args.pause_image)
    archives = localimages.build_all(opts)
    localimages.import_containerd(archives, address=layout.address)
    print(f"imported {', '.join(sorted(archives))}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nodeagent.devenv", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start containerd if needed, write CNI config, import")
    p_up.add_argument("--address", default=DEFAULT_ADDRESS)
    p_up.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p_up.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    p_up.add_argument("--state", type=Path, default=DEFAULT_STATE)
    p_up.add_argument("--cni-conf-dir", type=Path, default=DEFAULT_CNI_CONF_DIR)
    p_up.add_argument("--cni-bin-dir", type=Path, default=None)
    p_up.add_argument("--ipam-dir", type=Path, default=DEFAULT_IPAM_DIR)
    p_up.add_argument("--pod-cidr", default=DEFAULT_POD_CIDR)
    p_up.add_argument("--log", type=Path, default=DEFAULT_LOG)
    p_up.add_argument("--build-dir", type=Path, default=localimages.DEFAULT_BUILD_DIR)
    p_up.add_argument("--pause-image", default=localimages.PAUSE_IMAGE)
    p_cfg = sub.add_parser("config", help="print a containerd config for a base directory")
    p_cfg.add_argument("base", type=Path)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "config":
        print(render_containerd_config(ContainerdLayout.under(args.base)), end="")
        return 0
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        print("devenv: containerd and ctr are not installed", file=sys.stderr)
        return 1
    try:
        return up(args)
    except (DevEnvError, localimages.ImageToolError, OSError, ValueError) as exc:
        print(f"devenv: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
