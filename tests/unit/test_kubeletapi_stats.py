"""Counters from a cgroup tree (a fake one under tmp_path) and the resource metrics text."""

from __future__ import annotations

from pathlib import Path

from nodeagent.kubeletapi import cgroups, logs, stats


def write(path: Path, text: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for line in text.strip().splitlines():
        name, _, content = line.partition("=")
        (path / name).write_text(content.replace("|", "\n") + "\n")


def test_v1_counters_are_found_by_container_id_and_read_as_cadvisor(tmp_path: Path) -> None:
    write(tmp_path / "memory", "memory.usage_in_bytes=1000\nmemory.stat=total_inactive_file 1")
    cid = "ab" * 32
    write(
        tmp_path / "memory" / "k8s.io" / cid,
        "memory.usage_in_bytes=500\n"
        "memory.stat=total_inactive_file 100|total_rss 300|total_pgfault 7|total_pgmajfault 2\n"
        "cgroup.procs=42|43",
    )
    write(tmp_path / "cpuacct" / "k8s.io" / cid, "cpuacct.usage=123456789")
    write(tmp_path / "cpuacct", "cpuacct.usage=999")
    # systemd's naming: the id inside a scope's name
    write(tmp_path / "memory" / "system.slice" / f"docker-{'cd' * 32}.scope", "memory.stat=")

    index = cgroups.CgroupIndex(tmp_path)
    rel = index.find(cid)
    assert rel == f"/k8s.io/{cid}"
    assert index.find("cd" * 32) == f"/system.slice/docker-{'cd' * 32}.scope"
    assert index.read(rel) == cgroups.CpuMemory(123456789, 500, 400, 300, 7, 2)
    assert index.read("").cpu_ns == 999 and index.read("").working_set_bytes == 999
    assert index.pids(rel) == [42, 43]
    assert index.find("nope") is None


def test_resource_metrics_render_the_summary() -> None:
    summary = {
        "node": {
            "cpu": {"usageCoreNanoSeconds": 2_500_000_001},
            "memory": {"workingSetBytes": 123456789},
        },
        "pods": [
            {
                "podRef": {"name": "web", "namespace": "default", "uid": "u"},
                "cpu": {"usageCoreNanoSeconds": 1_000_000_000},
                "memory": {"workingSetBytes": 5},
                "containers": [
                    {
                        "name": "app",
                        "startTime": "2026-12-06T22:00:00Z",
                        "cpu": {"usageCoreNanoSeconds": 500_000_000},
                        "memory": {},
                    }
                ],
            }
        ],
    }
    text = stats.resource_metrics(summary, parse_time=logs.parse_time)
    lines = text.splitlines()
    assert "node_cpu_usage_seconds_total 2.500000001" in lines
    assert "node_memory_working_set_bytes 123456789" in lines
    assert 'pod_cpu_usage_seconds_total{namespace="default",pod="web"} 1' in lines
    labels = '{container="app",namespace="default",pod="web"}'
    assert f"container_cpu_usage_seconds_total{labels} 0.5" in lines
    assert f"container_start_time_seconds{labels} 1796594400" in lines
    assert not any(line.startswith("container_memory_working_set_bytes{") for line in lines)
    assert "# TYPE node_cpu_usage_seconds_total counter" in lines
    assert "# TYPE container_memory_working_set_bytes gauge" in lines
    assert lines[-1] == "scrape_error 0"


async def test_usage_nano_cores_is_the_rate_since_the_previous_scrape(tmp_path: Path) -> None:
    cid = "ef" * 32
    container = tmp_path / "cg" / "cpuacct" / "k8s.io" / cid
    write(tmp_path / "cg" / "memory" / "k8s.io" / cid, "memory.usage_in_bytes=10")
    write(container, "cpuacct.usage=1000")
    pod = {
        "metadata": {"name": "web", "namespace": "default", "uid": "u1"},
        "status": {
            "containerStatuses": [
                {"name": "app", "containerID": f"containerd://{cid}", "state": {"running": {}}}
            ]
        },
    }
    collector = stats.Collector(
        stats.Sources("n1", tmp_path, tmp_path, started_at=0.0, cgroup_root=tmp_path / "cg")
    )
    first = await collector.summary([pod], [])
    [app] = first["pods"][0]["containers"]
    assert app["cpu"]["usageCoreNanoSeconds"] == 1000 and "usageNanoCores" not in app["cpu"]
    assert app["memory"]["workingSetBytes"] == 10
    write(container, "cpuacct.usage=5000")
    second = await collector.summary([pod], [])
    [app] = second["pods"][0]["containers"]
    assert app["cpu"]["usageCoreNanoSeconds"] == 5000 and app["cpu"]["usageNanoCores"] > 0
    await collector.summary([], [])  # the pod is gone; so is its sample
    third = await collector.summary([pod], [])
    assert "usageNanoCores" not in third["pods"][0]["containers"][0]["cpu"]
