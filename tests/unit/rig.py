"""What the unit tests of the pod manager and the cluster link share: waiting on a condition
on the event loop, a pod manager wired to a fake runtime with a shared relister, and the pod
workers' rig (``WorkerRig``, started and closed by the ``rig`` fixture of conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from nodeagent import cli
from nodeagent.kubelet.context import KubeletContext
from nodeagent.kubelet.images import ImageManager
from nodeagent.kubelet.manager import PodManager
from nodeagent.kubelet.pleg import RuntimeCache
from nodeagent.kubelet.prober import ProbeManager
from nodeagent.model.pod import Pod, PodUID
from nodeagent.model.validate import parse_pod
from nodeagent.runtime import base
from nodeagent.runtime.base import ContainerState
from nodeagent.runtime.fake import FakeRuntime
from tests.harness import async_wait_for
from tests.harness.wait import Polled

T = TypeVar("T")
NODE = "node-1"
IMAGE = "busybox:1.36"


async def eventually(
    predicate: Callable[[], Polled[T]], within: float = 5.0, *, what: str = ""
) -> T:
    """The predicate's first truthy value within ``within`` seconds; fails the test otherwise."""
    return await async_wait_for(predicate, within, 0.01, message=what)


def kubelet_context(
    fake: FakeRuntime, cache: RuntimeCache, tmp_path: Path, node_name: str
) -> KubeletContext:
    """The kubelet's parts over ``fake``, as the daemon wires them (``dataclasses.replace``
    sets the optional ones)."""
    return KubeletContext(
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


def manager_rig(tmp_path: Path, node_name: str) -> tuple[PodManager, RuntimeCache]:
    """A pod manager over a fake runtime holding IMAGE; the caller runs ``cache.run()``."""
    fake = FakeRuntime(images={IMAGE})
    holder: list[PodManager] = []
    cache = RuntimeCache(fake, on_change=lambda uid: holder[0].on_runtime_change(uid))
    holder.append(PodManager(kubelet_context(fake, cache, tmp_path, node_name)))
    return holder[0], cache


def make_pod(
    name: str = "web",
    *,
    image: str = IMAGE,
    policy: str = "Always",
    pull: str | None = None,
    inits: bool = False,
    extra: dict[str, Any] | None = None,
) -> Pod:
    app: dict[str, Any] = {
        "name": "app",
        "image": image,
        "command": ["sh", "-c", "echo $(GREETING) from $(POD_NAME)"],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "GREETING", "value": "hello"},
        ],
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}},
        **(extra or {}),
    }
    if pull is not None:
        app["imagePullPolicy"] = pull
    spec: dict[str, Any] = {
        "restartPolicy": policy,
        "terminationGracePeriodSeconds": 3,
        "volumes": [{"name": "data", "emptyDir": {}}],
        "containers": [app],
    }
    if inits:
        spec["initContainers"] = [
            {"name": "setup", "image": IMAGE, "command": ["true"]},
        ]
    doc = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}
    return parse_pod(doc, source="test", node_name=NODE)


class WorkerRig:
    """The kubelet's parts, wired as the daemon wires them, over a FakeRuntime."""

    def __init__(self, tmp_path: Path) -> None:
        self.fake = FakeRuntime(images={IMAGE})
        self.state_dir = tmp_path / "state"
        self.log_dir = tmp_path / "logs"
        self.cache = RuntimeCache(self.fake, on_change=self._changed, interval_s=0.05)
        self.ctx = kubelet_context(self.fake, self.cache, tmp_path, NODE)
        self.manager = PodManager(self.ctx)
        self._relist: asyncio.Task[None] | None = None

    def _changed(self, uid: PodUID) -> None:
        self.manager.on_runtime_change(uid)

    async def start(self) -> None:
        self._relist = asyncio.create_task(self.cache.run())
        await asyncio.wait_for(self.cache.synced.wait(), 5)

    async def close(self) -> None:
        await self.manager.detach_all()
        if self._relist is not None:
            self._relist.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._relist

    def run(self, *pods: Pod) -> None:
        self.manager.update({p.key: p for p in pods})

    def status(self, pod: Pod) -> dict[str, Any]:
        worker = self.manager.worker_for(pod.uid)
        return (worker.status if worker is not None else None) or {}

    def container(self, pod: Pod, name: str = "app") -> dict[str, Any]:
        status = self.status(pod)
        for key in ("initContainerStatuses", "containerStatuses"):
            for item in status.get(key, []):
                if item["name"] == name:
                    return dict(item)
        return {}

    def waiting_reason(self, pod: Pod, name: str = "app") -> str:
        return str(self.container(pod, name).get("state", {}).get("waiting", {}).get("reason", ""))

    def running(self, pod: Pod, name: str = "app") -> bool:
        return "running" in self.container(pod, name).get("state", {})

    async def finish_init(self, pod: Pod, name: str = "setup") -> None:
        """Let the init container ``name`` run to a clean exit (fake processes never end)."""
        await eventually(lambda: self.running(pod, name), what=f"{name} running")
        (cid,) = self.fake.container_ids(name, uid=pod.uid, state=ContainerState.RUNNING)
        self.fake.exit_container(cid, 0)

    def managed_left(self) -> tuple[int, int]:
        managed = [s for s in self.fake.sandboxes.values() if base.LABEL_MANAGED_BY in s.labels]
        return len(managed), len(self.fake.containers)


async def run_cli(*argv: str) -> int:
    """``nodeagent ARGV``'s exit code. main() blocks on the socket and the status server needs
    this loop free, so main gets a thread."""
    return await asyncio.to_thread(cli.main, list(argv))
