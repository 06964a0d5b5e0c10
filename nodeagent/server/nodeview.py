"""``nodeagent status node``: is this node healthy, and what is it connected to?

Pure: a function of the snapshot and the clock, like the other views. Layout::

    NODE:         worker-1
    RUNTIME:      containerd 1.6.20
    API:          standalone (no control plane)
    CONDITIONS:
      TYPE             STATUS   REASON                       MESSAGE
      Ready            True     KubeletReady                 kubelet is posting ready status
      MemoryPressure   False    KubeletHasSufficientMemory   ...
    CAPACITY:     cpu=2   memory=4028748Ki   pods=110
    ALLOCATABLE:  cpu=2   memory=3926348Ki   pods=110
    USAGE:        cpu 12.5% of 2   memory 41.0% (2.3GiB available of 3.8GiB)
                  disk 18.0% of 29.4GiB (/var/lib/nodeagent)   pids 312 of 4194304
    PROXY: iptables (nft)   LAST SYNC: 3s ago (partial, 0.042 s)   RULES: 57   ...

In cluster mode the API line names the server, whether the pod watch is open, and how long
ago the API last accepted this node's lease renewal (the heartbeat). Each collection the API
refuses to list (403: missing RBAC) gets a warning line under it, naming the ClusterRole::

    WARNING:      API refuses /api/v1/nodes (403 Forbidden): bind ClusterRole
                  system:node-proxier to this node (docs/rbac.md)          (one line)
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from nodeagent.server.fmt import (
    as_int,
    as_list,
    as_map,
    as_str,
    human_duration,
    table,
    timestamp,
)
from nodeagent.server.render import NONE, proxy_line

_LABEL_WIDTH = 14


def render_node(snapshot: Mapping[str, Any], now: datetime) -> str:
    node = as_map(snapshot.get("node"))
    runtime = as_map(node.get("runtime"))
    lines = [
        _field("NODE", as_str(node.get("name")) or NONE),
        _field(
            "RUNTIME",
            " ".join(s for s in (as_str(runtime.get("name")), as_str(runtime.get("version"))) if s)
            or NONE,
        ),
        _field("API", _api(snapshot, now)),
        *_forbidden(snapshot),
        "CONDITIONS:",
        _indent(_conditions(node)),
        _field("CAPACITY", _resources(as_map(node.get("capacity")))),
        _field("ALLOCATABLE", _resources(as_map(node.get("allocatable")))),
    ]
    lines += _usage(as_map(node.get("usage")))
    images = node.get("images")
    if isinstance(images, Mapping):
        count, size = as_int(images.get("count")), as_int(images.get("bytes"))
        text = f"{count} using {bytes_text(size)}"
        fs = as_map(images.get("fs"))
        if fs:
            total = bytes_text(as_int(fs.get("totalBytes")))
            text += f"; image filesystem {as_int(fs.get('percent'))}% of {total}"
            text += f" ({as_str(fs.get('path'))})"
        lines.append(_field("IMAGES", text))
    proxy = snapshot.get("proxy")
    if isinstance(proxy, Mapping):
        lines.append(proxy_line(proxy, now))
    return "\n".join(lines) + "\n"


def _field(label: str, value: str) -> str:
    return f"{label + ':':<{_LABEL_WIDTH}}{value}"


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _api(snapshot: Mapping[str, Any], now: datetime) -> str:
    cluster = snapshot.get("cluster")
    if not isinstance(cluster, Mapping):
        return "standalone (no control plane)"
    parts = [as_str(cluster.get("server")) or "cluster"]
    parts.append("watching" if cluster.get("watching") is True else "NOT CONNECTED")
    if cluster.get("registered") is not True:
        parts.append("not registered yet")
    beat = timestamp(cluster.get("lastHeartbeat"))
    parts.append(f"last heartbeat {human_duration(now - beat)} ago" if beat else "no heartbeat yet")
    return "   ".join(parts)


def _forbidden(snapshot: Mapping[str, Any]) -> list[str]:
    entries = [
        *as_list(as_map(snapshot.get("cluster")).get("forbidden")),
        *as_list(as_map(snapshot.get("network")).get("forbidden")),
    ]
    lines = []
    for entry in (as_map(e) for e in entries):
        role = as_str(entry.get("clusterRole"))
        fix = f"bind ClusterRole {role} to this node" if role else "grant this node access"
        resource = as_str(entry.get("resource")) or "a collection"
        text = f"API refuses {resource} (403 Forbidden): {fix} (docs/rbac.md)"
        lines.append(_field("WARNING", text))
    return lines


def _conditions(node: Mapping[str, Any]) -> str:
    rows = [
        (
            as_str(c.get("type")) or NONE,
            as_str(c.get("status")) or "Unknown",
            as_str(c.get("reason")),
            as_str(c.get("message")),
        )
        for c in (as_map(c) for c in as_list(node.get("conditions")))
    ]
    if not rows:
        return "<none>"
    return table(("TYPE", "STATUS", "REASON", "MESSAGE"), rows)


def _resources(resources: Mapping[str, Any]) -> str:
    items = [f"{k}={as_str(v)}" for k, v in sorted(resources.items()) if as_str(v)]
    return "   ".join(items) or NONE


def _usage(usage: Mapping[str, Any]) -> list[str]:
    first = []
    cpu = usage.get("cpuPercent")
    if isinstance(cpu, int | float):
        cores = as_int(usage.get("cpuCount"))
        first.append(f"cpu {cpu:.1f}%" + (f" of {cores}" if cores else ""))
    memory = usage.get("memoryPercent")
    if isinstance(memory, int | float):
        text = f"memory {memory:.1f}%"
        total, available = as_int(usage.get("memoryTotalBytes")), usage.get("memoryAvailableBytes")
        if total and isinstance(available, int):
            text += f" ({bytes_text(available)} available of {bytes_text(total)})"
        first.append(text)
    second = []
    disk = as_map(usage.get("disk"))
    if disk:
        percent = disk.get("percent")
        share = f"{percent:.1f}%" if isinstance(percent, int | float) else "?"
        total_text = bytes_text(as_int(disk.get("totalBytes")))
        second.append(f"disk {share} of {total_text} ({as_str(disk.get('path'))})")
    if "pids" in usage:
        pid_max = as_int(usage.get("pidMax"))
        second.append(f"pids {as_int(usage.get('pids'))}" + (f" of {pid_max}" if pid_max else ""))
    lines = [_field("USAGE", "   ".join(first) or NONE)]
    if second:
        lines.append(" " * _LABEL_WIDTH + "   ".join(second))
    return lines


def bytes_text(n: int) -> str:
    """Binary units with one decimal, as free -h prints them."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{n}B"  # unreachable; keeps mypy's return analysis simple
