"""The cluster link's rig: the kubelet's parts over the fake runtime and a ClusterLink to the
in-process test API server, wired as the daemon wires them; its fixtures (``api``, ``rig``)
and the pods the cluster-link suites share."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from nodeagent.apiserver.client import ApiClient
from nodeagent.apiserver.cluster import ClusterLink
from nodeagent.apiserver.reflector import Backoff
from nodeagent.kubelet.manager import PodManager
from nodeagent.kubelet.nodestatus import NodeFacts
from nodeagent.kubelet.pleg import RuntimeCache
from nodeagent.model.pod import PodUID
from nodeagent.runtime.base import ContainerID, ContainerState
from nodeagent.runtime.fake import FakeRuntime
from nodeagent.sources.file import DesiredState, read_file
from tests.apiserver import ApiServer
from tests.apiserver.resources import EVENTS, PODS
from tests.unit.rig import kubelet_context

NODE = "node-1"


async def _run(loop: Callable[[], Awaitable[None]]) -> None:
    await loop()


IMAGE = "busybox:1.36"


def pod_body(name: str, *, grace: int = 5, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels or {"app": name}},
        "spec": {
            "nodeName": NODE,
            "terminationGracePeriodSeconds": grace,
            "containers": [{"name": "app", "image": IMAGE, "imagePullPolicy": "IfNotPresent"}],
        },
    }


class Rig:
    """The kubelet's parts and a ClusterLink, wired as the daemon wires them."""

    def __init__(
        self, tmp_path: Path, api: ApiServer, *, with_files: bool = False, node_proxier: bool = True
    ) -> None:
        self.api = api
        self.fake = FakeRuntime(images={IMAGE})
        self.cache = RuntimeCache(self.fake, on_change=self._changed, interval_s=0.05)
        self.ctx = kubelet_context(self.fake, self.cache, tmp_path, NODE)
        self.manager = PodManager(self.ctx)
        self.client = ApiClient.from_file(
            api.node_kubeconfig(tmp_path / "node.kubeconfig", NODE, node_proxier=node_proxier)
        )
        self.desired: DesiredState | None = None
        self.updates = 0
        self.link = ClusterLink(
            self.client,
            node_name=NODE,
            manager=self.manager,
            facts=self.facts,
            on_desired=self._desired,
            on_pod_cidr=lambda _: None,
            with_files=with_files,
            runtime_synced=self.cache.synced,
            state_dir=tmp_path / "state",
            cache=self.cache,
            images=self.ctx.images,
            probes=lambda pod: self.ctx.prober.report(pod, id_prefix=""),
        )
        self.link.pods._backoff = Backoff(initial_s=0.05, cap_s=0.2)
        self.link.status._backoff = Backoff(initial_s=0.05, cap_s=0.2)
        self.tasks: list[asyncio.Task[None]] = []

    def facts(self) -> NodeFacts:
        return NodeFacts(NODE, 110, "containerd", "1.6.20", True, "", "/", time.time())

    def _changed(self, uid: PodUID) -> None:
        self.manager.on_runtime_change(uid)

    def _desired(self, state: DesiredState) -> None:
        self.desired = state
        self.updates += 1
        self.manager.update(state.pods)

    def spawn(self) -> None:
        """Run the relister and the link's loops, as the daemon does."""
        loops = [self.cache.run, *self.link.loops().values()]
        self.tasks = [asyncio.create_task(_run(loop)) for loop in loops]

    async def start(self) -> None:
        self.spawn()
        await asyncio.wait_for(self.link.pods.synced.wait(), 5)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.manager.detach_all()
        await self.link.close()

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.api.store.create(PODS, "default", body)

    def api_pod(self, name: str) -> dict[str, Any] | None:
        return self.api.store.find(PODS, "default", name)

    def api_status(self, name: str) -> dict[str, Any]:
        pod = self.api_pod(name)
        return dict((pod or {}).get("status") or {})

    def running_containers(self, uid: str) -> list[ContainerID]:
        return self.fake.container_ids("app", uid=PodUID(uid), state=ContainerState.RUNNING)

    def status_patches(self, name: str) -> int:
        path = f"/api/v1/namespaces/default/pods/{name}/status"
        return sum(1 for r in self.api.requests if r.method == "PATCH" and r.path == path)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[ApiServer]:
    async with ApiServer(
        state_dir=tmp_path / "api", bookmark_interval=0.2, service_account_admission=False
    ) as server:
        yield server


@pytest.fixture
async def rig(tmp_path: Path, api: ApiServer) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path, api)
    await rig.start()
    try:
        yield rig
    finally:
        await rig.close()


def phase(rig: Rig, name: str) -> str:
    return str(rig.api_status(name).get("phase", ""))


def ready(rig: Rig, name: str) -> bool:
    conditions = rig.api_status(name).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


STATIC = """
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {{app: web}}
spec:
  terminationGracePeriodSeconds: 2
  containers:
    - name: app
      image: {image}
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c", "{command}"]
"""


def static_state(path: Path, command: str = "sleep 1000") -> DesiredState:
    path.write_text(STATIC.format(image=IMAGE, command=command))
    result = read_file(path, node_name=NODE)
    return DesiredState(pods={p.key: p for p in result.pods})


def events_of(api: ApiServer, name: str) -> list[dict[str, Any]]:
    return [e for e in api.store.list(EVENTS, "default") if e["involvedObject"]["name"] == name]
