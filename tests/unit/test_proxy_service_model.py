"""Service documents -> the typed model (nodeagent.model.service); every error names its field."""

from __future__ import annotations

from typing import Any

import pytest

from nodeagent.model.fields import ValidationError
from nodeagent.model.service import (
    IPFamilyPolicy,
    Protocol,
    ServiceType,
    SessionAffinity,
    TrafficPolicy,
)
from nodeagent.model.validate import parse_document, parse_service


def doc(spec: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": spec,
        **extra,
    }


def errors(spec: dict[str, Any], **extra: Any) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        parse_service(doc(spec, **extra), source="s.yaml")
    return {e.path: e.message for e in info.value.errors}


def test_defaults() -> None:
    s = parse_service(doc({"ports": [{"port": 80}], "selector": {"app": "web"}}), source="s.yaml")
    spec = s.spec
    assert (s.key, s.source) == ("default/web", "s.yaml")
    assert spec.type is ServiceType.CLUSTER_IP and spec.cluster_ip == ""
    [port] = spec.ports
    assert (port.name, port.protocol, port.port, port.target_port, port.node_port) == (
        "",
        Protocol.TCP,
        80,
        80,
        0,
    )
    assert spec.session_affinity is SessionAffinity.NONE and spec.affinity_timeout_s == 10800
    assert spec.external_traffic_policy is spec.internal_traffic_policy is TrafficPolicy.CLUSTER
    assert spec.selector == {"app": "web"} and spec.proxied and not spec.wants_node_ports


def test_full_featured_service() -> None:
    spec = {
        "type": "LoadBalancer",
        "clusterIP": "10.96.0.10",
        "clusterIPs": ["10.96.0.10"],
        "ports": [
            {"name": "http", "port": 80, "targetPort": "web", "nodePort": 30080},
            {"name": "dns", "port": 53, "protocol": "UDP"},
        ],
        "externalIPs": ["192.0.2.1"],
        "sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
        "externalTrafficPolicy": "Local",
        "internalTrafficPolicy": "Local",
        "ipFamilies": ["IPv4"],
        "ipFamilyPolicy": "SingleStack",
        "loadBalancerClass": "ignored",
    }
    status = {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}, {"hostname": "lb.example"}]}}
    s = parse_service(doc(spec, status=status), source="s.yaml")
    assert s.spec.type is ServiceType.LOAD_BALANCER and s.spec.wants_node_ports
    assert [p.key for p in s.spec.ports] == ["http/TCP", "dns/UDP"]
    assert s.spec.ports[0].target_port == "web" and s.spec.ports[0].node_port == 30080
    assert s.spec.affinity_timeout_s == 60
    assert [i.ip for i in s.load_balancer_ingress] == ["198.51.100.1"]


def test_headless_and_external_name() -> None:
    headless = parse_service(doc({"clusterIP": "None", "selector": {"a": "b"}}), source="s")
    assert headless.spec.headless and not headless.spec.proxied
    alias = parse_service(
        doc({"type": "ExternalName", "externalName": "db.example.com"}), source="s"
    )
    assert alias.spec.external_name == "db.example.com" and not alias.spec.proxied


@pytest.mark.parametrize(
    ("spec", "path", "words"),
    [
        ({}, "spec.ports", "at least one port"),
        ({"ports": [{"port": 0}]}, "spec.ports[0].port", "1-65535"),
        ({"ports": [{"port": 80}, {"port": 81}]}, "spec.ports[0].name", "more than one port"),
        (
            {"ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]},
            "spec.ports[1].name",
            "duplicate port name",
        ),
        (
            {"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]},
            "spec.ports[1].port",
            "duplicate port 80/TCP",
        ),
        ({"ports": [{"port": 80, "protocol": "ICMP"}]}, "spec.ports[0].protocol", "one of"),
        (
            {"ports": [{"port": 80, "targetPort": "Not_A_Name"}]},
            "spec.ports[0].targetPort",
            "port name",
        ),
        ({"ports": [{"port": 80, "nodePort": 30000}]}, "spec.ports[0].nodePort", "ClusterIP"),
        ({"type": "Magic", "ports": [{"port": 80}]}, "spec.type", "one of"),
        ({"clusterIP": "300.1.1.1", "ports": [{"port": 80}]}, "spec.clusterIP", "not a valid IP"),
        ({"clusterIP": "fd00::1", "ports": [{"port": 80}]}, "spec.clusterIP", "IPv6"),
        (
            {"clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.2"], "ports": [{"port": 80}]},
            "spec.clusterIPs",
            "must begin with",
        ),
        (
            {"type": "NodePort", "clusterIP": "None", "ports": [{"port": 80}]},
            "spec.clusterIP",
            "None",
        ),
        (
            {"externalIPs": ["127.0.0.1"], "ports": [{"port": 80}]},
            "spec.externalIPs[0]",
            "loopback",
        ),
        ({"sessionAffinity": "Sticky", "ports": [{"port": 80}]}, "spec.sessionAffinity", "one of"),
        (
            {"sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 5}}, "ports": [{"port": 80}]},
            "spec.sessionAffinityConfig",
            "ClientIP",
        ),
        (
            {
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86401}},
                "ports": [{"port": 80}],
            },
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            "86400",
        ),
        (
            {"externalTrafficPolicy": "Local", "ports": [{"port": 80}]},
            "spec.externalTrafficPolicy",
            "externally-accessible",
        ),
        (
            {"internalTrafficPolicy": "Nearby", "ports": [{"port": 80}]},
            "spec.internalTrafficPolicy",
            "one of",
        ),
        ({"type": "ExternalName"}, "spec.externalName", "required"),
        ({"externalName": "x.example", "ports": [{"port": 80}]}, "spec.externalName", "only"),
        (
            {"loadBalancerSourceRanges": ["10.0.0.0/8"], "ports": [{"port": 80}]},
            "spec.loadBalancerSourceRanges",
            "LoadBalancer",
        ),
        ({"ipFamilies": ["IPv6"], "ports": [{"port": 80}]}, "spec.ipFamilies", "IPv4 only"),
        (
            {"ports": [{"port": 80, "nodePort": 70000}], "type": "NodePort"},
            "spec.ports[0].nodePort",
            "1-65535",
        ),
    ],
)
def test_invalid_specs_name_the_field(spec: dict[str, Any], path: str, words: str) -> None:
    found = errors(spec)
    assert path in found, found
    assert words in found[path]


def test_status_and_top_level_fields_are_checked() -> None:
    found = errors({"ports": [{"port": 80}]}, status={"loadBalancer": {"ingress": [{"ip": "x"}]}})
    assert "status.loadBalancer.ingress[0].ip" in found
    found = errors({"ports": [{"port": 80}]}, extra={"x": 1})
    assert found == {"extra": "field is not supported by nodeagent"}


def test_dispatch_through_parse_document() -> None:
    s = parse_document(doc({"ports": [{"port": 80}]}), source="s", node_name="n")
    assert s.key == "default/web"


def test_dual_stack_serves_the_ipv4_side_and_lists_the_ipv6_parts() -> None:
    s = parse_service(
        doc(
            {
                "type": "LoadBalancer",
                "clusterIP": "fd00::10",
                "clusterIPs": ["fd00::10", "10.96.0.10"],
                "ipFamilies": ["IPv6", "IPv4"],
                "ipFamilyPolicy": "PreferDualStack",
                "externalIPs": ["192.0.2.7", "2001:db8::7"],
                "loadBalancerSourceRanges": [" 198.51.100.0/24", "2001:db8::/32"],
                "ports": [{"port": 80}],
            },
            status={"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}, {"ip": "2001:db8::9"}]}},
        ),
        source="s",
    )
    spec = s.spec
    assert (spec.cluster_ip, spec.ipv6_cluster_ip) == ("10.96.0.10", "fd00::10")
    assert spec.ip_family_policy is IPFamilyPolicy.PREFER_DUAL_STACK
    assert spec.external_ips == ("192.0.2.7",) and spec.source_ranges == ("198.51.100.0/24",)
    assert [i.ip for i in s.load_balancer_ingress] == ["203.0.113.9"]
    assert spec.not_programmed == (
        "spec.clusterIPs: fd00::10",
        "spec.externalIPs[1]: 2001:db8::7",
        "spec.loadBalancerSourceRanges[1]: 2001:db8::/32",
        "status.loadBalancer.ingress[1].ip: 2001:db8::9",
    )


def test_two_families_without_a_policy_mean_require_dual_stack() -> None:
    spec = parse_service(
        doc({"clusterIPs": ["10.96.0.10", "fd00::10"], "ports": [{"port": 80}]}), source="s"
    ).spec
    assert spec.ip_family_policy is IPFamilyPolicy.REQUIRE_DUAL_STACK
    found = errors(
        {"ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "SingleStack", "ports": [{"port": 80}]}
    )
    assert "one IP family" in found["spec.ipFamilyPolicy"]
    found = errors({"clusterIPs": ["10.96.0.10", "10.96.0.11"], "ports": [{"port": 80}]})
    assert "one address per IP family" in found["spec.clusterIPs[1]"]


@pytest.mark.parametrize(
    ("labels", "proxied"),
    [
        ({}, True),
        ({"service.kubernetes.io/service-proxy-name": "other"}, False),
        ({"service.kubernetes.io/service-proxy-name": ""}, False),
        ({"service.kubernetes.io/headless": ""}, False),
    ],
)
def test_labels_hand_a_service_to_another_proxy(labels: dict[str, str], proxied: bool) -> None:
    d = doc({"ports": [{"port": 80}]})
    d["metadata"]["labels"] = labels
    s = parse_service(d, source="s")
    assert s.proxied is proxied and s.spec.proxied


def test_source_ranges_and_health_check_node_port() -> None:
    lb = {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": [{"port": 80}]}
    spec = parse_service(
        doc({**lb, "healthCheckNodePort": 31000, "loadBalancerSourceRanges": ["10.1.2.3/16"]}),
        source="s",
    ).spec
    assert spec.needs_health_check and spec.health_check_node_port == 31000
    assert spec.source_ranges == ("10.1.0.0/16",)
    d = doc(lb)
    d["metadata"]["annotations"] = {
        "service.beta.kubernetes.io/load-balancer-source-ranges": "192.0.2.0/24, 10.0.0.0/8"
    }
    assert parse_service(d, source="s").spec.source_ranges == ("192.0.2.0/24", "10.0.0.0/8")
    found = errors({**lb, "loadBalancerSourceRanges": ["10.0.0.0/33"]})
    assert "not a valid CIDR" in found["spec.loadBalancerSourceRanges[0]"]
    found = errors({**lb, "externalTrafficPolicy": "Cluster", "healthCheckNodePort": 31000})
    assert "externalTrafficPolicy Local" in found["spec.healthCheckNodePort"]
