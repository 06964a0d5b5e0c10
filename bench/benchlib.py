"""What the benches share: percentiles, the agent's CPU and memory, the test API server.

Not a bench itself (``make bench`` runs the benches ``bench/report.py`` names). Every bench
imports it after putting the repository on ``sys.path``, as the benches run as scripts.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

from tests.harness import TestNode
from tests.harness.agent import Agent
from tests.harness.cluster import Link, veth_link

MIB = 1024 * 1024


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p90/p99/max by nearest rank (with 30 values, p99 is the max)."""
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": round(ordered[-1], 3)}


def agent_process(agent: Agent) -> psutil.Process:
    """The agent's own process (the harness starts it through nsenter, which execs it)."""
    if agent.proc is None:
        raise SystemExit("the agent is not running")
    proc = psutil.Process(agent.proc.pid)
    if "nodeagent" not in " ".join(proc.cmdline()):
        raise SystemExit(f"pid {proc.pid} is not the agent: {proc.cmdline()}")
    return proc


def measure_agent(
    agent: Agent, seconds: float, *, every: Callable[[], object] | None = None
) -> dict[str, Any]:
    """The agent's CPU (user + system, its children too, as % of one core) and RSS over
    ``seconds``, sampled each second; ``every`` runs every 5 s (a status read, say)."""
    proc = agent_process(agent)

    def cpu() -> float:
        t = proc.cpu_times()
        return t.user + t.system + t.children_user + t.children_system

    cpu0 = last_cpu = cpu()
    wall0 = last_wall = time.monotonic()
    times0 = proc.cpu_times()
    rss: list[int] = []
    per_second: list[float] = []
    while time.monotonic() - wall0 < seconds:
        time.sleep(1.0)
        now_cpu, now_wall = cpu(), time.monotonic()
        per_second.append((now_cpu - last_cpu) / (now_wall - last_wall) * 100)
        last_cpu, last_wall = now_cpu, now_wall
        rss.append(proc.memory_info().rss)
        if every is not None and len(per_second) % 5 == 0:
            every()
    times1 = proc.cpu_times()
    wall = last_wall - wall0
    return {
        "seconds": round(wall, 1),
        "cpu_percent_of_one_core": round((last_cpu - cpu0) / wall * 100, 2),
        "cpu_user_percent": round((times1.user - times0.user) / wall * 100, 2),
        "cpu_system_percent": round((times1.system - times0.system) / wall * 100, 2),
        "cpu_percent_p50_1s": round(statistics.median(per_second), 1),
        "cpu_percent_max_1s": round(max(per_second), 1),
        "rss_mib_avg": round(sum(rss) / len(rss) / MIB, 1),
        "rss_mib_max": round(max(rss) / MIB, 1),
    }


@contextlib.contextmanager
def profiled(agent: Agent, out: Path | None, *, rate: int = 100) -> Iterator[None]:
    """With ``out``, py-spy samples the agent while the block runs: raw stacks in ``out``
    (for flamegraph.pl or speedscope) and the hottest functions in ``out`` + ``.top``. The
    agent is never paused (``--nonblocking``); py-spy's own CPU is not the agent's."""
    if out is None:
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    pid = str(agent_process(agent).pid)
    argv = ["py-spy", "record", "-p", pid, "-r", str(rate), "-f", "raw", "-o", str(out)]
    spy = subprocess.Popen(
        [*argv, "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
        if out.exists():
            out.with_name(out.name + ".top").write_text(hottest(out.read_text()))


def hottest(raw: str, count: int = 40) -> str:
    """The functions with the most samples below them (inclusive), from py-spy's raw stacks."""
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, samples = line.rpartition(" ")
        if not samples.isdigit():
            continue
        total += int(samples)
        # Stack order, deduplicated: a tie in samples then ranks the caller before the callee.
        frames = dict.fromkeys(re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";"))
        for frame in frames:
            inclusive[frame] += int(samples)
    lines = [f"{total} samples; share of them with each function on the stack:"]
    # The trunk (entry point, event loop) is on every stack of the main thread: it says nothing.
    trunk = max(inclusive.values(), default=0)
    branches = [(f, n) for f, n in inclusive.most_common() if n < trunk]
    for frame, below in branches[:count]:
        lines.append(f"{below / max(total, 1):6.1%}  {frame}")
    return "\n".join(lines) + "\n"


def load_average() -> float:
    """The 1-minute load average: a bench prints it, so a busy machine shows in the figures."""
    return round(os.getloadavg()[0], 2)


# -- the test API server, reachable from a node ----------------------------------------------


def node_link(node: TestNode) -> contextlib.AbstractContextManager[Link]:
    """A private link-local /30 between the root namespace and the node's, as the cluster
    tests make it (``tests.harness.cluster.veth_link``, our own device names): the test API
    server listens on the root end."""
    return veth_link(node, tag="nb")
