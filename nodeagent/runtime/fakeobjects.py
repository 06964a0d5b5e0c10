"""The objects ``FakeRuntime`` keeps, and the naming rules it shares with containerd.

A sandbox or a container is a mutable record (the fake changes its state in place) that
answers the seam's questions as containerd does: summaries without the detail that only a
status call gives, exit reasons "Completed" or "Error" unless one was set, image names
normalized the way CRI normalizes them, and a name that is reserved while the object exists.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from nodeagent.model.pod import PodUID
from nodeagent.runtime.base import (
    LABEL_MANAGED_BY,
    LABEL_POD_UID,
    ContainerConfig,
    ContainerID,
    ContainerInfo,
    ContainerState,
    SandboxConfig,
    SandboxID,
    SandboxInfo,
    SandboxState,
)
from nodeagent.runtime.image import InvalidImageReference, normalize_image

MANAGED_VALUE = "true"
# What a container killed by stop_container or stop_sandbox exits with (SIGKILL).
KILLED_EXIT_CODE = 137
# containerd's exit code and reason for a container whose start failed.
START_ERROR_EXIT_CODE = 128
START_ERROR_REASON = "StartError"


@dataclass
class FakeSandbox:
    id: SandboxID
    config: SandboxConfig
    labels: dict[str, str]
    state: SandboxState
    ip: str
    created_at_ns: int

    def info(self, *, with_ip: bool) -> SandboxInfo:
        return SandboxInfo(
            id=self.id,
            uid=PodUID(self.labels.get(LABEL_POD_UID, self.config.uid)),
            name=self.config.name,
            namespace=self.config.namespace,
            attempt=self.config.attempt,
            state=self.state,
            created_at_ns=self.created_at_ns,
            labels=dict(self.labels),
            ip=self.ip if with_ip else "",
        )


@dataclass
class FakeContainer:
    id: ContainerID
    sandbox_id: SandboxID
    config: ContainerConfig
    sandbox_config: SandboxConfig
    labels: dict[str, str]
    image_ref: str
    created_at_ns: int
    state: ContainerState = ContainerState.CREATED
    started_at_ns: int = 0
    finished_at_ns: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""

    @property
    def uid(self) -> PodUID:
        return PodUID(self.labels.get(LABEL_POD_UID, ""))

    def info(self, *, detailed: bool) -> ContainerInfo:
        summary = ContainerInfo(
            id=self.id,
            sandbox_id=self.sandbox_id,
            uid=self.uid,
            name=self.config.name,
            attempt=self.config.attempt,
            image=self.config.image,
            state=self.state,
            created_at_ns=self.created_at_ns,
            labels=dict(self.labels),
        )
        if not detailed:
            return summary
        reason = self.reason
        if self.state is ContainerState.EXITED and not reason:
            reason = "Completed" if self.exit_code == 0 else "Error"
        return ContainerInfo(
            id=summary.id,
            sandbox_id=summary.sandbox_id,
            uid=summary.uid,
            name=summary.name,
            attempt=summary.attempt,
            image=normalized(self.config.image) or self.config.image,
            state=summary.state,
            created_at_ns=summary.created_at_ns,
            labels=summary.labels,
            image_ref=self.image_ref,
            started_at_ns=self.started_at_ns,
            finished_at_ns=self.finished_at_ns,
            exit_code=self.exit_code,
            reason=reason,
            message=self.message,
            detailed=True,
        )


def selected(labels: Mapping[str, str], uid: PodUID | None) -> bool:
    if labels.get(LABEL_MANAGED_BY) != MANAGED_VALUE:
        return False
    return uid is None or labels.get(LABEL_POD_UID) == uid


def sandbox_name(config: SandboxConfig) -> str:
    return f"k8s_POD_{config.name}_{config.namespace}_{config.uid}_{config.attempt}"


def container_name(sandbox: SandboxConfig, config: ContainerConfig) -> str:
    return f"k8s_{config.name}_{sandbox.name}_{sandbox.namespace}_{sandbox.uid}_{config.attempt}"


def normalized(image: str) -> str | None:
    try:
        return normalize_image(image)
    except InvalidImageReference:
        return None


def normalized_set(images: Iterable[str]) -> set[str]:
    return {n for n in (normalized(i) for i in images) if n is not None}


def image_id(normalized: str) -> str:
    return "sha256:" + hashlib.sha256(normalized.encode()).hexdigest()
