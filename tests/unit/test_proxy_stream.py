"""A full sync streamed (``restore.FullStream``): the same rules as ``render``, chains first,
and the runner that feeds ``iptables-restore`` as the chunks come."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from nodeagent.model.service import Protocol
from nodeagent.proxy.iptables import restore, rules
from nodeagent.proxy.iptables.restore import (
    FullStream,
    Written,
    render,
    saved_chains,
)
from nodeagent.proxy.iptables.rules import service_rules
from nodeagent.proxy.iptables.runner import Backend, Iptables, IptablesError, Tools
from nodeagent.proxy.ruleconfig import RulesConfig
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


STALE = ("NA-SEP-STALE00000000000", "NA-SEP-" + "X" * 16)
SAVED = {  # a leftover chain, a foreign one, and one of the jumps already in place
    "nat": "".join(f":{c} - [0:0]\n" for c in (*STALE, "CNI-1")),
    "filter": f'-A FORWARD -m comment --comment "nodeagent forwarding rules" -j {rules.FORWARD}\n',
}


def stream_for(
    saved: Callable[[], Mapping[str, str]] = dict, *, interleave: bool = False
) -> FullStream:
    infos, endpoints = world()
    return FullStream(
        infos, endpoints, previous=Written(), config=CONFIG, saved=saved, interleave=interleave
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


def declared(chunk: str) -> list[str]:
    return [line[1:].split(" ")[0] for line in chunk.splitlines() if line.startswith(":")]


def used_before_declared(text: str) -> list[str]:
    """Chains of ours that a nat rule names before their declaration."""
    seen: set[str] = set()
    early = []
    for line in text.split("*filter")[0].splitlines():
        if line.startswith(":"):
            seen.add(line[1:].split(" ")[0])
        elif line.startswith(("-A ", "-I ")):
            words = line.split()
            early += [w for w in (words[1], words[-1]) if w.startswith("NA-") and w not in seen]
    return early


@pytest.mark.parametrize("interleave", [False, True])
def test_the_stream_writes_what_render_writes(
    interleave: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(restore, "STREAM_BATCH", 5)  # several chunks of rules
    asked: list[int] = []

    def saved() -> Mapping[str, str]:
        asked.append(len(stream.built))
        return SAVED

    stream = stream_for(saved, interleave=interleave)
    chunks = list(stream.chunks())
    text = "".join(chunks)
    built = {k: service_rules(i, world()[1][k], CONFIG) for k, i in world()[0].items()}
    expected = render(
        built,
        write=set(built),
        previous=Written(),
        full=True,
        config=CONFIG,
        saved=SAVED,
    )
    assert tables(text) == {t: tables(v)[t] for t, v in expected.text.items()}
    assert asked == [len(built)]  # the save is needed only once every port is written
    # The first chunk only opens nat. Every chain is declared before a rule names it; the
    # stale chains at the end of nat, where the save is known, before their deletion.
    assert chunks[0] == "*nat\n"
    assert used_before_declared(text) == []
    nat_end = next(c for c in chunks if "COMMIT" in c)
    assert set(STALE) <= set(declared(nat_end))
    assert nat_end.index(f"-A {rules.SERVICES} ") < nat_end.index(":NA-SEP-X")
    assert nat_end.index(":NA-SEP-X") < nat_end.index("-X NA-SEP-X")
    if not interleave:
        # The second chunk declares every chain the rules use, in descending order.
        assert set(declared(nat_end)) == set(STALE)
        names = declared(chunks[1])
        assert names == sorted(names, reverse=True)
        assert set(names) | set(STALE) == saved_chains(expected.text["nat"])
        assert not any(declared(c) for c in chunks[2:] if c is not nat_end and "*filter" not in c)
    else:  # each chunk declares the chains of its own ports' rules: no planning pass first
        body = chunks[1 : chunks.index(nat_end)]
        assert len(body) > 2
        for chunk in body:
            written_to = {line.split()[1] for line in chunk.splitlines() if line[:3] == "-A "}
            assert set(declared(chunk)) - written_to <= set(declared(render_nat())) - {
                c for r in built.values() for c in r.chains
            }
    inserted = [line for line in text.splitlines() if line.startswith("-I ")]
    assert any(line.startswith("-I PREROUTING ") for line in inserted)
    assert not any(line.endswith(f"-j {rules.FORWARD}") for line in inserted)  # saved has it
    assert text.index("*nat") < text.index("*filter")
    result = stream.result()
    assert result.written == expected.written
    assert (result.rules_written, result.chains_deleted) == (
        expected.rules_written,
        expected.chains_deleted,
    )
    assert result.chains_declared == expected.chains_declared
    assert stream.built == {k: r.slim() for k, r in built.items()}  # written: text dropped


def test_the_nat_estimate_comes_with_the_first_chunk() -> None:
    stream = stream_for()
    chunks = stream.chunks()
    next(chunks)
    assert stream.chains_declared["nat"] >= len(world()[0])  # enough for the runner's -Z choice
    assert declared(next(chunks))
    assert stream.chains_declared["nat"] == len(declared(render_nat()))  # before any rule


def render_nat() -> str:
    infos, endpoints = world()
    built = {k: service_rules(i, endpoints[k], CONFIG) for k, i in infos.items()}
    restore = render(built, write=set(built), previous=Written(), full=True, config=CONFIG)
    return restore.text["nat"]


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
