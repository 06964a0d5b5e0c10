"""The nftables runner: the only place the proxy executes ``nft``. Thin I/O, typed errors.

- ``apply`` feeds one ``nft -f -``: the whole script is one transaction, so the kernel sees
  all of a sync or none of it.
- ``canary_ok``: our table holds an empty set named ``canary``. Listing one set is cheap
  whatever the table's size (nft fetches just that set; listing a chain or the table makes
  nft 1.0 fetch every chain, 0.8 s at 5000 services). If it is gone, someone deleted our
  table (``nft flush ruleset``) and the caller must resync in full.
- ``remove_table``: the iptables mode's start-up removes what an earlier run in nftables mode
  left behind, as kube-proxy cleans up its other modes.

Failures become ``NftablesError`` with nft's own message, which names the offending line.
"""

from __future__ import annotations

import shutil

from nodeagent.log import get_logger
from nodeagent.proxy import command
from nodeagent.proxy.nftables.rules import CANARY, TABLE

log = get_logger(__name__)

TIMEOUT_S = 120.0  # a full sync of 5000 services takes seconds; past this it is stuck
NFT = "nft"


class NftablesError(Exception):
    """nft failed; the message carries its stderr."""


async def _run(*args: str, stdin: str | None = None) -> str:
    what = " ".join((NFT, *args))
    try:
        done = await command.run((NFT, *args), stdin=stdin, timeout_s=TIMEOUT_S)
    except OSError as exc:
        raise NftablesError(f"{NFT}: {exc.strerror or exc}") from exc
    except TimeoutError:
        raise NftablesError(f"{what} did not finish within {TIMEOUT_S:g} s") from None
    if done.code != 0:
        raise NftablesError(
            f"{what}: {_first_error(done.err.strip() or f'exit status {done.code}')}"
        )
    return done.out


def _first_error(message: str) -> str:
    """nft repeats the failing line with a caret line under it: keep the first three lines."""
    return "\n".join(message.splitlines()[:3])


class Nftables:
    """The production rule writer of the nftables mode."""

    backend_name = "nftables"

    def __init__(self) -> None:
        self.last_input = ""  # the last script applied (benchmarks replay it)

    @classmethod
    async def detect(cls) -> Nftables:
        if shutil.which(NFT) is None:
            raise NftablesError(f"{NFT} not found: install the nftables package")
        await _run("--version")
        return cls()

    async def apply(self, script: str) -> None:
        self.last_input = script
        await _run("-f", "-", stdin=script)

    async def canary_ok(self) -> bool:
        try:
            await _run("list", "set", *TABLE.split(), CANARY)
        except NftablesError:
            return False
        return True


async def remove_table() -> None:
    """Delete our table if an earlier run left it (no nft, or no table: nothing to do)."""
    if shutil.which(NFT) is None:
        return
    try:
        await _run("delete", "table", *TABLE.split())
    except NftablesError as exc:
        if "No such file or directory" not in str(exc):
            log.warning("proxy_cleanup_failed", mode="nftables", error=str(exc))
        return
    log.info("proxy_cleaned_up", mode="nftables")
