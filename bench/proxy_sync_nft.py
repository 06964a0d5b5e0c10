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
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from proxy_sync import CONFIG, Mode, endpoint_changes, main, measure, timed_full_sync  # noqa: E402

from nodeagent.log import configure_logging  # noqa: E402
from nodeagent.proxy.nftables.rules import TABLE  # noqa: E402
from nodeagent.proxy.nftables.runner import Nftables  # noqa: E402
from nodeagent.proxy.nftables.sync import NftSyncer  # noqa: E402


class TimedNftables(Nftables):
    """The production runner, plus the time its last ``nft -f`` took."""

    last_apply_s = 0.0

    async def apply(self, script: str) -> None:
        started = time.perf_counter()
        await super().apply(script)
        self.last_apply_s = time.perf_counter() - started


def drop_table() -> None:
    subprocess.run(["nft", "delete", "table", *TABLE.split()], capture_output=True, check=False)


def raw_apply(script: str) -> float:
    drop_table()
    started = time.perf_counter()
    subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True, capture_output=True)
    return time.perf_counter() - started


def nftables_mode(writer: TimedNftables) -> Mode:
    async def full_sync(services: int, endpoints: int) -> dict[str, Any]:
        """One full sync from no table, through a fresh syncer (as at agent start)."""
        drop_table()
        syncer = NftSyncer(writer, CONFIG, conntrack=None, local_addresses=lambda: ())
        return await timed_full_sync(syncer, services, endpoints)

    return Mode(
        full_sync=full_sync,
        raw=raw_apply,
        last_input=lambda: writer.last_input,
        last_write_s=lambda: writer.last_apply_s,
        words=("script_lines", "apply_median_s"),
    )


async def inside(args: argparse.Namespace) -> dict[str, Any]:
    configure_logging("console", "warning")
    writer = TimedNftables()
    mode = nftables_mode(writer)
    out: dict[str, Any] = {"backend": writer.backend_name, "sizes": []}
    for size in (int(s) for s in args.sizes.split(",")):
        run = await measure(mode, size, args.endpoints, args.rounds)
        run["result"]["endpoint_change"] = await endpoint_changes(mode, run, args.changes)
        out["sizes"].append(run["result"])
    drop_table()
    return out


if __name__ == "__main__":
    sys.exit(main("proxy_sync_nft", inside, description=__doc__ or ""))
