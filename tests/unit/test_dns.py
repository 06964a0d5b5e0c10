"""A pod's DNS: dnsPolicy and dnsConfig over --cluster-dns, --cluster-domain and the node's
resolv.conf, down to the sandbox config; and the flags that set them."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from nodeagent.config import ConfigError, load_config
from nodeagent.kubelet import specs
from nodeagent.kubelet.dns import DNSSettings, parse_resolv_conf, sandbox_dns
from nodeagent.model.fields import ValidationError
from nodeagent.model.pod import Pod
from nodeagent.model.validate import parse_pod
from nodeagent.runtime.base import DNSConfig

NODE = DNSSettings(
    cluster_dns=("10.96.0.10",),
    cluster_domain="cluster.local",
    host_searches=("lab.example",),
    host_servers=("192.0.2.53",),
    host_options=("edns0",),
)


def pod(**spec: Any) -> Pod:
    doc = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "shop"},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}], **spec},
    }
    return parse_pod(doc, source="test", node_name="n1")


def test_cluster_first_uses_the_cluster_dns_and_search_path() -> None:
    assert sandbox_dns(pod(), NODE) == DNSConfig(
        servers=("10.96.0.10",),
        searches=("shop.svc.cluster.local", "svc.cluster.local", "cluster.local", "lab.example"),
        options=("ndots:5",),
    )


def test_host_network_pods_and_nodes_without_cluster_dns_get_the_node_file() -> None:
    assert sandbox_dns(pod(hostNetwork=True), NODE) is None
    assert sandbox_dns(pod(), DNSSettings()) is None
    assert sandbox_dns(pod(dnsPolicy="Default"), NODE) is None
    with_host = sandbox_dns(pod(hostNetwork=True, dnsPolicy="ClusterFirstWithHostNet"), NODE)
    assert with_host is not None and with_host.servers == ("10.96.0.10",)


def test_dns_config_merges_over_the_policy() -> None:
    config = {
        "nameservers": ["1.1.1.1", "10.96.0.10"],
        "searches": ["extra.example"],
        "options": [{"name": "ndots", "value": "2"}, {"name": "single-request"}],
    }
    merged = sandbox_dns(pod(dnsConfig=config), NODE)
    assert merged is not None
    assert merged.servers == ("10.96.0.10", "1.1.1.1")
    assert merged.searches[-1] == "extra.example"
    assert merged.options == ("ndots:2", "single-request")
    only = sandbox_dns(pod(dnsPolicy="None", dnsConfig={"nameservers": ["9.9.9.9"]}), NODE)
    assert only == DNSConfig(servers=("9.9.9.9",))
    default = sandbox_dns(pod(dnsPolicy="Default", dnsConfig={"searches": ["x.example"]}), NODE)
    assert default == DNSConfig(("192.0.2.53",), ("lab.example", "x.example"), ("edns0",))


def test_policy_none_needs_a_nameserver() -> None:
    with pytest.raises(ValidationError, match="dnsConfig"):
        pod(dnsPolicy="None")
    with pytest.raises(ValidationError, match="nameserver"):
        pod(dnsPolicy="None", dnsConfig={"searches": ["a"]})
    with pytest.raises(ValidationError, match="dnsPolicy"):
        pod(dnsPolicy="Sometimes")


def test_the_sandbox_carries_the_dns_config() -> None:
    config = specs.sandbox_config(pod(), attempt=0, pod_log_dir="/logs", dns=NODE)
    assert config.dns is not None and config.dns.servers == ("10.96.0.10",)
    assert specs.sandbox_config(pod(), attempt=0, pod_log_dir="/logs").dns is None


def test_resolv_conf_parsing() -> None:
    text = "# generated\nnameserver 192.0.2.1\nnameserver 192.0.2.2 # second\n"
    text += "domain old.example\nsearch a.example b.example\noptions ndots:2 edns0\n"
    assert parse_resolv_conf(text) == (
        ("192.0.2.1", "192.0.2.2"),
        ("a.example", "b.example"),
        ("ndots:2", "edns0"),
    )


def test_cluster_dns_flags() -> None:
    args = argparse.Namespace(
        node_name="n1", cluster_dns="10.96.0.10, 10.96.0.11", cluster_domain="Corp.Local."
    )
    config = load_config(args)
    assert config.cluster_dns == ("10.96.0.10", "10.96.0.11")
    assert config.cluster_domain == "corp.local"
    with pytest.raises(ConfigError, match="cluster_dns"):
        load_config(argparse.Namespace(node_name="n1", cluster_dns="10.96.0.x"))
