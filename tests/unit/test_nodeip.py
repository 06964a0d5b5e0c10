"""The node's address without --node-ip (network/nodeip.py): the pure choice, and the
bounded hostname lookup of ``find``."""

from __future__ import annotations

import asyncio
import threading

import pytest

from nodeagent.network import nodeip
from nodeagent.network.nodeip import HostNetwork, Interface, Rule, choose

LO = Interface("lo", "", ("127.0.0.1",))
ETH0 = Interface("eth0", "", ("192.168.56.11",))
NAT = Interface("eth1", "", ("10.0.2.15",))
BRIDGE = Interface("na0", "bridge", ("10.88.0.1",))
POD_VETH = Interface("veth1234", "veth", (), enslaved=True)
DOCKER = Interface("docker0", "bridge", ("172.17.0.1",))


def host(*interfaces: Interface, default: tuple[str, ...] = ()) -> HostNetwork:
    return HostNetwork(interfaces=interfaces, default_route_interfaces=default)


def test_the_default_routes_interface_wins() -> None:
    h = host(LO, BRIDGE, NAT, ETH0, default=("eth0",))
    assert choose(h) == ("192.168.56.11", Rule.DEFAULT_ROUTE)


def test_the_lowest_metric_default_route_is_asked_first() -> None:
    h = host(ETH0, NAT, default=("eth1", "eth0"))
    assert choose(h) == ("10.0.2.15", Rule.DEFAULT_ROUTE)


def test_never_a_bridge_a_pod_veth_or_an_address_of_the_pod_network() -> None:
    # The default route through the CNI bridge (a misconfigured node) is not believed.
    h = host(LO, BRIDGE, POD_VETH, DOCKER, default=("na0",))
    assert choose(h) == ("", Rule.NONE)
    tunnel = Interface("eth9", "", ("10.244.3.0",))
    h = host(tunnel, ETH0, default=("eth9",))
    assert choose(h, excluded=["10.244.0.0/16"]) == ("192.168.56.11", Rule.GUESS)


def test_a_veth_uplink_is_a_node_address() -> None:
    """A node that is a network namespace or a container (kind, our lab) has a veth uplink."""
    uplink = Interface("lab0", "veth", ("10.250.0.11",))
    h = host(LO, BRIDGE, POD_VETH, uplink, default=("lab0",))
    assert choose(h) == ("10.250.0.11", Rule.DEFAULT_ROUTE)


def test_without_a_default_route_the_hostnames_local_address() -> None:
    h = host(LO, NAT, ETH0)
    assert choose(h, hostname_addresses=("192.168.56.11",)) == ("192.168.56.11", Rule.HOSTNAME)
    # Debian maps the hostname to 127.0.1.1, and a name may resolve to another machine.
    assert choose(h, hostname_addresses=("127.0.1.1", "203.0.113.9")) == (
        "10.0.2.15",
        Rule.GUESS,
    )


def test_loopback_and_link_local_are_never_chosen() -> None:
    link_local = Interface("eth0", "", ("169.254.3.4",))
    assert choose(host(LO, link_local, default=("eth0",))) == ("", Rule.NONE)


def test_the_hostnames_address_found_in_time_is_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nodeip, "read_host", lambda: host(LO, NAT, ETH0))
    monkeypatch.setattr(nodeip, "resolve", lambda name: ("192.168.56.11",))
    monkeypatch.setattr(nodeip, "RESOLVE_TIMEOUT_S", 60.0)
    assert asyncio.run(nodeip.find(hostname="node-a")) == "192.168.56.11"


def test_a_lookup_that_never_answers_holds_up_neither_the_choice_nor_the_exit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A resolver that does not answer: ``find`` guesses once its budget is spent, and
    ``asyncio.run`` returns while the lookup is still blocked (a SIGTERM is not delayed)."""
    release, finished = threading.Event(), threading.Event()

    def blocked(name: str) -> tuple[str, ...]:
        release.wait(30)  # a hang guard only: the test releases it
        finished.set()
        return ("192.168.56.11",)

    monkeypatch.setattr(nodeip, "read_host", lambda: host(LO, NAT, ETH0))
    monkeypatch.setattr(nodeip, "resolve", blocked)
    monkeypatch.setattr(nodeip, "RESOLVE_TIMEOUT_S", 0.01)
    try:
        assert asyncio.run(nodeip.find(hostname="node-a")) == "10.0.2.15"  # Rule.GUESS
        assert not finished.is_set()  # asyncio.run did not wait for the lookup
    finally:
        release.set()
