"""The proxy hears of readiness at once: a pod worker that publishes a status whose IP, Ready
condition or phase changed calls the manager's ``on_serving_change`` (the daemon wires it to
``ServiceProxy.wake``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from nodeagent.kubelet.manager import PodManager
from nodeagent.model.validate import parse_pod
from tests.unit.rig import IMAGE, eventually, manager_rig


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[PodManager]:
    manager, cache = manager_rig(tmp_path, "node-1")
    relister = asyncio.create_task(cache.run())
    yield manager
    relister.cancel()
    await asyncio.gather(relister, return_exceptions=True)
    await manager.detach_all()


def ready_condition(status: dict[str, Any] | None) -> str:
    conditions = (status or {}).get("conditions") or []
    return next((c["status"] for c in conditions if c["type"] == "Ready"), "")


async def test_a_readiness_change_alone_wakes_the_proxy(manager: PodManager) -> None:
    calls: list[str] = []
    manager.on_serving_change = lambda: calls.append("wake")
    doc = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "default", "uid": "u-1"},
        "spec": {"containers": [{"name": "app", "image": IMAGE, "imagePullPolicy": "Never"}]},
    }
    pod = parse_pod(doc, source="test", node_name="node-1")
    manager.update({pod.key: pod})
    worker = await eventually(lambda: manager.worker_for(pod.uid), what="a worker")
    await eventually(lambda: ready_condition(worker.status) == "True", what="Ready")
    assert calls  # Pending, then an IP, then Ready: each was told
    told = len(calls)

    # A probe says not ready: nothing happens in the runtime, yet the proxy is told.
    worker.set_probe_state(ready={"app": False}, started={"app": True}, unhealthy={})
    await eventually(lambda: ready_condition(worker.status) == "False", what="not Ready")
    await eventually(lambda: len(calls) > told, what="the proxy woken")
