"""Proxy rule syncs at scale in the nftables mode: full syncs and one endpoint change.

The same services as ``proxy_sync.py`` (every one with a cluster IP, a NodePort and 10
endpoints), through the nftables mode's real path (trackers, ``NftSyncer``, ``nft -f``):

- ``full_s``: one full sync, through a fresh syncer (as at agent start), from no table;
- ``raw_s``: ``nft -f`` of exactly the script that sync applied, from no table again, timed
  in the same run; ``ratio`` = full_s / raw_s (target <= 1.2). Full syncs and raw runs
  alternate ``--rounds`` times and the best of each is compared (medians printed too);
- ``endpoint_change``: one endpoint of one service replaced, from tracker update to the
  kernel (a partial sync: one chain rewritten, one transaction): the median and the worst
  of ``--changes`` changes (target < 0.1 s), and the median of the ``nft`` part alone.

Everything runs in a throwaway network namespace. Prints one JSON line. Run as root:
``python bench/proxy_sync_nft.py [--sizes 1000,5000]``.
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
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from proxy_sync import CONFIG, state  # noqa: E402

from nodeagent.log import configure_logging  # noqa: E402
from nodeagent.proxy.nftables import Nftables  # noqa: E402
from nodeagent.proxy.nftrules import TABLE  # noqa: E402
from nodeagent.proxy.nftsync import NftSyncer  # noqa: E402
from nodeagent.proxy.state import Endpoint, ServicePortName  # noqa: E402


class TimedNftables(Nftables):
    """The production runner, plus the time its last ``nft -f`` took."""

    last_apply_s = 0.0

    async def apply(self, script: str) -> None:
        started = time.perf_counter()
        await super().apply(script)
        self.last_apply_s = time.perf_counter() - started


def drop_table() -> None:
    subprocess.run(["nft", "delete", "table", *TABLE.split()], capture_output=True, check=False)


async def full_sync(writer: TimedNftables, services: int, endpoints: int) -> dict[str, Any]:
    drop_table()
    syncer = NftSyncer(writer, CONFIG, conntrack=None, local_addresses=lambda: ())
    infos, eps = state(services, endpoints)
    started = time.perf_counter()
    syncer.services.replace(infos)
    syncer.endpoints.replace(eps)
    if not await syncer.sync():
        raise SystemExit(f"full sync failed: {syncer.stats.last_error}")
    return {"syncer": syncer, "eps": eps, "seconds": time.perf_counter() - started}


def raw_apply(script: str) -> float:
    drop_table()
    started = time.perf_counter()
    subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True, capture_output=True)
    return time.perf_counter() - started


async def measure(
    writer: TimedNftables, services: int, endpoints: int, rounds: int
) -> dict[str, Any]:
    fulls, raws = [], []
    for _ in range(rounds):
        run = await full_sync(writer, services, endpoints)
        fulls.append(run["seconds"])
        raws.append(raw_apply(writer.last_input))
    run = await full_sync(writer, services, endpoints)  # the state the changes start from
    full, raw = min(fulls), min(raws)
    run["result"] = {
        "services": services,
        "endpoints_per_service": endpoints,
        "script_lines": writer.last_input.count("\n"),
        "rules": run["syncer"].stats.rules,
        "full_s": round(full, 3),
        "raw_s": round(raw, 3),
        "ratio": round(full / raw, 3),
        "median_full_s": round(statistics.median(fulls), 3),
        "median_raw_s": round(statistics.median(raws), 3),
        "rounds": rounds,
    }
    return run


async def endpoint_changes(
    writer: TimedNftables, run: dict[str, Any], changes: int
) -> dict[str, float]:
    syncer: NftSyncer = run["syncer"]
    eps: dict[ServicePortName, tuple[Endpoint, ...]] = dict(run["eps"])
    keys = sorted(eps)
    times, applies = [], []
    for n in range(changes):
        key = keys[(n * 997) % len(keys)]
        eps[key] = (*eps[key][:-1], Endpoint(f"10.255.{n // 250}.{n % 250 + 1}", 8080))
        started = time.perf_counter()
        syncer.endpoints.replace(eps)
        if not await syncer.sync():
            raise SystemExit(f"partial sync failed: {syncer.stats.last_error}")
        times.append(time.perf_counter() - started)
        applies.append(writer.last_apply_s)
    return {
        "median_s": round(statistics.median(times), 4),
        "max_s": round(max(times), 4),
        "apply_median_s": round(statistics.median(applies), 4),
    }


async def inside(args: argparse.Namespace) -> dict[str, Any]:
    configure_logging("console", "warning")
    writer = TimedNftables()
    out: dict[str, Any] = {"backend": writer.backend_name, "sizes": []}
    for size in (int(s) for s in args.sizes.split(",")):
        run = await measure(writer, size, args.endpoints, args.rounds)
        run["result"]["endpoint_change"] = await endpoint_changes(writer, run, args.changes)
        out["sizes"].append(run["result"])
    drop_table()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="1000,5000", help="services per run, comma-separated")
    parser.add_argument("--endpoints", type=int, default=10, help="endpoints per service")
    parser.add_argument("--changes", type=int, default=7, help="endpoint changes to time")
    parser.add_argument("--rounds", type=int, default=5, help="full/raw pairs per size")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        print(json.dumps(asyncio.run(inside(args))))
        return 0
    if os.geteuid() != 0:
        print("proxy_sync_nft: needs root (it creates a network namespace)", file=sys.stderr)
        return 2
    netns = f"na-bench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        argv = [sys.executable, __file__, "--inside", *sys.argv[1:]]
        done = subprocess.run(["nsenter", f"--net=/run/netns/{netns}", *argv], check=False)
        return done.returncode
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)


if __name__ == "__main__":
    sys.exit(main())
