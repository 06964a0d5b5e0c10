"""Docker's answers read back as the runtime seam's objects, as dockershim read them.

Pure functions, no I/O; the names and labels they read are those ``docker_convert`` writes.

- States. Docker's ``created`` with an exit code or an error is a container whose start
  failed; containerd reports that as exited, exit code 128, reason ``StartError``, and so do
  we (Docker's own code, 126 or 127, is dropped; its error is the message). Likewise an exec
  whose command could not start is an error, not exit code 126.
- Images are reported normalized, as containerd reports them.
- Times become nanoseconds since the epoch. Inspect gives RFC 3339 with nanoseconds; list
  summaries give whole seconds; Docker's zero time ``0001-01-01T00:00:00Z`` is 0.
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from nodeagent.model.pod import PodUID
from nodeagent.runtime import base
from nodeagent.runtime.docker_convert import parse_name, visible_labels
from nodeagent.runtime.image import InvalidImageReference, normalize_image

# What a failed start reports, the way containerd reports it.
START_ERROR_EXIT_CODE = 128
START_ERROR_REASON = "StartError"

_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")


def parse_time_ns(value: str | None) -> int:
    """RFC 3339 (Docker's, with up to nine fraction digits) to epoch ns; zero time is 0."""
    if not value:
        return 0
    match = _TIMESTAMP.match(value)
    if match is None:
        return 0
    whole, fraction, zone = match.groups()
    seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    if seconds <= 0:
        return 0  # Docker's "never" (year 1), and anything before the epoch
    return seconds * 1_000_000_000 + int((fraction or "0").ljust(9, "0"))


_SUMMARY_STATES: Mapping[str, base.ContainerState] = {
    "created": base.ContainerState.CREATED,
    "running": base.ContainerState.RUNNING,
    "paused": base.ContainerState.RUNNING,
    "restarting": base.ContainerState.RUNNING,
    "removing": base.ContainerState.EXITED,
    "exited": base.ContainerState.EXITED,
    "dead": base.ContainerState.EXITED,
}


def summary_state(state: str) -> base.ContainerState:
    return _SUMMARY_STATES.get(state, base.ContainerState.UNKNOWN)


def summary_name(item: Mapping[str, Any]) -> str:
    names = item.get("Names") or [""]
    return str(names[0])


def summary_is_host_network(item: Mapping[str, Any]) -> bool:
    return (item.get("HostConfig") or {}).get("NetworkMode") == "host"


def sandbox_from_summary(item: Mapping[str, Any], *, network_ready: bool) -> base.SandboxInfo:
    """A list entry; READY only while the pause process runs and its network is attached."""
    labels = item.get("Labels") or {}
    parsed = parse_name(summary_name(item))
    running = item.get("State") == "running"
    return base.SandboxInfo(
        id=base.SandboxID(str(item["Id"])),
        uid=PodUID(labels.get(base.LABEL_POD_UID, "")),
        name=labels.get(base.LABEL_POD_NAME, ""),
        namespace=labels.get(base.LABEL_POD_NAMESPACE, ""),
        attempt=parsed.attempt if parsed is not None else 0,
        state=base.SandboxState.READY if running and network_ready else base.SandboxState.NOTREADY,
        created_at_ns=int(item.get("Created") or 0) * 1_000_000_000,
        labels=visible_labels(labels),
    )


def sandbox_from_inspect(
    data: Mapping[str, Any], *, network_ready: bool, ip: str
) -> base.SandboxInfo:
    config = data.get("Config") or {}
    labels = config.get("Labels") or {}
    parsed = parse_name(str(data.get("Name", "")))
    running = bool((data.get("State") or {}).get("Running"))
    ready = running and network_ready
    return base.SandboxInfo(
        id=base.SandboxID(str(data["Id"])),
        uid=PodUID(labels.get(base.LABEL_POD_UID, "")),
        name=labels.get(base.LABEL_POD_NAME, ""),
        namespace=labels.get(base.LABEL_POD_NAMESPACE, ""),
        attempt=parsed.attempt if parsed is not None else 0,
        state=base.SandboxState.READY if ready else base.SandboxState.NOTREADY,
        created_at_ns=parse_time_ns(data.get("Created")),
        labels=visible_labels(labels),
        ip=ip if ready else "",
    )


def inspect_is_host_network(data: Mapping[str, Any]) -> bool:
    return (data.get("HostConfig") or {}).get("NetworkMode") == "host"


def container_from_summary(item: Mapping[str, Any]) -> base.ContainerInfo:
    labels = item.get("Labels") or {}
    parsed = parse_name(summary_name(item))
    return base.ContainerInfo(
        id=base.ContainerID(str(item["Id"])),
        sandbox_id=base.SandboxID(labels.get(base.LABEL_SANDBOX_ID, "")),
        uid=PodUID(labels.get(base.LABEL_POD_UID, "")),
        name=labels.get(base.LABEL_CONTAINER_NAME) or (parsed.container if parsed else ""),
        attempt=parsed.attempt if parsed is not None else 0,
        image=reported_image(str(item.get("Image", ""))),
        state=summary_state(str(item.get("State", ""))),
        created_at_ns=int(item.get("Created") or 0) * 1_000_000_000,
        labels=visible_labels(labels),
    )


def reported_image(image: str) -> str:
    """The image as containerd reports it (``busybox`` is ``docker.io/library/busybox:latest``);
    Docker reports it as the pod spelled it."""
    try:
        return normalize_image(image)
    except InvalidImageReference:
        return image


def image_from_summary(item: Mapping[str, Any]) -> base.ImageInfo:
    """An entry of Docker's image list, its names spelled as containerd spells them."""
    tags = [t for t in item.get("RepoTags") or () if t and t != "<none>:<none>"]
    digests = [d for d in item.get("RepoDigests") or () if d and not d.startswith("<none>@")]
    return base.ImageInfo(
        id=str(item.get("Id", "")),
        repo_tags=tuple(reported_image(t) for t in tags),
        repo_digests=tuple(reported_image(d) for d in digests),
        size=int(item.get("Size") or 0),
    )


def repo_digest(digests: Sequence[str], image: str) -> str:
    """Of an image's RepoDigests, the one of ``image``'s repository (fully qualified, as
    containerd spells it), else the first; "" when it has none."""
    qualified = [reported_image(d) for d in digests]
    name = reported_image(image).split("@", 1)[0]
    colon = name.rfind(":")
    repo = name[:colon] if colon > name.rfind("/") else name
    mine = [d for d in qualified if d.split("@", 1)[0] == repo]
    return (mine or qualified or [""])[0]


def _sandbox_of(data: Mapping[str, Any], labels: Mapping[str, str]) -> str:
    if labels.get(base.LABEL_SANDBOX_ID):
        return labels[base.LABEL_SANDBOX_ID]
    mode = str((data.get("HostConfig") or {}).get("IpcMode", ""))
    return mode.removeprefix("container:") if mode.startswith("container:") else ""


def container_from_inspect(data: Mapping[str, Any]) -> base.ContainerInfo:
    config = data.get("Config") or {}
    labels = config.get("Labels") or {}
    state = data.get("State") or {}
    parsed = parse_name(str(data.get("Name", "")))
    status = str(state.get("Status", ""))
    exit_code = int(state.get("ExitCode") or 0)
    error = str(state.get("Error") or "")
    reason = ""
    created_ns = parse_time_ns(data.get("Created"))
    finished_ns = parse_time_ns(state.get("FinishedAt"))
    if status == "created" and (exit_code or error):
        info_state = base.ContainerState.EXITED
        reason, exit_code = START_ERROR_REASON, START_ERROR_EXIT_CODE
        # Docker keeps no time for a failed start; it came right after the create.
        finished_ns = finished_ns or created_ns
    else:
        info_state = summary_state(status)
        if info_state is base.ContainerState.EXITED:
            if state.get("OOMKilled"):
                reason = "OOMKilled"
            else:
                reason = "Completed" if exit_code == 0 else "Error"
    return base.ContainerInfo(
        id=base.ContainerID(str(data["Id"])),
        sandbox_id=base.SandboxID(_sandbox_of(data, labels)),
        uid=PodUID(labels.get(base.LABEL_POD_UID, "")),
        name=labels.get(base.LABEL_CONTAINER_NAME) or (parsed.container if parsed else ""),
        attempt=parsed.attempt if parsed is not None else 0,
        image=reported_image(str(config.get("Image", ""))),
        state=info_state,
        created_at_ns=created_ns,
        labels=visible_labels(labels),
        image_ref=str(data.get("Image", "")),
        started_at_ns=parse_time_ns(state.get("StartedAt")),
        finished_at_ns=finished_ns,
        exit_code=exit_code if info_state is base.ContainerState.EXITED else 0,
        reason=reason,
        message=error,
        detailed=True,
    )


def exec_start_failure(result: base.ExecResult) -> str:
    """Docker's report of an exec that could not start ("" if it ran).

    Docker answers a missing or non-executable command with exit code 126 or 127 and the
    runtime's error as output; containerd answers ExecSync with an error instead.
    """
    if result.exit_code not in (126, 127):
        return ""
    text = (result.stdout + result.stderr).decode(errors="replace").strip()
    return text if text.startswith("OCI runtime exec failed") else ""
