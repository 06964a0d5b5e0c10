"""Cluster IP and NodePort allocation (standalone mode): stable, persisted, collisions named."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

from nodeagent.model.service import Service
from nodeagent.model.validate import parse_service
from nodeagent.proxy import allocator
from nodeagent.proxy.allocator import Allocation, Ranges, allocate

RANGES = Ranges(ipaddress.IPv4Network("10.96.0.0/29"), (30000, 30002))


def svc(name: str, **spec: Any) -> Service:
    spec.setdefault("ports", [{"port": 80}])
    doc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}
    return parse_service(doc, source=f"/m/{name}.yaml")


def services(*items: Service) -> dict[str, Service]:
    return {s.key: s for s in items}


def test_lowest_free_addresses_and_ports_in_key_order() -> None:
    result, errors = allocate(
        services(svc("b", type="NodePort"), svc("a"), svc("c", clusterIP="10.96.0.1")),
        {},
        RANGES,
    )
    assert errors == []
    assert result["default/c"].cluster_ip == "10.96.0.1"  # asked for: never taken by others
    assert result["default/a"].cluster_ip == "10.96.0.2"
    assert result["default/b"].cluster_ip == "10.96.0.3"
    assert result["default/b"].node_ports == {"/TCP": 30000}
    assert result["default/a"].node_ports == {}


def test_previous_allocations_are_kept_and_win_collisions() -> None:
    previous = {"default/old": Allocation("10.96.0.5", {"/TCP": 30002})}
    result, errors = allocate(
        services(
            svc("old", type="NodePort"),
            svc(
                "new",
                clusterIP="10.96.0.5",
                type="NodePort",
                ports=[{"port": 1, "nodePort": 30002}],
            ),
        ),
        previous,
        RANGES,
    )
    assert result["default/old"] == Allocation("10.96.0.5", {"/TCP": 30002})
    assert "default/new" not in result  # a Service with a problem gets nothing
    assert [(e.service, e.field) for e in errors] == [
        ("default/new", "spec.clusterIP"),
        ("default/new", "spec.ports[0].nodePort"),
    ]
    assert "already allocated to Service default/old" in errors[0].message


def test_out_of_range_values_are_errors() -> None:
    _, errors = allocate(
        services(
            svc("ip", clusterIP="10.1.2.3"),
            svc("net", clusterIP="10.96.0.0"),
            svc("port", type="NodePort", ports=[{"port": 80, "nodePort": 31000}]),
        ),
        {},
        RANGES,
    )
    messages = {(e.service, e.field): e.message for e in errors}
    assert "not in the service CIDR 10.96.0.0/29" in messages[("default/ip", "spec.clusterIP")]
    assert ("default/net", "spec.clusterIP") in messages
    assert (
        "not in the node-port range 30000-30002"
        in messages[("default/port", "spec.ports[0].nodePort")]
    )


def test_exhaustion_is_an_error_for_the_service_that_did_not_fit() -> None:
    many = services(*(svc(f"s{i}") for i in range(7)))
    result, errors = allocate(many, {}, RANGES)
    assert len(result) == 6  # a /29 has 6 host addresses
    assert [(e.service, e.message) for e in errors] == [("default/s6", "the service CIDR is full")]


def test_headless_and_external_name_get_no_address() -> None:
    result, errors = allocate(
        services(
            svc("headless", clusterIP="None"),
            svc("alias", type="ExternalName", externalName="example.com", ports=[]),
        ),
        {},
        RANGES,
    )
    assert errors == []
    assert result["default/headless"].cluster_ip == ""
    assert result["default/alias"].cluster_ip == ""


def test_same_node_port_for_tcp_and_udp_of_one_service() -> None:
    ports = [
        {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30001},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP", "nodePort": 30001},
    ]
    result, errors = allocate(services(svc("dns", type="NodePort", ports=ports)), {}, RANGES)
    assert errors == []
    assert result["default/dns"].node_ports == {"dns/UDP": 30001, "dns-tcp/TCP": 30001}


def test_load_balancer_without_node_ports() -> None:
    result, _ = allocate(
        services(svc("lb", type="LoadBalancer", allocateLoadBalancerNodePorts=False)), {}, RANGES
    )
    assert result["default/lb"].node_ports == {}


def test_gone_services_release_their_allocations() -> None:
    first, _ = allocate(services(svc("a"), svc("b")), {}, RANGES)
    second, _ = allocate(services(svc("c")), first, RANGES)
    assert set(second) == {"default/c"}
    assert second["default/c"].cluster_ip == "10.96.0.1"


def test_persistence_round_trip_and_tolerance(tmp_path: Path) -> None:
    path = tmp_path / "proxy" / "allocations.json"
    assert allocator.load(path) == {}
    data = {"default/a": Allocation("10.96.0.2", {"http/TCP": 30001})}
    allocator.save(path, data)
    assert allocator.load(path) == data
    assert json.loads(path.read_text())["version"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["allocations.json"]  # no temp file left
    path.write_text('{"version": 1, "services": {"x": {"clusterIP": "not-an-ip"}, "y": 3}}')
    assert allocator.load(path) == {}
    path.write_text("{broken")
    assert allocator.load(path) == {}


def test_health_check_node_port_for_local_load_balancers_only() -> None:
    lb: dict[str, Any] = {
        "type": "LoadBalancer",
        "externalTrafficPolicy": "Local",
        "allocateLoadBalancerNodePorts": False,
    }
    result, errors = allocate(
        services(svc("a", **lb), svc("b", type="LoadBalancer"), svc("c", **lb)),
        {"default/c": Allocation("10.96.0.4", {allocator.HEALTH_CHECK_KEY: 30001})},
        RANGES,
    )
    assert errors == []
    assert result["default/c"].health_check_node_port == 30001  # kept across restarts
    assert result["default/a"].health_check_node_port == 30000  # from the node-port pool
    assert result["default/b"].node_ports == {"/TCP": 30002}  # Cluster policy: no health check
    named, errors = allocate(services(svc("d", **lb, healthCheckNodePort=30001)), {}, RANGES)
    assert errors == [] and named["default/d"].health_check_node_port == 30001
    _, errors = allocate(services(svc("e", **lb, healthCheckNodePort=31000)), {}, RANGES)
    assert [(e.field, "range" in e.message) for e in errors] == [("spec.healthCheckNodePort", True)]


def test_require_dual_stack_is_refused_and_prefer_dual_stack_gets_ipv4() -> None:
    result, errors = allocate(
        services(
            svc("req", ipFamilyPolicy="RequireDualStack"),
            svc("pref", ipFamilyPolicy="PreferDualStack", ipFamilies=["IPv4", "IPv6"]),
        ),
        {},
        RANGES,
    )
    assert result["default/pref"].cluster_ip == "10.96.0.1"
    assert "default/req" not in result
    [error] = errors
    assert (error.service, error.field) == ("default/req", "spec.ipFamilyPolicy")
    assert "IPv4 only" in error.message


def test_api_services_keep_what_the_api_server_assigned() -> None:
    service = svc(
        "k",
        type="LoadBalancer",
        externalTrafficPolicy="Local",
        clusterIP="10.43.0.20",  # outside any --service-cidr: the API's choice stands
        healthCheckNodePort=32100,
        ports=[{"port": 80, "nodePort": 31080}],
    )
    assert allocator.assigned(service) == Allocation(
        "10.43.0.20", {"/TCP": 31080, allocator.HEALTH_CHECK_KEY: 32100}
    )
