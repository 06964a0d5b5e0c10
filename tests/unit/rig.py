"""What the unit tests of the pod manager and the cluster link share: waiting on a condition
on the event loop, and a pod manager wired to a fake runtime with a shared relister."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from nodeagent.kubelet.context import KubeletContext
from nodeagent.kubelet.images import ImageManager
from nodeagent.kubelet.manager import PodManager
from nodeagent.kubelet.pleg import RuntimeCache
from nodeagent.kubelet.prober import ProbeManager
from nodeagent.runtime.fake import FakeRuntime
from tests.harness import async_wait_for
from tests.harness.wait import Polled

T = TypeVar("T")
IMAGE = "busybox:1.36"


async def eventually(
    predicate: Callable[[], Polled[T]], within: float = 5.0, *, what: str = ""
) -> T:
    """The predicate's first truthy value within ``within`` seconds; fails the test otherwise."""
    return await async_wait_for(predicate, within, 0.01, message=what)


def manager_rig(tmp_path: Path, node_name: str) -> tuple[PodManager, RuntimeCache]:
    """A pod manager over a fake runtime holding IMAGE; the caller runs ``cache.run()``."""
    fake = FakeRuntime(images={IMAGE})
    holder: list[PodManager] = []
    cache = RuntimeCache(fake, on_change=lambda uid: holder[0].on_runtime_change(uid))
    ctx = KubeletContext(
        node_name=node_name,
        host_ip="192.168.56.11",
        state_dir=tmp_path / "state",
        pod_log_dir=str(tmp_path / "logs"),
        runtime=fake,
        runtime_name="containerd",
        cache=cache,
        images=ImageManager(fake),
        prober=ProbeManager(fake),
    )
    holder.append(PodManager(ctx))
    return holder[0], cache
