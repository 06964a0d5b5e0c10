"""The iptables runner: the only place the proxy executes iptables. Thin I/O, typed errors.

- ``restore`` feeds one ``iptables-restore --noflush --wait`` with one buffer per table (nat
  and filter in one process, so a sync is one exec). ``--noflush`` leaves every chain we do
  not name alone: CNI's, a firewall's, a kube-proxy's.
- Backend detection (``detect``): iptables 1.8 has two backends, and rules written through
  one are invisible to the other. We look for our hint chain (``NA-IPTABLES-HINT`` in mangle)
  in each backend's ``iptables-save`` output, then for kube-proxy's and the kubelet's
  (``KUBE-IPTABLES-HINT``, ``KUBE-KUBELET-CANARY``) so that we write where a Kubernetes node
  already writes; with no hint anywhere we use nft, and leave our hint there.
- ``canary_ok``: the canary chain (``NA-PROXY-CANARY``, one RETURN rule, in nat and filter)
  is written by full syncs only. If it or its rule is gone, someone flushed or deleted our
  tables and the caller must resync in full.

iptables-nft 1.8.9 builds, with ``--noflush``, a sorted list of every chain the input names,
inserting linearly: O(commands x chains), 460 s for 5000 services x 10 endpoints. A command
that names no chain switches it to caching all chains instead, so a large nat buffer starts
with ``-Z`` (zero the table's counters: the one chainless command that changes nothing but
counters). Measured here: 5000 x 10 restores in 4.3 s with it.

``restore_stream`` feeds a full sync's input to ``iptables-restore`` while it is being built
(``restore.FullStream``): the chunks are produced and written in one worker thread, so
Python builds rules while iptables parses the ones before. The event loop is not involved:
building 5000 services' rules is a second of CPU.

Subprocess failures become ``IptablesError`` with the tool's stderr (and the offending line
of the input when iptables-restore names one).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from nodeagent.log import get_logger
from nodeagent.proxy import command
from nodeagent.proxy.iptables.rules import CANARY, FILTER, HINT, NAT

log = get_logger(__name__)

WAIT_S = 5  # iptables' own lock wait (--wait), for the legacy backend's xtables lock
TIMEOUT_S = 120.0  # a restore of 200k rules takes seconds; anything past this is stuck
ZERO_TRICK_MIN_CHAINS = 500  # see the module docstring
_FOREIGN_HINTS = ("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY")


class Backend(enum.Enum):
    NFT = "nft"  # iptables-nft: rules live in nf_tables (Debian 12's default)
    LEGACY = "legacy"  # iptables-legacy: the x_tables kernel interface


class IptablesError(Exception):
    """An iptables tool failed; the message carries its stderr."""


@dataclass(frozen=True)
class Tools:
    iptables: str
    save: str
    restore: str


def tools_for(backend: Backend) -> Tools:
    """The binaries of one backend; plain ``iptables*`` when the variants are not installed."""
    suffix = backend.value
    names = (f"iptables-{suffix}", f"iptables-{suffix}-save", f"iptables-{suffix}-restore")
    if all(shutil.which(n) for n in names):
        return Tools(*names)
    return Tools("iptables", "iptables-save", "iptables-restore")


def choose_backend(nft_mangle: str, legacy_mangle: str) -> Backend:
    """Pure: pick the backend from both backends' ``iptables-save -t mangle`` output."""
    for hints in ((HINT,), _FOREIGN_HINTS):
        for backend, saved in ((Backend.LEGACY, legacy_mangle), (Backend.NFT, nft_mangle)):
            if any(f":{hint} " in saved for hint in hints):
                return backend
    return Backend.NFT


def with_zero_trick(text: str, *, backend: Backend, chains: int) -> str:
    """Pure: the nat buffer, with ``-Z`` after ``*nat`` when it pays (see the docstring)."""
    if backend is not Backend.NFT or chains < ZERO_TRICK_MIN_CHAINS:
        return text
    head, sep, rest = text.partition("\n")
    return f"{head}{sep}-Z\n{rest}"


async def _run(argv: Sequence[str], stdin: str | None = None) -> str:
    try:
        done = await command.run(argv, stdin=stdin, timeout_s=TIMEOUT_S)
    except OSError as exc:
        raise IptablesError(f"{argv[0]}: {exc.strerror or exc}") from exc
    except TimeoutError:
        raise IptablesError(f"{argv[0]} did not finish within {TIMEOUT_S:g} s") from None
    if done.code != 0:
        message = done.err.strip() or f"exit status {done.code}"
        raise IptablesError(f"{' '.join(argv[:2])}: {_with_line(message, stdin)}")
    return done.out


def _with_line(message: str, stdin: str | None) -> str:
    """Append the input line iptables-restore complains about ("line 12 failed")."""
    found = re.search(r"line:? (\d+)", message)
    if stdin is None or found is None:
        return message
    lines = stdin.splitlines()
    number = int(found.group(1))
    if 1 <= number <= len(lines):
        return f"{message} [{lines[number - 1][:300]}]"
    return message


class Iptables:
    """iptables of one backend, in the network namespace this process runs in."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.tools = tools_for(backend)
        self.last_input = ""  # the exact text of the last restore (the benchmark reads it)

    @property
    def backend_name(self) -> str:
        return self.backend.value

    @classmethod
    async def detect(cls) -> Iptables:
        saved: dict[Backend, str] = {}
        for backend in Backend:
            tools = tools_for(backend)
            if tools.save == "iptables-save":
                continue  # no variant binaries: nothing to compare
            try:
                saved[backend] = await _run([tools.save, "-t", "mangle"])
            except IptablesError as exc:
                log.info("iptables_backend_unavailable", backend=backend.value, error=str(exc))
                saved[backend] = ""
        backend = choose_backend(saved.get(Backend.NFT, ""), saved.get(Backend.LEGACY, ""))
        if not saved:
            version = await _run(["iptables", "--version"])
            backend = Backend.LEGACY if "legacy" in version else Backend.NFT
        runner = cls(backend)
        await runner.ensure_hint()
        log.info("iptables_backend", backend=backend.value)
        return runner

    async def ensure_hint(self) -> None:
        with contextlib.suppress(IptablesError):  # exists already: fine
            await _run([self.tools.iptables, "-w", str(WAIT_S), "-t", "mangle", "-N", HINT])

    async def restore(self, tables: Mapping[str, str], *, chains: Mapping[str, int]) -> None:
        """One ``iptables-restore --noflush`` of the given per-table buffers (filter first)."""
        parts = []
        for table in (FILTER, NAT):
            if table in tables:
                text = tables[table]
                if table == NAT:
                    text = with_zero_trick(text, backend=self.backend, chains=chains.get(NAT, 0))
                parts.append(text)
        if not parts:
            return
        self.last_input = "".join(parts)
        await _run([self.tools.restore, "--noflush", "--wait", str(WAIT_S)], self.last_input)

    async def restore_stream(self, chunks: Iterable[str], *, chains: Mapping[str, int]) -> None:
        """One ``iptables-restore --noflush`` fed ``chunks`` as they are made (nat first)."""
        argv = [self.tools.restore, "--noflush", "--wait", str(WAIT_S)]
        self.last_input = await asyncio.to_thread(self._stream, argv, chunks, chains)

    def _stream(self, argv: list[str], chunks: Iterable[str], chains: Mapping[str, int]) -> str:
        """(In a worker thread.) The text written; IptablesError if the restore failed."""
        sent: list[str] = []
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
        except OSError as exc:
            raise IptablesError(f"{argv[0]}: {exc.strerror or exc}") from exc
        if proc.stdin is None or proc.stderr is None:  # never: both are pipes
            raise IptablesError(f"{argv[0]}: no pipes")
        try:
            for n, chunk in enumerate(chunks):
                if n == 0 and chunk.startswith(f"*{NAT}\n"):
                    # Read when the first chunk has come: a stream counts its chains as it goes.
                    nat_chains = chains.get(NAT, 0)
                    chunk = with_zero_trick(chunk, backend=self.backend, chains=nat_chains)
                sent.append(chunk)
                proc.stdin.write(chunk.encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass  # it gave up on the input: its stderr says why
        except BaseException:
            proc.kill()  # never leave a half-fed restore behind
            proc.wait()
            raise
        try:
            err = proc.stderr.read()
            code = proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise IptablesError(f"{argv[0]} did not finish within {TIMEOUT_S:g} s") from None
        finally:
            proc.stderr.close()
        text = "".join(sent)
        if code != 0:
            message = err.decode(errors="replace").strip() or f"exit status {code}"
            raise IptablesError(f"{' '.join(argv[:2])}: {_with_line(message, text)}")
        return text

    async def save(self, table: str) -> str:
        return await _run([self.tools.save, "-t", table])

    async def canary_ok(self) -> bool:
        """Whether our canary chain still holds its rule in nat and filter."""
        for table in (NAT, FILTER):
            try:
                listing = await _run(
                    [self.tools.iptables, "-w", str(WAIT_S), "-t", table, "-S", CANARY]
                )
            except IptablesError:
                return False
            if f"-A {CANARY} -j RETURN" not in listing:
                return False
        return True


def cleanup_input(saved: Mapping[str, str]) -> str:
    """Pure: restore input removing every rule and chain of ours from the saved tables:
    first the jumps into our chains from chains that are not ours, then our chains."""
    parts: list[str] = []
    for table, text in saved.items():
        ours = [line[1:].split()[0] for line in text.splitlines() if line.startswith(":NA-")]
        if not ours:
            continue
        lines = [f"*{table}"]
        for line in text.splitlines():
            words = line.split()
            if line.startswith("-A ") and not words[1].startswith("NA-") and " -j NA-" in line:
                lines.append(f"-D {line[3:]}")
        lines += [f":{chain} - [0:0]" for chain in ours]  # with --noflush: flushes it
        lines += [f"-X {chain}" for chain in ours]
        parts.append("\n".join([*lines, "COMMIT", ""]))
    return "".join(parts)


async def remove_rules() -> None:
    """Remove what an earlier run in iptables mode left, in either backend (the nftables
    mode's start-up, as kube-proxy cleans up its other modes). Failures are only logged."""
    for backend in Backend:
        tools = tools_for(backend)
        if shutil.which(tools.restore) is None:
            continue
        try:
            saved = {t: await _run([tools.save, "-t", t]) for t in (NAT, FILTER)}
            text = cleanup_input(saved)
            if text:
                await _run([tools.restore, "--noflush", "--wait", str(WAIT_S)], text)
                log.info("proxy_cleaned_up", mode="iptables", backend=backend.value)
        except IptablesError as exc:
            log.warning("proxy_cleanup_failed", mode="iptables", error=str(exc))
