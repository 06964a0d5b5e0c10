"""``/stats/summary`` (the Summary API) and ``/metrics/resource`` (its Prometheus form).

``Collector.summary`` reads the counters (``cgroups``, in a thread) of the node (the root
cgroup), each running container and each pod's sandbox, and builds the Summary shape of
``k8s.io/kubelet/pkg/apis/stats/v1alpha1``: ``node`` {cpu, memory, network, fs, runtime},
``pods`` [{podRef, containers [{cpu, memory, logs}], cpu, memory, network}]. A pod's CPU and
memory are the sums of its containers' and its sandbox's (there is no pod-level cgroup here).

``usageNanoCores`` is a rate: the CPU time used since the previous scrape of the same cgroup
over the time between them, as cAdvisor reports it; absent on the first scrape. metrics-server
computes its own rates from ``usageCoreNanoSeconds`` and needs none of it.

``resource_metrics`` renders the same figures as the kubelet's ``/metrics/resource`` (pure).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodeagent.kubelet.podstatus import rfc3339
from nodeagent.kubeletapi import cgroups
from nodeagent.runtime.base import SandboxInfo, SandboxState

Obj = dict[str, Any]


@dataclass(frozen=True)
class Sources:
    node_name: str
    state_dir: Path
    pod_log_dir: Path
    started_at: float  # the agent's start, the node's startTime
    cgroup_root: Path = cgroups.ROOT


class Collector:
    def __init__(self, sources: Sources) -> None:
        self._sources = sources
        self._previous: dict[str, tuple[float, int]] = {}  # cgroup -> (time, cpu ns)
        self._seen: dict[str, tuple[float, int]] = {}  # this scrape's; replaces _previous
        self._lock = threading.Lock()  # scrapes run in threads, maybe two at once

    async def summary(self, pods: list[Obj], sandboxes: Sequence[SandboxInfo]) -> Obj:
        ready = {s.uid: s.id for s in sandboxes if s.state is SandboxState.READY}
        return await asyncio.to_thread(self._summary, pods, ready)

    def _summary(self, pods: list[Obj], sandboxes: Mapping[Any, str]) -> Obj:
        with self._lock:
            return self._summary_locked(pods, sandboxes)

    def _summary_locked(self, pods: list[Obj], sandboxes: Mapping[Any, str]) -> Obj:
        index = cgroups.CgroupIndex(self._sources.cgroup_root)
        now = time.time()
        stamp = rfc3339(now)
        node = {
            "nodeName": self._sources.node_name,
            "startTime": rfc3339(self._sources.started_at),
            **self._cpu_memory(index.read(""), "", now, stamp),
            "network": _network(cgroups.interfaces(None), stamp),
            "fs": _fs(self._sources.state_dir, stamp),
            "runtime": {"imageFs": _fs(self._sources.state_dir, stamp)},
        }
        total = cgroups.memory_total_bytes()
        if total is not None and node["memory"].get("workingSetBytes") is not None:
            node["memory"]["availableBytes"] = max(total - node["memory"]["workingSetBytes"], 0)
        items = [self._pod(index, p, sandboxes.get(p["metadata"]["uid"]), now) for p in pods]
        # Only what this scrape saw is kept: gone containers' samples do not pile up.
        self._previous, self._seen = self._seen, {}
        return {"node": node, "pods": items}

    def _pod(self, index: cgroups.CgroupIndex, pod: Obj, sandbox: str | None, now: float) -> Obj:
        stamp = rfc3339(now)
        meta = pod["metadata"]
        containers, samples = [], []
        for status in pod["status"].get("containerStatuses") or []:
            running = (status.get("state") or {}).get("running")
            rel = index.find(str(status.get("containerID", "")).partition("://")[2])
            if running is None or rel is None:
                continue
            sample = index.read(rel)
            samples.append(sample)
            containers.append(
                {
                    "name": status["name"],
                    "startTime": running.get("startedAt", stamp),
                    **self._cpu_memory(sample, rel, now, stamp),
                    "logs": _fs(self._sources.pod_log_dir, stamp),
                }
            )
        sandbox_rel = index.find(sandbox) if sandbox else None
        pids = index.pids(sandbox_rel) if sandbox_rel else []
        if sandbox_rel is not None:
            samples.append(index.read(sandbox_rel))
        result: Obj = {
            "podRef": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
            "startTime": pod["status"].get("startTime", stamp),
            "containers": containers,
            **self._cpu_memory(_sum(samples), f"pod:{meta['uid']}", now, stamp),
        }
        if pids:
            result["network"] = _network(cgroups.interfaces(pids[0]), stamp)
        return result

    def _cpu_memory(self, sample: cgroups.CpuMemory, key: str, now: float, stamp: str) -> Obj:
        cpu: Obj = {"time": stamp}
        if sample.cpu_ns is not None:
            cpu["usageCoreNanoSeconds"] = sample.cpu_ns
            before = self._previous.get(key)
            if before is not None and now > before[0] and sample.cpu_ns >= before[1]:
                cpu["usageNanoCores"] = int((sample.cpu_ns - before[1]) / (now - before[0]))
            self._seen[key] = (now, sample.cpu_ns)
        memory: Obj = {"time": stamp}
        for name, value in (
            ("usageBytes", sample.usage_bytes),
            ("workingSetBytes", sample.working_set_bytes),
            ("rssBytes", sample.rss_bytes),
            ("pageFaults", sample.page_faults),
            ("majorPageFaults", sample.major_page_faults),
        ):
            if value is not None:
                memory[name] = value
        return {"cpu": cpu, "memory": memory}


def _sum(samples: Iterable[cgroups.CpuMemory]) -> cgroups.CpuMemory:
    listed = list(samples)

    def total(name: str) -> int | None:
        values = [getattr(s, name) for s in listed if getattr(s, name) is not None]
        return sum(values) if values else None

    return cgroups.CpuMemory(
        total("cpu_ns"),
        total("usage_bytes"),
        total("working_set_bytes"),
        total("rss_bytes"),
        total("page_faults"),
        total("major_page_faults"),
    )


def _network(interfaces: list[cgroups.Interface], stamp: str) -> Obj:
    listed = [
        {
            "name": i.name,
            "rxBytes": i.rx_bytes,
            "rxErrors": i.rx_errors,
            "txBytes": i.tx_bytes,
            "txErrors": i.tx_errors,
        }
        for i in interfaces
    ]
    # The default interface's figures stand at the top too (eth0 where there is one).
    first = next((i for i in listed if i["name"] == "eth0"), listed[0] if listed else {})
    return {"time": stamp, **first, "interfaces": listed}


def _fs(path: Path, stamp: str) -> Obj:
    try:
        st = os.statvfs(path)
    except OSError:
        return {"time": stamp}
    capacity, available = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    return {
        "time": stamp,
        "availableBytes": available,
        "capacityBytes": capacity,
        "usedBytes": capacity - st.f_bfree * st.f_frsize,
        "inodesFree": st.f_ffree,
        "inodes": st.f_files,
        "inodesUsed": st.f_files - st.f_ffree,
    }


# --- /metrics/resource -------------------------------------------------------------------

_HELP = {
    "node_cpu_usage_seconds_total": "Cumulative cpu time consumed by the node in core-seconds",
    "node_memory_working_set_bytes": "Current working set of the node in bytes",
    "pod_cpu_usage_seconds_total": "Cumulative cpu time consumed by the pod in core-seconds",
    "pod_memory_working_set_bytes": "Current working set of the pod in bytes",
    "container_cpu_usage_seconds_total": (
        "Cumulative cpu time consumed by the container in core-seconds"
    ),
    "container_memory_working_set_bytes": "Current working set of the container in bytes",
    "container_start_time_seconds": "Start time of the container since unix epoch in seconds",
}
_COUNTERS = {n for n in _HELP if n.endswith("_total")}


def resource_metrics(summary: Obj, *, parse_time: Callable[[str], float | None]) -> str:
    """The kubelet's resource metrics (Prometheus text 0.0.4) of one Summary."""
    samples: dict[str, list[str]] = {name: [] for name in _HELP}

    def add(name: str, labels: dict[str, str], value: float | None) -> None:
        if value is None:
            return
        text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        number = _number(value)
        samples[name].append(f"{name}{{{text}}} {number}" if text else f"{name} {number}")

    node = summary["node"]
    add("node_cpu_usage_seconds_total", {}, _seconds(node["cpu"].get("usageCoreNanoSeconds")))
    add("node_memory_working_set_bytes", {}, node["memory"].get("workingSetBytes"))
    for pod in summary["pods"]:
        ref = {"namespace": pod["podRef"]["namespace"], "pod": pod["podRef"]["name"]}
        add("pod_cpu_usage_seconds_total", ref, _seconds(pod["cpu"].get("usageCoreNanoSeconds")))
        add("pod_memory_working_set_bytes", ref, pod["memory"].get("workingSetBytes"))
        for c in pod["containers"]:
            labels = {"container": c["name"], **ref}
            cpu = _seconds(c["cpu"].get("usageCoreNanoSeconds"))
            add("container_cpu_usage_seconds_total", labels, cpu)
            add("container_memory_working_set_bytes", labels, c["memory"].get("workingSetBytes"))
            add("container_start_time_seconds", labels, parse_time(c.get("startTime", "")))
    lines = []
    for name, values in samples.items():
        kind = "counter" if name in _COUNTERS else "gauge"
        lines += [f"# HELP {name} [STABLE] {_HELP[name]}", f"# TYPE {name} {kind}", *values]
    lines.append("# HELP scrape_error [STABLE] 1 if there was an error while getting metrics")
    lines += ["# TYPE scrape_error gauge", "scrape_error 0"]
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    """Every digit kept (``:g`` would round a byte count or a timestamp to 6 of them)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _seconds(ns: int | None) -> float | None:
    return ns / 1e9 if ns is not None else None


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
