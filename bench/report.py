"""Run every bench and write ``bench/RESULTS.md``: the figures, the targets, the machine.

``make bench`` runs this. Each bench is a script that prints one JSON line; it is run here as
a child process, one at a time (they share the machine's cores with nothing of ours), and its
line is kept in ``bench/results.jsonl``. A bench that fails is reported as such and the
others still run; the exit status is then 1.

    python bench/report.py                      # everything (~11 minutes on 2 cores)
    python bench/report.py --only pod_startup_cri,steady_state
    python bench/report.py --quick              # small sizes: checks that the benches work
    python bench/report.py --render             # rewrite RESULTS.md from results.jsonl
    python bench/report.py --note "..."         # a line for the header (a busy machine, say)

Targets come from issue 9 (pod startup, steady state), and from the probe and proxy benches'
own. Each is listed met or missed, with why it is missed where that is known.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS_JSONL = BENCH / "results.jsonl"
RESULTS_MD = BENCH / "RESULTS.md"


@dataclass(frozen=True)
class Bench:
    name: str
    argv: tuple[str, ...]
    quick: tuple[str, ...]  # extra arguments for --quick


BENCHES = (
    Bench("pod_startup_cri", ("pod_startup.py", "--runtime", "cri"), ("--pods", "5")),
    Bench("pod_startup_docker", ("pod_startup.py", "--runtime", "docker"), ("--pods", "5")),
    Bench(
        "steady_state",
        ("steady_state.py",),
        ("--pods", "20", "--services", "100", "--seconds", "10", "--settle", "3"),
    ),
    Bench("probes", ("probes.py",), ("--pods", "20", "--seconds", "10")),
    Bench("image_pulls", ("image_pulls.py",), ("--pods", "5")),
    Bench("proxy_sync", ("proxy_sync.py",), ("--sizes", "1000", "--rounds", "2", "--changes", "3")),
    Bench(
        "proxy_sync_nft",
        ("proxy_sync_nft.py",),
        ("--sizes", "1000", "--rounds", "2", "--changes", "3"),
    ),
)


# -- running ------------------------------------------------------------------------------------


def run_bench(bench: Bench, *, quick: bool) -> dict[str, Any]:
    # Relative to the repository (the bench runs there): the record names no machine's paths.
    argv = [sys.executable, str((BENCH / bench.argv[0]).relative_to(REPO)), *bench.argv[1:]]
    if quick:
        argv += bench.quick
    print(f"== {bench.name}: {' '.join(argv[1:])}", flush=True)
    started = time.monotonic()
    load = round(os.getloadavg()[0], 2)
    done = subprocess.run(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=None, text=True)
    record: dict[str, Any] = {
        "name": bench.name,
        "argv": argv[1:],
        "seconds": round(time.monotonic() - started, 1),
        "load_avg_1m_before": load,
        "exit_code": done.returncode,
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": commit(),
    }
    line = _last_json_line(done.stdout)
    if done.returncode == 0 and line is not None:
        record["result"] = line
    print(f"   {record['seconds']} s, exit {done.returncode}", flush=True)
    return record


def _last_json_line(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


# -- the machine ------------------------------------------------------------------------------


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "not installed"
    return (done.stdout or done.stderr).strip().splitlines()[0] if done.returncode == 0 else "?"


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "?"
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else "?"


def machine() -> dict[str, str]:
    return {
        "Cores": f"{psutil.cpu_count()} logical ({_cpu_model()})",
        "Memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "Kernel": platform.release(),
        "OS": _os_release(),
        "Python": platform.python_version(),
        "containerd": _first_line(["containerd", "--version"]),
        "runc": _first_line(["runc", "--version"]),
        "Docker": _first_line(["dockerd", "--version"]),
        "iptables": _first_line(["iptables", "--version"]),
    }


def _os_release() -> str:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return "?"
    match = re.search(r'^PRETTY_NAME="?([^"\n]+)"?$', text, re.MULTILINE)
    return match.group(1) if match else "?"


def commit() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    head = git("rev-parse", "--short=12", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "nodeagent")
    return f"{head} (nodeagent/ has uncommitted changes)" if dirty else head


# -- rendering --------------------------------------------------------------------------------

Row = tuple[str, str, str, str]  # figure, value, target, verdict


def _met(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "**missed**")


def _s(value: float) -> str:
    return f"{value:.3f} s"


def pod_startup_rows(r: dict[str, Any]) -> Iterator[Row]:
    base = r["baseline_burst_s"]
    bursts = r.get("bursts", 1)  # one burst per side before the benches ran several
    over = f" (medians of {bursts} bursts)" if bursts > 1 else ""
    raw_p99s = [b["p99"] for b in r.get("baseline_bursts", [])]
    yield (
        f"raw runtime, {r['pods']} pods at once",
        f"p50 {_s(base['p50'])}, p90 {_s(base['p90'])}, p99 {_s(base['p99'])}; "
        f"{r['baseline_pods_per_s']} pods/s{over}{_spread('p99', raw_p99s, ' s')}",
        "",
        "-",
    )
    yield ("raw runtime, one pod", _s(r["baseline_one_pod_s"]), "", "-")
    for source in ("agent_manifests", "agent_api"):
        ours = r.get(source)
        if ours is None:
            continue
        label = "agent (manifests)" if source == "agent_manifests" else "agent (API server)"
        b = ours["burst_s"]
        ratio = f"p99 ratio {ours['burst_p99_ratio']}"
        if bursts > 1:
            ratio += f" (median of {bursts} bursts{_spread('', ours['burst_p99_ratios'], '')})"
        yield (
            f"{label}, {r['pods']} pods at once",
            f"p50 {_s(b['p50'])}, p90 {_s(b['p90'])}, p99 {_s(b['p99'])}; "
            f"{ours['pods_per_s']} pods/s; {ratio}",
            "median p99 <= 1.5x raw" if bursts > 1 else "p99 <= 1.5x raw",
            _met(ours["meets_burst_target"]),
        )
        yield (
            f"{label}, one pod",
            f"{_s(ours['one_pod_s'])} ({ours['one_pod_overhead_s']:+.3f} s)",
            "<= raw + 0.15 s",
            _met(ours["meets_one_pod_target"]),
        )


def _spread(what: str, values: list[float], unit: str) -> str:
    """How far the bursts spread: "; p99 2.6 s to 4.0 s" (nothing for fewer than two)."""
    if len(values) < 2:
        return ""
    lead = f"{what} " if what else ""
    return f"; {lead}{min(values):g}{unit} to {max(values):g}{unit}"


def steady_rows(r: dict[str, Any]) -> Iterator[Row]:
    phases = (("pods_only", f"{r['pods']} pods"), ("with_services", f"+ {r['services']} services"))
    for key, label in phases:
        phase = r.get(key)
        if phase is None:
            continue
        yield (
            f"{label}: CPU",
            f"{phase['cpu_percent_of_one_core']} % of a core (1 s max "
            f"{phase['cpu_percent_max_1s']} %)",
            f"<= {r['target_cpu_percent']} %",
            _met(phase["meets_cpu_target"]),
        )
        yield (
            f"{label}: RSS",
            f"{phase['rss_mib_max']} MiB max; a status read {phase['status_ms']} ms",
            f"<= {r['target_rss_mb']} MB",
            _met(phase["meets_rss_target"]),
        )


def probes_rows(r: dict[str, Any]) -> Iterator[Row]:
    for key, label in (("without_probes", "no probes"), ("with_probes", "2 HTTP probes/pod")):
        phase = r.get(key)
        if phase is None:
            continue
        target = r.get("target_cpu_percent") if key == "with_probes" else None
        yield (
            f"{r['pods']} pods, {label}",
            f"{phase['cpu_percent_of_one_core']} % of a core, {phase['rss_mib_max']} MiB, "
            f"{phase.get('probes_per_s', 0)} probes/s",
            f"< {target} % CPU" if target else "",
            _met(r.get("within_target")) if target else "-",
        )


def image_pulls_rows(r: dict[str, Any]) -> Iterator[Row]:
    pods = r["pods"]
    yield (
        f"{pods} pods of one new image at once: registry pulls",
        f"{r['manifest_requests_agent']} tag resolution(s); one raw pull makes "
        f"{r['manifest_requests_one_raw_pull']}",
        "exactly one pull",
        _met(r.get("one_pull")),
    )
    yield (
        f"{pods} pods of one new image at once: all running",
        f"agent {_s(r['agent_all_running_s'])}; raw pull {_s(r['raw_pull_s'])} + raw starts "
        f"{_s(r['raw_starts_max_s'])} = {_s(r['raw_total_s'])} (ratio {r['ratio']})",
        "",
        "-",
    )


def proxy_rows(r: dict[str, Any]) -> Iterator[Row]:
    """Rows of both proxy benches: iptables (``restore``) and nftables (``nft -f``)."""
    nft = r.get("backend") == "nftables"
    raw, alone = ("raw nft -f", "nft alone") if nft else ("raw restore", "restore alone")
    mode = "nftables mode" if nft else f"iptables mode, iptables-{r.get('backend')}"
    for size in r.get("sizes", []):
        label = f"{size['services']} services x {size['endpoints_per_service']} endpoints"
        yield (
            f"{label}: full sync ({mode})",
            f"{_s(size['full_s'])} vs {raw} {_s(size['raw_s'])} (ratio {size['ratio']})",
            "<= 1.2x raw",
            _met(size["ratio"] <= 1.2),
        )
        change = size.get("endpoint_change")
        if change:
            part = change.get("apply_median_s" if nft else "restore_median_s", 0.0)
            walk = size.get("one_rule", {}).get("verdict_s")
            within = f"; the kernel's walk {_s(walk)}" if walk is not None else ""
            yield (
                f"{label}: one endpoint change ({mode})",
                f"median {_s(change['median_s'])}, max {_s(change['max_s'])} "
                f"({alone} {_s(part)}{within})",
                "< 0.1 s",
                _met(change["median_s"] < 0.1),
            )


ROWS: dict[str, Callable[[dict[str, Any]], Iterator[Row]]] = {
    "pod_startup_cri": pod_startup_rows,
    "pod_startup_docker": pod_startup_rows,
    "steady_state": steady_rows,
    "probes": probes_rows,
    "image_pulls": image_pulls_rows,
    "proxy_sync": proxy_rows,
    "proxy_sync_nft": proxy_rows,
}

# Why a target is missed, where a profile has shown it: (bench name prefix, words in the
# figure, the reason). The first entry matching both explains a missed figure.
WHY_MISSED: tuple[tuple[str, str, str], ...] = (
    (
        "pod_startup_docker",
        "pods at once",
        "In a 30-pod burst on a loaded 2-core machine dockerd can take longer to start a "
        "sandbox than the agent's 10 s limit on one runtime call (runtime_timeout_s): each "
        "timeout discards the sandbox and retries it under backoff, so the burst does the work "
        "several times (52 run_sandbox calls for 31 pods, measured). With the kubelet's default "
        "runtimeRequestTimeout (2 minutes; NODEAGENT_RUNTIME_TIMEOUT_S=120) the same burst took "
        "14 s instead of 44 s.",
    ),
    (
        "pod_startup_docker",
        "one pod",
        "The Docker backend makes more calls per pod than the raw SDK path (an image check "
        "before each sandbox, an inspect and a log link after each start, per-pod lists on "
        "each refresh); their shares are not measured yet.",
    ),
    (
        "pod_startup",
        "",
        "The burst shares 2 cores with containerd, runc and the shims, which are CPU-bound; "
        "every millisecond the agent spends (its relist, its status endpoint, which the bench "
        "polls every 20 ms, its logging) lengthens the tail. Through the API server, a pod "
        "also waits for a watch event to the agent, a status patch and a watch event back, "
        "and the test API server (Python) runs on the same 2 cores. The raw baseline itself "
        "varies by half from burst to burst here (30-pod p99 2.6 s to 4.0 s), which is why "
        "the verdict is the median of the per-burst ratios of interleaved raw and agent "
        "bursts; a single burst's ratio near 1.5 says little.",
    ),
    (
        "steady_state",
        "",
        "The relist (two list calls and their decoding each second) and the proxy's safety "
        "poll are the steady costs; a profile (--profile) shows which one grew.",
    ),
    ("probes", "", "Each HTTP probe is a connection and a request in Python on the agent's loop."),
    (
        "proxy_sync_nft",
        "",
        "Each nft -f starts a process and fetches nft's cache of our table's chains; a full "
        "sync's Python part (building every port's objects and the script) does not overlap "
        "nft's, which reads its whole input before it commits.",
    ),
    (
        "proxy_sync",
        "",
        "With iptables-nft, any transaction that adds a rule with a target (a jump, a DNAT) "
        "makes nf_tables walk every rule reachable from the built-in chains, once per path "
        "(the kernel's walk: 0.03-0.07 s at 5000 services x 10 endpoints without endpoint "
        "chains, varying with the machine's state), and an endpoint change must add such "
        "rules; iptables-restore's start and its cache add the rest. At 5000 services the "
        "iptables mode is within a few tens of milliseconds of the target, and the machine's "
        "load decides. The nftables mode (proxy_sync_nft: services in verdict maps, endpoints "
        "in a map) has the margin.",
    ),
)


def why_missed(name: str, figure: str) -> str:
    for prefix, words, reason in WHY_MISSED:
        if name.startswith(prefix) and words in figure:
            return reason
    return "not known yet."


def _dates(records: list[dict[str, Any]]) -> str:
    dates = sorted({r.get("finished", "?") for r in records})
    return dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}" if dates else "-"


def render(records: list[dict[str, Any]], *, host: dict[str, str], note: str) -> str:
    lines = [
        "# Benchmark results",
        "",
        "Written by `make bench` (`bench/report.py`); the raw JSON lines are in "
        "`bench/results.jsonl`. Every figure compares the agent with the raw runtime (or raw "
        "`iptables-restore`) measured in the same run on the same node.",
        "",
        f"- Date: {_dates(records)}",
        f"- Commit: {', '.join(sorted({r.get('commit', '?') for r in records}))}",
        *(f"- {key}: {value}" for key, value in host.items()),
    ]
    loads = [r["load_avg_1m_before"] for r in records]
    if loads:
        lines.append(f"- Load average (1 min) before each bench: {', '.join(map(str, loads))}")
    if note:
        lines += ["", f"**Note:** {note}"]
    lines += [
        "",
        "| bench | figure | value | target | verdict |",
        "|---|---|---|---|---|",
    ]
    missed: dict[tuple[str, str], list[str]] = {}  # (bench, reason) -> figures
    for record in records:
        name = record["name"]
        result = record.get("result")
        if result is None:
            lines.append(f"| {name} | - | failed (exit {record['exit_code']}) | - | - |")
            continue
        for figure, value, target, verdict in ROWS[name](result):
            lines.append(f"| {name} | {figure} | {value} | {target} | {verdict} |")
            if verdict == "**missed**":
                missed.setdefault((name, why_missed(name, figure)), []).append(figure)
    lines += ["", "## Targets missed, and why", ""]
    if not missed:
        lines.append("None.")
    for (name, why), figures in missed.items():
        lines.append(f"- **{name}** ({'; '.join(figures)}): {why}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--only", default="", help="bench names, comma-separated")
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the benches")
    parser.add_argument("--render", action="store_true", help="only rewrite RESULTS.md")
    parser.add_argument("--note", default="", help="a line for the header of RESULTS.md")
    args = parser.parse_args()
    wanted = [b for b in BENCHES if not args.only or b.name in args.only.split(",")]
    records = _load() if args.render or args.only else {}
    if not args.render:
        for bench in wanted:
            records[bench.name] = run_bench(bench, quick=args.quick)
            _save(records)  # what was measured survives a later bench's crash
    ordered = [records[b.name] for b in BENCHES if b.name in records]
    quick = "Quick run (small sizes): it checks the benches, not the targets."
    note = args.note or (quick if args.quick else "")
    RESULTS_MD.write_text(render(ordered, host=machine(), note=note))
    print(f"wrote {RESULTS_MD.relative_to(REPO)}")
    return 0 if all("result" in r for r in ordered) else 1


def _save(records: dict[str, dict[str, Any]]) -> None:
    ordered = [records[b.name] for b in BENCHES if b.name in records]
    RESULTS_JSONL.write_text("".join(json.dumps(r) + "\n" for r in ordered))


def _load() -> dict[str, dict[str, Any]]:
    """The records of earlier runs, by bench name (--only replaces just its own)."""
    if not RESULTS_JSONL.exists():
        return {}
    records = [json.loads(line) for line in RESULTS_JSONL.read_text().splitlines() if line]
    return {r["name"]: r for r in records}


if __name__ == "__main__":
    raise SystemExit(main())
