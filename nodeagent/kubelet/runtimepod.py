"""What the runtime holds for one pod: its sandboxes and containers, as one frozen snapshot."""

from __future__ import annotations

from dataclasses import dataclass

from nodeagent.model.pod import PodUID
from nodeagent.runtime.base import ContainerInfo, ContainerState, SandboxInfo, SandboxState


@dataclass(frozen=True)
class RuntimePod:
    uid: PodUID
    sandboxes: tuple[SandboxInfo, ...] = ()
    containers: tuple[ContainerInfo, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.sandboxes and not self.containers

    def latest_sandbox(self) -> SandboxInfo | None:
        if not self.sandboxes:
            return None
        return max(self.sandboxes, key=lambda s: (s.attempt, s.created_at_ns))

    def ready_sandbox(self) -> SandboxInfo | None:
        latest = self.latest_sandbox()
        return latest if latest is not None and latest.state is SandboxState.READY else None

    def instances(self, name: str, sandbox_id: str | None = None) -> list[ContainerInfo]:
        """Instances of one container, newest first, optionally of one sandbox only."""
        found = [
            c
            for c in self.containers
            if c.name == name and (sandbox_id is None or c.sandbox_id == sandbox_id)
        ]
        return sorted(found, key=lambda c: (c.attempt, c.created_at_ns), reverse=True)

    def latest(self, name: str, sandbox_id: str | None = None) -> ContainerInfo | None:
        found = self.instances(name, sandbox_id)
        return found[0] if found else None

    def running(self) -> list[ContainerInfo]:
        return [c for c in self.containers if c.state is ContainerState.RUNNING]
