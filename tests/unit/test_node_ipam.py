"""The test API server's node IPAM (tests/apiserver/ipam.py), on its store with a fake clock."""

from __future__ import annotations

import ipaddress

import pytest

from tests.apiserver.ipam import NodeIPAM, parse_ipam
from tests.apiserver.resources import NODES
from tests.apiserver.store import Store


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(mask: int = 24, cidr: str = "10.244.0.0/16") -> tuple[Store, NodeIPAM, Clock]:
    store, clock = Store(history_size=100), Clock()
    ipam = NodeIPAM(
        store, cluster_cidr=ipaddress.IPv4Network(cidr), mask_size=mask, delay_s=2.0, clock=clock
    )
    store.add_hook(ipam.on_change)
    return store, ipam, clock


def node(name: str, cidr: str = "") -> dict[str, object]:
    return {"metadata": {"name": name}, "spec": {"podCIDR": cidr} if cidr else {}}


def pod_cidr(store: Store, name: str) -> object:
    return store.get(NODES, None, name).get("spec", {}).get("podCIDR")


def test_a_new_node_gets_its_cidr_only_once_the_delay_has_passed() -> None:
    store, ipam, clock = make()
    store.create(NODES, None, node("a"))
    assert ipam.assign_due() == []
    assert pod_cidr(store, "a") is None
    clock.now += 2.0
    assert ipam.assign_due() == ["a"]
    spec = store.get(NODES, None, "a")["spec"]
    assert spec == {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"]}


def test_nodes_never_share_a_cidr_and_a_deleted_nodes_cidr_is_reused() -> None:
    store, ipam, clock = make()
    store.create(NODES, None, node("taken", "10.244.0.0/24"))  # set by someone else
    for name in ("a", "b"):
        store.create(NODES, None, node(name))
    clock.now += 5
    ipam.assign_due()
    assert [pod_cidr(store, n) for n in ("taken", "a", "b")] == [
        "10.244.0.0/24",
        "10.244.1.0/24",
        "10.244.2.0/24",
    ]
    store.delete(NODES, None, "a")
    store.create(NODES, None, node("c"))
    clock.now += 5
    ipam.assign_due()
    assert pod_cidr(store, "c") == "10.244.1.0/24"


def test_an_exhausted_pool_leaves_the_node_without_a_cidr() -> None:
    store, ipam, clock = make(mask=25, cidr="10.244.0.0/24")
    for name in ("a", "b", "c"):
        store.create(NODES, None, node(name))
    clock.now += 5
    assert sorted(ipam.assign_due()) == ["a", "b"]
    assert pod_cidr(store, "c") is None


def test_nodes_saved_before_a_restart_are_adopted() -> None:
    store, _, _ = make()
    store.create(NODES, None, node("old", "10.244.0.0/24"))
    store.create(NODES, None, node("waiting"))
    clock = Clock()
    fresh = NodeIPAM(
        store, cluster_cidr=ipaddress.IPv4Network("10.244.0.0/16"), mask_size=24, clock=clock
    )
    fresh.adopt()
    clock.now += 5
    assert fresh.assign_due() == ["waiting"]
    assert pod_cidr(store, "waiting") == "10.244.1.0/24"


@pytest.mark.parametrize("text", ["10.244.0.0/16/8", "10.244.0.0/16/31", "10.244.0.1/16/24"])
def test_bad_ipam_options_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ipam(text)


def test_ipam_option_parses() -> None:
    assert parse_ipam("10.244.0.0/16/24") == (ipaddress.IPv4Network("10.244.0.0/16"), 24)
