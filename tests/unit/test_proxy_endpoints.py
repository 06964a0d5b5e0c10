"""Standalone endpoints: selectors, readiness, terminating pods, named target ports."""

from __future__ import annotations

from typing import Any

from nodeagent.model.pod import ContainerPort, Pod
from nodeagent.model.service import Protocol, Service
from nodeagent.model.validate import parse_pod, parse_service
from nodeagent.proxy.allocator import Allocation
from nodeagent.proxy.endpoints import (
    PodView,
    PortMemory,
    service_endpoints,
    service_ports,
    settled,
)
from nodeagent.proxy.state import Endpoint, ServicePortName


def svc(**spec: Any) -> Service:
    spec.setdefault("selector", {"app": "web"})
    spec.setdefault("ports", [{"name": "http", "port": 80, "targetPort": "http"}])
    doc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": spec}
    return parse_service(doc, source="s.yaml")


HTTP = (ContainerPort(8080, name="http"),)
KEY = ServicePortName("default", "web", "http", "TCP")


def pod(name: str, ip: str, **kw: Any) -> PodView:
    kw.setdefault("labels", {"app": "web"})
    kw.setdefault("ready", True)
    kw.setdefault("ports", HTTP)
    return PodView(namespace="default", name=name, ip=ip, **kw)


def test_selected_ready_pods_with_named_port() -> None:
    pods = [
        pod("a", "10.0.0.2"),
        pod("b", "10.0.0.1", ready=False),
        pod("other", "10.0.0.3", labels={"app": "db"}),
        pod("noip", ""),
        pod("done", "10.0.0.4", finished=True),
        pod("noport", "10.0.0.5", ports=()),
        PodView("elsewhere", "a", "10.0.0.6", {"app": "web"}, ready=True, ports=HTTP),
    ]
    assert service_endpoints(svc(), pods) == {
        KEY: (
            Endpoint("10.0.0.1", 8080, ready=False, serving=False),
            Endpoint("10.0.0.2", 8080),
        )
    }


def test_terminating_pods_are_serving_but_not_ready() -> None:
    eps = service_endpoints(svc(), [pod("a", "10.0.0.2", terminating=True)])
    assert eps[KEY] == (Endpoint("10.0.0.2", 8080, ready=False, serving=True, terminating=True),)


def test_publish_not_ready_addresses_counts_every_pod_as_ready() -> None:
    eps = service_endpoints(svc(publishNotReadyAddresses=True), [pod("a", "10.0.0.2", ready=False)])
    assert eps[KEY] == (Endpoint("10.0.0.2", 8080),)


def test_named_port_must_match_protocol_and_numbers_pass_through() -> None:
    ports = [
        {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "http"},
        {"name": "num", "port": 81, "targetPort": 9000},
    ]
    eps = service_endpoints(svc(ports=ports), [pod("a", "10.0.0.2")])
    assert eps[ServicePortName("default", "web", "dns", "UDP")] == ()
    assert eps[ServicePortName("default", "web", "num", "TCP")] == (Endpoint("10.0.0.2", 9000),)


def test_no_or_empty_selector_means_no_endpoints() -> None:
    assert service_endpoints(svc(selector={}), [pod("a", "10.0.0.2")]) == {}
    assert service_endpoints(svc(selector=None), [pod("a", "10.0.0.2")]) == {}


def test_service_ports_carry_allocations_and_policies() -> None:
    service = svc(
        type="LoadBalancer",
        externalIPs=["192.0.2.1"],
        sessionAffinity="ClientIP",
        externalTrafficPolicy="Local",
        internalTrafficPolicy="Local",
    )
    ingress = [{"ip": "198.51.100.1"}, {"ip": "198.51.100.2", "ipMode": "Proxy"}]
    raw_status = {"loadBalancer": {"ingress": ingress}}
    doc = dict(service.raw, status=raw_status)
    service = parse_service(doc, source="s.yaml")
    [(key, info)] = service_ports(service, Allocation("10.96.0.9", {"http/TCP": 30001})).items()
    assert key == KEY
    assert (info.cluster_ip, info.port, info.protocol, info.node_port) == (
        "10.96.0.9",
        80,
        Protocol.TCP,
        30001,
    )
    assert info.external_ips == ("192.0.2.1",)
    assert info.load_balancer_ips == ("198.51.100.1",)  # ipMode Proxy: the balancer's business
    assert info.affinity_timeout_s == 10800
    assert info.external_policy_local and info.internal_policy_local
    assert service_ports(svc(clusterIP="None"), Allocation()) == {}


POD_DOC = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "a", "labels": {"app": "web"}},
    "spec": {
        "containers": [
            {"name": "c", "image": "busybox", "ports": [{"name": "http", "containerPort": 8080}]}
        ]
    },
}


def snapshot_entry(p: Pod, *, ready: bool, worker: str = "syncing") -> dict[str, Any]:
    return {
        "metadata": {
            "name": p.name,
            "namespace": p.namespace,
            "uid": p.uid,
            "labels": {"app": "web"},
        },
        "status": {
            "phase": "Running",
            "podIP": "10.0.0.2",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
        "worker": worker,
    }


def test_port_memory_builds_views_and_remembers_ports_of_terminating_pods() -> None:
    p = parse_pod(POD_DOC, source="p.yaml", node_name="n")
    memory = PortMemory()
    [view] = memory.views([snapshot_entry(p, ready=True)], {p.key: p})
    assert (view.ip, view.ready, view.terminating, view.ports) == ("10.0.0.2", True, False, HTTP)
    # The manifest is gone and the pod is terminating: its ports are still known.
    [view] = memory.views([snapshot_entry(p, ready=True, worker="terminating")], {})
    assert view.terminating and view.ports == HTTP
    memory.views([], {})  # gone from the kubelet too: forgotten
    [view] = memory.views([snapshot_entry(p, ready=False)], {})
    assert view.ports == () and not view.ready


def test_settled_means_every_pod_has_a_real_status() -> None:
    assert settled([])
    assert settled([{"status": {"conditions": []}}])
    assert not settled([{"status": {"phase": "Pending"}}, {"status": {"conditions": []}}])


def test_services_of_another_proxy_get_no_ports_and_no_endpoints() -> None:
    base = svc(type="LoadBalancer", loadBalancerSourceRanges=["192.0.2.0/24"])
    allocation = Allocation("10.96.0.9", {"http/TCP": 30080})
    [info] = service_ports(base, allocation).values()
    assert info.source_ranges == ("192.0.2.0/24",) and info.node_port == 30080
    for label in ("service.kubernetes.io/service-proxy-name", "service.kubernetes.io/headless"):
        other = Service(
            name=base.name, namespace=base.namespace, spec=base.spec, labels={label: "x"}
        )
        assert service_ports(other, allocation) == {}
        assert service_endpoints(other, [pod("a", "10.0.0.2")]) == {}
