"""The cgroup filesystem: make, write and remove cgroups, on cgroup v1 and v2 (blocking).

v1 has one mount per controller (or per group: ``cpu,cpuacct``) under ``/sys/fs/cgroup``; a
cgroup is a directory of the same relative path in each. We make ours only in the
hierarchies whose files we write (cpu, memory, pids): runc makes the rest for the containers
below, filling cpuset's cpus and mems from the parent. Removal walks every hierarchy, deepest
first, because the runtime made directories there too.

v2 has one tree; a child sees a controller only when every ancestor lists it in
``cgroup.subtree_control``, so making a cgroup first enables cpu, memory and pids on the
path down to it. cpu.shares becomes cpu.weight with runc's conversion.

A cgroup that still holds processes cannot be removed (EBUSY): ``remove`` reports False and
the caller tries again later, as the kubelet's housekeeping does.
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass
from pathlib import Path

from nodeagent.kubelet.cgroups.policy import CPU_PERIOD_US, ResourceConfig, shares_to_weight

MOUNT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("cpu", "memory", "pids")
V2_CONTROLLERS = ("cpu", "memory", "pids")


class CgroupError(Exception):
    """A cgroup could not be made or written; the message names the file."""


@dataclass(frozen=True)
class CgroupFS:
    mount: Path = MOUNT

    @property
    def unified(self) -> bool:
        return (self.mount / "cgroup.controllers").exists()

    def hierarchies(self) -> dict[str, Path]:
        """controller -> its hierarchy's root (v2: every controller -> the one root)."""
        if self.unified:
            return {c: self.mount for c in V2_CONTROLLERS}
        found: dict[str, Path] = {}
        for entry in sorted(self.mount.iterdir()):
            if entry.is_dir() and not entry.is_symlink():
                for controller in entry.name.split(","):
                    found.setdefault(controller, entry)
        return found

    def _roots(self) -> list[Path]:
        if self.unified:
            return [self.mount]
        return [e for e in sorted(self.mount.iterdir()) if e.is_dir() and not e.is_symlink()]

    def ensure(self, path: str, config: ResourceConfig) -> None:
        """Make the cgroup (and its parents) where needed and write its limits."""
        try:
            if self.unified:
                self._ensure_v2(path, config)
            else:
                self._ensure_v1(path, config)
        except OSError as exc:
            raise CgroupError(f"cgroup {path}: {exc}") from exc

    def _ensure_v1(self, path: str, config: ResourceConfig) -> None:
        roots = self.hierarchies()
        for controller in V1_CONTROLLERS:
            root = roots.get(controller)
            if root is not None:
                (root / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
        files = v1_files(config)
        for controller, name, value in files:
            root = roots.get(controller)
            if root is not None:
                _write(root / path.lstrip("/") / name, value)

    def _ensure_v2(self, path: str, config: ResourceConfig) -> None:
        parts = [p for p in path.split("/") if p]
        here = self.mount
        for part in parts:
            _enable_controllers(here)
            here = here / part
            here.mkdir(exist_ok=True)
        for name, value in v2_files(config):
            _write(here / name, value)

    def remove(self, path: str) -> bool:
        """Remove the cgroup and everything below it in every hierarchy; False while busy."""
        done = True
        for root in self._roots():
            top = root / path.lstrip("/")
            if not top.is_dir():
                continue
            below = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
            for directory in [*below, top]:
                try:
                    self.rmdir(directory)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                        raise CgroupError(f"cgroup {directory}: {exc}") from exc
                    done = False
        return done

    def rmdir(self, directory: Path) -> None:
        """One cgroup; its control files go with it (rmdir is how cgroupfs removes)."""
        directory.rmdir()

    def children(self, path: str) -> list[str]:
        """The names of the cgroups directly below ``path`` (in the memory hierarchy on v1)."""
        root = self.hierarchies().get("memory", self.mount)
        try:
            return sorted(e.name for e in os.scandir(root / path.lstrip("/")) if e.is_dir())
        except FileNotFoundError:
            return []


def v1_files(config: ResourceConfig) -> list[tuple[str, str, str]]:
    """(controller, file, value); an unset limit is written as unlimited, so a cgroup
    reused from before ends up exactly as asked."""
    files: list[tuple[str, str, str]] = []
    if config.cpu_shares is not None:
        files.append(("cpu", "cpu.shares", str(config.cpu_shares)))
    files.append(("cpu", "cpu.cfs_period_us", str(config.cpu_period_us or CPU_PERIOD_US)))
    files.append(("cpu", "cpu.cfs_quota_us", str(config.cpu_quota_us or -1)))
    files.append(("memory", "memory.limit_in_bytes", str(config.memory_bytes or -1)))
    files.append(("pids", "pids.max", str(config.pids_max) if config.pids_max else "max"))
    return files


def v2_files(config: ResourceConfig) -> list[tuple[str, str]]:
    files: list[tuple[str, str]] = []
    if config.cpu_shares is not None:
        files.append(("cpu.weight", str(shares_to_weight(config.cpu_shares))))
    quota = str(config.cpu_quota_us) if config.cpu_quota_us else "max"
    files.append(("cpu.max", f"{quota} {config.cpu_period_us or CPU_PERIOD_US}"))
    files.append(("memory.max", str(config.memory_bytes) if config.memory_bytes else "max"))
    files.append(("pids.max", str(config.pids_max) if config.pids_max else "max"))
    return files


def _enable_controllers(cgroup: Path) -> None:
    wanted = " ".join(f"+{c}" for c in V2_CONTROLLERS)
    with contextlib.suppress(FileNotFoundError):
        enabled = (cgroup / "cgroup.subtree_control").read_text().split()
        if all(c in enabled for c in V2_CONTROLLERS):
            return
    _write(cgroup / "cgroup.subtree_control", wanted)


def _write(file: Path, value: str) -> None:
    file.write_text(value)


def read(file: Path) -> str:
    return file.read_text().strip()
