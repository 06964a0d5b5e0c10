"""A full sync streamed (``restore.FullStream``): the same rules as ``render``, chains first,
and the runner that feeds ``iptables-restore`` as the chunks come."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from nodeagent.model.service import Protocol
from nodeagent.proxy import rules
from nodeagent.proxy.iptables import Backend, Iptables, IptablesError, Tools
from nodeagent.proxy.restore import FullStream, Written, render, saved_chains
from nodeagent.proxy.rules import Jump, RulesConfig, service_rules
from nodeagent.proxy.state import Endpoint, ServicePortInfo, ServicePortName

CONFIG = RulesConfig(cluster_cidr="10.244.0.0/16", pod_egress_masquerade=True)


def world() -> tuple[
    dict[ServicePortName, ServicePortInfo], dict[ServicePortName, tuple[Endpoint, ...]]
]:
    """Every kind of service port: plain, NodePort, external and LB IPs, Local policies,
    affinity, UDP, no endpoints, only terminating ones, remote ones."""
    eps = (
        Endpoint("10.244.0.5", 80),
        Endpoint("10.244.0.6", 80, ready=False, serving=True, terminating=True),
        Endpoint("10.244.1.7", 80, local=False),
    )
    kinds = [
        {},
        {"node_port": 30080},
        {"external_ips": ("192.0.2.1",), "load_balancer_ips": ("198.51.100.1",)},
        {"node_port": 30081, "external_policy_local": True},
        {"internal_policy_local": True},
        {"affinity_timeout_s": 600},
    ]
    infos, endpoints = {}, {}
    for i, kind in enumerate(kinds):
        for j, chosen in enumerate((eps, eps[1:2], (), eps[2:])):
            proto = Protocol.UDP if j == 1 else Protocol.TCP
            key = ServicePortName(f"ns{i}", f"svc{j}", "p", proto.value)
            infos[key] = ServicePortInfo(key, f"10.96.{i}.{j + 1}", 80, proto, **kind)  # type: ignore[arg-type]
            endpoints[key] = chosen
    return infos, endpoints


def stream_for(existing: set[str] | None = None) -> FullStream:
    infos, endpoints = world()
    plans = {k: rules.plan(infos[k], endpoints[k]) for k in infos}
    jumps = [
        Jump("nat", "PREROUTING", rules.SERVICES, "x"),
        Jump("filter", "INPUT", rules.FIREWALL, "y"),
    ]
    return FullStream(
        infos,
        endpoints,
        plans,
        previous=Written(),
        config=CONFIG,
        existing={"nat": existing or set(), "filter": set()},
        missing_jumps=jumps,
    )


def tables(text: str) -> dict[str, Counter[str]]:
    out: dict[str, Counter[str]] = {}
    for block in text.split("*")[1:]:
        name, _, body = block.partition("\n")
        out[name] = Counter(body.splitlines())
    return out


def test_a_plan_names_exactly_the_chains_the_rules_use() -> None:
    infos, endpoints = world()
    for key, info in infos.items():
        assert (
            rules.plan(info, endpoints[key]).chains
            == service_rules(info, endpoints[key], CONFIG).chains
        )


def test_the_stream_writes_what_render_writes_chains_first() -> None:
    stale = "NA-SEP-STALE00000000000"
    stream = stream_for(existing={stale, "NA-SEP-" + "X" * 16})
    chunks = list(stream.chunks())
    text = "".join(chunks)
    built = {k: service_rules(i, world()[1][k], CONFIG) for k, i in world()[0].items()}
    expected = render(
        built,
        write=set(built),
        previous=Written(),
        full=True,
        config=CONFIG,
        existing={"nat": {stale, "NA-SEP-" + "X" * 16}, "filter": set()},
        missing_jumps=[
            Jump("nat", "PREROUTING", rules.SERVICES, "x"),
            Jump("filter", "INPUT", rules.FIREWALL, "y"),
        ],
    )
    assert tables(text) == {t: tables(v)[t] for t, v in expected.text.items()}
    # Every nat chain is declared in the first chunk, before any rule, in descending order.
    first = chunks[0].splitlines()
    names = [line[1:].split(" ")[0] for line in first if line.startswith(":")]
    assert names == sorted(names, reverse=True)
    assert set(names) == saved_chains(expected.text["nat"])
    assert not any(
        line.startswith(":")
        for c in chunks[1:]
        for line in c.splitlines()
        if not c.startswith("*filter")
    )
    assert text.index("*nat") < text.index("*filter")
    result = stream.result()
    assert result.written == expected.written
    assert (result.rules_written, result.chains_deleted) == (
        expected.rules_written,
        expected.chains_deleted,
    )
    assert stream.built == built


def test_the_result_waits_for_the_stream() -> None:
    with pytest.raises(RuntimeError):
        stream_for().result()


def fake_restore(tmp_path: Path, script: str) -> Iptables:
    tool = tmp_path / "restore"
    tool.write_text("#!/bin/sh\n" + script)
    tool.chmod(0o755)
    runner = Iptables(Backend.NFT)
    runner.tools = Tools("iptables", "iptables-save", str(tool))
    return runner


async def test_the_runner_feeds_the_chunks_as_they_come(tmp_path: Path) -> None:
    out = tmp_path / "fed"
    runner = fake_restore(tmp_path, f'cat > "{out}"\n')
    chunks = ["*nat\n:A - [0:0]\n", "-A A -j RETURN\n", "COMMIT\n"]
    await runner.restore_stream(iter(chunks), chains={"nat": 600})
    fed = out.read_text()
    assert fed == "*nat\n-Z\n:A - [0:0]\n-A A -j RETURN\nCOMMIT\n"  # -Z: many chains (nft)
    assert runner.last_input == fed


async def test_a_refused_stream_is_an_error_naming_the_line(tmp_path: Path) -> None:
    script = 'head -n 2 > /dev/null\necho "iptables-restore: line 2 failed" >&2\nexit 1\n'
    runner = fake_restore(tmp_path, script)
    chunks = (f"-A X -j RETURN # {i}\n" * 1000 for i in range(200))  # more than a pipe holds
    with pytest.raises(IptablesError, match=r"line 2 failed \[-A X -j RETURN # 0\]"):
        await asyncio.wait_for(runner.restore_stream(chunks, chains={}), 30)
