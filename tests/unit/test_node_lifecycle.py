"""The test API server's node lifecycle controller: a silent node turns Unknown, then back."""

from __future__ import annotations

from typing import Any

from tests.apiserver.controllers import (
    NODE_STATUS_UNKNOWN,
    UNREACHABLE_TAINT,
    NodeLifecycleController,
)
from tests.apiserver.resources import LEASES, NAMESPACES, NODES
from tests.apiserver.store import Store


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def setup(grace: float = 5.0) -> tuple[Store, NodeLifecycleController, Clock]:
    store = Store()
    store.create(NAMESPACES, None, {"metadata": {"name": "kube-node-lease"}})
    clock = Clock()
    controller = NodeLifecycleController(store, grace_s=grace, clock=clock)
    store.add_hook(controller.on_change)
    ready = {"type": "Ready", "status": "True", "reason": "KubeletReady"}
    store.create(NODES, None, {"metadata": {"name": "c"}, "status": {"conditions": [ready]}})
    store.create(
        LEASES,
        "kube-node-lease",
        {"metadata": {"name": "c"}, "spec": {"renewTime": "2026-01-01T00:00:00.000000Z"}},
    )
    return store, controller, clock


def renew(store: Store, stamp: str) -> None:
    lease = store.get(LEASES, "kube-node-lease", "c")
    store.replace(LEASES, {**lease, "spec": {"renewTime": stamp}})


def conditions(store: Store) -> dict[str, dict[str, Any]]:
    node = store.get(NODES, None, "c")
    return {c["type"]: c for c in node["status"]["conditions"]}


def test_renewed_lease_keeps_the_node_as_it_is() -> None:
    store, controller, clock = setup()
    for second in range(1, 4):
        clock.now += 4
        renew(store, f"2026-01-01T00:00:0{second}.000000Z")
        assert controller.check() == []
    assert conditions(store)["Ready"]["status"] == "True"


def test_silent_node_turns_unknown_and_tainted_past_the_grace() -> None:
    store, controller, clock = setup()
    clock.now += 5
    assert controller.check() == []  # at the grace, not past it
    clock.now += 1
    assert controller.check() == ["c"]
    ready = conditions(store)["Ready"]
    assert ready["status"] == "Unknown" and ready["reason"] == NODE_STATUS_UNKNOWN
    assert {c: v["status"] for c, v in conditions(store).items()} == {
        "Ready": "Unknown",
        "MemoryPressure": "Unknown",
        "DiskPressure": "Unknown",
        "PIDPressure": "Unknown",
    }
    taints = store.get(NODES, None, "c")["spec"]["taints"]
    assert {(t["key"], t["effect"]) for t in taints} == {
        (UNREACHABLE_TAINT, "NoSchedule"),
        (UNREACHABLE_TAINT, "NoExecute"),
    }
    clock.now += 10
    assert controller.check() == []  # marked once


def test_node_reporting_ready_again_loses_the_taints() -> None:
    store, controller, clock = setup()
    clock.now += 6
    controller.check()
    node = store.get(NODES, None, "c")
    ready = {"type": "Ready", "status": "True", "reason": "KubeletReady"}
    store.replace(NODES, {**node, "status": {"conditions": [ready]}})
    assert "taints" not in store.get(NODES, None, "c").get("spec", {})
    clock.now += 5
    assert controller.check() == []  # the status write counted as hearing from it
