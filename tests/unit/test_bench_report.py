"""The benchmark report: percentiles, and RESULTS.md rows with their targets met or missed."""

from __future__ import annotations

from typing import Any

import pytest

from bench import report
from bench.benchlib import hottest, percentiles


def test_percentiles_by_nearest_rank() -> None:
    values = [float(v) for v in range(1, 31)]  # 1..30, shuffled order must not matter
    got = percentiles(list(reversed(values)))
    assert got == {"p50": 16.0, "p90": 28.0, "p99": 30.0, "max": 30.0}


def startup(p99_ratio: float, overhead: float, *, ratios: tuple[float, ...] = ()) -> dict[str, Any]:
    """A pod_startup result; ``ratios``: the per-burst p99 ratios (none: one burst, the shape
    of results recorded before the bench ran several)."""
    base = {"p50": 1.0, "p90": 1.0, "p99": 2.0, "max": 2.0}
    agent = {"p50": 1.0, "p90": 1.0, "p99": 2.0 * p99_ratio, "max": 2.0 * p99_ratio}
    result: dict[str, Any] = {
        "pods": 30,
        "baseline_burst_s": base,
        "baseline_pods_per_s": 10.0,
        "baseline_one_pod_s": 0.2,
        "agent_manifests": {
            "burst_s": agent,
            "burst_p99_ratio": p99_ratio,
            "pods_per_s": 9.0,
            "one_pod_s": 0.2 + overhead,
            "one_pod_overhead_s": overhead,
            "meets_burst_target": p99_ratio <= 1.5,
            "meets_one_pod_target": overhead <= 0.15,
        },
    }
    if ratios:
        result["bursts"] = len(ratios)
        result["baseline_bursts"] = [{**base, "p99": p99} for p99 in (2.6, 2.0, 4.0)[: len(ratios)]]
        result["agent_manifests"]["burst_p99_ratios"] = list(ratios)
    return result


def record(name: str, result: dict[str, Any] | None) -> dict[str, Any]:
    rec: dict[str, Any] = {"name": name, "load_avg_1m_before": 0.5, "exit_code": 0}
    rec.update(finished="2026-11-25 20:00 UTC", commit="abc")
    if result is not None:
        rec["result"] = result
    else:
        rec["exit_code"] = 1
    return rec


@pytest.fixture
def host() -> dict[str, str]:
    return {"Cores": "2"}


def test_met_targets_list_no_reason(host: dict[str, str]) -> None:
    text = report.render([record("pod_startup_cri", startup(1.2, 0.05))], host=host, note="")
    rows = [line for line in text.splitlines() if line.startswith("| pod_startup_cri")]
    assert [row.rsplit("|", 2)[-2].strip() for row in rows] == ["-", "-", "met", "met"]
    assert text.rstrip().endswith("None.")
    assert "(+0.050 s)" in text


def test_several_bursts_show_the_median_ratio_and_the_spread(host: dict[str, str]) -> None:
    result = startup(1.2, 0.05, ratios=(0.9, 1.2, 1.57))
    text = report.render([record("pod_startup_cri", result)], host=host, note="")
    raw, _, burst, _ = [line for line in text.splitlines() if line.startswith("| pod_startup")]
    assert "(medians of 3 bursts); p99 2 s to 4 s" in raw
    assert "p99 ratio 1.2 (median of 3 bursts; 0.9 to 1.57)" in burst
    assert "median p99 <= 1.5x raw" in burst and burst.endswith("| met |")


def test_a_missed_target_is_marked_and_explained(host: dict[str, str]) -> None:
    records = [
        record("pod_startup_docker", startup(3.0, 0.4)),
        record("probes", None),  # a bench that failed
    ]
    text = report.render(records, host=host, note="busy machine")

    assert text.count("**missed**") == 2  # the burst row and the one-pod row
    assert "| probes | - | failed (exit 1) | - | - |" in text
    assert "**Note:** busy machine" in text
    burst = report.why_missed("pod_startup_docker", "agent (manifests), 30 pods at once")
    one = report.why_missed("pod_startup_docker", "agent (manifests), one pod")
    assert burst != one  # each missed figure gets its own reason
    assert f"- **pod_startup_docker** (agent (manifests), 30 pods at once): {burst}" in text
    assert f"- **pod_startup_docker** (agent (manifests), one pod): {one}" in text
    assert report.why_missed("pod_startup_cri", "agent (manifests), one pod") != one


def test_proxy_rows_judge_each_size(host: dict[str, str]) -> None:
    size = {
        "services": 1000,
        "endpoints_per_service": 10,
        "full_s": 1.3,
        "raw_s": 1.0,
        "ratio": 1.3,
        "endpoint_change": {"median_s": 0.05, "max_s": 0.07, "restore_median_s": 0.04},
    }
    rows = list(report.proxy_rows({"backend": "nft", "sizes": [size]}))
    assert [row[3] for row in rows] == ["**missed**", "met"]
    assert "raw restore 1.000 s" in rows[0][1] and "restore alone 0.040 s" in rows[1][1]


def test_proxy_rows_of_the_nftables_mode() -> None:
    size = {
        "services": 5000,
        "endpoints_per_service": 10,
        "full_s": 5.0,
        "raw_s": 4.6,
        "ratio": 1.087,
        "endpoint_change": {"median_s": 0.12, "max_s": 0.2, "apply_median_s": 0.05},
    }
    rows = list(report.proxy_rows({"backend": "nftables", "sizes": [size]}))
    assert [row[3] for row in rows] == ["met", "**missed**"]
    assert "raw nft -f 4.600 s" in rows[0][1] and "nft alone 0.050 s" in rows[1][1]
    assert rows[1][0] == "5000 services x 10 endpoints: one endpoint change (nftables mode)"
    assert "proxy_sync_nft" in report.ROWS and any(
        b.name == "proxy_sync_nft" for b in report.BENCHES
    )
    assert report.why_missed("proxy_sync_nft", rows[1][0]).startswith("Each nft -f")


def test_hottest_ranks_functions_below_the_trunk() -> None:
    raw = "\n".join(
        [
            "main (cli.py:1);loop (a.py:2);snapshot (d.py:3);dumps (j.py:4) 6",
            "main (cli.py:1);loop (a.py:2);relist (p.py:5) 3",
            "main (cli.py:1);loop (a.py:9) 1",
            "garbage line",
        ]
    )
    lines = hottest(raw).splitlines()
    assert lines[0].startswith("10 samples")
    # main and loop are on every stack (the trunk); line numbers are folded per function.
    assert [line.split()[1:] for line in lines[1:]] == [
        ["snapshot", "(d.py)"],
        ["dumps", "(j.py)"],
        ["relist", "(p.py)"],
    ]
