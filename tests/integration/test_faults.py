"""Faults under a running agent: the runtime or the API server goes away and comes back.

Runtime: while containerd or dockerd is gone the agent must say so (node condition Ready
False, naming the runtime) and keep going; when it is back, the agent reconnects on its own
and resyncs without duplicating anything: the pod's running container is the same one (not
restarted) and the pod has exactly one sandbox.

API server (cluster mode: the test API server of tests/harness/cluster.py and its fault
hooks): an outage longer than the watch backoff's cap, status writes answered 5xx, and 409
conflicts.
Pods keep running throughout, and the API's view of them converges after recovery. (410 Gone
on a resumed watch, and a short restart, are test_cluster.py's.)

Also here: a manifest rewritten half-written, Secrets that must not leak into the log or the
status, and ClusterIP traffic that keeps flowing while the agent is killed and restarted.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lightkube import AsyncClient

from nodeagent.apiserver.reflector import Backoff
from nodeagent.network.cni import DEFAULT_BRIDGE
from nodeagent.runtime.base import ContainerID
from nodeagent.runtime.cri import CRIRuntime
from tests.apiserver.process import ApiServerProcess
from tests.harness import TestNode, async_wait_for, wait_for
from tests.harness.agent import Agent, RuntimeTarget, container_status, is_ready
from tests.harness.cluster import (
    SLEEP,
    admin_client,
    cluster_agent,
    container_id,
    create,
    get_pod,
    pod_manifest,
    wait_ready,
)
from tests.harness.dockerd import DockerDaemon
from tests.harness.manifests import static_pod_yaml
from tests.integration.test_services import http, service, wait_endpoints, web


@pytest.fixture
def agent(node: TestNode, api: ApiServerProcess) -> Iterator[Agent]:
    """The agent in cluster mode, on containerd."""
    with cluster_agent(node, api) as a:
        yield a


POD = static_pod_yaml("survivor")


def node_condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status["node"]["conditions"] if c["type"] == kind)


def fresh_agent(node: TestNode, runtime: RuntimeTarget) -> Agent:
    agent = Agent(node, runtime=runtime)
    for old in agent.manifests.iterdir():
        old.unlink()
    return agent.start()


def survives_a_runtime_restart(
    agent: Agent, runtime: RuntimeTarget, *, kill: Callable[[], None], restart: Callable[[], None]
) -> None:
    agent.write_manifest("survivor.yaml", POD)
    before = agent.wait_pod("survivor", is_ready, timeout=60)
    container_id = container_status(before, "main")["containerID"]
    # The node part of the status is sampled at most once a second: a pod seen Ready does not
    # prove the node's sample is as recent. Wait for it.
    wait_for(
        lambda: node_condition(agent.status(), "Ready")["status"] == "True",
        30,
        interval=0.2,
        message=lambda: f"the node Ready\n{agent.log_tail()}",
    )

    kill()

    def down() -> dict[str, Any] | None:
        ready = node_condition(agent.status(), "Ready")
        return ready if ready["status"] == "False" else None

    ready = wait_for(down, 30, interval=0.2, message=lambda: agent.log_tail())
    assert ready["reason"] == "KubeletNotReady"
    assert "runtime is down" in ready["message"]
    assert agent.proc is not None and agent.proc.poll() is None  # the agent keeps running

    restart()

    def up() -> dict[str, Any] | None:
        status = agent.status()
        if node_condition(status, "Ready")["status"] != "True":
            return None
        pod = agent.pod("survivor")
        return pod if pod is not None and is_ready(pod) else None

    after = wait_for(up, 60, interval=0.2, message=lambda: agent.log_tail())
    status = container_status(after, "main")
    assert status["containerID"] == container_id, "the running container was restarted"
    assert status["restartCount"] == container_status(before, "main")["restartCount"]
    sandboxes = [s for s in runtime.sandboxes() if s.name == "survivor"]
    assert len(sandboxes) == 1, sandboxes
    # A few relists later nothing has changed: no late duplicate either.
    relisted = wait_for(
        lambda: (p := agent.pod("survivor")) is not None and p, 10, message="pod listed"
    )
    assert container_status(relisted, "main")["containerID"] == container_id
    assert len([s for s in runtime.sandboxes() if s.name == "survivor"]) == 1


def test_containerd_restarted_under_the_agent(make_node: Callable[[], TestNode]) -> None:
    node = make_node()  # a node of its own: its containerd is killed
    runtime = RuntimeTarget.cri(node)
    agent = fresh_agent(node, runtime)
    try:
        survives_a_runtime_restart(
            agent, runtime, kill=node.kill_containerd, restart=node.restart_containerd
        )
    finally:
        agent.stop()
        if not node.containerd_alive():
            node.restart_containerd()  # so that teardown removes the pods through CRI


@pytest.fixture
def docker_node(
    make_node: Callable[[], TestNode], image_archives: dict[str, Path]
) -> Iterator[tuple[TestNode, DockerDaemon]]:
    node = make_node()
    daemon = DockerDaemon.start(node, images=image_archives, live_restore=True)
    try:
        yield node, daemon
    finally:
        if not daemon.alive():
            daemon.restart_dockerd()
        daemon.close()


def test_dockerd_restarted_under_the_agent(docker_node: tuple[TestNode, DockerDaemon]) -> None:
    node, daemon = docker_node
    runtime = RuntimeTarget.for_docker(node, daemon)
    agent = fresh_agent(node, runtime)
    try:
        survives_a_runtime_restart(
            agent, runtime, kill=daemon.kill_dockerd, restart=daemon.restart_dockerd
        )
    finally:
        agent.stop()


# --- API server faults (cluster mode) --------------------------------------------------------

FINISHER = "sleep {seconds}; exit 0"
STATUS_WRITES = ["PATCH", "PUT"]
POD_STATUS = {"resource": "pods", "subresource": "status"}  # not the Node's status writes


def phase(pod: dict[str, Any] | None) -> str:
    return str(((pod or {}).get("status") or {}).get("phase") or "")


def watch_retries(agent: Agent) -> list[float]:
    """The delays the pods watch has announced while failing, from the agent's log."""
    text = agent.log_path.read_text(errors="replace")
    found = re.findall(r'"retry_in_s": ([0-9.]+)[^\n]*"event": "watch_failed"', text)
    return [float(x) for x in found]


async def test_an_api_outage_past_the_watch_backoff_cap_keeps_pods_and_converges(
    api: ApiServerProcess, admin: AsyncClient, agent: Agent
) -> None:
    await create(admin, pod_manifest("steady", SLEEP, grace=2))
    await create(admin, pod_manifest("finisher", FINISHER.format(seconds=8), restartPolicy="Never"))
    steady = container_id(await wait_ready(admin, agent, "steady"))
    await wait_ready(admin, agent, "finisher")
    retries_before = len(watch_retries(agent))

    await api.stop()
    # Down until the agent's watch backoff has reached its cap: the longest wait it knows.
    cap = Backoff().cap_s

    def capped() -> bool:
        return any(d >= cap for d in watch_retries(agent)[retries_before:])

    await async_wait_for(capped, 180, interval=1, message=lambda: agent.log_tail())
    # Meanwhile the node went on: the finisher ended, the steady pod was never touched.
    finished = agent.pod("finisher")
    assert finished is not None and phase(finished) == "Succeeded", finished
    now = agent.pod("steady")
    assert now is not None and is_ready(now)
    assert container_status(now, "main")["containerID"] == steady

    await api.start()
    client = admin_client(api)
    try:

        async def converged() -> dict[str, Any] | None:
            pod = await get_pod(client, "finisher")
            return pod if phase(pod) == "Succeeded" else None

        await async_wait_for(converged, 2 * cap + 30, interval=0.5, message=agent.log_tail)
        after = await get_pod(client, "steady")
    finally:
        await client.close()
    assert after is not None and container_id(after) == steady  # never restarted
    # Status writes land at once; the watch comes back after its current backoff (up to the cap).
    await async_wait_for(
        lambda: agent.status()["cluster"]["watching"], cap + 30, 0.5, message=agent.log_tail
    )


async def test_status_writes_are_retried_on_5xx_and_reread_on_conflict(
    api: ApiServerProcess, admin: AsyncClient, agent: Agent
) -> None:
    # The next status writes fail with 500, then 503, then conflict: the agent must retry
    # each kind until the status lands.
    for code in (500, 503):
        await api.fail_requests(2, code=code, methods=STATUS_WRITES, **POD_STATUS)
    await api.fail_requests(2, code=409, methods=STATUS_WRITES, **POD_STATUS)
    await create(admin, pod_manifest("patient", FINISHER.format(seconds=3), restartPolicy="Never"))

    async def succeeded() -> dict[str, Any] | None:
        pod = await get_pod(admin, "patient")
        return pod if phase(pod) == "Succeeded" else None

    pod = await async_wait_for(succeeded, 60, interval=0.3, message=agent.log_tail)
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    writes = [
        r
        for r in await api.requests()
        if r["method"] in ("PATCH", "PUT") and r["path"].endswith("/pods/patient/status")
    ]
    codes = [r["code"] for r in writes]
    # Every injected failure hit a status write of this pod, and writes went on after them.
    assert codes.count(500) == 2 and codes.count(503) == 2 and codes.count(409) == 2, codes
    assert codes[-1] == 200, codes
    # A conflict is followed by a fresh read of the pod before the next write.
    reads = [
        r
        for r in await api.requests()
        if r["method"] == "GET" and r["path"].endswith("/pods/patient")
    ]
    first_conflict = next(r["time"] for r in writes if r["code"] == 409)
    assert any(r["time"] > first_conflict for r in reads), "no re-read after the conflict"


# --- bad input on disk -----------------------------------------------------------------------


def test_a_manifest_rewritten_in_place_half_written_keeps_the_pod(node: TestNode) -> None:
    agent = fresh_agent(node, RuntimeTarget.cri(node))
    try:
        path = agent.write_manifest("survivor.yaml", POD)
        before = agent.wait_pod("survivor", is_ready, timeout=60)
        running = container_status(before, "main")["containerID"]

        # Not atomic: truncate, write half, and leave it so while the agent rescans. The cut
        # falls inside a quoted string, so the half is unparsable. (A cut that happened to be
        # valid YAML would be a different, valid spec: the agent, as the kubelet, runs that.)
        cut = POD.index('"trap') + len('"trap')
        with path.open("w", encoding="utf-8") as f:
            f.write(POD[:cut])
            f.flush()

            def reported() -> list[dict[str, Any]] | None:
                errors = [e for e in agent.status()["errors"] if e["source"] == str(path)]
                return errors or None

            errors = wait_for(reported, 30, interval=0.2, message=lambda: agent.log_tail())
            assert "malformed YAML" in errors[0]["message"]
            pod = agent.pod("survivor")
            assert pod is not None and is_ready(pod)
            assert container_status(pod, "main")["containerID"] == running
            f.write(POD[cut:])  # the writer finishes: the same spec as before

        wait_for(
            lambda: not [e for e in agent.status()["errors"] if e["source"] == str(path)],
            30,
            message="the error clears once the file is whole",
        )
        after = agent.pod("survivor")
        assert after is not None and is_ready(after)
        assert container_status(after, "main")["containerID"] == running  # never replaced
        assert container_status(after, "main")["restartCount"] == 0
    finally:
        agent.stop()


# --- secrets stay secret -------------------------------------------------------------------

SECRET_VALUE = "s3cr3t-" + "7f1e9c2a5b"  # distinctive: found only if it leaked
SECRETS = f"""\
apiVersion: v1
kind: Secret
metadata: {{name: creds}}
data:
  password: {base64.b64encode(SECRET_VALUE.encode()).decode()}
stringData:
  token: {SECRET_VALUE}-token
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: settings}}
data:
  level: debug
---
apiVersion: v1
kind: Secret
metadata: {{name: broken}}
data:
  password: "{SECRET_VALUE}-not-base64!"
"""

KEEPER = """\
      env:
        - name: PASSWORD
          valueFrom: {secretKeyRef: {name: creds, key: password}}
      envFrom: [{secretRef: {name: creds}, prefix: ALL_}]
      volumeMounts:
        - {name: creds, mountPath: /creds, readOnly: true}
        - {name: settings, mountPath: /settings}
  volumes:
    - name: creds
      secret: {secretName: creds, defaultMode: 0400}
    - name: settings
      configMap: {name: settings}
"""
SECRET_USER = (
    static_pod_yaml("keeper", container=KEEPER)
    + """\
---
apiVersion: v1
kind: Pod
metadata: {name: seeker}
spec:
  containers:
    - name: main
      image: busybox
      imagePullPolicy: IfNotPresent
      command: ["sleep", "3600"]
      env:
        - name: MISSING
          valueFrom: {secretKeyRef: {name: creds, key: no-such-key}}
"""
)


def exec_in(node: TestNode, container: str, argv: list[str]) -> str:
    async def go() -> str:
        runtime = CRIRuntime(node.endpoint)
        try:
            result = await runtime.exec_sync(ContainerID(container), argv, 10)
        finally:
            await runtime.close()
        return result.stdout.decode()

    return asyncio.run(go())


def test_secret_values_never_reach_the_log_or_the_status(node: TestNode) -> None:
    agent = fresh_agent(node, RuntimeTarget.cri(node))
    try:
        agent.write_manifest("secrets.yaml", SECRETS)
        agent.write_manifest("pods.yaml", SECRET_USER)
        pod = agent.wait_pod("keeper", is_ready, timeout=60)
        cid = container_status(pod, "main")["containerID"].split("://", 1)[1]
        # The pod did get them: in its environment and its volume.
        env = exec_in(node, cid, ["env"])
        assert f"PASSWORD={SECRET_VALUE}" in env and f"ALL_token={SECRET_VALUE}-token" in env
        # Files with the modes asked for (0400) or upstream's default (0644); secrets on tmpfs.
        modes = exec_in(node, cid, ["stat", "-L", "-c", "%a", "/creds/password", "/settings/level"])
        assert modes.split() == ["400", "644"], modes
        mounts = exec_in(node, cid, ["cat", "/proc/mounts"])
        assert any(line.split()[1:3] == ["/creds", "tmpfs"] for line in mounts.splitlines())
        # The failure paths speak too: a missing key, an undecodable Secret.
        wait_for(
            lambda: any(e["source"].endswith("secrets.yaml") for e in agent.status()["errors"]),
            30,
            message="the broken Secret reported",
        )
        seeker = agent.wait_pod(
            "seeker",
            lambda p: "no-such-key" in json.dumps(p["status"]),
            timeout=30,
            what="the missing key reported",
        )
        assert seeker is not None
        status = json.dumps(agent.status())
        log = agent.log_path.read_text(errors="replace")
        encoded = base64.b64encode(SECRET_VALUE.encode()).decode()
        for text, where in ((status, "status JSON"), (log, "agent log")):
            assert SECRET_VALUE not in text, f"secret value in the {where}"
            assert encoded not in text, f"base64 secret value in the {where}"
    finally:
        agent.stop()


# --- the agent restarts: traffic keeps flowing ------------------------------------------------


def test_cluster_ip_traffic_flows_through_an_agent_kill_and_restart(
    make_node: Callable[[], TestNode],
) -> None:
    node = make_node()  # its own: the route below must not meet another module's
    agent = fresh_agent(node, RuntimeTarget.cri(node))
    stop = threading.Event()
    answers: list[tuple[float, str]] = []
    try:
        agent.write_manifest("web-1.yaml", web("web-1"))
        agent.write_manifest("svc.yaml", service("web"))
        agent.wait_pod("web-1", is_ready, timeout=60)
        ip = wait_endpoints(agent, "web", 1)["spec"]["clusterIP"]
        # A route for service IPs, so that packets from the node reach the nat OUTPUT chain.
        node.run(["ip", "route", "add", "10.96.0.0/16", "dev", DEFAULT_BRIDGE])
        url = f"http://{ip}/"
        wait_for(lambda: http(node.netns_argv, url) == ["web-1"], 30, message="service answers")

        def client() -> None:
            while not stop.is_set():
                answers.extend((time.monotonic(), a) for a in http(node.netns_argv, url, 5))

        thread = threading.Thread(target=client, daemon=True)
        thread.start()
        wait_for(lambda: len(answers) >= 5, 30, message="first answers")
        agent.kill9()
        killed = time.monotonic()
        wait_for(
            lambda: any(t > killed for t, _ in answers[-5:]), 30, message="answers, agent down"
        )
        agent.start()
        restarted = time.monotonic()

        def synced_since_restart() -> bool:
            proxy = agent.status()["proxy"]
            return bool(proxy.get("lastSync")) and proxy.get("lastError") is None

        wait_for(synced_since_restart, 30, message=lambda: agent.log_tail())
        wait_for(
            lambda: len([t for t, _ in answers if t > restarted]) >= 10,
            30,
            message="answers after the restart's first sync",
        )
    finally:
        stop.set()
        agent.stop()
    failed = [a for _, a in answers if a != "web-1"]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed: {failed[:5]}"
    assert len([t for t, _ in answers if t > killed]) >= 10
