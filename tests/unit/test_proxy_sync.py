"""Syncs against a recording writer; conntrack decisions; the iptables runner's pure parts."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

import pytest

from nodeagent.model.service import Protocol
from nodeagent.proxy import conntrack
from nodeagent.proxy.iptables import runner as iptables
from nodeagent.proxy.iptables.rules import is_service_chain
from nodeagent.proxy.iptables.runner import Backend, IptablesError
from nodeagent.proxy.iptables.shared import shared_chains
from nodeagent.proxy.iptables.sync import Syncer
from nodeagent.proxy.ruleconfig import RulesConfig
from nodeagent.proxy.state import Endpoint, ServicePortInfo, ServicePortName

WEB = ServicePortName("ns", "web", "", "TCP")
DNS = ServicePortName("ns", "dns", "", "UDP")
WEB_INFO = ServicePortInfo(WEB, "10.96.0.1", 80, Protocol.TCP)
DNS_INFO = ServicePortInfo(DNS, "10.96.0.2", 53, Protocol.UDP, node_port=30053)
EP1, EP2 = Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 80)


def split_tables(text: str) -> dict[str, str]:
    """A restore input's ``*table ... COMMIT`` blocks by table."""
    tables: dict[str, str] = {}
    for block in text.split("*")[1:]:
        name = block.split("\n", 1)[0]
        tables[name] = "*" + block
    return tables


class Recorder:
    """A RuleWriter that keeps what it was given; ``fail`` makes the next restore fail."""

    backend_name = "fake"

    def __init__(self) -> None:
        self.restores: list[Mapping[str, str]] = []
        self.saves: list[str] = []
        self.fail = False
        self.saved = {"nat": ":NA-SEP-LEFTOVER0000000 - [0:0]\n", "filter": ""}

    async def restore(self, tables: Mapping[str, str], *, chains: Mapping[str, int]) -> None:
        if self.fail:
            self.fail = False
            raise IptablesError("iptables-restore: line 3 failed")
        self.restores.append(dict(tables))

    async def restore_stream(self, chunks: Iterable[str], *, chains: Mapping[str, int]) -> None:
        text = await asyncio.to_thread("".join, chunks)  # off the loop, as the runner does
        await self.restore(split_tables(text), chains=chains)

    async def save(self, table: str) -> str:
        self.saves.append(table)
        return self.saved.get(table, "")

    async def canary_ok(self) -> bool:
        return True


@pytest.fixture
def writer() -> Recorder:
    return Recorder()


def syncer(writer: Recorder) -> Syncer:
    return Syncer(writer, RulesConfig(), conntrack=None, local_addresses=lambda: ())


async def test_first_sync_is_full_then_partial(writer: Recorder) -> None:
    s = syncer(writer)
    s.services.replace({WEB: WEB_INFO})
    s.endpoints.replace({WEB: (EP1, EP2)})
    assert s.pending()
    assert await s.sync()
    assert writer.saves == ["nat", "filter"]  # a full sync looks at the kernel first
    nat = writer.restores[-1]["nat"]
    assert "-X NA-SEP-LEFTOVER0000000" in nat  # stale chain of an earlier run
    assert "-I PREROUTING" in nat  # jumps missing from the save output are inserted
    assert (s.stats.full_syncs, s.stats.partial_syncs, s.stats.last_kind) == (1, 0, "full")
    assert s.stats.rules > 0 and s.stats.last_error is None and not s.pending()

    s.endpoints.replace({WEB: (EP1,)})
    assert await s.sync()
    assert writer.saves == ["nat", "filter"]  # no save on a partial sync
    assert set(writer.restores[-1]) == {"nat"}
    assert (s.stats.full_syncs, s.stats.partial_syncs) == (1, 1)


async def test_a_failed_sync_makes_the_next_one_full(writer: Recorder) -> None:
    s = syncer(writer)
    s.services.replace({WEB: WEB_INFO})
    await s.sync()
    s.endpoints.replace({WEB: (EP1,)})
    writer.fail = True
    assert not await s.sync()
    assert s.stats.failures == 1 and "line 3 failed" in (s.stats.last_error or "")
    assert s.need_full and s.pending()
    assert await s.sync()
    assert s.stats.last_kind == "full" and s.stats.last_error is None
    assert "--to-destination 10.0.0.1:80" in writer.restores[-1]["nat"]  # the lost delta


async def test_partial_syncs_gather_again_only_the_shared_chains_that_changed(
    writer: Recorder,
) -> None:
    s = syncer(writer)
    remote = Endpoint("10.0.9.9", 80, local=False)
    s.services.replace({WEB: WEB_INFO, DNS: DNS_INFO})
    s.endpoints.replace({WEB: (EP1,)})
    await s.sync()
    steps: list[
        tuple[
            dict[ServicePortName, ServicePortInfo],
            dict[ServicePortName, tuple[Endpoint, ...]],
            set[str],
        ]
    ] = [
        ({WEB: WEB_INFO, DNS: DNS_INFO}, {WEB: (EP1, remote)}, set()),  # remote: no hairpin
        ({WEB: WEB_INFO, DNS: DNS_INFO}, {WEB: (EP2, remote)}, {"NA-HAIRPIN"}),
        (
            {WEB: WEB_INFO, DNS: DNS_INFO},
            {WEB: (EP2,), DNS: (EP1,)},
            {"NA-HAIRPIN", "NA-SERVICES", "NA-NODEPORTS"},
        ),
        ({WEB: WEB_INFO}, {WEB: (EP2,)}, {"NA-HAIRPIN", "NA-SERVICES", "NA-NODEPORTS"}),
    ]
    for services, endpoints, rewritten in steps:
        s.services.replace(services)
        s.endpoints.replace(endpoints)
        assert await s.sync() and s.stats.last_kind == "partial"
        nat = writer.restores[-1]["nat"]
        declared = {line[1:].split()[0] for line in nat.splitlines() if line.startswith(":")}
        assert {c for c in declared if not is_service_chain(c)} == rewritten, nat
        # What the syncer remembers is what gathering every port would give.
        assert s._written.shared == shared_chains(s._rules, s.config)


async def test_a_failed_save_fails_the_full_sync(writer: Recorder) -> None:
    async def failing_save(table: str) -> str:
        raise IptablesError(f"iptables-save -t {table}: no")

    writer.save = failing_save  # type: ignore[method-assign]
    s = syncer(writer)
    s.services.replace({WEB: WEB_INFO})
    assert not await s.sync()
    assert s.need_full and "iptables-save" in (s.stats.last_error or "")
    assert writer.restores == []  # the restore never got its COMMIT


async def test_a_stream_consumed_on_the_event_loop_is_refused(writer: Recorder) -> None:
    """The stream waits for iptables-save, which needs the loop: never a deadlock."""

    async def on_the_loop(chunks: Iterable[str], *, chains: Mapping[str, int]) -> None:
        "".join(chunks)

    writer.restore_stream = on_the_loop  # type: ignore[method-assign]
    s = syncer(writer)
    s.services.replace({WEB: WEB_INFO})
    with pytest.raises(RuntimeError, match="off the event loop"):
        await s.sync()


async def test_nothing_to_do_writes_nothing(writer: Recorder) -> None:
    s = syncer(writer)
    await s.sync()
    count = len(writer.restores)
    s.services.replace({})
    assert not s.pending()
    await s.sync()
    assert len(writer.restores) == count  # an empty restore is skipped


class FakeConntrack(conntrack.Conntrack):
    def __init__(self, flows: list[conntrack.Flow]) -> None:
        self.available = True
        self.flows = flows
        self.deleted: list[conntrack.Flow] = []

    async def udp_flows(self) -> list[conntrack.Flow]:
        return self.flows

    async def delete(self, flows: object) -> int:
        self.deleted += list(flows)  # type: ignore[call-overload]
        return len(self.deleted)


async def test_udp_endpoint_removal_cleans_flows(writer: Recorder) -> None:
    to_old = conntrack.Flow("10.1.0.9", "10.96.0.2", 4000, 53, "10.0.0.1", 53)
    to_kept = conntrack.Flow("10.1.0.9", "10.96.0.2", 4001, 53, "10.0.0.2", 53)
    tracker = FakeConntrack([to_old, to_kept])
    s = Syncer(writer, RulesConfig(), conntrack=tracker, local_addresses=lambda: ())
    a, b = Endpoint("10.0.0.1", 53), Endpoint("10.0.0.2", 53)
    s.services.replace({DNS: DNS_INFO})
    s.endpoints.replace({DNS: (a, b)})
    await s.sync()
    assert tracker.deleted == []
    s.endpoints.replace({DNS: (b,)})
    await s.sync()
    assert tracker.deleted == [to_old]
    s.services.replace({})  # the service is gone: every flow to it goes
    await s.sync()
    assert to_kept in tracker.deleted


CONNTRACK_LIST = """\
udp      17 29 src=10.244.1.5 dst=10.96.0.2 sport=40000 dport=53 src=10.244.1.7 dst=10.244.1.5 sport=5353 dport=40000 mark=0 use=1
udp      17 20 src=10.244.1.5 dst=10.96.0.2 sport=40001 dport=53 [UNREPLIED] src=10.96.0.2 dst=10.244.1.5 sport=53 dport=40001 mark=0 use=1
udp      17 20 src=192.168.1.9 dst=192.168.1.1 sport=5000 dport=30053 src=10.244.1.8 dst=10.244.1.1 sport=5353 dport=61000 mark=0 use=1
udp      17 20 src=192.168.1.9 dst=8.8.8.8 sport=5000 dport=30053 src=8.8.8.8 dst=192.168.1.9 sport=30053 dport=5000 mark=0 use=1
garbage line
"""  # noqa: E501


def test_parse_and_select_stale_flows() -> None:
    flows = conntrack.parse_flows(CONNTRACK_LIST)
    assert len(flows) == 4
    assert flows[0] == conntrack.Flow("10.244.1.5", "10.96.0.2", 40000, 53, "10.244.1.7", 5353)
    endpoints = (Endpoint("10.244.1.7", 5353),)
    stale = conntrack.stale_flows(flows, [(DNS_INFO, endpoints)], {"192.168.1.1"})
    # Not translated (created while rejected), and a NodePort flow to a gone endpoint; the
    # flow to a current endpoint and the one to a remote host's port 30053 stay.
    assert stale == [flows[1], flows[2]]
    tcp = ServicePortInfo(WEB, "10.96.0.2", 53, Protocol.TCP)
    assert conntrack.stale_flows(flows, [(tcp, ())], set()) == []


def test_backend_choice_follows_hints() -> None:
    ours = ":NA-IPTABLES-HINT - [0:0]\n"
    kube = ":KUBE-IPTABLES-HINT - [0:0]\n"
    assert iptables.choose_backend("", "") is Backend.NFT
    assert iptables.choose_backend("", ours) is Backend.LEGACY
    assert iptables.choose_backend(ours, kube) is Backend.NFT  # ours beats kube-proxy's
    assert iptables.choose_backend("", kube) is Backend.LEGACY


def test_zero_trick_only_for_large_nft_buffers() -> None:
    text = "*nat\n:A - [0:0]\nCOMMIT\n"
    assert iptables.with_zero_trick(text, backend=Backend.NFT, chains=10) == text
    assert iptables.with_zero_trick(text, backend=Backend.LEGACY, chains=10**5) == text
    assert iptables.with_zero_trick(text, backend=Backend.NFT, chains=10**5) == (
        "*nat\n-Z\n:A - [0:0]\nCOMMIT\n"
    )


def test_restore_errors_quote_the_failing_line() -> None:
    text = "*nat\n:A - [0:0]\n-A A -j NOWHERE\nCOMMIT\n"
    message = iptables._with_line("iptables-restore: line 3 failed", text)
    assert message.endswith("[-A A -j NOWHERE]")
    assert iptables._with_line("no line here", text) == "no line here"


async def test_crossing_the_large_cluster_threshold_forces_a_full_sync(writer: Recorder) -> None:
    s = syncer(writer)
    many = tuple(Endpoint(f"10.1.{i // 250}.{i % 250}", 80) for i in range(1001))
    s.services.replace({WEB: WEB_INFO})
    s.endpoints.replace({WEB: (EP1,)})
    await s.sync()
    assert s.config.comments
    s.endpoints.replace({WEB: many})
    await s.sync()
    config: RulesConfig = s.config  # read again: the sync replaced it
    assert not config.comments and s.stats.last_kind == "full"
    dnats = [line for line in writer.restores[-1]["nat"].splitlines() if "-j DNAT" in line]
    assert len(dnats) == 1001 and not any("--comment" in line for line in dnats)
