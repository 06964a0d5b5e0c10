"""Image pulls: N pods of one image new to the node, from a real private registry, on
containerd.

The registry (``tests/harness/registry.py``: Debian's docker-registry with htpasswd auth in
the node's netns) holds the local busybox image. Measured in one run, on one node:

(a) raw: one CRI PullImage with the registry's credentials, then N pods (sandbox + container
    create + start) issued at once straight to containerd: the fastest the node could go;
(b) the agent (``--image-credentials`` holding the same user): N manifests of the image,
    with ``imagePullPolicy: IfNotPresent``, written at once after the image was removed from
    containerd; timed to every pod's container started in the agent's status.

The registry's access log counts the requests it answered (200) for the tag's manifest during
each side: a pull resolves the tag once, so the agent's N pods must cost exactly what one raw
pull cost, i.e. one pull however many pods wait.

Prints one JSON line. Run as root: ``python bench/image_pulls.py [--pods 20]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.benchlib import load_average  # noqa: E402
from bench.pod_startup import POD, all_started, raw_cri  # noqa: E402
from nodeagent import localimages  # noqa: E402
from nodeagent.runtime.base import RegistryAuth  # noqa: E402
from tests.harness import TestNode, wait_for  # noqa: E402
from tests.harness.agent import Agent, RuntimeTarget  # noqa: E402
from tests.harness.registry import HOST, PASSWORD, USER, Registry, docker_config  # noqa: E402

REPO_NAME = "bench/busybox"
IMAGE = f"{HOST}/{REPO_NAME}:1"


async def raw_pull(node: TestNode) -> float:
    from nodeagent.runtime.cri import CRIRuntime

    runtime = CRIRuntime(node.endpoint)
    try:
        started = time.monotonic()
        await runtime.pull_image(IMAGE, RegistryAuth(username=USER, password=PASSWORD))
        return time.monotonic() - started
    finally:
        await runtime.close()


def agent_burst(node: TestNode, root: Path, pods: int) -> float:
    """Seconds from the manifests written to every pod's container started."""
    credentials = root / "config.json"
    credentials.write_text(docker_config())
    agent = Agent(
        node, runtime=RuntimeTarget.cri(node), extra=["--image-credentials", str(credentials)]
    )
    for old in agent.manifests.iterdir():
        old.unlink()
    agent.start()
    try:
        names = [f"pull-{i}" for i in range(pods)]
        started = time.monotonic()
        for name in names:
            text = POD.format(name=name).replace("image: busybox", f"image: {IMAGE}")
            agent.write_manifest(f"{name}.yaml", text)

        def all_running() -> bool:
            seen = [p for p in agent.status()["pods"] if p["metadata"]["name"] in names]
            return len(seen) == pods and all(all_started(p) for p in seen)

        wait_for(all_running, 300, interval=0.05, message=lambda: agent.log_tail())
        took = time.monotonic() - started
        for path in agent.manifests.iterdir():
            path.unlink()
        wait_for(lambda: not agent.status()["pods"], 180, message="pods removed")
        return took
    finally:
        agent.stop()


def remove_everything(node: TestNode) -> None:
    """The raw side's pods and the pulled image, so that the agent pulls it anew."""
    node.reset()
    node.ctr("images", "rm", IMAGE, check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pods", type=int, default=20)
    args = parser.parse_args()
    archives = localimages.build_all(localimages.BuildOptions(build_dir=REPO / "build" / "images"))
    root = Path(tempfile.mkdtemp(prefix="na-bench-"))
    load = load_average()
    node = TestNode.start(root, images=archives)
    try:
        registry = Registry.start(node, root / "registry")
        try:
            registry.push(archives[localimages.BUSYBOX_IMAGE], REPO_NAME, "1")
            before = registry.manifest_requests(REPO_NAME, "1")
            raw_pull_s = asyncio.run(raw_pull(node))
            raw_requests = registry.manifest_requests(REPO_NAME, "1") - before
            # The raw pods run the local busybox: the raw side's starts, without a pull.
            names = [f"raw-{i}" for i in range(args.pods)]
            raw_starts = asyncio.run(raw_cri(node, names))
            remove_everything(node)
            before = registry.manifest_requests(REPO_NAME, "1")
            agent_s = agent_burst(node, root, args.pods)
            agent_requests = registry.manifest_requests(REPO_NAME, "1") - before
        finally:
            registry.close()
    finally:
        node.close()
        shutil.rmtree(root, ignore_errors=True)
    raw_total = raw_pull_s + max(raw_starts)
    print(
        json.dumps(
            {
                "bench": "image_pulls",
                "pods": args.pods,
                "load_avg_1m_at_start": load,
                "raw_pull_s": round(raw_pull_s, 3),
                "raw_starts_max_s": round(max(raw_starts), 3),
                "raw_total_s": round(raw_total, 3),
                "agent_all_running_s": round(agent_s, 3),
                "ratio": round(agent_s / raw_total, 2),
                "manifest_requests_one_raw_pull": raw_requests,
                "manifest_requests_agent": agent_requests,
                "one_pull": agent_requests == raw_requests,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
