"""The nftables mode: golden objects of one service port (``nftrules``), the shared chains,
full and partial scripts (``nftscript``) replayed on a small model of the kernel's checks,
the syncer against a recording writer (``nftsync``), and the iptables clean-up input."""

from __future__ import annotations

import random
import re
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import pytest

from nodeagent.model.service import Protocol
from nodeagent.proxy.iptables import runner as iptables
from nodeagent.proxy.nftables import rules as nftrules
from nodeagent.proxy.nftables import script as nftscript
from nodeagent.proxy.nftables.rules import Element, PortObjects, port_objects, shared_script
from nodeagent.proxy.nftables.runner import NftablesError
from nodeagent.proxy.nftables.sync import NftSyncer
from nodeagent.proxy.ruleconfig import RulesConfig
from nodeagent.proxy.state import Endpoint, ServicePortInfo, ServicePortName

CONFIG = RulesConfig(cluster_cidr="10.244.0.0/16")
PLAIN = RulesConfig()
WEB = ServicePortName("ns1", "svc1", "p80", "TCP")
EP1, EP2 = Endpoint("10.180.0.1", 80), Endpoint("10.180.0.2", 80)
REMOTE = Endpoint("10.180.1.3", 80, local=False)
TABLE = "ip nodeagent"


def golden(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def web(**kw: object) -> ServicePortInfo:
    return ServicePortInfo(WEB, "172.30.0.41", 80, Protocol.TCP, **kw)  # type: ignore[arg-type]


def dump(port: PortObjects) -> str:
    """One port's objects, in their order: chains and rules, sets, elements, hairpin IPs."""
    lines: list[str] = []
    for chain, body in port.chains:
        lines.append(f"{chain}:")
        lines += [f"    {rule}" for rule in body]
    lines += [f"set {name} {timeout}s" for name, timeout in port.sets]
    lines += [f"{e.map} {e.key} : {e.verdict}" for e in port.elements]
    if port.hairpin:
        lines.append("hairpin " + " ".join(port.hairpin))
    return "\n".join(lines) + "\n"


# --- Names ---------------------------------------------------------------------------------


def test_names_carry_kube_proxys_hash_and_a_readable_suffix() -> None:
    # The first 8 characters of kube-proxy's XPGD46QRK7WJZT7O / SXIVWICOYRO3J4NJ.
    assert nftrules.port_chain("svc", WEB) == "svc-XPGD46QR-ns1/svc1/tcp/p80"
    assert nftrules.port_chain("ext", WEB) == "ext-XPGD46QR-ns1/svc1/tcp/p80"
    assert nftrules.endpoint_chain(WEB, EP1) == "sep-SXIVWICO-ns1/svc1/tcp/p80"
    unnamed = ServicePortName("ns2", "dns", "", "UDP")
    assert nftrules.port_chain("svc", unnamed).endswith("-ns2/dns/udp/")
    odd = ServicePortName("n s", "a{b}", "p;1", "TCP")  # never valid names, never broken syntax
    assert nftrules.port_chain("svc", odd).endswith("-n_s/a_b_/tcp/p_1")
    # A set's timeout cannot change in place: another timeout, another set.
    assert nftrules.affinity_set(WEB, EP1, 600) != nftrules.affinity_set(WEB, EP1, 60)


# --- One service port ----------------------------------------------------------------------


def test_cluster_ip_with_two_endpoints_picks_one_from_a_numgen_map() -> None:
    not_ready = Endpoint("10.180.0.3", 80, ready=False, serving=False)
    p = port_objects(web(), (EP1, EP2, not_ready), CONFIG)
    assert dump(p) == golden(
        """
        svc-XPGD46QR-ns1/svc1/tcp/p80:
            ip daddr 172.30.0.41 ip saddr != 10.244.0.0/16 meta mark set meta mark | 0x4000
            meta l4proto tcp dnat ip addr . port to numgen random mod 2 map { 0 : 10.180.0.1 . 80, 1 : 10.180.0.2 . 80 }
        service-ips 172.30.0.41 . tcp . 80 : goto svc-XPGD46QR-ns1/svc1/tcp/p80
        hairpin 10.180.0.1 10.180.0.2
        """  # noqa: E501
    )
    assert p.chain_names == ("svc-XPGD46QR-ns1/svc1/tcp/p80",)
    assert p.rule_count == 3  # two rules, one element


def test_cluster_ip_with_one_endpoint_is_a_plain_dnat() -> None:
    assert dump(port_objects(web(), (EP1,), CONFIG)) == golden(
        """
        svc-XPGD46QR-ns1/svc1/tcp/p80:
            ip daddr 172.30.0.41 ip saddr != 10.244.0.0/16 meta mark set meta mark | 0x4000
            meta l4proto tcp dnat to 10.180.0.1:80
        service-ips 172.30.0.41 . tcp . 80 : goto svc-XPGD46QR-ns1/svc1/tcp/p80
        hairpin 10.180.0.1
        """
    )


def test_no_endpoints_rejects_and_owns_no_chain() -> None:
    assert dump(port_objects(web(), (), CONFIG)) == golden(
        """
        no-endpoint-services 172.30.0.41 . tcp . 80 : goto reject-chain
        """
    )
    external = web(
        node_port=30080, external_ips=("192.0.2.1",), load_balancer_ips=("198.51.100.1",)
    )
    not_serving = Endpoint("10.180.0.3", 80, ready=False, serving=False, terminating=True)
    assert dump(port_objects(external, (not_serving,), CONFIG)) == golden(
        """
        no-endpoint-services 172.30.0.41 . tcp . 80 : goto reject-chain
        no-endpoint-services 192.0.2.1 . tcp . 80 : goto reject-chain
        no-endpoint-services 198.51.100.1 . tcp . 80 : goto reject-chain
        no-endpoint-nodeports tcp . 30080 : goto reject-chain
        """
    )


def test_nodeport_external_and_load_balancer_ips_go_through_the_ext_chain() -> None:
    info = web(node_port=30080, external_ips=("192.0.2.1",), load_balancer_ips=("198.51.100.1",))
    assert dump(port_objects(info, (EP1,), CONFIG)) == golden(
        """
        ext-XPGD46QR-ns1/svc1/tcp/p80:
            meta mark set meta mark | 0x4000
            goto svc-XPGD46QR-ns1/svc1/tcp/p80
        svc-XPGD46QR-ns1/svc1/tcp/p80:
            ip daddr 172.30.0.41 ip saddr != 10.244.0.0/16 meta mark set meta mark | 0x4000
            meta l4proto tcp dnat to 10.180.0.1:80
        service-ips 172.30.0.41 . tcp . 80 : goto svc-XPGD46QR-ns1/svc1/tcp/p80
        service-ips 192.0.2.1 . tcp . 80 : goto ext-XPGD46QR-ns1/svc1/tcp/p80
        service-ips 198.51.100.1 . tcp . 80 : goto ext-XPGD46QR-ns1/svc1/tcp/p80
        service-nodeports tcp . 30080 : goto ext-XPGD46QR-ns1/svc1/tcp/p80
        hairpin 10.180.0.1
        """
    )


def test_external_policy_local_with_local_endpoints() -> None:
    info = web(node_port=30080, external_ips=("192.0.2.1",), external_policy_local=True)
    assert dump(port_objects(info, (EP1, REMOTE), CONFIG)) == golden(
        """
        ext-XPGD46QR-ns1/svc1/tcp/p80:
            ip saddr 10.244.0.0/16 goto svc-XPGD46QR-ns1/svc1/tcp/p80
            fib saddr type local meta mark set meta mark | 0x4000
            fib saddr type local goto svc-XPGD46QR-ns1/svc1/tcp/p80
            goto svl-XPGD46QR-ns1/svc1/tcp/p80
        svc-XPGD46QR-ns1/svc1/tcp/p80:
            ip daddr 172.30.0.41 ip saddr != 10.244.0.0/16 meta mark set meta mark | 0x4000
            meta l4proto tcp dnat ip addr . port to numgen random mod 2 map { 0 : 10.180.0.1 . 80, 1 : 10.180.1.3 . 80 }
        svl-XPGD46QR-ns1/svc1/tcp/p80:
            meta l4proto tcp dnat to 10.180.0.1:80
        service-ips 172.30.0.41 . tcp . 80 : goto svc-XPGD46QR-ns1/svc1/tcp/p80
        service-ips 192.0.2.1 . tcp . 80 : goto ext-XPGD46QR-ns1/svc1/tcp/p80
        service-nodeports tcp . 30080 : goto ext-XPGD46QR-ns1/svc1/tcp/p80
        hairpin 10.180.0.1 10.180.1.3
        """  # noqa: E501
    )


def test_external_policy_local_without_local_endpoints_drops_external_traffic() -> None:
    info = web(node_port=30080, external_ips=("192.0.2.1",), external_policy_local=True)
    # Pods and the node itself still reach the remote endpoints; the rest is dropped.
    assert dump(port_objects(info, (REMOTE,), CONFIG)) == golden(
        """
        ext-XPGD46QR-ns1/svc1/tcp/p80:
            ip saddr 10.244.0.0/16 goto svc-XPGD46QR-ns1/svc1/tcp/p80
            fib saddr type local meta mark set meta mark | 0x4000
            fib saddr type local goto svc-XPGD46QR-ns1/svc1/tcp/p80
        svc-XPGD46QR-ns1/svc1/tcp/p80:
            ip daddr 172.30.0.41 ip saddr != 10.244.0.0/16 meta mark set meta mark | 0x4000
            meta l4proto tcp dnat to 10.180.1.3:80
        service-ips 172.30.0.41 . tcp . 80 : goto svc-XPGD46QR-ns1/svc1/tcp/p80
        service-ips 192.0.2.1 . tcp . 80 : goto ext-XPGD46QR-ns1/svc1/tcp/p80
        no-endpoint-services 192.0.2.1 . tcp . 80 : drop
        service-nodeports tcp . 30080 : goto ext-XPGD46QR-ns1/svc1/tcp/p80
        no-endpoint-nodeports tcp . 30080 : drop
        hairpin 10.180.1.3
        """
    )


def test_internal_policy_local() -> None:
    info = web(internal_policy_local=True)
    assert dump(port_objects(info, (EP1, REMOTE), CONFIG)) == golden(
        """
        svl-XPGD46QR-ns1/svc1/tcp/p80:
            ip daddr 172.30.0.41 ip saddr != 10.244.0.0/16 meta mark set meta mark | 0x4000
            meta l4proto tcp dnat to 10.180.0.1:80
        service-ips 172.30.0.41 . tcp . 80 : goto svl-XPGD46QR-ns1/svc1/tcp/p80
        hairpin 10.180.0.1
        """
    )
    # Endpoints elsewhere only: dropped, not rejected (the service has endpoints).
    assert dump(port_objects(info, (REMOTE,), CONFIG)) == golden(
        """
        no-endpoint-services 172.30.0.41 . tcp . 80 : drop
        """
    )


def test_client_ip_affinity_uses_a_set_and_a_chain_per_endpoint() -> None:
    p = port_objects(web(affinity_timeout_s=600), (EP1, EP2), CONFIG)
    assert dump(p) == golden(
        """
        svc-XPGD46QR-ns1/svc1/tcp/p80:
            ip daddr 172.30.0.41 ip saddr != 10.244.0.0/16 meta mark set meta mark | 0x4000
            ip saddr @aff-35H2VMUI-ns1/svc1/tcp/p80 goto sep-SXIVWICO-ns1/svc1/tcp/p80
            ip saddr @aff-HZ4ZBFIV-ns1/svc1/tcp/p80 goto sep-LXVODXWD-ns1/svc1/tcp/p80
            numgen random mod 2 vmap { 0 : goto sep-SXIVWICO-ns1/svc1/tcp/p80, 1 : goto sep-LXVODXWD-ns1/svc1/tcp/p80 }
        sep-SXIVWICO-ns1/svc1/tcp/p80:
            update @aff-35H2VMUI-ns1/svc1/tcp/p80 { ip saddr }
            meta l4proto tcp dnat to 10.180.0.1:80
        sep-LXVODXWD-ns1/svc1/tcp/p80:
            update @aff-HZ4ZBFIV-ns1/svc1/tcp/p80 { ip saddr }
            meta l4proto tcp dnat to 10.180.0.2:80
        set aff-35H2VMUI-ns1/svc1/tcp/p80 600s
        set aff-HZ4ZBFIV-ns1/svc1/tcp/p80 600s
        service-ips 172.30.0.41 . tcp . 80 : goto svc-XPGD46QR-ns1/svc1/tcp/p80
        hairpin 10.180.0.1 10.180.0.2
        """  # noqa: E501
    )
    one = port_objects(web(affinity_timeout_s=600), (EP1,), PLAIN)
    assert dict(one.chains)["svc-XPGD46QR-ns1/svc1/tcp/p80"] == (
        "ip saddr @aff-35H2VMUI-ns1/svc1/tcp/p80 goto sep-SXIVWICO-ns1/svc1/tcp/p80",
        "goto sep-SXIVWICO-ns1/svc1/tcp/p80",
    )


def test_affinity_with_both_policies_shares_endpoint_chains_and_sets() -> None:
    info = web(node_port=30080, external_policy_local=True, affinity_timeout_s=60)
    p = port_objects(info, (EP1, REMOTE), PLAIN)
    names = p.chain_names
    assert len(names) == len(set(names))
    assert [n[:4] for n in names] == ["ext-", "svc-", "sep-", "sep-", "svl-"]
    assert len(p.sets) == 2 and len({s for s, _ in p.sets}) == 2


def test_udp_and_sctp_protocol_words() -> None:
    dns = ServicePortName("ns2", "dns", "", "UDP")
    info = ServicePortInfo(dns, "172.30.0.42", 53, Protocol.UDP, node_port=30053)
    assert dump(port_objects(info, (Endpoint("10.180.0.9", 5353),), PLAIN)) == golden(
        """
        ext-YY7YSG7M-ns2/dns/udp/:
            meta mark set meta mark | 0x4000
            goto svc-YY7YSG7M-ns2/dns/udp/
        svc-YY7YSG7M-ns2/dns/udp/:
            meta l4proto udp dnat to 10.180.0.9:5353
        service-ips 172.30.0.42 . udp . 53 : goto svc-YY7YSG7M-ns2/dns/udp/
        service-nodeports udp . 30053 : goto ext-YY7YSG7M-ns2/dns/udp/
        hairpin 10.180.0.9
        """
    )
    sctp = ServicePortName("ns2", "s", "", "SCTP")
    info = ServicePortInfo(sctp, "172.30.0.43", 9, Protocol.SCTP)
    eps = (Endpoint("10.180.0.9", 9), Endpoint("10.180.0.10", 9))
    assert dump(port_objects(info, eps, PLAIN)) == golden(
        """
        svc-ICYRHMUB-ns2/s/sctp/:
            meta l4proto sctp dnat ip addr . port to numgen random mod 2 map { 0 : 10.180.0.9 . 9, 1 : 10.180.0.10 . 9 }
        service-ips 172.30.0.43 . sctp . 9 : goto svc-ICYRHMUB-ns2/s/sctp/
        hairpin 10.180.0.10 10.180.0.9
        """  # noqa: E501
    )


def test_off_cluster_masquerade_only_with_a_cluster_cidr() -> None:
    assert dump(port_objects(web(), (EP1,), PLAIN)) == golden(
        """
        svc-XPGD46QR-ns1/svc1/tcp/p80:
            meta l4proto tcp dnat to 10.180.0.1:80
        service-ips 172.30.0.41 . tcp . 80 : goto svc-XPGD46QR-ns1/svc1/tcp/p80
        hairpin 10.180.0.1
        """
    )
    local = web(node_port=30080, external_policy_local=True)
    ext = dict(port_objects(local, (EP1,), PLAIN).chains)["ext-XPGD46QR-ns1/svc1/tcp/p80"]
    assert ext == (
        "fib saddr type local meta mark set meta mark | 0x4000",
        "fib saddr type local goto svc-XPGD46QR-ns1/svc1/tcp/p80",
        "goto svl-XPGD46QR-ns1/svc1/tcp/p80",
    )
    # With a Local external policy only, the mark goes in the cluster chain, not in svl.
    chains = dict(port_objects(local, (EP1,), CONFIG).chains)
    assert chains["svc-XPGD46QR-ns1/svc1/tcp/p80"][0].startswith("ip daddr 172.30.0.41 ")
    assert chains["svl-XPGD46QR-ns1/svc1/tcp/p80"] == ("meta l4proto tcp dnat to 10.180.0.1:80",)


def test_serving_terminating_endpoints_are_the_fallback() -> None:
    term = Endpoint("10.180.0.7", 80, ready=False, serving=True, terminating=True)
    gone = Endpoint("10.180.0.8", 80, ready=False, serving=False, terminating=True)
    assert dump(port_objects(web(), (term, gone), PLAIN)) == golden(
        """
        svc-XPGD46QR-ns1/svc1/tcp/p80:
            meta l4proto tcp dnat to 10.180.0.7:80
        service-ips 172.30.0.41 . tcp . 80 : goto svc-XPGD46QR-ns1/svc1/tcp/p80
        hairpin 10.180.0.7
        """
    )
    with_ready = port_objects(web(), (EP1, term, gone), PLAIN)
    assert dict(with_ready.chains)["svc-XPGD46QR-ns1/svc1/tcp/p80"] == (
        "meta l4proto tcp dnat to 10.180.0.1:80",
    )
    assert with_ready.hairpin == ("10.180.0.1",)


def test_source_ranges_are_checked_before_dnat_with_or_without_endpoints() -> None:
    info = web(
        node_port=30080,
        load_balancer_ips=("198.51.100.7",),
        source_ranges=("203.0.113.0/25", "192.0.2.9/32"),
    )
    assert dump(port_objects(info, (EP1,), PLAIN)) == golden(
        """
        firewall-XPGD46QR-ns1/svc1/tcp/p80:
            ip saddr != { 203.0.113.0/25, 192.0.2.9/32 } drop
        ext-XPGD46QR-ns1/svc1/tcp/p80:
            meta mark set meta mark | 0x4000
            goto svc-XPGD46QR-ns1/svc1/tcp/p80
        svc-XPGD46QR-ns1/svc1/tcp/p80:
            meta l4proto tcp dnat to 10.180.0.1:80
        service-ips 172.30.0.41 . tcp . 80 : goto svc-XPGD46QR-ns1/svc1/tcp/p80
        firewall-ips 198.51.100.7 . tcp . 80 : goto firewall-XPGD46QR-ns1/svc1/tcp/p80
        service-ips 198.51.100.7 . tcp . 80 : goto ext-XPGD46QR-ns1/svc1/tcp/p80
        service-nodeports tcp . 30080 : goto ext-XPGD46QR-ns1/svc1/tcp/p80
        hairpin 10.180.0.1
        """
    )
    none = port_objects(replace(info, node_port=0), (), PLAIN)
    assert [e.map for e in none.elements] == [
        "no-endpoint-services",
        "firewall-ips",
        "no-endpoint-services",
    ]
    assert port_objects(web(source_ranges=("10.0.0.0/8",)), (EP1,), PLAIN).chain_names == (
        "svc-XPGD46QR-ns1/svc1/tcp/p80",
    )


def test_hairpin_ips_are_every_reachable_endpoint_once() -> None:
    info = web(node_port=30080, external_policy_local=True)
    other_port = Endpoint("10.180.0.1", 81)
    p = port_objects(info, (REMOTE, EP2, EP1, other_port), PLAIN)
    assert p.hairpin == ("10.180.0.1", "10.180.0.2", "10.180.1.3")


# --- The shared objects --------------------------------------------------------------------

SHARED_HEAD = """\
add table ip nodeagent
add set ip nodeagent canary { type ipv4_addr ; }
add map ip nodeagent service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }
add map ip nodeagent service-nodeports { type inet_proto . inet_service : verdict ; }
add map ip nodeagent no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; }
add map ip nodeagent no-endpoint-nodeports { type inet_proto . inet_service : verdict ; }
add map ip nodeagent firewall-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }
add set ip nodeagent hairpin { type ipv4_addr . ipv4_addr ; }
add chain ip nodeagent filter-prerouting-pre-dnat { type filter hook prerouting priority -110 ; policy accept ; }
add chain ip nodeagent filter-output-pre-dnat { type filter hook output priority -110 ; policy accept ; }
add chain ip nodeagent nat-prerouting { type nat hook prerouting priority dstnat ; policy accept ; }
add chain ip nodeagent nat-output { type nat hook output priority -100 ; policy accept ; }
add chain ip nodeagent nat-postrouting { type nat hook postrouting priority 99 ; policy accept ; }
add chain ip nodeagent filter-input { type filter hook input priority -10 ; policy accept ; }
add chain ip nodeagent filter-forward { type filter hook forward priority -10 ; policy accept ; }
add chain ip nodeagent filter-output { type filter hook output priority -10 ; policy accept ; }
add chain ip nodeagent services
add chain ip nodeagent reject-chain
add chain ip nodeagent service-endpoints-check
add chain ip nodeagent nodeport-endpoints-check
add chain ip nodeagent firewall
add chain ip nodeagent firewall-check
add chain ip nodeagent masquerading
"""  # noqa: E501


def test_shared_script_with_localhost_nodeports() -> None:
    text = "\n".join(shared_script(CONFIG)) + "\n"
    assert text == SHARED_HEAD + golden(
        """
        add rule ip nodeagent nat-prerouting jump services
        add rule ip nodeagent nat-output jump services
        add rule ip nodeagent nat-postrouting jump masquerading
        add rule ip nodeagent services ip daddr . meta l4proto . th dport vmap @service-ips
        add rule ip nodeagent services fib daddr type local meta l4proto . th dport vmap @service-nodeports
        add rule ip nodeagent reject-chain reject
        add rule ip nodeagent service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services
        add rule ip nodeagent nodeport-endpoints-check fib daddr type local meta l4proto . th dport vmap @no-endpoint-nodeports
        add rule ip nodeagent masquerading ct status dnat ip saddr . ip daddr @hairpin meta mark set meta mark | 0x4000
        add rule ip nodeagent filter-prerouting-pre-dnat ct state new jump firewall-check
        add rule ip nodeagent filter-output-pre-dnat ct state new jump firewall-check
        add rule ip nodeagent firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips
        add rule ip nodeagent filter-input ct state new jump service-endpoints-check
        add rule ip nodeagent filter-input ct state new jump nodeport-endpoints-check
        add rule ip nodeagent filter-forward ct state new jump service-endpoints-check
        add rule ip nodeagent filter-forward ct state new jump nodeport-endpoints-check
        add rule ip nodeagent filter-output ct state new jump service-endpoints-check
        add rule ip nodeagent filter-output ct state new jump nodeport-endpoints-check
        add rule ip nodeagent filter-input jump firewall
        add rule ip nodeagent filter-output jump firewall
        add rule ip nodeagent firewall ip daddr 127.0.0.0/8 ip saddr != 127.0.0.0/8 ct state != { established, related } ct status ! dnat drop
        add rule ip nodeagent masquerading meta mark & 0x4000 == 0 return
        add rule ip nodeagent masquerading meta mark set meta mark ^ 0x4000
        add rule ip nodeagent masquerading masquerade fully-random
        """  # noqa: E501
    )
    assert nftrules.shared_rule_count(CONFIG) == 24


def test_shared_script_without_localhost_nodeports() -> None:
    lines = shared_script(RulesConfig(localhost_nodeports=False))
    rules = [line for line in lines if line.startswith("add rule")]
    assert not [line for line in rules if line.endswith("jump firewall") or " firewall ip" in line]
    nodeports = [line for line in lines if "fib daddr type local" in line]
    assert nodeports == [
        "add rule ip nodeagent services fib daddr type local ip daddr != 127.0.0.0/8 "
        "meta l4proto . th dport vmap @service-nodeports",
        "add rule ip nodeagent nodeport-endpoints-check fib daddr type local "
        "ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports",
    ]
    assert nftrules.shared_rule_count(RulesConfig(localhost_nodeports=False)) == 21


def test_nodeport_addresses_replace_the_local_address_check() -> None:
    lines = shared_script(RulesConfig(nodeport_ips=("192.168.77.1",)))
    assert [line for line in lines if "vmap @service-nodeports" in line] == [
        "add rule ip nodeagent services ip daddr { 192.168.77.1 } "
        "meta l4proto . th dport vmap @service-nodeports"
    ]
    assert not [line for line in lines if "fib daddr type local" in line]


def test_pod_egress_keeps_pod_sources_before_masquerading() -> None:
    config = RulesConfig(cluster_cidr="10.244.0.0/16", pod_egress_masquerade=True)
    lines = shared_script(config)
    assert f"add chain {TABLE} pod-egress" in lines
    # The chain is declared before any rule (the rules jump to it).
    assert lines.index(f"add chain {TABLE} pod-egress") < min(
        i for i, line in enumerate(lines) if line.startswith("add rule")
    )
    ordered = [
        line.split(" ", 4)[4]
        for line in lines
        if line.startswith((f"add rule {TABLE} masquerading ", f"add rule {TABLE} pod-egress "))
    ]
    assert ordered == [
        "masquerading ct status dnat ip saddr . ip daddr @hairpin meta mark set meta mark | 0x4000",
        "masquerading meta mark & 0x4000 == 0 jump pod-egress",
        "pod-egress ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 snat ip to ip saddr",
        "pod-egress ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 counter masquerade fully-random",
        "masquerading meta mark & 0x4000 == 0 return",
        "masquerading meta mark set meta mark ^ 0x4000",
        "masquerading masquerade fully-random",
    ]
    # Without a cluster CIDR there is no pod network to tell apart: nothing of it.
    plain = shared_script(RulesConfig(pod_egress_masquerade=True))
    assert not any("pod-egress" in line for line in plain)


# --- A model of the kernel's checks --------------------------------------------------------

_REF = re.compile(r"\b(?:goto|jump) ([^\s,}]+)")
_SET_REF = re.compile(r"@([^\s,}]+)")
_OBJECT = re.compile(r"^(add|delete|flush) (table|chain|set|map|rule|element) ip nodeagent ?(.*)$")


class KernelError(Exception):
    pass


@dataclass
class Kernel:
    """What the kernel would say to a script, for the checks that matter to ordering: every
    chain and set named must exist, a chain is deleted only empty and unreferenced, a set
    only unreferenced, an element is deleted only if present and never re-added with
    another verdict. A failed script changes nothing (one transaction)."""

    table: bool = False
    chains: dict[str, list[str]] = field(default_factory=dict)
    sets: set[str] = field(default_factory=set)
    elements: dict[tuple[str, str], str] = field(default_factory=dict)

    def snapshot(self) -> tuple[dict[str, list[str]], set[str], dict[tuple[str, str], str]]:
        return {c: list(r) for c, r in self.chains.items()}, set(self.sets), dict(self.elements)

    def apply(self, script: str) -> None:
        saved = (self.table, *self.snapshot())
        try:
            for n, line in enumerate(script.splitlines(), 1):
                self._line(line, n)
        except KernelError:
            self.table, self.chains, self.sets, self.elements = saved
            raise

    def _line(self, line: str, n: int) -> None:
        m = _OBJECT.match(line)
        if m is None:
            raise KernelError(f"line {n}: cannot parse {line!r}")
        verb, kind, rest = m.groups()
        if kind == "table":
            if verb == "delete":
                self.chains, self.sets, self.elements = {}, set(), {}
            elif verb == "flush":  # every rule of every chain; chains, sets, elements stay
                self.chains = {c: [] for c in self.chains}
            self.table = True
            return
        if not self.table:
            raise KernelError(f"line {n}: no table")
        name, _, body = rest.partition(" ")
        if kind in ("set", "map"):
            if verb == "add":
                self.sets.add(name)
            elif verb == "flush":
                if name not in self.sets:
                    raise KernelError(f"line {n}: no set {name}")
                self.elements = {k: v for k, v in self.elements.items() if k[0] != name}
            elif name not in self.sets or any(f"@{name}" in r for r in self._rules()):
                raise KernelError(f"line {n}: cannot delete set {name}")
            else:
                self.sets.remove(name)
        elif kind == "chain":
            self._chain(verb, name, n)
        elif kind == "rule":
            if name not in self.chains:
                raise KernelError(f"line {n}: no chain {name}")
            self._check_refs(body, n)
            self.chains[name].append(body)
        else:
            self._element(verb, name, body.strip("{} "), n)

    def _rules(self) -> list[str]:
        return [r for body in self.chains.values() for r in body]

    def _check_refs(self, text: str, n: int) -> None:
        for chain in _REF.findall(text):
            if chain not in self.chains:
                raise KernelError(f"line {n}: no chain {chain}")
        for name in _SET_REF.findall(text):
            if name not in self.sets:
                raise KernelError(f"line {n}: no set {name}")

    def _chain(self, verb: str, name: str, n: int) -> None:
        if verb == "add":
            self.chains.setdefault(name, [])
            return
        if name not in self.chains:
            raise KernelError(f"line {n}: no chain {name}")
        if verb == "flush":
            self.chains[name] = []
            return
        users = [r for r in self._rules() if name in _REF.findall(r)]
        users += [v for v in self.elements.values() if name in _REF.findall(v)]
        if self.chains[name] or users:
            raise KernelError(f"line {n}: chain {name} busy")
        del self.chains[name]

    def _element(self, verb: str, name: str, items: str, n: int) -> None:
        if name not in self.sets:
            raise KernelError(f"line {n}: no set {name}")
        for item in items.split(", "):
            key, _, verdict = item.partition(" : ")
            present = (name, key) in self.elements
            if verb == "delete":
                if not present:
                    raise KernelError(f"line {n}: no element {key} in {name}")
                del self.elements[name, key]
            elif present and self.elements[name, key] != verdict:
                raise KernelError(f"line {n}: element {key} exists in {name}")
            else:
                self._check_refs(verdict, n)
                self.elements[name, key] = verdict


def kernel_after(script: str) -> Kernel:
    kernel = Kernel()
    kernel.apply(script)
    return kernel


def test_the_kernel_model_refuses_what_the_kernel_refuses() -> None:
    head = "add table ip nodeagent\nadd map ip nodeagent m { x }\nadd chain ip nodeagent a\n"
    k = kernel_after(head + "add element ip nodeagent m { k : goto a }\n")
    for bad in (
        "add rule ip nodeagent a goto b\n",
        "add rule ip nodeagent b accept\n",
        "delete chain ip nodeagent a\n",  # an element points at it
        "add element ip nodeagent m { k : drop }\n",
        "delete element ip nodeagent m { j }\n",
        "add rule ip nodeagent a ip saddr @nope drop\n",
    ):
        with pytest.raises(KernelError):
            k.apply("add chain ip nodeagent c\n" + bad)
        assert "c" not in k.chains  # all or nothing
    k.apply("delete element ip nodeagent m { k }\ndelete chain ip nodeagent a\n")
    assert k.chains == {} and k.elements == {}


# --- Full and partial scripts --------------------------------------------------------------

A = ServicePortName("ns", "a", "", "TCP")
B = ServicePortName("ns", "b", "", "TCP")
E1, E2, E3 = Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 80), Endpoint("10.0.0.3", 80)
SVC_A, SVC_B = "svc-VO6GEZA4-ns/a/tcp/", "svc-AR4RMBIB-ns/b/tcp/"
EXT_A, EXT_B = "ext-VO6GEZA4-ns/a/tcp/", "ext-AR4RMBIB-ns/b/tcp/"


def info(name: ServicePortName, cluster_ip: str, **kw: object) -> ServicePortInfo:
    return ServicePortInfo(name, cluster_ip, 80, Protocol.TCP, **kw)  # type: ignore[arg-type]


def objects(
    world: Mapping[ServicePortName, tuple[ServicePortInfo, tuple[Endpoint, ...]]],
    config: RulesConfig = PLAIN,
) -> dict[ServicePortName, PortObjects]:
    return {name: port_objects(i, eps, config) for name, (i, eps) in world.items()}


def test_full_replaces_the_table_and_declares_before_use() -> None:
    ports = objects({A: (info(A, "10.96.0.1"), (E1, E2)), B: (info(B, "10.96.0.2"), (E1,))})
    script = nftscript.full(ports, PLAIN)
    head = f"add table {TABLE}\ndelete table {TABLE}\n" + "\n".join(shared_script(PLAIN))
    assert script.text.startswith(head + "\n")
    assert script.text[len(head) + 1 :] == golden(
        """
        add chain ip nodeagent svc-VO6GEZA4-ns/a/tcp/
        add rule ip nodeagent svc-VO6GEZA4-ns/a/tcp/ meta l4proto tcp dnat ip addr . port to numgen random mod 2 map { 0 : 10.0.0.1 . 80, 1 : 10.0.0.2 . 80 }
        add chain ip nodeagent svc-AR4RMBIB-ns/b/tcp/
        add rule ip nodeagent svc-AR4RMBIB-ns/b/tcp/ meta l4proto tcp dnat to 10.0.0.1:80
        add element ip nodeagent service-ips { 10.96.0.1 . tcp . 80 : goto svc-VO6GEZA4-ns/a/tcp/, 10.96.0.2 . tcp . 80 : goto svc-AR4RMBIB-ns/b/tcp/ }
        add element ip nodeagent hairpin { 10.0.0.1 . 10.0.0.1, 10.0.0.2 . 10.0.0.2 }
        """  # noqa: E501
    )
    assert (script.rules_written, script.chains_deleted) == (4, 0)
    assert script.written.hairpin == {"10.0.0.1": 2, "10.0.0.2": 1}
    assert script.written.ports == ports


def test_full_of_every_kind_of_port_is_accepted_in_order() -> None:
    config = RulesConfig(cluster_cidr="10.244.0.0/16", pod_egress_masquerade=True)
    ports = objects(rich_world(), config)
    text = nftscript.full(ports, config).text
    kernel = kernel_after("add table ip nodeagent\nadd chain ip nodeagent leftover\n" + text)
    assert "leftover" not in kernel.chains  # whatever was there is gone
    lines = text.splitlines()
    first_element = next(i for i, line in enumerate(lines) if " element " in line)
    last_chain = max(i for i, line in enumerate(lines) if line.startswith("add chain "))
    assert last_chain < first_element
    assert set(kernel.chains) >= {c for p in ports.values() for c in p.chain_names}


KINDS: tuple[dict[str, object], ...] = (
    {},
    {"node_port": 30080},
    {"external_ips": ("192.0.2.1",), "load_balancer_ips": ("198.51.100.1",)},
    {"node_port": 30081, "external_policy_local": True},
    {"internal_policy_local": True},
    {"affinity_timeout_s": 600},
    {"affinity_timeout_s": 60},
    {"node_port": 30080, "external_policy_local": True, "affinity_timeout_s": 60},
)
ENDPOINTS = (
    E1,
    E2,
    E3,
    Endpoint("10.0.1.5", 80, local=False),
    Endpoint("10.0.0.4", 80, ready=False, serving=True, terminating=True),
)


def rich_world() -> dict[ServicePortName, tuple[ServicePortInfo, tuple[Endpoint, ...]]]:
    """Every kind of port with several endpoint sets (sharing NodePorts and external IPs)."""
    world = {}
    for i, kind in enumerate(KINDS):
        for j, eps in enumerate((ENDPOINTS[:4], ENDPOINTS[4:], (), ENDPOINTS[3:4])):
            name = ServicePortName(f"ns{i}", f"svc{j}", "", "TCP")
            world[name] = (info(name, f"10.96.{i}.{j + 1}", **kind), eps)
    return world


def test_one_endpoint_change_rewrites_only_that_chain() -> None:
    before = objects({A: (info(A, "10.96.0.1"), (E1, E2)), B: (info(B, "10.96.0.2"), (E1,))})
    full = nftscript.full(before, PLAIN)
    after = {**before, A: port_objects(info(A, "10.96.0.1"), (E1, E3), PLAIN)}
    script = nftscript.partial(after, {A}, full.written)
    assert script.text == golden(
        """
        flush chain ip nodeagent svc-VO6GEZA4-ns/a/tcp/
        add rule ip nodeagent svc-VO6GEZA4-ns/a/tcp/ meta l4proto tcp dnat ip addr . port to numgen random mod 2 map { 0 : 10.0.0.1 . 80, 1 : 10.0.0.3 . 80 }
        delete element ip nodeagent hairpin { 10.0.0.2 . 10.0.0.2 }
        add element ip nodeagent hairpin { 10.0.0.3 . 10.0.0.3 }
        """  # noqa: E501
    )
    assert (script.rules_written, script.chains_deleted) == (1, 0)
    assert script.written.hairpin == {"10.0.0.1": 2, "10.0.0.3": 1}
    assert script.written.elements is full.written.elements  # not even recomputed
    # The hairpin count of an IP two ports reach: one going leaves the element in place.
    fewer = {**before, A: port_objects(info(A, "10.96.0.1"), (E2,), PLAIN)}
    text = nftscript.partial(fewer, {A}, full.written).text
    assert "hairpin" not in text
    assert "dnat to 10.0.0.2:80" in text


def test_a_port_going_away_deletes_its_elements_before_its_chains() -> None:
    world = {
        A: (info(A, "10.96.0.1", node_port=30080), (E1, E2)),
        B: (info(B, "10.96.0.2"), (E1,)),
    }
    full = nftscript.full(objects(world), PLAIN)
    kernel = kernel_after(full.text)
    script = nftscript.partial(objects({B: world[B]}), {A}, full.written)
    assert script.text == golden(
        f"""
        delete element ip nodeagent service-ips {{ 10.96.0.1 . tcp . 80 }}
        delete element ip nodeagent service-nodeports {{ tcp . 30080 }}
        flush chain ip nodeagent {EXT_A}
        flush chain ip nodeagent {SVC_A}
        delete chain ip nodeagent {EXT_A}
        delete chain ip nodeagent {SVC_A}
        delete element ip nodeagent hairpin {{ 10.0.0.2 . 10.0.0.2 }}
        """
    )
    assert (script.rules_written, script.chains_deleted) == (0, 2)
    kernel.apply(script.text)
    assert (
        kernel.snapshot()
        == kernel_after(nftscript.full(objects({B: world[B]}), PLAIN).text).snapshot()
    )
    assert A not in script.written.ports


def test_a_verdict_change_deletes_then_adds_the_element() -> None:
    full = nftscript.full(objects({A: (info(A, "10.96.0.1"), (E1,))}), PLAIN)
    local = objects({A: (info(A, "10.96.0.1", internal_policy_local=True), (E1,))})
    script = nftscript.partial(local, {A}, full.written)
    svl = "svl-VO6GEZA4-ns/a/tcp/"
    assert script.text == golden(
        f"""
        delete element ip nodeagent service-ips {{ 10.96.0.1 . tcp . 80 }}
        flush chain ip nodeagent {SVC_A}
        delete chain ip nodeagent {SVC_A}
        add chain ip nodeagent {svl}
        add rule ip nodeagent {svl} meta l4proto tcp dnat to 10.0.0.1:80
        add element ip nodeagent service-ips {{ 10.96.0.1 . tcp . 80 : goto {svl} }}
        """
    )
    kernel = kernel_after(full.text)
    kernel.apply(script.text)
    # Losing its endpoints: the element moves to the no-endpoint map, the chain goes.
    empty = objects({A: (info(A, "10.96.0.1", internal_policy_local=True), ())})
    script = nftscript.partial(empty, {A}, script.written)
    assert script.text == golden(
        f"""
        delete element ip nodeagent service-ips {{ 10.96.0.1 . tcp . 80 }}
        flush chain ip nodeagent {svl}
        delete chain ip nodeagent {svl}
        add element ip nodeagent no-endpoint-services {{ 10.96.0.1 . tcp . 80 : goto reject-chain }}
        delete element ip nodeagent hairpin {{ 10.0.0.1 . 10.0.0.1 }}
        """
    )
    kernel.apply(script.text)


def test_unchanged_chain_bodies_are_not_rewritten() -> None:
    base = info(A, "10.96.0.1", node_port=30080)
    full = nftscript.full(objects({A: (base, (E1,))}), PLAIN)
    # Another endpoint: the svc chain changes, the ext chain (mark, goto svc) does not.
    script = nftscript.partial(objects({A: (base, (E1, E2))}), {A}, full.written)
    assert EXT_A not in script.text
    assert script.text.startswith(f"flush chain ip nodeagent {SVC_A}\n")
    # A not-ready endpoint changes nothing at all: an empty script.
    not_ready = Endpoint("10.0.0.9", 80, ready=False, serving=False)
    same = nftscript.partial(objects({A: (base, (E1, not_ready))}), {A}, full.written)
    assert same.text == "" and same.rules_written == 0


def test_affinity_timeout_change_swaps_the_sets() -> None:
    full = nftscript.full(
        objects({A: (info(A, "10.96.0.1", affinity_timeout_s=600), (E1,))}), PLAIN
    )
    kernel = kernel_after(full.text)
    world = objects({A: (info(A, "10.96.0.1", affinity_timeout_s=60), (E1,))})
    script = nftscript.partial(world, {A}, full.written)
    lines = script.text.splitlines()
    old = nftrules.affinity_set(A, E1, 600)
    new = nftrules.affinity_set(A, E1, 60)
    assert f"delete set {TABLE} {old}" in lines
    assert (
        f"add set {TABLE} {new} {{ type ipv4_addr ; flags dynamic,timeout ; timeout 60s ; }}"
        in lines
    )
    kernel.apply(script.text)
    assert kernel.snapshot() == kernel_after(nftscript.full(world, PLAIN).text).snapshot()


def test_two_ports_claiming_one_external_ip_the_first_owns_it() -> None:
    world = {
        A: (info(A, "10.96.0.1", external_ips=("192.0.2.1",), node_port=30080), (E1,)),
        B: (info(B, "10.96.0.2", external_ips=("192.0.2.1",), node_port=30080), (E2,)),
    }
    full = nftscript.full(objects(world), PLAIN)
    assert full.written.elements[("service-ips", "192.0.2.1 . tcp . 80")] == f"goto {EXT_A}"
    assert full.written.elements[("service-nodeports", "tcp . 30080")] == f"goto {EXT_A}"
    kernel = kernel_after(full.text)  # the duplicate claim does not fail the transaction
    # B changing its endpoints does not touch the elements A owns.
    moved = objects({**world, B: (world[B][0], (E3,))})
    assert "element ip nodeagent service-" not in nftscript.partial(moved, {B}, full.written).text
    # A going: its elements go and B's are added in their place.
    script = nftscript.partial(objects({B: world[B]}), {A}, full.written)
    assert script.text.splitlines()[-3:-1] == [
        "add element ip nodeagent service-ips { 192.0.2.1 . tcp . 80 : goto " + EXT_B + " }",
        "add element ip nodeagent service-nodeports { tcp . 30080 : goto " + EXT_B + " }",
    ]
    assert script.text.index("delete element ip nodeagent service-ips") < script.text.index(
        "add element ip nodeagent service-ips"
    )
    kernel.apply(script.text)
    assert kernel.elements[("service-ips", "192.0.2.1 . tcp . 80")] == f"goto {EXT_B}"
    assert (
        kernel.snapshot()
        == kernel_after(nftscript.full(objects({B: world[B]}), PLAIN).text).snapshot()
    )


@pytest.mark.parametrize("seed", range(4))
def test_partial_syncs_add_up_to_the_full_table(seed: int) -> None:
    """A random walk over ports changing kind and endpoints, coming and going: each partial
    script is accepted by the kernel model and leaves it as a full script of the same world
    would, with the same memory of elements and hairpin counts."""
    rng = random.Random(seed)
    names = [ServicePortName("ns", f"s{i}", "", "TCP") for i in range(6)]
    world: dict[ServicePortName, tuple[ServicePortInfo, tuple[Endpoint, ...]]] = {}
    start = nftscript.full({}, CONFIG)
    kernel, written = kernel_after(start.text), start.written
    for _ in range(150):
        changed: set[ServicePortName] = set()
        for _ in range(rng.randint(1, 3)):
            name = rng.choice(names)
            changed.add(name)
            if name in world and rng.random() < 0.2:
                del world[name]
                continue
            old = world.get(name)
            if old is None or rng.random() < 0.3:
                port = info(name, f"10.96.0.{names.index(name) + 1}", **rng.choice(KINDS))
            else:
                port = old[0]
            world[name] = (port, tuple(rng.sample(ENDPOINTS, rng.randint(0, 3))))
        ports = objects(world, CONFIG)
        script = nftscript.partial(ports, changed, written)
        kernel.apply(script.text)
        written = script.written
        expected = nftscript.full(ports, CONFIG)
        assert kernel.snapshot() == kernel_after(expected.text).snapshot()
        assert written.elements == expected.written.elements
        assert written.hairpin == expected.written.hairpin
        assert written.ports == ports


# --- The syncer ----------------------------------------------------------------------------


class Recorder:
    """A ScriptWriter keeping every script; ``fail`` makes the next apply fail."""

    backend_name = "fake-nft"

    def __init__(self) -> None:
        self.scripts: list[str] = []
        self.fail = False
        self.kernel = Kernel()

    async def apply(self, script: str) -> None:
        if self.fail:
            self.fail = False
            raise NftablesError("nft -f -: Error: Could not process rule: No such file")
        self.kernel.apply(script)
        self.scripts.append(script)

    async def canary_ok(self) -> bool:
        return True


WEB_INFO = info(A, "10.96.0.1", node_port=30080)


def nft_syncer(writer: Recorder, config: RulesConfig = PLAIN) -> NftSyncer:
    return NftSyncer(writer, config, conntrack=None, local_addresses=lambda: ())


async def test_first_sync_is_full_then_partial() -> None:
    writer = Recorder()
    s = nft_syncer(writer)
    s.services.replace({A: WEB_INFO})
    s.endpoints.replace({A: (E1, E2)})
    assert s.pending()
    assert await s.sync()
    assert writer.scripts[-1].startswith(f"add table {TABLE}\ndelete table {TABLE}\n")
    assert (s.stats.full_syncs, s.stats.partial_syncs, s.stats.last_kind) == (1, 0, "full")
    rules = nftrules.shared_rule_count(PLAIN) + port_objects(WEB_INFO, (E1, E2), PLAIN).rule_count
    assert s.stats.rules == rules > 0 and not s.pending()
    doc = s.stats.to_json(writer.backend_name)
    assert doc["backend"] == "fake-nft" and doc["rules"] == rules

    s.endpoints.replace({A: (E1,)})
    assert await s.sync()
    assert writer.scripts[-1] == golden(
        f"""
        flush chain ip nodeagent {SVC_A}
        add rule ip nodeagent {SVC_A} meta l4proto tcp dnat to 10.0.0.1:80
        delete element ip nodeagent hairpin {{ 10.0.0.2 . 10.0.0.2 }}
        """
    )
    assert (s.stats.full_syncs, s.stats.partial_syncs, s.stats.last_kind) == (1, 1, "partial")

    s.services.replace({})
    assert await s.sync()
    assert writer.kernel.chains.keys() == kernel_after(nftscript.full({}, PLAIN).text).chains.keys()
    assert s.stats.rules == nftrules.shared_rule_count(PLAIN)


async def test_a_failed_apply_makes_the_next_sync_full() -> None:
    writer = Recorder()
    s = nft_syncer(writer)
    s.services.replace({A: WEB_INFO})
    assert await s.sync()
    s.endpoints.replace({A: (E1,)})
    writer.fail = True
    assert not await s.sync()
    assert s.stats.failures == 1 and "No such file" in (s.stats.last_error or "")
    assert s.need_full and s.pending()
    assert await s.sync()
    assert s.stats.last_kind == "full" and s.stats.last_error is None
    assert f"add rule {TABLE} {SVC_A} meta l4proto tcp dnat to 10.0.0.1:80" in writer.scripts[-1]
    # Back to partial syncs from what the full one wrote.
    s.endpoints.replace({A: (E2,)})
    assert await s.sync()
    assert s.stats.last_kind == "partial" and s.stats.failures == 1


async def test_a_config_change_forces_a_full_sync() -> None:
    writer = Recorder()
    s = nft_syncer(writer)
    s.services.replace({A: WEB_INFO})
    s.endpoints.replace({A: (E1,)})
    assert await s.sync()
    s.config = CONFIG
    assert s.pending() is False  # nothing tracked changed, yet the next sync is full
    assert await s.sync()
    assert s.stats.last_kind == "full"
    assert "ip saddr != 10.244.0.0/16" in writer.scripts[-1]
    assert s.stats.rules == (
        nftrules.shared_rule_count(CONFIG) + port_objects(WEB_INFO, (E1,), CONFIG).rule_count
    )


async def test_a_full_sync_after_a_good_one_empties_the_table_in_place() -> None:
    writer = Recorder()
    s = nft_syncer(writer, CONFIG)
    sticky = info(B, "10.96.0.2", affinity_timeout_s=600)
    s.services.replace({A: WEB_INFO, B: sticky})
    s.endpoints.replace({A: (E1,), B: (E1, E2)})
    assert await s.sync()
    gone = nftrules.port_objects(sticky, (E1, E2), CONFIG)
    s.services.replace({A: WEB_INFO})
    s.config = replace(CONFIG, pod_egress_masquerade=True)  # the next sync is full
    assert await s.sync()
    script = writer.scripts[-1]
    # Emptied, not deleted: affinity sets that stay keep their entries.
    assert script.startswith(f"add table {TABLE}\nflush table {TABLE}\n")
    assert f"delete table {TABLE}" not in script
    for map_name in (*nftrules.MAPS, nftrules.HAIRPIN):
        assert (
            f"flush {'set' if map_name == nftrules.HAIRPIN else 'map'} {TABLE} {map_name}\n"
            in script
        )
    # What B had is deleted; each deletion works whether or not the object is still there.
    for chain in gone.chain_names:
        assert f"add chain {TABLE} {chain}\ndelete chain {TABLE} {chain}\n" in script
    for name, _ in gone.sets:
        assert f"delete set {TABLE} {name}\n" in script
    expected = kernel_after(
        nftscript.full(objects({A: (WEB_INFO, (E1,))}, s.config), s.config).text
    )
    assert writer.kernel.snapshot() == expected.snapshot()
    # The same script applies to a kernel whose table was deleted behind our back.
    assert kernel_after(script).snapshot() == expected.snapshot()


async def test_after_a_failure_a_full_sync_replaces_the_table() -> None:
    writer = Recorder()
    s = nft_syncer(writer)
    s.services.replace({A: WEB_INFO})
    assert await s.sync()
    writer.fail = True
    s.endpoints.replace({A: (E1,)})
    assert not await s.sync()
    writer.fail = False
    assert await s.sync()
    assert writer.scripts[-1].startswith(f"add table {TABLE}\ndelete table {TABLE}\n")


async def test_nothing_to_do_writes_nothing() -> None:
    writer = Recorder()
    s = nft_syncer(writer)
    assert await s.sync()
    count = len(writer.scripts)
    s.endpoints.replace({A: (E1,)})  # endpoints of no service: no objects
    assert await s.sync()
    assert len(writer.scripts) == count and s.stats.last_kind == "partial"


# --- Removing the iptables mode's rules ----------------------------------------------------

SAVED_NAT = """\
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:NA-SERVICES - [0:0]
:NA-SVC-XPGD46QRK7WJZT7O - [0:0]
-A PREROUTING -m comment --comment "nodeagent service portals" -j NA-SERVICES
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "nodeagent service portals" -j NA-SERVICES
-A NA-SERVICES -d 172.30.0.41/32 -p tcp -m tcp --dport 80 -j NA-SVC-XPGD46QRK7WJZT7O
-A NA-SVC-XPGD46QRK7WJZT7O -p tcp -m tcp -j DNAT --to-destination 10.180.0.1:80
-A KUBE-SERVICES -j KUBE-SVC-ABC
COMMIT
"""

SAVED_FILTER = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:NA-FORWARD - [0:0]
-A FORWARD -m comment --comment "nodeagent forwarding rules" -j NA-FORWARD
-A FORWARD -j DOCKER-USER
-A NA-FORWARD -m mark --mark 0x4000/0x4000 -j ACCEPT
COMMIT
"""


def test_cleanup_input_removes_our_jumps_and_chains_only() -> None:
    text = iptables.cleanup_input({"nat": SAVED_NAT, "filter": SAVED_FILTER})
    assert text == golden(
        """
        *nat
        -D PREROUTING -m comment --comment "nodeagent service portals" -j NA-SERVICES
        -D OUTPUT -m comment --comment "nodeagent service portals" -j NA-SERVICES
        :NA-SERVICES - [0:0]
        :NA-SVC-XPGD46QRK7WJZT7O - [0:0]
        -X NA-SERVICES
        -X NA-SVC-XPGD46QRK7WJZT7O
        COMMIT
        *filter
        -D FORWARD -m comment --comment "nodeagent forwarding rules" -j NA-FORWARD
        :NA-FORWARD - [0:0]
        -X NA-FORWARD
        COMMIT
        """
    )


def test_cleanup_input_is_empty_without_anything_of_ours() -> None:
    foreign = SAVED_FILTER.replace("NA-FORWARD", "CNI-FORWARD")
    assert iptables.cleanup_input({"nat": "", "filter": foreign}) == ""
    assert iptables.cleanup_input({}) == ""
    # A table of ours next to a foreign one: only ours gets a block.
    assert iptables.cleanup_input({"nat": SAVED_NAT, "filter": foreign}).count("COMMIT") == 1


def test_element_lines_batch_and_group_by_map() -> None:
    many = [Element("service-nodeports", f"tcp . {30000 + i}", "drop") for i in range(4097)]
    many.append(Element("no-endpoint-nodeports", "tcp . 1", "drop"))
    lines = nftrules.element_lines("delete", many, keys_only=True)
    assert [line.split(" ")[4] for line in lines] == [
        "no-endpoint-nodeports",
        "service-nodeports",
        "service-nodeports",
    ]
    assert lines[0] == "delete element ip nodeagent no-endpoint-nodeports { tcp . 1 }"
    assert lines[2] == "delete element ip nodeagent service-nodeports { tcp . 34096 }"
    assert nftrules.hairpin_lines("add", []) == []
