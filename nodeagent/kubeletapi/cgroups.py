"""Resource counters of the node and its containers, read from the cgroup filesystem.

The runtimes put each container (and the sandbox) into a cgroup named by its id, below its
pod's cgroup parent: with cgroupfs ``[<cgroup-root>/]kubepods/burstable/pod<uid>/<id>`` (or
``k8s.io/<id>`` without pod cgroups), with systemd ``...-<id>.scope``. ``CgroupIndex`` finds
them by walking the hierarchy a few levels deep once per scrape, so the agent needs no
knowledge of where each runtime files them.

Figures as cAdvisor (and so the kubelet) derives them: working set = usage - inactive file
pages; cgroup v1 (``memory``, ``cpuacct``) and v2 (unified) are both read. A pod's network
counters are those of its sandbox's network namespace (``/proc/<pid>/net/dev`` of a process
in the sandbox's cgroup). Everything here blocks: callers run it in a thread.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
# kubepods/<qos>/pod<uid>/<id> is four levels, below a --cgroup-root of one or two.
MAX_DEPTH = 6


@dataclass(frozen=True)
class CpuMemory:
    cpu_ns: int | None  # cumulative CPU time
    usage_bytes: int | None
    working_set_bytes: int | None
    rss_bytes: int | None
    page_faults: int | None
    major_page_faults: int | None


@dataclass(frozen=True)
class Interface:
    name: str
    rx_bytes: int
    rx_errors: int
    tx_bytes: int
    tx_errors: int


def _int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _keyed(path: Path) -> dict[str, int]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    pairs = (line.split() for line in lines)
    return {p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[1].isdigit()}


def unified() -> bool:
    return (ROOT / "cgroup.controllers").exists()


class CgroupIndex:
    """Container id -> its cgroup path (relative to a hierarchy's root)."""

    def __init__(self, root: Path = ROOT) -> None:
        self._v2 = (root / "cgroup.controllers").exists()
        self._memory = root if self._v2 else root / "memory"
        self._cpu = root if self._v2 else root / "cpuacct"
        self._paths: dict[str, str] = {}
        self._walk(self._memory, "", 0)

    def _walk(self, directory: Path, rel: str, depth: int) -> None:
        if depth >= MAX_DEPTH:
            return
        try:
            entries = list(os.scandir(directory))
        except OSError:
            return
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                child = f"{rel}/{entry.name}"
                self._paths[_id_of(entry.name)] = child
                self._walk(Path(entry.path), child, depth + 1)

    def find(self, container_id: str) -> str | None:
        return self._paths.get(container_id)

    def read(self, rel: str) -> CpuMemory:
        """The counters of the cgroup at ``rel`` ("" is the root: the whole node)."""
        memory = self._memory / rel.lstrip("/")
        cpu = self._cpu / rel.lstrip("/")
        if self._v2:
            stat = _keyed(memory / "memory.stat")
            usage = _int(memory / "memory.current") if rel else _root_v2_usage()
            cpu_us = _keyed(cpu / "cpu.stat").get("usage_usec")
            return _figures(
                cpu_ns=cpu_us * 1000 if cpu_us is not None else None,
                usage=usage,
                inactive=stat.get("inactive_file"),
                rss=stat.get("anon"),
                faults=(stat.get("pgfault"), stat.get("pgmajfault")),
            )
        stat = _keyed(memory / "memory.stat")
        return _figures(
            cpu_ns=_int(cpu / "cpuacct.usage"),
            usage=_int(memory / "memory.usage_in_bytes"),
            inactive=stat.get("total_inactive_file"),
            rss=stat.get("total_rss"),
            faults=(stat.get("total_pgfault"), stat.get("total_pgmajfault")),
        )

    def pids(self, rel: str) -> list[int]:
        try:
            text = (self._memory / rel.lstrip("/") / "cgroup.procs").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split() if p.isdigit()]


def _id_of(name: str) -> str:
    """``cri-containerd-<id>.scope`` / ``docker-<id>.scope`` (systemd) or the id itself."""
    if name.endswith(".scope"):
        return name.removesuffix(".scope").rsplit("-", 1)[-1]
    return name


def _root_v2_usage() -> int | None:
    meminfo = _meminfo()
    if "MemTotal" not in meminfo or "MemFree" not in meminfo:
        return None
    return (meminfo["MemTotal"] - meminfo["MemFree"]) * 1024


def _figures(
    *,
    cpu_ns: int | None,
    usage: int | None,
    inactive: int | None,
    rss: int | None,
    faults: tuple[int | None, int | None],
) -> CpuMemory:
    working_set = None
    if usage is not None:
        working_set = max(usage - (inactive or 0), 0)
    return CpuMemory(cpu_ns, usage, working_set, rss, faults[0], faults[1])


def _meminfo() -> dict[str, int]:
    return _keyed_colon(Path("/proc/meminfo"))


def _keyed_colon(path: Path) -> dict[str, int]:
    result: dict[str, int] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return result
    for line in lines:
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            result[key.strip()] = int(fields[0])
    return result


def memory_total_bytes() -> int | None:
    total = _meminfo().get("MemTotal")
    return total * 1024 if total is not None else None


def interfaces(pid: int | None) -> list[Interface]:
    """Non-loopback interfaces of the network namespace of ``pid`` (None: our own)."""
    path = Path("/proc/net/dev") if pid is None else Path(f"/proc/{pid}/net/dev")
    try:
        lines = path.read_text().splitlines()[2:]
    except OSError:
        return []
    result = []
    for line in lines:
        name, _, rest = line.partition(":")
        fields = rest.split()
        if name.strip() == "lo" or len(fields) < 11:
            continue
        numbers = [int(f) for f in fields]
        result.append(Interface(name.strip(), numbers[0], numbers[2], numbers[8], numbers[10]))
    return result
