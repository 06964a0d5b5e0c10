"""The iptables rule builder: golden iptables-restore text, full and partial."""

from __future__ import annotations

import textwrap

import pytest

from nodeagent.model.service import Protocol
from nodeagent.proxy import nodeports
from nodeagent.proxy.iptables import restore, rules, shared
from nodeagent.proxy.iptables.restore import Written, render
from nodeagent.proxy.iptables.rules import service_rules
from nodeagent.proxy.ruleconfig import RulesConfig
from nodeagent.proxy.state import Endpoint, ServicePortInfo, ServicePortName

CONFIG = RulesConfig(cluster_cidr="10.244.0.0/16")
WEB = ServicePortName("ns1", "svc1", "p80", "TCP")
DNS = ServicePortName("ns2", "np", "", "UDP")
EP1, EP2 = Endpoint("10.180.0.1", 80), Endpoint("10.180.0.2", 80)


def golden(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def lines(*items: str) -> tuple[str, ...]:
    return items


def web(**kw: object) -> ServicePortInfo:
    return ServicePortInfo(WEB, "172.30.0.41", 80, Protocol.TCP, **kw)  # type: ignore[arg-type]


def test_chain_names_are_kube_proxys() -> None:
    # The same hashes as kube-proxy's KUBE-SVC-XPGD46QRK7WJZT7O / KUBE-SEP-SXIVWICOYRO3J4NJ.
    assert rules.svc_chain(WEB) == "NA-SVC-XPGD46QRK7WJZT7O"
    assert rules.sep_chain(WEB, EP1) == "NA-SEP-SXIVWICOYRO3J4NJ"
    assert str(DNS) == "ns2/np" and str(WEB) == "ns1/svc1:p80"
    assert len(rules.sep_chain(WEB, EP1)) <= 28  # iptables' limit on chain names


def test_cluster_ip_with_two_ready_endpoints() -> None:
    not_ready = Endpoint("10.180.0.3", 80, ready=False, serving=False)
    r = service_rules(web(), (EP1, EP2, not_ready), CONFIG)
    assert r.chains == ("NA-SVC-XPGD46QRK7WJZT7O",)  # no chain per endpoint
    assert "\n".join(r.rules) + "\n" == golden(
        """
        -A NA-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41/32 --dport 80 ! -s 10.244.0.0/16 -j NA-MARK-MASQ
        -A NA-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -m statistic --mode random --probability 0.5000000000 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80
        -A NA-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.2:80" -m tcp -p tcp -j DNAT --to-destination 10.180.0.2:80
        """  # noqa: E501
    )
    assert r.hairpin == ("10.180.0.1", "10.180.0.2")
    assert r.nat_services == lines(
        '-A NA-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp '
        "-d 172.30.0.41/32 --dport 80 -j NA-SVC-XPGD46QRK7WJZT7O"
    )
    assert r.filter_services == r.filter_external == r.nat_nodeports == ()


def test_probabilities_of_n_endpoints() -> None:
    eps = [Endpoint(f"10.0.0.{i}", 80) for i in range(1, 5)]
    r = service_rules(web(), eps, CONFIG)
    balance = [line for line in r.rules if line.startswith("-A NA-SVC-") and "->" in line]
    chances = [line.split("--probability ")[1].split()[0] for line in balance[:-1]]
    assert chances == ["0.2500000000", "0.3333333333", "0.5000000000"]
    assert "--probability" not in balance[-1]


def test_no_endpoints_rejects_in_filter_and_writes_no_nat_chains() -> None:
    info = ServicePortInfo(
        DNS, "172.30.0.42", 53, Protocol.UDP, node_port=30053, external_ips=("192.0.2.9",)
    )
    r = service_rules(info, (), CONFIG)
    assert r.chains == r.rules == r.nat_services == r.nat_nodeports == ()
    assert r.filter_services == lines(
        '-A NA-SERVICES -m comment --comment "ns2/np has no endpoints" -m udp -p udp '
        "-d 172.30.0.42/32 --dport 53 -j REJECT"
    )
    assert r.filter_external == lines(
        '-A NA-EXTERNAL-SERVICES -m comment --comment "ns2/np has no endpoints" -m udp -p udp '
        "-d 192.0.2.9/32 --dport 53 -j REJECT",
        '-A NA-EXTERNAL-SERVICES -m comment --comment "ns2/np has no endpoints" '
        "-m addrtype --dst-type LOCAL -m udp -p udp --dport 30053 -j REJECT",
    )


def test_node_port_external_ip_and_load_balancer_go_through_ext_chain() -> None:
    info = web(node_port=30080, external_ips=("192.0.2.5",), load_balancer_ips=("198.51.100.7",))
    r = service_rules(info, (EP1,), CONFIG)
    ext = "NA-EXT-XPGD46QRK7WJZT7O"
    assert r.chains[0] == ext
    assert r.nat_services[1:] == lines(
        '-A NA-SERVICES -m comment --comment "ns1/svc1:p80 external IP" -m tcp -p tcp '
        f"-d 192.0.2.5/32 --dport 80 -j {ext}",
        '-A NA-SERVICES -m comment --comment "ns1/svc1:p80 loadbalancer IP" -m tcp -p tcp '
        f"-d 198.51.100.7/32 --dport 80 -j {ext}",
    )
    assert r.nat_nodeports == lines(
        f'-A NA-NODEPORTS -m comment --comment "ns1/svc1:p80" -m tcp -p tcp --dport 30080 -j {ext}'
    )
    assert r.rules[:2] == lines(
        f'-A {ext} -m comment --comment "masquerade traffic for ns1/svc1:p80 external '
        'destinations" -j NA-MARK-MASQ',
        f"-A {ext} -j NA-SVC-XPGD46QRK7WJZT7O",
    )


def test_source_ranges_fence_load_balancer_ips_but_not_the_node_port() -> None:
    info = web(
        node_port=30080,
        load_balancer_ips=("198.51.100.7",),
        source_ranges=("203.0.113.0/25", "192.0.2.9/32"),
    )
    r = service_rules(info, (EP1,), CONFIG)
    fw, ext = "NA-FW-XPGD46QRK7WJZT7O", "NA-EXT-XPGD46QRK7WJZT7O"
    assert r.chains[:2] == (fw, ext)
    assert r.rules[:2] == lines(
        f'-A {fw} -m comment --comment "ns1/svc1:p80 loadbalancer IP" -s 203.0.113.0/25 -j {ext}',
        f'-A {fw} -m comment --comment "ns1/svc1:p80 loadbalancer IP" -s 192.0.2.9/32 -j {ext}',
    )
    assert r.nat_services[1:] == lines(
        '-A NA-SERVICES -m comment --comment "ns1/svc1:p80 loadbalancer IP" -m tcp -p tcp '
        f"-d 198.51.100.7/32 --dport 80 -j {fw}"
    )
    # What the FW chain did not DNAT still goes to the balancer's IP: filter drops it.
    assert r.filter_firewall == lines(
        '-A NA-PROXY-FIREWALL -m comment --comment "ns1/svc1:p80 traffic not accepted by '
        f'{fw}" -m tcp -p tcp -d 198.51.100.7/32 --dport 80 -j DROP'
    )
    assert r.nat_nodeports == lines(
        f'-A NA-NODEPORTS -m comment --comment "ns1/svc1:p80" -m tcp -p tcp --dport 30080 -j {ext}'
    )
    none = service_rules(info, (), CONFIG)  # no endpoints: rejected, and still fenced
    assert fw not in none.chains and none.filter_firewall == r.filter_firewall
    assert service_rules(web(source_ranges=("10.0.0.0/8",)), (EP1,), CONFIG).filter_firewall == ()


def test_external_traffic_policy_local_keeps_source_and_short_circuits_local_traffic() -> None:
    r = service_rules(web(node_port=30080, external_policy_local=True), (EP1,), CONFIG)
    ext, svc, svl = "NA-EXT-XPGD46QRK7WJZT7O", "NA-SVC-XPGD46QRK7WJZT7O", "NA-SVL-XPGD46QRK7WJZT7O"
    assert set(r.chains) == {ext, svc, svl}
    assert [line for line in r.rules if line.startswith(f"-A {ext}")] == [
        f'-A {ext} -m comment --comment "pod traffic for ns1/svc1:p80 external destinations" '
        f"-s 10.244.0.0/16 -j {svc}",
        f'-A {ext} -m comment --comment "masquerade LOCAL traffic for ns1/svc1:p80 external '
        'destinations" -m addrtype --src-type LOCAL -j NA-MARK-MASQ',
        f'-A {ext} -m comment --comment "route LOCAL traffic for ns1/svc1:p80 external '
        f'destinations" -m addrtype --src-type LOCAL -j {svc}',
        f"-A {ext} -j {svl}",
    ]


def test_internal_traffic_policy_local_without_local_endpoints_drops() -> None:
    remote = Endpoint("10.180.9.9", 80, local=False)
    r = service_rules(web(internal_policy_local=True), (remote,), CONFIG)
    assert r.nat_services == ()
    assert r.filter_services == lines(
        '-A NA-SERVICES -m comment --comment "ns1/svc1:p80 has no local endpoints" -m tcp -p tcp '
        "-d 172.30.0.41/32 --dport 80 -j DROP"
    )
    local = service_rules(web(internal_policy_local=True), (remote, EP1), CONFIG)
    assert local.nat_services[0].endswith("-j NA-SVL-XPGD46QRK7WJZT7O")
    assert local.chains == ("NA-SVL-XPGD46QRK7WJZT7O",)


def test_only_local_endpoints_hairpin() -> None:
    # A pod's service traffic is NATed on its own node: only here can it reach itself.
    remote = Endpoint("10.180.9.9", 80, local=False)
    r = service_rules(web(), (remote, EP2, EP1), CONFIG)
    assert r.hairpin == ("10.180.0.1", "10.180.0.2")
    chains = shared.shared_chains({WEB: r, DNS: service_rules(web(), (EP1,), CONFIG)}, CONFIG)
    assert chains[("nat", "NA-HAIRPIN")] == (
        "-A NA-HAIRPIN -s 10.180.0.1/32 -d 10.180.0.1/32 -j MASQUERADE --random-fully",
        "-A NA-HAIRPIN -s 10.180.0.2/32 -d 10.180.0.2/32 -j MASQUERADE --random-fully",
    )
    # Ahead of pod egress's "pod to pod keeps its source", which would let it through as is.
    egress = RulesConfig(cluster_cidr="10.244.0.0/16", pod_egress_masquerade=True)
    postrouting = shared.shared_chains({}, egress)[("nat", "NA-POSTROUTING")]
    assert postrouting[0].endswith("-m conntrack --ctstate DNAT -j NA-HAIRPIN")
    assert postrouting[1].endswith("-j NA-POD-EGRESS")


def test_session_affinity_checks_then_sets_recent_lists() -> None:
    r = service_rules(web(affinity_timeout_s=600), (EP1, EP2), CONFIG)
    svc, sep1 = "NA-SVC-XPGD46QRK7WJZT7O", "NA-SEP-SXIVWICOYRO3J4NJ"
    # The recent lists are named after each endpoint's chain, so affinity keeps them.
    assert r.chains == (svc, sep1, "NA-SEP-LXVODXWDISEETFEF")
    assert r.rules[1] == (
        f'-A {svc} -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -m recent --name {sep1} '
        f"--rcheck --seconds 600 --reap -j {sep1}"
    )
    assert (
        f'-A {sep1} -m comment --comment "ns1/svc1:p80" -m recent --name {sep1} --set -m tcp '
        "-p tcp -j DNAT --to-destination 10.180.0.1:80"
    ) in r.rules


def test_serving_terminating_endpoints_are_the_fallback() -> None:
    leaving = Endpoint("10.180.0.1", 80, ready=False, serving=True, terminating=True)
    gone = Endpoint("10.180.0.2", 80, ready=False, serving=False, terminating=True)

    def destinations(r: rules.ServiceRules) -> list[str]:
        return [line.split("--to-destination ")[1] for line in r.rules if "DNAT" in line]

    assert destinations(service_rules(web(), (leaving, gone), CONFIG)) == ["10.180.0.1:80"]
    fresh = Endpoint("10.180.0.3", 80)
    assert destinations(service_rules(web(), (leaving, fresh), CONFIG)) == ["10.180.0.3:80"]


def test_no_masquerade_rule_without_cluster_cidr() -> None:
    r = service_rules(web(), (EP1,), RulesConfig())
    assert not any("! -s" in line for line in r.rules)


FULL = """
*filter
:NA-SERVICES - [0:0]
:NA-PROXY-FIREWALL - [0:0]
:NA-PROXY-CANARY - [0:0]
:NA-FORWARD - [0:0]
:NA-FIREWALL - [0:0]
:NA-EXTERNAL-SERVICES - [0:0]
-I INPUT -m conntrack --ctstate NEW -m comment --comment "nodeagent externally-visible service portals" -j NA-EXTERNAL-SERVICES
-I FORWARD -m conntrack --ctstate NEW -m comment --comment "nodeagent externally-visible service portals" -j NA-EXTERNAL-SERVICES
-I FORWARD -m conntrack --ctstate NEW -m comment --comment "nodeagent service portals" -j NA-SERVICES
-I OUTPUT -m conntrack --ctstate NEW -m comment --comment "nodeagent service portals" -j NA-SERVICES
-I FORWARD -m comment --comment "nodeagent forwarding rules" -j NA-FORWARD
-I INPUT -m conntrack --ctstate NEW -m comment --comment "nodeagent load balancer firewall" -j NA-PROXY-FIREWALL
-I FORWARD -m conntrack --ctstate NEW -m comment --comment "nodeagent load balancer firewall" -j NA-PROXY-FIREWALL
-I OUTPUT -m conntrack --ctstate NEW -m comment --comment "nodeagent load balancer firewall" -j NA-PROXY-FIREWALL
-I INPUT -m comment --comment "nodeagent localnet protection" -j NA-FIREWALL
-I OUTPUT -m comment --comment "nodeagent localnet protection" -j NA-FIREWALL
-A NA-SERVICES -m comment --comment "ns2/np has no endpoints" -m udp -p udp -d 172.30.0.42/32 --dport 53 -j REJECT
-A NA-EXTERNAL-SERVICES -m comment --comment "ns2/np has no endpoints" -m addrtype --dst-type LOCAL -m udp -p udp --dport 30053 -j REJECT
-A NA-FORWARD -m comment --comment "nodeagent forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A NA-FORWARD -m comment --comment "nodeagent forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A NA-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A NA-PROXY-CANARY -j RETURN
COMMIT
*nat
:NA-SVC-XPGD46QRK7WJZT7O - [0:0]
:NA-SVC-OLD0000000000000 - [0:0]
:NA-SERVICES - [0:0]
:NA-PROXY-CANARY - [0:0]
:NA-POSTROUTING - [0:0]
:NA-NODEPORTS - [0:0]
:NA-MARK-MASQ - [0:0]
:NA-HAIRPIN - [0:0]
-I PREROUTING -m comment --comment "nodeagent service portals" -j NA-SERVICES
-I OUTPUT -m comment --comment "nodeagent service portals" -j NA-SERVICES
-I POSTROUTING -m comment --comment "nodeagent postrouting rules" -j NA-POSTROUTING
-A NA-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41/32 --dport 80 -j NA-SVC-XPGD46QRK7WJZT7O
-A NA-SERVICES -m comment --comment "nodeagent service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j NA-NODEPORTS
-A NA-HAIRPIN -s 10.180.0.1/32 -d 10.180.0.1/32 -j MASQUERADE --random-fully
-A NA-HAIRPIN -s 10.180.0.2/32 -d 10.180.0.2/32 -j MASQUERADE --random-fully
-A NA-POSTROUTING -m comment --comment "a pod reaching itself through a service" -m conntrack --ctstate DNAT -j NA-HAIRPIN
-A NA-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A NA-POSTROUTING -j MARK --xor-mark 0x4000
-A NA-POSTROUTING -m comment --comment "nodeagent service traffic requiring SNAT" -j MASQUERADE --random-fully
-A NA-MARK-MASQ -j MARK --or-mark 0x4000
-A NA-PROXY-CANARY -j RETURN
-A NA-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41/32 --dport 80 ! -s 10.244.0.0/16 -j NA-MARK-MASQ
-A NA-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -m statistic --mode random --probability 0.5000000000 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80
-A NA-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.2:80" -m tcp -p tcp -j DNAT --to-destination 10.180.0.2:80
-X NA-SVC-OLD0000000000000
COMMIT
"""  # noqa: E501


def two_services(
    web_endpoints: tuple[Endpoint, ...] = (EP1, EP2),
) -> dict[ServicePortName, rules.ServiceRules]:
    dns = ServicePortInfo(DNS, "172.30.0.42", 53, Protocol.UDP, node_port=30053)
    return {
        WEB: service_rules(web(), web_endpoints, CONFIG),
        DNS: service_rules(dns, (), CONFIG),
    }


def test_full_sync_golden() -> None:
    state = two_services()
    # The kernel has an old service chain, CNI's chain and a shared one, and none of our jumps.
    chains = ("NA-SVC-OLD0000000000000", "CNI-HOSTPORT-DNAT", "NA-SERVICES")
    saved = {"nat": "".join(f":{c} - [0:0]\n" for c in chains)}
    out = render(
        state,
        write=set(),
        previous=Written(),
        full=True,
        config=CONFIG,
        saved=saved,
    )
    assert out.text["filter"] + out.text["nat"] == FULL.lstrip("\n")
    assert out.chains_deleted == 1  # the old service chain; never CNI's
    assert out.chains_declared == {"filter": 6, "nat": 8}
    assert set(out.written.chains) == {WEB, DNS}


def synced() -> Written:
    return render(two_services(), write=set(), previous=Written(), full=True, config=CONFIG).written


def test_partial_sync_of_an_endpoint_change_writes_only_that_service() -> None:
    remote = Endpoint("10.180.9.9", 80, local=False)
    before = render(
        two_services((EP1, remote)), write=set(), previous=Written(), full=True, config=CONFIG
    )
    out = render(
        two_services((EP1,)), write={WEB}, previous=before.written, full=False, config=CONFIG
    )
    assert "filter" not in out.text  # nothing there changed
    assert out.text["nat"] == golden(
        """
        *nat
        :NA-SVC-XPGD46QRK7WJZT7O - [0:0]
        -A NA-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41/32 --dport 80 ! -s 10.244.0.0/16 -j NA-MARK-MASQ
        -A NA-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80
        COMMIT
        """  # noqa: E501
    )
    assert out.chains_deleted == 0


def test_partial_sync_of_a_local_endpoint_change_rewrites_the_hairpin_chain() -> None:
    out = render(two_services((EP1,)), write={WEB}, previous=synced(), full=False, config=CONFIG)
    assert out.text["nat"].splitlines()[:4] == [
        "*nat",
        ":NA-SVC-XPGD46QRK7WJZT7O - [0:0]",
        ":NA-HAIRPIN - [0:0]",
        "-A NA-HAIRPIN -s 10.180.0.1/32 -d 10.180.0.1/32 -j MASQUERADE --random-fully",
    ]
    assert out.written.shared[("nat", "NA-HAIRPIN")] == (
        "-A NA-HAIRPIN -s 10.180.0.1/32 -d 10.180.0.1/32 -j MASQUERADE --random-fully",
    )


def test_partial_sync_of_a_removed_service_rewrites_shared_chains_and_deletes_its_own() -> None:
    state = two_services()
    del state[WEB]
    out = render(state, write={WEB}, previous=synced(), full=False, config=CONFIG)
    nat = out.text["nat"].splitlines()
    assert nat[:4] == [
        "*nat",
        ":NA-SVC-XPGD46QRK7WJZT7O - [0:0]",
        ":NA-SERVICES - [0:0]",
        ":NA-HAIRPIN - [0:0]",  # emptied: its endpoints' IPs went with it
    ]
    assert nat[4].startswith('-A NA-SERVICES -m comment --comment "nodeagent service nodeports')
    assert nat[5:] == ["-X NA-SVC-XPGD46QRK7WJZT7O", "COMMIT"]
    assert set(out.written.chains) == {DNS}


def test_partial_sync_with_nothing_changed_writes_nothing() -> None:
    out = render(two_services(), write=set(), previous=synced(), full=False, config=CONFIG)
    assert out.text == {}


def test_partial_sync_when_endpoints_appear_moves_reject_to_nat() -> None:
    state = two_services()
    dns = ServicePortInfo(DNS, "172.30.0.42", 53, Protocol.UDP, node_port=30053)
    state[DNS] = service_rules(dns, (Endpoint("10.180.0.7", 5353),), CONFIG)
    out = render(state, write={DNS}, previous=synced(), full=False, config=CONFIG)
    assert ":NA-SERVICES - [0:0]" in out.text["filter"]
    assert "REJECT" not in out.text["filter"]
    assert ":NA-NODEPORTS - [0:0]" in out.text["nat"]


def test_slimmed_rules_cannot_be_written() -> None:
    state = two_services()
    state[WEB] = state[WEB].slim()
    with pytest.raises(ValueError, match="slimmed"):
        render(state, write={WEB}, previous=Written(), full=False, config=CONFIG)


def test_chain_declarations_are_in_descending_order() -> None:
    out = render(two_services(), write=set(), previous=Written(), full=True, config=CONFIG)
    declared = [line for line in out.text["nat"].splitlines() if line.startswith(":")]
    assert declared == sorted(declared, reverse=True)


def test_missing_jumps_are_read_from_save_output() -> None:
    saved = {
        "nat": '-A PREROUTING -m comment --comment "nodeagent service portals" -j NA-SERVICES\n',
        "filter": "",
    }
    missing = restore.missing_jumps(saved, RulesConfig(localhost_nodeports=False))
    assert ("nat", "PREROUTING") not in {(j.table, j.chain) for j in missing}
    assert ("nat", "OUTPUT") in {(j.table, j.chain) for j in missing}
    assert all(j.target != rules.FIREWALL for j in missing)


def test_localhost_node_ports_off_excludes_loopback() -> None:
    chains = shared.shared_chains({}, RulesConfig(localhost_nodeports=False))
    assert "! -d 127.0.0.0/8 -j NA-NODEPORTS" in chains[("nat", "NA-SERVICES")][-1]
    assert chains[("filter", "NA-FIREWALL")] == ()


def test_nodeport_addresses_select_local_ips() -> None:
    local = ["127.0.0.1", "10.244.0.1", "192.168.77.1", "192.168.78.1"]
    assert nodeports.nodeport_ips((), local, "192.168.77.1") is None
    assert nodeports.nodeport_ips(("0.0.0.0/0",), local, "") is None  # everything: addrtype
    wide = nodeports.nodeport_ips(("192.168.0.0/16",), local, "")
    assert wide == ("192.168.77.1", "192.168.78.1")
    assert nodeports.nodeport_ips(("primary", "127.0.0.0/8"), local, "192.168.77.1") == (
        "127.0.0.1",
        "192.168.77.1",
    )
    assert nodeports.nodeport_ips(("172.16.0.0/12",), local, "") == ()  # none: no NodePorts
    assert nodeports.primary_ip(["127.0.0.1", "169.254.1.1", "192.168.77.1", "10.244.0.1"]) == (
        "10.244.0.1"
    )
    assert nodeports.primary_ip(["127.0.0.1"]) == ""
    chains = shared.shared_chains({}, RulesConfig(nodeport_ips=("192.168.77.1", "192.168.78.1")))
    assert chains[("nat", "NA-SERVICES")] == (
        '-A NA-SERVICES -m comment --comment "nodeagent service nodeports; NOTE: this must be '
        'the last rule in this chain" -d 192.168.77.1/32 -j NA-NODEPORTS',
        '-A NA-SERVICES -m comment --comment "nodeagent service nodeports; NOTE: this must be '
        'the last rule in this chain" -d 192.168.78.1/32 -j NA-NODEPORTS',
    )
    assert shared.shared_chains({}, RulesConfig(nodeport_ips=()))[("nat", "NA-SERVICES")] == ()


def test_saved_chains_and_rule_count() -> None:
    assert restore.saved_chains(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:NA-X - [0:0]\n-A NA-X -j RETURN\n"
    ) == {
        "PREROUTING",
        "NA-X",
    }
    state = two_services()
    assert restore.rule_count(state, CONFIG) == 3 + 16  # own + shared (fixed, REJECTs, 2 hairpins)


def test_large_clusters_drop_per_endpoint_comments() -> None:
    quiet = RulesConfig(cluster_cidr="10.244.0.0/16", comments=False)
    r = service_rules(web(affinity_timeout_s=60), (EP1,), quiet)
    own = [line for line in r.rules if "cluster IP" not in line]
    assert own and not any("--comment" in line for line in own)
    assert "--comment" in r.nat_services[0]  # shared chains keep theirs
