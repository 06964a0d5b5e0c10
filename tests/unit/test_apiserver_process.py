"""The test API server as a separate process (``python -m tests.apiserver``) and its hooks."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.models.core_v1 import Container, PodSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap, Pod, PodStatus, Service

from tests.apiserver.process import ApiServerProcess
from tests.harness.typed import present
from tests.harness.wait import first_items


@pytest.fixture
async def proc(tmp_path: Path) -> AsyncIterator[ApiServerProcess]:
    server = ApiServerProcess(tmp_path)
    server.node_kubeconfig("n1")
    async with server:
        yield server


def _client(path: Path) -> AsyncClient:
    return AsyncClient(KubeConfig.from_file(path))


async def test_process_serves_and_keeps_state_across_restarts(proc: ApiServerProcess) -> None:
    client = _client(proc.kubeconfig)
    node = _client(proc.workdir / "n1.kubeconfig")
    try:
        assert "kubernetes" in [present(s.metadata).name async for s in node.list(Service)]
        pod = Pod(
            metadata=ObjectMeta(name="p"),
            spec=PodSpec(nodeName="n1", containers=[Container(name="c", image="busybox")]),
        )
        uid = present((await client.create(pod)).metadata).uid
        await proc.fail_requests(1, code=503, resource="pods", subresource="status")
        with pytest.raises(ApiError) as exc:
            await client.patch(PodStatus, "p", {"status": {"phase": "Running"}})
        assert exc.value.status.code == 503
        await client.patch(PodStatus, "p", {"status": {"phase": "Running"}})

        listing = client.list(ConfigMap)
        [_ async for _ in listing]
        rv = listing.resourceVersion
        await proc.restart(down_seconds=0.2)  # in-process restart: history kept
        with contextlib.suppress(httpx2.TransportError):
            await client.get(Pod, "p")  # a pooled connection may still be the cut one
        await client.create(ConfigMap(metadata=ObjectMeta(name="after")))
        [(kind, cm)] = await first_items(client.watch(ConfigMap, resource_version=rv), 1)
        assert (kind, present(cm.metadata).name) == ("ADDED", "after")

        await proc.drop_history()
        with pytest.raises(ApiError) as exc:
            async for _ in client.watch(ConfigMap, resource_version=rv):
                pass
        assert exc.value.status.code == 410

        await proc.stop()  # the process saves its objects...
        await proc.start()  # ...and the next one loads them, on the same port
        got = await client.get(Pod, "p")
        assert present(got.metadata).uid == uid and present(got.status).phase == "Running"
        log = await proc.requests()
        assert log and all("method" in r for r in log)
    finally:
        await client.close()
        await node.close()
