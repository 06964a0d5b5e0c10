"""Pod startup: the agent against the raw runtime, measured in the same run, on one node.

(a) baseline: the same work issued straight to the runtime with no agent, for one pod on an
    idle node and for N pods at once:
    - ``--runtime cri``: RunPodSandbox, CreateContainer, StartContainer (containerd runs CNI);
    - ``--runtime docker``: with the docker SDK alone, as dockershim did: a pause container
      (network none), CNI ADD on its network namespace, the app container joining it,
      started. It runs in a child process inside the node's network namespace, where the
      CNI plugins must act;
(b) the agent on the same runtime, each pod timed from its appearance to all its containers
    started and that status observable:
    - ``manifests``: N manifests written at once into its directory; observed on its status
      socket (polled every 20 ms);
    - ``api``: N pods created at once in the test API server (tests/apiserver, on a private
      veth link to the node); observed as a watch on the API sees it (kubectl's view).

A burst's tail on 2 shared cores swings by half from one burst to the next, the raw
runtime's as much as the agent's, so one burst per side says little. The bench runs
``--bursts`` rounds, each a raw burst, then the agent's burst from each source, one after the
other, so that both sides see the same state of the machine; each agent burst is compared with
the raw burst of its own round.

Prints one JSON line: per burst, p50/p90/p99/max, throughput (pods per second of the whole
burst), the agent/raw p99 ratio and the agent's CPU seconds; over the bursts, the median of
each figure and, as the headline, the median of the per-burst p99 ratios; for the API
server, the agent's requests during each burst by kind; and the one-pod latencies (the
median of ``--one-pod-runs`` pods started one after the other, in the first round) with the
agent's overhead.
Run as root: ``python bench/pod_startup.py [--runtime cri|docker] [--pods 30] [--bursts 3]``;
``--profile DIR`` records py-spy profiles of the agent during each burst.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from bench.benchlib import (  # noqa: E402
    agent_process,
    load_average,
    node_link,
    percentiles,
    profiled,
)
from nodeagent import devenv, localimages  # noqa: E402
from nodeagent.kubelet import specs  # noqa: E402
from nodeagent.model.validate import parse_pod  # noqa: E402
from tests.harness import TestNode, wait_for  # noqa: E402
from tests.harness.agent import Agent, RuntimeTarget  # noqa: E402

NODE_NAME = "node-a"
POD = """apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
    - name: main
      image: busybox
      imagePullPolicy: IfNotPresent
      command: ["sleep", "3600"]
"""

Timings = dict[str, float]  # pod name -> seconds to started and observed


def pod_doc(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(POD.format(name=name))
    return doc


# -- (a) the raw runtimes ---------------------------------------------------------------------


async def raw_cri(node: TestNode, names: list[str]) -> list[float]:
    """Seconds per pod for sandbox + container create + start, all pods concurrently."""
    from nodeagent.runtime.cri import CRIRuntime

    runtime = CRIRuntime(node.endpoint)

    async def one(name: str) -> float:
        pod = parse_pod(pod_doc(name), source="bench", node_name=NODE_NAME)
        started = time.monotonic()
        sandbox = specs.sandbox_config(pod, attempt=0, pod_log_dir=str(node.pod_log_dir))
        sandbox_id = await runtime.run_sandbox(sandbox)
        status = await runtime.sandbox_status(sandbox_id)
        config = specs.container_config(
            pod,
            pod.spec.containers[0],
            attempt=0,
            facts=specs.envvars.PodFacts(NODE_NAME, status.ip),
            volume_paths={},
        )
        container_id = await runtime.create_container(sandbox_id, config, sandbox)
        await runtime.start_container(container_id)
        return time.monotonic() - started

    try:
        return list(await asyncio.gather(*(one(n) for n in names)))
    finally:
        await runtime.close()


async def raw_docker_inside(
    endpoint: str, conf_dir: Path, cache_dir: Path, names: list[str]
) -> list[float]:
    """The docker baseline, run inside the node's network namespace (see the docstring)."""
    import docker

    from nodeagent.network.cniexec import CNIExec

    network = CNIExec(
        conf_dir=conf_dir, bin_dirs=(devenv.default_cni_bin_dir(),), cache_dir=cache_dir
    )
    api = docker.APIClient(base_url=endpoint, version="1.41", timeout=60, max_pool_size=64)
    pool = ThreadPoolExecutor(max_workers=64)
    loop = asyncio.get_running_loop()

    async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await loop.run_in_executor(pool, lambda: fn(*args, **kwargs))

    async def one(name: str) -> float:
        started = time.monotonic()
        pause = await call(
            api.create_container,
            "registry.k8s.io/pause:3.6",
            name=f"k8s_POD_{name}_default_{name}_0",
            host_config=api.create_host_config(network_mode="none", ipc_mode="shareable"),
        )
        await call(api.start, pause["Id"])
        pid = (await call(api.inspect_container, pause["Id"]))["State"]["Pid"]
        await network.add(pause["Id"], f"/proc/{pid}/ns/net")
        main = await call(
            api.create_container,
            "docker.io/library/busybox:latest",
            command=["sleep", "3600"],
            name=f"k8s_main_{name}_default_{name}_0",
            host_config=api.create_host_config(
                network_mode=f"container:{pause['Id']}", ipc_mode=f"container:{pause['Id']}"
            ),
        )
        await call(api.start, main["Id"])
        return time.monotonic() - started

    try:
        return list(await asyncio.gather(*(one(n) for n in names)))
    finally:
        pool.shutdown()
        api.close()


class Runtime:
    """The node's runtime for this run: how to drive it raw, and how to empty it."""

    def __init__(self, kind: str, node: TestNode, archives: dict[str, Path]) -> None:
        from tests.harness.dockerd import DockerDaemon

        self.node = node
        self.daemon = DockerDaemon.start(node, images=archives) if kind == "docker" else None
        self.target = (
            RuntimeTarget.cri(node)
            if self.daemon is None
            else RuntimeTarget.for_docker(node, self.daemon)
        )

    def raw(self, names: list[str]) -> list[float]:
        if self.daemon is None:
            return asyncio.run(raw_cri(self.node, names))
        argv = [sys.executable, __file__, "--raw-docker-inside", self.daemon.endpoint]
        argv += [str(self.node.cni_conf_dir), str(self.daemon.cni_cache_dir), *names]
        done = self.node.run(argv, cwd=REPO, timeout=300)
        result: list[float] = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    def reset(self) -> None:
        if self.daemon is None:
            self.node.reset()
        else:
            self.daemon.reset()

    def close(self) -> None:
        if self.daemon is not None:
            self.daemon.close()


def median_of(runs: list[float]) -> dict[str, Any]:
    """One pod's latency, measured ``len(runs)`` times one after the other: the median, and
    every run (a single run on a shared machine says little). Nothing when not measured."""
    if not runs:
        return {}
    return {"one": statistics.median(runs), "one_runs": [round(r, 3) for r in runs]}


def raw_one_pod(runtime: Runtime, one_runs: int) -> dict[str, Any]:
    runtime.raw(["raw-warmup"])  # first use of the image and the snapshotter
    runtime.reset()
    ones = []
    for i in range(one_runs):
        ones.append(runtime.raw([f"raw-one-{i}"])[0])
        runtime.reset()
    return median_of(ones)


def raw_burst(runtime: Runtime, pods: int) -> dict[str, Any]:
    started = time.monotonic()
    burst = runtime.raw([f"raw-{i}" for i in range(pods)])
    wall = time.monotonic() - started
    runtime.reset()
    return {"burst": burst, "wall": wall}


# -- (b) the agent, from its manifest directory -----------------------------------------------


def all_started(pod: dict[str, Any]) -> bool:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return bool(statuses) and all(s.get("started") for s in statuses)


def manifest_pods(agent: Agent, names: list[str]) -> list[float]:
    """Seconds from each manifest appearing to all its containers started in status."""
    written: dict[str, float] = {}
    for name in names:
        written[name] = time.monotonic()
        agent.write_manifest(f"{name}.yaml", POD.format(name=name))
    done: Timings = {}

    def check() -> bool:
        now = time.monotonic()
        for pod in agent.status()["pods"]:
            name = pod["metadata"]["name"]
            if name in written and name not in done and all_started(pod):
                done[name] = now - written[name]
        return len(done) == len(names)

    wait_for(check, 180, interval=0.02, message="all pods started")
    return [done[n] for n in names]


def clear_manifests(agent: Agent) -> None:
    for path in agent.manifests.iterdir():
        path.unlink()
    wait_for(lambda: not agent.status()["pods"], 180, message="pods removed")


def agent_from_manifests(
    runtime: Runtime, pods: int, one_runs: int, profile: Path | None
) -> dict[str, Any]:
    agent = Agent(runtime.node, name=NODE_NAME, runtime=runtime.target)
    for old in agent.manifests.iterdir():
        old.unlink()
    agent.start()
    try:
        wait_for(lambda: agent.status()["node"], 30, message="agent up")
        manifest_pods(agent, ["warmup"])
        clear_manifests(agent)
        ones = []
        for i in range(one_runs):  # the first round only
            ones.append(manifest_pods(agent, [f"agent-one-{i}"])[0])
            clear_manifests(agent)
        started, cpu = time.monotonic(), cpu_seconds(agent)
        with profiled(agent, profile):
            burst = manifest_pods(agent, [f"agent-{i}" for i in range(pods)])
        wall, cpu = time.monotonic() - started, cpu_seconds(agent) - cpu
        clear_manifests(agent)
    finally:
        agent.stop()
    runtime.reset()
    return {**median_of(ones), "burst": burst, "wall": wall, "agent_cpu_s": cpu}


def cpu_seconds(agent: Agent) -> float:
    """The agent's CPU time so far (user + system, its children too)."""
    t = agent_process(agent).cpu_times()
    return float(t.user + t.system + t.children_user + t.children_system)


# -- (b) the agent, from the test API server --------------------------------------------------


async def api_pods(admin: Any, names: list[str]) -> list[float]:
    """Seconds from each pod's create call to a watch seeing all its containers started."""
    from lightkube.resources.core_v1 import Pod

    created: dict[str, float] = {}
    done: Timings = {}
    finished = asyncio.Event()

    async def watch() -> None:
        async for _, obj in admin.watch(Pod, namespace="default"):
            name = obj.metadata.name
            statuses = (obj.status and obj.status.containerStatuses) or []
            fresh = name in created and name not in done
            if fresh and statuses and all(s.started for s in statuses):
                done[name] = time.monotonic() - created[name]
                if len(done) == len(names):
                    finished.set()

    async def create(name: str) -> None:
        doc = pod_doc(name)
        doc["spec"].update(nodeName=NODE_NAME, automountServiceAccountToken=False)
        created[name] = time.monotonic()
        await admin.create(Pod.from_dict(doc))

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.gather(*(create(n) for n in names))
        async with asyncio.timeout(180):
            await finished.wait()
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    return [done[n] for n in names]


async def clear_api(admin: Any, agent: Agent, names: list[str]) -> None:
    from lightkube.resources.core_v1 import Pod

    for name in names:
        await admin.delete(Pod, name, namespace="default")
    await asyncio.to_thread(
        wait_for, lambda: not agent.status()["pods"], 180, message="pods removed"
    )


async def agent_from_api(
    runtime: Runtime, workdir: Path, pods: int, one_runs: int, profile: Path | None
) -> dict[str, Any]:
    from lightkube import AsyncClient, KubeConfig

    from tests.apiserver.process import ApiServerProcess

    with node_link(runtime.node) as link:
        server = ApiServerProcess(workdir, host=link.host_ip)
        kubeconfig = server.node_kubeconfig(NODE_NAME)
        async with server:
            extra = ["--kubeconfig", str(kubeconfig)]
            agent = Agent(runtime.node, name=NODE_NAME, extra=extra, runtime=runtime.target)
            for old in agent.manifests.iterdir():
                old.unlink()
            await asyncio.to_thread(agent.start)
            admin = AsyncClient(KubeConfig.from_file(server.kubeconfig))
            try:
                await asyncio.to_thread(
                    wait_for,
                    lambda: agent.status()["cluster"]["podsListed"],
                    60,
                    message="agent watching its pods",
                )
                await api_pods(admin, ["warmup"])
                await clear_api(admin, agent, ["warmup"])
                ones = []
                for i in range(one_runs):
                    ones.append((await api_pods(admin, [f"api-one-{i}"]))[0])
                    await clear_api(admin, agent, [f"api-one-{i}"])
                names = [f"api-{i}" for i in range(pods)]
                started, since, cpu = time.monotonic(), time.time(), cpu_seconds(agent)
                with profiled(agent, profile):
                    burst = await api_pods(admin, names)
                wall, cpu = time.monotonic() - started, cpu_seconds(agent) - cpu
                served = await server.requests()
                requests = agent_requests(served, since=since, until=time.time())
                await clear_api(admin, agent, names)
            finally:
                await admin.close()
                await asyncio.to_thread(agent.stop)
    runtime.reset()
    return {
        **median_of(ones),
        "burst": burst,
        "wall": wall,
        "agent_cpu_s": cpu,
        "requests": requests,
    }


def agent_requests(served: list[dict[str, Any]], *, since: float, until: float) -> dict[str, int]:
    """The agent's requests served during a burst, by method and resource ("PATCH
    pods/status": 60): what the burst cost the API server, and where a waste would show."""
    counts: collections.Counter[str] = collections.Counter()
    for request in served:
        user = str(request.get("user") or "")
        if user.startswith("system:node:") and since <= request["time"] <= until:
            counts[request_kind(request["method"], request["path"], request["query"])] += 1
    return dict(sorted(counts.items()))


def request_kind(method: str, path: str, query: str) -> str:
    """``PATCH /api/v1/namespaces/default/pods/p/status`` -> ``PATCH pods/status``."""
    parts = path.strip("/").split("/")
    parts = parts[2:] if parts[:1] == ["api"] else parts[3:]  # api/v1, apis/group/version
    if parts[:1] == ["namespaces"] and len(parts) > 2:
        parts = parts[2:]
    resource = "/".join(parts[:1] + parts[2:3])
    verb = "WATCH" if "watch=true" in query else method
    return f"{verb} {resource}"


# -- the report -------------------------------------------------------------------------------


def burst_figures(pods: int, run: dict[str, Any]) -> dict[str, Any]:
    return {**percentiles(run["burst"]), "pods_per_s": round(pods / run["wall"], 2)}


def medians(bursts: list[dict[str, Any]]) -> dict[str, float]:
    """Each percentile's median over the bursts."""
    keys = ("p50", "p90", "p99", "max")
    return {k: round(statistics.median(b[k] for b in bursts), 3) for k in keys}


def summary(
    pods: int, raw_one: dict[str, Any], rounds: list[dict[str, dict[str, Any]]]
) -> dict[str, Any]:
    """The figures of every round: ``rounds[i]`` maps "raw" and each source to its run."""
    raw = [burst_figures(pods, r["raw"]) for r in rounds]
    result: dict[str, Any] = {
        "bursts": len(rounds),
        "baseline_burst_s": medians(raw),
        "baseline_pods_per_s": round(statistics.median(b["pods_per_s"] for b in raw), 2),
        "baseline_bursts": raw,
        "baseline_one_pod_s": round(raw_one["one"], 3),
        "baseline_one_pod_runs_s": raw_one["one_runs"],
    }
    sources = [s for s in rounds[0] if s != "raw"]
    for source in sources:
        ours = []
        for base, r in zip(raw, rounds, strict=True):
            figures = burst_figures(pods, r[source])
            figures["p99_ratio"] = round(figures["p99"] / base["p99"], 2)
            figures["agent_cpu_s"] = round(r[source]["agent_cpu_s"], 2)
            if "requests" in r[source]:
                figures["requests"] = r[source]["requests"]
            ours.append(figures)
        ratio = round(statistics.median(b["p99_ratio"] for b in ours), 2)
        one = rounds[0][source]["one"]
        result[source] = {
            "burst_s": medians(ours),
            "burst_p99_ratio": ratio,  # the headline: the median of the per-burst ratios
            "burst_p99_ratios": [b["p99_ratio"] for b in ours],
            "pods_per_s": round(statistics.median(b["pods_per_s"] for b in ours), 2),
            "bursts": ours,
            "one_pod_s": round(one, 3),
            "one_pod_runs_s": rounds[0][source]["one_runs"],
            "one_pod_overhead_s": round(one - raw_one["one"], 3),
            # The targets: p99 <= 1.5x the raw runtime's; one pod <= raw + 0.15 s.
            "meets_burst_target": ratio <= 1.5,
            "meets_one_pod_target": one <= raw_one["one"] + 0.15,
        }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runtime", choices=("cri", "docker"), default="cri")
    parser.add_argument("--pods", type=int, default=30)
    parser.add_argument(
        "--one-pod-runs", type=int, default=5, help="one-pod runs (the median is reported)"
    )
    parser.add_argument(
        "--bursts",
        type=int,
        default=3,
        help="rounds of bursts, raw and agent interleaved (the median ratio is reported)",
    )
    parser.add_argument(
        "--sources", default="manifests,api", help="agent pod sources, comma-separated"
    )
    parser.add_argument(
        "--profile", type=Path, help="directory for py-spy profiles of the agent's bursts"
    )
    parser.add_argument("--raw-docker-inside", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_docker_inside:
        endpoint, conf_dir, cache_dir, *names = args.raw_docker_inside
        times = asyncio.run(raw_docker_inside(endpoint, Path(conf_dir), Path(cache_dir), names))
        print(json.dumps(times))
        return 0
    sources = [s for s in args.sources.split(",") if s]
    if args.bursts < 1 or args.one_pod_runs < 1:
        parser.error("--bursts and --one-pod-runs must be at least 1")

    def profile(source: str, round_: int) -> Path | None:
        name = f"pod_startup-{args.runtime}-{source}-{round_ + 1}.txt"
        return None if args.profile is None else args.profile.resolve() / name

    archives = localimages.build_all(localimages.BuildOptions(build_dir=REPO / "build" / "images"))
    root = Path(tempfile.mkdtemp(prefix="na-bench-"))
    load = load_average()
    node = TestNode.start(root, images=archives)
    rounds: list[dict[str, dict[str, Any]]] = []
    try:
        runtime = Runtime(args.runtime, node, archives)
        try:
            raw_one = raw_one_pod(runtime, args.one_pod_runs)
            for i in range(args.bursts):
                ones = args.one_pod_runs if i == 0 else 0
                runs = {"raw": raw_burst(runtime, args.pods)}
                if "manifests" in sources:
                    runs["agent_manifests"] = agent_from_manifests(
                        runtime, args.pods, ones, profile("manifests", i)
                    )
                if "api" in sources:
                    runs["agent_api"] = asyncio.run(
                        agent_from_api(
                            runtime, root / f"api-{i}", args.pods, ones, profile("api", i)
                        )
                    )
                rounds.append(runs)
                print(f"round {i + 1}: {round_line(runs)}", file=sys.stderr, flush=True)
        finally:
            runtime.close()
    finally:
        node.close()
        shutil.rmtree(root, ignore_errors=True)
    result = {
        "bench": "pod_startup",
        "runtime": args.runtime,
        "pods": args.pods,
        "load_avg_1m_at_start": load,
        **summary(args.pods, raw_one, rounds),
    }
    print(json.dumps(result))
    return 0


def round_line(runs: dict[str, dict[str, Any]]) -> str:
    """A round's p99s, on stderr as it ends (a long run shows its progress)."""
    return ", ".join(f"{source} p99 {max(run['burst']):.3f} s" for source, run in runs.items())


if __name__ == "__main__":
    raise SystemExit(main())
