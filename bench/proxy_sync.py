"""Proxy rule syncs at scale: full syncs of 1000 and 5000 services, one endpoint change.

For each size (services x endpoints, kube-proxy-shaped: every service has a cluster IP and
a NodePort). A node runs at most 110 pods (the kubelet's default max pods), so 5000 x 10
endpoints live on hundreds of nodes: here this node runs 110 of them, spread evenly over the
services, and the rest are elsewhere. Locality matters to the iptables mode only for its
hairpin chain (one rule per local endpoint IP, rewritten when they change).

- ``full_s``: one full sync through the proxy's real code path (trackers, rule building,
  ``iptables-save`` of nat and filter, rendering, ``iptables-restore``), from empty tables;
- ``raw_s``: ``iptables-restore --noflush`` of exactly the text that sync fed it, into
  emptied tables again, timed in the same run; ``ratio`` = full_s / raw_s (target <= 1.2).
  Full syncs and raw restores alternate ``--rounds`` times; the best of each is compared
  (medians are printed too), so a busy machine slows both sides alike;
- ``endpoint_change``: one endpoint of one service replaced by a local one (a pod starting
  here, so the hairpin chain is rewritten too), from tracker update to rules in the kernel
  (a partial sync): the median and the worst of ``--changes`` such
  changes (target < 0.1 s), and the median of the ``iptables-restore`` part alone. On the
  nft backend that part is mostly the kernel re-validating every rule reachable from the
  built-in chains, which any added rule with a target triggers: it grows with the table,
  not the change;
- ``one_rule``: that cost isolated, with the table of that size loaded: one restore adding a
  rule without a target (``no_target_s``: no re-validation) and one adding a rule with a
  verdict (``verdict_s``: ``-j RETURN``; a jump or a DNAT costs the same or more). An
  endpoint change always adds rules with targets (a DNAT, jumps with new probabilities),
  so ``verdict_s`` is the floor of a partial sync on that backend, whatever the order or
  form (-A, -R, -D) of the rules it writes.

Full syncs are streamed (the rules are built while ``iptables-restore`` parses), so
``full_s`` can come out at or even below ``raw_s``: the raw restore is fed the same text at
once, and on a busy machine the two vary by tens of percent from run to run.

Everything runs in a throwaway network namespace, created here and deleted at the end: the
machine's own rules are never touched. The proxy picks its backend as in production (nft
unless a hint says otherwise); ``--backend legacy`` forces the other one.

Prints one JSON line. Run as root: ``python bench/proxy_sync.py [--sizes 1000,5000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nodeagent.log import configure_logging  # noqa: E402
from nodeagent.model.service import Protocol  # noqa: E402
from nodeagent.proxy.iptables.rules import MARK_MASQ  # noqa: E402
from nodeagent.proxy.iptables.runner import WAIT_S, Backend, Iptables  # noqa: E402
from nodeagent.proxy.iptables.sync import Syncer  # noqa: E402
from nodeagent.proxy.ruleconfig import RulesConfig  # noqa: E402
from nodeagent.proxy.state import Endpoint, ServicePortInfo, ServicePortName  # noqa: E402

CONFIG = RulesConfig(cluster_cidr="10.128.0.0/9")
LOCAL_PODS = 110


def state(
    services: int, endpoints: int
) -> tuple[dict[ServicePortName, ServicePortInfo], dict[ServicePortName, tuple[Endpoint, ...]]]:
    infos: dict[ServicePortName, ServicePortInfo] = {}
    eps: dict[ServicePortName, tuple[Endpoint, ...]] = {}
    local_every = max(1, services * endpoints // LOCAL_PODS)
    for i in range(services):
        key = ServicePortName(f"ns{i % 50}", f"svc{i}", "http", "TCP")
        ip = f"10.96.{i // 250}.{i % 250 + 1}"
        infos[key] = ServicePortInfo(key, ip, 80, Protocol.TCP, node_port=30000 + i % 2768)
        eps[key] = tuple(
            Endpoint(
                f"10.{128 + (i * endpoints + j) // 65000}.{(i * endpoints + j) // 250 % 260}"
                f".{(i * endpoints + j) % 250 + 1}",
                8080,
                local=(i * endpoints + j) % local_every == 0,
            )
            for j in range(endpoints)
        )
    return infos, eps


def _iptables(backend: Backend, *args: str, stdin: str | None = None) -> None:
    tool = f"iptables-{backend.value}" + ("-restore" if args[:1] == ("--noflush",) else "")
    subprocess.run([tool, *args], input=stdin, text=True, check=True, capture_output=True)


def empty_tables(backend: Backend) -> None:
    for table in ("filter", "nat"):
        _iptables(backend, "-w", str(WAIT_S), "-t", table, "-F")
        _iptables(backend, "-w", str(WAIT_S), "-t", table, "-X")


class TimedIptables(Iptables):
    """The production runner, plus the time its last restore took (kernel + iptables)."""

    last_restore_s = 0.0

    async def restore(self, tables: Mapping[str, str], *, chains: Mapping[str, int]) -> None:
        started = time.perf_counter()
        await super().restore(tables, chains=chains)
        self.last_restore_s = time.perf_counter() - started


@dataclass(frozen=True)
class Mode:
    """How the bench drives and times one proxy mode (iptables here; nftables in
    proxy_sync_nft.py): a full sync through a fresh syncer, the raw tool on the same text."""

    full_sync: Callable[[int, int], Awaitable[dict[str, Any]]]  # -> syncer, eps, seconds
    raw: Callable[[str], float]  # seconds for the raw tool to apply the text, from empty
    last_input: Callable[[], str]  # the text the last sync fed the tool
    last_write_s: Callable[[], float]  # how long the tool took in the last sync
    words: tuple[str, str] = ("restore_lines", "restore_median_s")  # JSON keys


def iptables_mode(writer: TimedIptables) -> Mode:
    async def full_sync(services: int, endpoints: int) -> dict[str, Any]:
        """One full sync from emptied tables, through a fresh Syncer (as at agent start)."""
        empty_tables(writer.backend)
        syncer = Syncer(writer, CONFIG, conntrack=None, local_addresses=lambda: ())
        return await timed_full_sync(syncer, services, endpoints)

    return Mode(
        full_sync=full_sync,
        raw=lambda text: raw_restore(writer.backend, text),
        last_input=lambda: writer.last_input,
        last_write_s=lambda: writer.last_restore_s,
    )


async def timed_full_sync(syncer: Any, services: int, endpoints: int) -> dict[str, Any]:
    infos, eps = state(services, endpoints)
    started = time.perf_counter()
    syncer.services.replace(infos)
    syncer.endpoints.replace(eps)
    if not await syncer.sync():
        raise SystemExit(f"full sync failed: {syncer.stats.last_error}")
    return {"syncer": syncer, "eps": eps, "seconds": time.perf_counter() - started}


def raw_restore(backend: Backend, text: str) -> float:
    empty_tables(backend)
    started = time.perf_counter()
    _iptables(backend, "--noflush", "--wait", str(WAIT_S), stdin=text)
    return time.perf_counter() - started


async def measure(mode: Mode, services: int, endpoints: int, rounds: int) -> dict[str, Any]:
    """Alternate full syncs and raw runs of the same text; compare the best of each."""
    fulls, raws = [], []
    run: dict[str, Any] = {}
    for _ in range(rounds):
        run = await mode.full_sync(services, endpoints)
        fulls.append(run["seconds"])
        raws.append(mode.raw(mode.last_input()))
    # Leave the kernel as the last full sync left it, for the endpoint changes.
    run = await mode.full_sync(services, endpoints)
    full, raw = min(fulls), min(raws)
    run["result"] = {
        "services": services,
        "endpoints_per_service": endpoints,
        mode.words[0]: mode.last_input().count("\n"),
        "rules": run["syncer"].stats.rules,
        "full_s": round(full, 3),
        "raw_s": round(raw, 3),
        "ratio": round(full / raw, 3),
        "median_full_s": round(statistics.median(fulls), 3),
        "median_raw_s": round(statistics.median(raws), 3),
        "rounds": rounds,
    }
    return run


async def endpoint_changes(mode: Mode, run: dict[str, Any], changes: int) -> dict[str, float]:
    syncer = run["syncer"]
    eps: dict[ServicePortName, tuple[Endpoint, ...]] = dict(run["eps"])
    keys = sorted(eps)
    times, writes = [], []
    for n in range(changes):
        key = keys[(n * 997) % len(keys)]
        replaced = (*eps[key][:-1], Endpoint(f"10.255.{n // 250}.{n % 250 + 1}", 8080))
        eps[key] = replaced
        started = time.perf_counter()
        syncer.endpoints.replace(eps)
        if not await syncer.sync():
            raise SystemExit(f"partial sync failed: {syncer.stats.last_error}")
        times.append(time.perf_counter() - started)
        writes.append(mode.last_write_s())
    return {
        "median_s": round(statistics.median(times), 4),
        "max_s": round(max(times), 4),
        mode.words[1]: round(statistics.median(writes), 4),
    }


def one_rule(backend: Backend) -> dict[str, float]:
    """One restore adding a rule without a target, then one adding a rule with a verdict,
    each three times into the loaded tables (harmless rules: a source address of TEST-NET)."""

    def timed(spec: str) -> float:
        times = []
        for n in range(3):
            text = f"*nat\n-A {MARK_MASQ} -s 192.0.2.{n + 1}/32{spec}\nCOMMIT\n"
            started = time.perf_counter()
            _iptables(backend, "--noflush", "--wait", str(WAIT_S), stdin=text)
            times.append(time.perf_counter() - started)
        return round(statistics.median(times), 4)

    return {"no_target_s": timed(""), "verdict_s": timed(" -j RETURN")}


async def inside(args: argparse.Namespace) -> dict[str, Any]:
    configure_logging("console", "warning")
    backend = Backend(args.backend) if args.backend else (await Iptables.detect()).backend
    writer = TimedIptables(backend)
    sizes = [int(s) for s in args.sizes.split(",")]
    out: dict[str, Any] = {"backend": writer.backend.value, "sizes": []}
    mode = iptables_mode(writer)
    for size in sizes:
        run = await measure(mode, size, args.endpoints, args.rounds)
        run["result"]["endpoint_change"] = await endpoint_changes(mode, run, args.changes)
        run["result"]["one_rule"] = one_rule(writer.backend)
        out["sizes"].append(run["result"])
    return out


def main(
    name: str = "proxy_sync",
    inside_fn: Callable[[argparse.Namespace], Awaitable[dict[str, Any]]] = inside,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
    description: str = __doc__ or "",
) -> int:
    parser = argparse.ArgumentParser(description=description.split("\n", 1)[0])
    parser.add_argument("--sizes", default="1000,5000", help="services per run, comma-separated")
    parser.add_argument("--endpoints", type=int, default=10, help="endpoints per service")
    parser.add_argument("--changes", type=int, default=7, help="endpoint changes to time")
    parser.add_argument("--rounds", type=int, default=5, help="full/raw pairs per size")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    if args.inside:
        print(json.dumps(asyncio.run(inside_fn(args))))
        return 0
    if os.geteuid() != 0:
        print(f"{name}: needs root (it creates a network namespace)", file=sys.stderr)
        return 2
    netns = f"na-bench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        argv = [sys.executable, sys.argv[0], "--inside", *sys.argv[1:]]
        done = subprocess.run(["nsenter", f"--net=/run/netns/{netns}", *argv], check=False)
        return done.returncode
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)


def _backend_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=[b.value for b in Backend], default=None)


if __name__ == "__main__":
    sys.exit(main(extra=_backend_option))
