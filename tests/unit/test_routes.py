"""Host-gw routes: which routes the Nodes ask for, and how ours are brought to that (pure)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nodeagent.apiserver.nodes import internal_ip, peer_routes
from nodeagent.network import sysctl
from nodeagent.network.routes import Route, normalise, plan


def node(name: str, cidr: str | None, ip: str | None, **spec: Any) -> dict[str, Any]:
    addresses = [{"type": "Hostname", "address": name}]
    if ip is not None:
        addresses.insert(0, {"type": "InternalIP", "address": ip})
    return {
        "metadata": {"name": name},
        "spec": {**({"podCIDR": cidr} if cidr else {}), **spec},
        "status": {"addresses": addresses},
    }


def test_one_route_per_other_node_via_its_internal_ip() -> None:
    nodes = [
        node("a", "10.244.1.0/24", "10.250.0.11"),
        node("b", "10.244.2.0/24", "10.250.0.12"),
        node("c", "10.244.3.0/24", "10.250.0.13"),
    ]
    routes, problems = peer_routes(nodes, node_name="a")
    assert routes == [
        Route("10.244.2.0/24", "10.250.0.12", node="b"),
        Route("10.244.3.0/24", "10.250.0.13", node="c"),
    ]
    assert [r.node for r in routes] == ["b", "c"]
    assert problems == []


def test_nodes_without_cidr_or_address_get_no_route_yet() -> None:
    nodes = [node("b", None, "10.250.0.12"), node("c", "10.244.3.0/24", None)]
    assert peer_routes(nodes, node_name="a") == ([], [])


def test_pod_cidrs_list_is_used_and_ipv6_ignored() -> None:
    n = node("b", None, "10.250.0.12", podCIDRs=["10.244.2.0/24", "fd00:2::/64"])
    routes, problems = peer_routes([n], node_name="a")
    assert routes == [Route("10.244.2.0/24", "10.250.0.12")]
    assert problems == []


def test_bad_cidr_is_reported_by_node_and_field_and_others_still_route() -> None:
    nodes = [node("b", "10.244.2.1/24", "10.250.0.12"), node("c", "10.244.3.0/24", "10.250.0.13")]
    routes, problems = peer_routes(nodes, node_name="a")
    assert routes == [Route("10.244.3.0/24", "10.250.0.13")]
    assert problems == ["Node b: spec.podCIDR '10.244.2.1/24' is not an IPv4 CIDR"]


def test_two_nodes_claiming_one_cidr_route_to_the_first_and_report_the_second() -> None:
    nodes = [node("c", "10.244.2.0/24", "10.250.0.13"), node("b", "10.244.2.0/24", "10.250.0.12")]
    routes, problems = peer_routes(nodes, node_name="a")
    assert routes == [Route("10.244.2.0/24", "10.250.0.12", node="b")]
    assert problems == ["Node c: spec.podCIDR 10.244.2.0/24 is also Node b's"]


def test_internal_ip_skips_ipv6_and_bad_addresses() -> None:
    n = {
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": "fd00::1"},
                {"type": "InternalIP", "address": "nonsense"},
                {"type": "ExternalIP", "address": "192.0.2.9"},
                {"type": "InternalIP", "address": "10.250.0.12"},
            ]
        }
    }
    assert internal_ip(n) == "10.250.0.12"
    assert internal_ip({}) == ""


def test_plan_adds_new_replaces_moved_and_deletes_gone() -> None:
    ours = [Route("10.244.2.0/24", "10.250.0.12"), Route("10.244.9.0/24", "10.250.0.19")]
    desired = [Route("10.244.2.0/24", "10.250.0.22"), Route("10.244.3.0/24", "10.250.0.13")]
    result = plan(desired, ours)
    assert result.add == (
        Route("10.244.2.0/24", "10.250.0.22"),
        Route("10.244.3.0/24", "10.250.0.13"),
    )
    assert result.delete == (Route("10.244.9.0/24", "10.250.0.19"),)
    assert result.blocked == ()


def test_plan_is_empty_when_the_kernel_already_agrees() -> None:
    routes = [Route("10.244.2.0/24", "10.250.0.12")]
    assert plan(routes, routes).empty


def test_plan_never_touches_a_destination_held_by_a_foreign_route() -> None:
    desired = [Route("10.244.2.0/24", "10.250.0.12")]
    result = plan(desired, [], foreign_dsts=["10.244.2.0/24", "10.250.0.0/24"])
    assert result.add == () and result.delete == ()
    assert result.blocked == (Route("10.244.2.0/24", "10.250.0.12"),)


def test_normalise_refuses_host_bits() -> None:
    assert normalise("10.244.2.0/24") == "10.244.2.0/24"
    with pytest.raises(ValueError):
        normalise("10.244.2.7/24")


# -- sysctls, against a directory shaped like /proc/sys ---------------------------------------


def _proc(tmp_path: Path, **values: str) -> Path:
    for key, value in values.items():
        path = sysctl.path_of(key.replace("__", ".").replace("_dash_", "-"), tmp_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    return tmp_path


def test_sysctls_are_set_and_read_back(tmp_path: Path) -> None:
    root = _proc(
        tmp_path,
        net__ipv4__ip_forward="0",
        net__bridge__bridge_dash_nf_dash_call_dash_iptables="0",
    )
    results = sysctl.prepare_node(root)
    assert all(r.ok for r in results)
    assert sysctl.path_of(sysctl.IP_FORWARD, root).read_text().strip() == "1"
    assert sysctl.problems(results) == []


def test_a_missing_bridge_sysctl_names_the_module(tmp_path: Path) -> None:
    root = _proc(tmp_path, net__ipv4__ip_forward="1")
    results = {r.key: r for r in sysctl.prepare_node(root)}
    bridge = results[sysctl.BRIDGE_NF_CALL_IPTABLES]
    assert not bridge.ok and not bridge.required
    assert "br_netfilter" in bridge.problem
    assert results[sysctl.IP_FORWARD].ok


# -- masquerade of pod traffic leaving the cluster CIDR (proxy rules) -------------------------


def test_pod_egress_chain_keeps_pod_to_pod_sources_and_masquerades_the_rest() -> None:
    from nodeagent.proxy.iptables.rules import NAT, POD_EGRESS, POSTROUTING
    from nodeagent.proxy.iptables.shared import shared_chains
    from nodeagent.proxy.ruleconfig import RulesConfig

    config = RulesConfig(cluster_cidr="10.244.0.0/16", pod_egress_masquerade=True)
    chains = shared_chains({}, config)
    # Unmarked traffic visits the egress chain before the service masquerade returns it (and
    # after the hairpin check, which comes first).
    assert chains[(NAT, POSTROUTING)][1] == (
        f"-A {POSTROUTING} -m mark ! --mark 0x4000/0x4000 -j {POD_EGRESS}"
    )
    accept, masquerade = chains[(NAT, POD_EGRESS)]
    assert "-s 10.244.0.0/16 -d 10.244.0.0/16 -j ACCEPT" in accept
    assert "-s 10.244.0.0/16 ! -d 224.0.0.0/4 -j MASQUERADE" in masquerade


def test_no_pod_egress_chain_unless_asked() -> None:
    from nodeagent.proxy.iptables.rules import NAT, POD_EGRESS
    from nodeagent.proxy.iptables.shared import shared_chains
    from nodeagent.proxy.ruleconfig import RulesConfig

    assert (NAT, POD_EGRESS) not in shared_chains({}, RulesConfig(cluster_cidr="10.244.0.0/16"))


# -- the multi-node settings ------------------------------------------------------------------


def _run_flags(*argv: str) -> Any:
    from nodeagent.cli import build_parser

    return build_parser().parse_args(["run", "--node-name", "n1", *argv])


def test_cluster_cidr_and_node_ip_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    import ipaddress

    from nodeagent.config import load_config

    for name in ("NODEAGENT_CLUSTER_CIDR", "NODEAGENT_NODE_IP"):
        monkeypatch.delenv(name, raising=False)
    config = load_config(_run_flags("--cluster-cidr", "10.244.0.0/16", "--node-ip", "10.250.0.11"))
    assert config.cluster_cidr == ipaddress.IPv4Network("10.244.0.0/16")
    assert config.node_ip == "10.250.0.11"
    plain = load_config(_run_flags())
    assert plain.cluster_cidr is None and plain.node_ip == ""


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--cluster-cidr", "10.244.0.1/16", "cluster_cidr"),
        ("--cluster-cidr", "fd00::/48", "only an IPv4 cluster CIDR"),
        ("--node-ip", "10.250.0", "node_ip: '10.250.0' is not an IPv4 address"),
    ],
)
def test_bad_multi_node_settings_name_the_key(flag: str, value: str, says: str) -> None:
    from nodeagent.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=says):
        load_config(_run_flags(flag, value))
