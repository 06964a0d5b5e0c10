"""The proxy's tools (iptables-*, nft, conntrack) run as subprocesses with a deadline.

One place for the plumbing each runner needs: stdin fed or closed, both outputs captured,
and a process past its deadline killed and reaped, never left behind. Each runner turns the
outcome into its own typed error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Outcome:
    code: int
    out: str
    err: str


async def run(argv: Sequence[str], *, stdin: str | None, timeout_s: float) -> Outcome:
    """Run ``argv`` to the end. OSError if it cannot start; TimeoutError past ``timeout_s``
    (the process is killed first)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    return Outcome(proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace"))
