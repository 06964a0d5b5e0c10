"""The daemon's wiring for cost and latency.

A pod's serving change (IP, readiness, phase) reaches the proxy and, in cluster mode, the pod
status writer at once: the kubelet's status manager syncs on each change rather than waiting
for its periodic pass (which added up to 0.5 s to every pod start seen through the API). The
node part of the local status is sampled at most once a second, so a client polling the
status socket does not cost the agent a core.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from nodeagent.config import Config
from nodeagent.daemon import Node
from nodeagent.runtime.fake import FakeRuntime
from nodeagent.server import snapshot


def standalone(tmp_path: Path) -> tuple[Node, list[str]]:
    node = Node(Config(node_name="n1", state_dir=tmp_path, manifests=None), FakeRuntime())
    woken: list[str] = []
    node.proxy.wake = lambda: woken.append("proxy")  # type: ignore[method-assign]
    return node, woken


def test_serving_change_wakes_the_proxy_and_the_status_writer(tmp_path: Path) -> None:
    node, woken = standalone(tmp_path)
    writer = SimpleNamespace(wake=lambda: woken.append("status"))
    node.cluster = SimpleNamespace(status=writer)  # type: ignore[assignment]

    node.manager.on_serving_change()

    assert sorted(woken) == ["proxy", "status"]


def test_standalone_serving_change_wakes_the_proxy(tmp_path: Path) -> None:
    node, woken = standalone(tmp_path)

    node.manager.on_serving_change()

    assert woken == ["proxy"]


def test_node_status_is_sampled_at_most_once_a_ttl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node, _ = standalone(tmp_path)
    first = node.snapshot()["node"]

    assert node.snapshot()["node"] is first  # a polling client costs no new sample

    monkeypatch.setattr(snapshot, "NODE_STATUS_TTL_S", 0.0)
    fresh = node.snapshot()["node"]
    assert fresh is not first
    assert fresh["conditions"]  # a real sample, not an empty placeholder
