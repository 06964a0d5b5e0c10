"""How much of the node is in use, for the node view of ``nodeagent status``.

The node status already carries CPU, memory and process percentages; this adds what an
operator compares them against: memory in bytes, the disk that holds the agent's state
(where emptyDirs and logs grow), and the process count against the kernel's ``pid_max`` (the
kubelet's PIDPressure looks at the same ratio). Every reading is cheap (procfs, statvfs), so
it is taken per snapshot; a reading that fails is left out, never an error.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import psutil

PID_MAX = Path("/proc/sys/kernel/pid_max")


def usage(state_dir: Path) -> dict[str, Any]:
    """Keys added to ``node.usage`` of the snapshot (all optional for readers)."""
    doc: dict[str, Any] = {"cpuCount": psutil.cpu_count() or 0}
    memory = psutil.virtual_memory()
    doc["memoryTotalBytes"] = memory.total
    doc["memoryAvailableBytes"] = memory.available
    with contextlib.suppress(OSError):
        disk = psutil.disk_usage(str(_existing(state_dir)))
        doc["disk"] = {
            "path": str(state_dir),
            "totalBytes": disk.total,
            "usedBytes": disk.used,
            "percent": disk.percent,
        }
    with contextlib.suppress(OSError, ValueError):
        doc["pidMax"] = int(PID_MAX.read_text().strip())
    return doc


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent (the state dir may not be created yet)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
