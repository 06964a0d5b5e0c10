"""What each container of one pod waits for, and until when: the pod worker's bookkeeping.

A container that cannot run now has a ``Waiting`` reason (shown in its status) and may be
held: not retried before a wall-clock time (crash back-off, image pull back-off, a failed
sandbox, whose key is ""). The worker decides when to act; this only keeps the record, so
that every reason a container shows and every hold it is under live in one place.
"""

from __future__ import annotations

import time
from typing import Any

from nodeagent.kubelet import backoff
from nodeagent.kubelet.plan import PodActions
from nodeagent.kubelet.podstatus import Waiting
from nodeagent.model.pod import Container, Pod

SANDBOX = ""  # the key the pod sandbox is held under


class ContainerWaits:
    def __init__(self) -> None:
        self.waiting: dict[str, Waiting] = {}
        self.backoffs: dict[str, backoff.Backoff] = {}
        self.hold: dict[str, float] = {}  # container -> wall time before which no retry

    def reason(self, name: str) -> str:
        return self.waiting.get(name, Waiting("")).reason

    def held(self, name: str) -> bool:
        return self.hold.get(name, 0.0) > time.time()

    def still_held(self, container: Container) -> None:
        """A failed pull, seen again while its backoff runs, is ImagePullBackOff; the
        message keeps the pull's error (the registry's reason) in sight."""
        if self.reason(container.name) == "ErrImagePull":
            failed = self.waiting[container.name].message
            message = f'Back-off pulling image "{container.image}": ErrImagePull: {failed}'
            self.waiting[container.name] = Waiting("ImagePullBackOff", message)

    def fail_all(self, pod: Pod, reason: str, message: str) -> None:
        for container in pod.all_containers():
            self.waiting[container.name] = Waiting(reason, message)

    def hold_with_backoff(self, name: str) -> None:
        now = time.time()
        entry = backoff.advance(self.backoffs.get(name), now=now)
        self.backoffs[name] = entry
        self.hold[name] = now + entry.delay_s

    def restarted(self, name: str) -> None:
        """A container started again after it ended: its crash back-off grows."""
        self.backoffs[name] = backoff.advance(self.backoffs.get(name), now=time.time())

    def started(self, name: str) -> None:
        self.waiting.pop(name, None)
        self.hold.pop(name, None)

    def sandbox_created(self) -> None:
        for name, waiting in list(self.waiting.items()):
            if waiting.reason == "ContainerCreating":
                del self.waiting[name]

    def note_backoff(self, pod: Pod, actions: PodActions, log: Any) -> None:
        """The plan's crash back-offs: CrashLoopBackOff until each one's time."""
        now = time.time()
        for name, until in actions.backoff.items():
            entry = self.backoffs.get(name)
            delay = int(entry.delay_s) if entry else int(backoff.INITIAL_S)
            message = (
                f"back-off {delay}s restarting failed container={name} "
                f"pod={pod.name}_{pod.namespace}({pod.uid})"
            )
            if self.reason(name) != "CrashLoopBackOff":
                log.info("container_backoff", container=name, seconds=round(until - now, 1))
            self.waiting[name] = Waiting("CrashLoopBackOff", message)
            self.hold[name] = until
