"""Spec updates keep the pod, end to end against the test API server, on containerd and on
Docker Engine (``runtime_target``): a new image restarts only that container in the same
sandbox, as the kubelet's computePodActions does (in a pod with a projected token volume,
whose spec the agent rewrites); ``kubectl debug`` adds an ephemeral container through the
pods/ephemeralcontainers subresource, and it runs beside the others and sees its target's
processes; a lowered activeDeadlineSeconds fails the running pod.

No registry is reachable: the "new image" is the local busybox under a second tag, added to
the node's runtime by the test.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from lightkube import AsyncClient
from lightkube.resources.core_v1 import Event, Pod

from tests.apiserver.process import ApiServerProcess
from tests.harness import TestNode, async_wait_for
from tests.harness.agent import Agent, RuntimeTarget
from tests.harness.cluster import (
    SLEEP,
    cluster_agent,
    create,
    get_pod,
    pod_manifest,
    wait_ready,
)

NEW_TAG = "busybox:v2"


@pytest.fixture
def agent(node: TestNode, runtime_target: RuntimeTarget, api: ApiServerProcess) -> Iterator[Agent]:
    with cluster_agent(node, api, runtime=runtime_target, cluster_dns=None) as a:
        yield a


def tag_second_image(target: RuntimeTarget) -> None:
    """The local busybox under NEW_TAG as well, in the runtime the agent drives."""
    if target.docker is not None:
        target.docker.docker("tag", "busybox:latest", NEW_TAG)
    else:
        full = f"docker.io/library/{NEW_TAG}"
        target.node.ctr("images", "tag", "--force", "docker.io/library/busybox:latest", full)


def statuses(pod: dict[str, Any], key: str = "containerStatuses") -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in pod["status"].get(key) or []}


async def sandbox_ids(target: RuntimeTarget, uid: str) -> list[str]:
    found = await asyncio.to_thread(target.sandboxes)  # its own event loop, in a thread
    return sorted(s.id for s in found if s.uid == uid)


def two_containers(name: str, script: str = SLEEP, *, token: bool = False) -> dict[str, Any]:
    body = pod_manifest(name, script, grace=2, token=token)
    main = body["spec"]["containers"][0]
    body["spec"]["containers"].append({**main, "name": "side"})
    return body


async def test_a_new_image_restarts_only_that_container(
    admin: AsyncClient, agent: Agent, runtime_target: RuntimeTarget
) -> None:
    # With the service account's projected token volume: such a pod runs a rewritten spec,
    # which must follow the update too.
    uid = await create(admin, two_containers("web", token=True))
    before = await wait_ready(admin, agent, "web")
    mounts = before["spec"]["containers"][0]["volumeMounts"]
    assert any(m["name"].startswith("kube-api-access-") for m in mounts)
    sandboxes = await sandbox_ids(runtime_target, uid)
    assert len(sandboxes) == 1
    old = statuses(before)
    tag_second_image(runtime_target)
    seen: list[str] = []

    async def told(reason: str) -> list[str]:
        events = [e async for e in admin.list(Event, namespace="default")]
        seen[:] = [f"{e.reason}: {e.message}" for e in events]
        return [
            e.message or "" for e in events if e.reason == reason and e.involvedObject.name == "web"
        ]

    # The Killing event is derived, as the others, from the statuses the agent observes: it
    # needs to have seen the old container run under its old image (best effort, as events).
    await async_wait_for(lambda: told("Started"), 20, message=lambda: f"Started among {seen}")

    patch = {"spec": {"containers": [{"name": "main", "image": NEW_TAG}]}}
    await admin.patch(Pod, "web", patch, namespace="default")

    async def restarted() -> dict[str, Any] | None:
        pod = await get_pod(admin, "web")
        main = statuses(pod or {"status": {}}).get("main") or {}
        ready = main.get("ready") and main.get("containerID") != old["main"]["containerID"]
        return pod if ready and main.get("restartCount") == 1 else None

    after = await async_wait_for(
        restarted, 40, interval=0.2, message=lambda: f"main restarted\n{agent.log_tail()}"
    )
    new = statuses(after)
    assert new["main"]["image"] == NEW_TAG
    assert new["main"]["lastState"]["terminated"]["exitCode"] == 0  # stopped by TERM
    assert new["side"]["containerID"] == old["side"]["containerID"]
    assert new["side"]["restartCount"] == 0
    assert after["status"]["podIP"] == before["status"]["podIP"]
    assert after["metadata"]["uid"] == uid
    assert await sandbox_ids(runtime_target, uid) == sandboxes

    (message,) = await async_wait_for(
        lambda: told("Killing"), 20, message=lambda: f"the Killing event among {seen}"
    )
    assert message == "Container main definition changed, will be restarted"


def logs(agent: Agent, pod: str, container: str) -> str:
    argv = [sys.executable, "-m", "nodeagent", "logs", pod, "-c", container]
    argv += ["--status-socket", str(agent.socket)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    return result.stdout if result.returncode == 0 else ""


def kubectl(api: ApiServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    argv = ["kubectl", "--kubeconfig", str(api.kubeconfig), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


async def test_kubectl_debug_runs_an_ephemeral_container_in_the_pod(
    admin: AsyncClient, agent: Agent, api: ApiServerProcess
) -> None:
    await create(admin, two_containers("web", f"{SLEEP} # main-marker"))
    before = await wait_ready(admin, agent, "web")
    # PID 1 is the target's process if the debugger joined its PID namespace (the marker is
    # split so that the debugger's own command line does not hold it).
    seen = 'tr "\\0" " " </proc/1/cmdline | grep -q "main-mark""er"'
    script = f"if {seen}; then echo target-seen; else echo own-namespace; fi; {SLEEP}"
    result = kubectl(
        api,
        "debug",
        "web",
        "--namespace=default",
        "--container=debugger",
        "--image=busybox",
        "--image-pull-policy=IfNotPresent",
        "--target=main",
        "--profile=general",
        "--",
        "sh",
        "-c",
        script,
    )
    assert result.returncode == 0, result.stderr

    async def debugger_running() -> dict[str, Any] | None:
        pod = await get_pod(admin, "web")
        debugger = statuses(pod or {"status": {}}, "ephemeralContainerStatuses").get("debugger")
        running = debugger is not None and "running" in debugger.get("state", {})
        return pod if running else None

    after = await async_wait_for(
        debugger_running, 30, interval=0.2, message=lambda: f"debugger\n{agent.log_tail()}"
    )
    (spec,) = after["spec"]["ephemeralContainers"]
    assert spec["targetContainerName"] == "main"
    debugger = statuses(after, "ephemeralContainerStatuses")["debugger"]
    assert debugger["ready"] is False and debugger["restartCount"] == 0
    assert debugger["containerID"].startswith(agent.runtime.id_scheme + "://")
    # Live: nothing else restarted, the pod kept its IP and stays Ready.
    for name, status in statuses(after).items():
        assert status["containerID"] == statuses(before)[name]["containerID"]
    assert after["status"]["podIP"] == before["status"]["podIP"]
    await wait_ready(admin, agent, "web")
    out = await async_wait_for(
        lambda: asyncio.to_thread(logs, agent, "web", "debugger"),
        20,
        message=lambda: f"the debugger's output\n{agent.log_tail()}",
    )
    assert out.strip() == "target-seen"


async def test_a_lowered_active_deadline_fails_the_running_pod(
    admin: AsyncClient, agent: Agent
) -> None:
    await create(admin, pod_manifest("web", SLEEP, grace=2))
    await wait_ready(admin, agent, "web")
    await admin.patch(Pod, "web", {"spec": {"activeDeadlineSeconds": 2}}, namespace="default")

    async def stopped() -> dict[str, Any] | None:
        pod = await get_pod(admin, "web")
        status = (pod or {}).get("status") or {}
        main = (status.get("containerStatuses") or [{}])[0]
        return pod if "terminated" in (main.get("state") or {}) else None

    pod = await async_wait_for(
        stopped, 40, interval=0.2, message=lambda: f"web stopped\n{agent.log_tail()}"
    )
    assert pod["status"]["phase"] == "Failed"
    assert pod["status"]["reason"] == "DeadlineExceeded"
