"""The kubelet HTTPS API of a cluster-mode agent, through real kubectl and direct clients.

The test API server (tests/apiserver/kubelet.py) answers the agent's TokenReviews and
SubjectAccessReviews and forwards ``pods/log``, ``pods/exec``, ``pods/portforward`` and
``nodes/{name}/proxy`` to the agent's port 10250 with its kubelet client certificate, which
the agent trusts through
``--client-ca-file`` (the API server's CA). Direct clients talk to the node's address on the
veth link. Runs once per runtime (containerd over CRI, Docker).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import subprocess
import threading
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from lightkube import AsyncClient

from tests.apiserver.process import ApiServerProcess
from tests.apiserver.tls import TLSBundle
from tests.harness import TestNode, async_wait_for, wait_for
from tests.harness.agent import Agent, RuntimeTarget
from tests.harness.cluster import (
    NODE_NAME,
    Link,
    admin_client,
    cluster_agent,
    container_id,
    create,
    get_pod,
    pod_manifest,
    wait_ready,
)

PORT = 10250
# The first run writes its marker and fails; the second (after the restart backoff) talks on.
TALKER = (
    "if [ -e /data/ran ]; then echo second-run; for i in 1 2 3; do echo line-$i; done; "
    "while true; do echo tick; sleep 0.3; done; "
    "else touch /data/ran; echo first-run; exit 1; fi"
)


@pytest.fixture
def agent(
    node: TestNode, api: ApiServerProcess, link: Link, runtime_target: RuntimeTarget
) -> Iterator[Agent]:
    extra = [
        "--node-ip",
        link.node_ip,
        "--client-ca-file",
        str(api.state_dir / "pki" / "ca.crt"),
        "--authentication-token-webhook",
    ]
    with cluster_agent(node, api, runtime=runtime_target, extra=extra) as a:
        yield a


@pytest.fixture
async def admin(api: ApiServerProcess) -> AsyncIterator[AsyncClient]:
    client = admin_client(api)
    yield client
    await client.close()


def kubectl(api: ApiServerProcess, *args: str, timeout: float = 30) -> str:
    argv = ["kubectl", "--kubeconfig", str(api.kubeconfig), *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
    return result.stdout


def context(cert: tuple[bytes, bytes] | None, where: Path) -> ssl.SSLContext:
    """A client that does not verify the kubelet (as kube-apiserver by default)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        where.mkdir(parents=True, exist_ok=True)
        (where / "c.crt").write_bytes(cert[0])
        (where / "c.key").write_bytes(cert[1])
        ctx.load_cert_chain(where / "c.crt", where / "c.key")
    return ctx


async def get(
    link: Link, ctx: ssl.SSLContext, path: str, token: str | None = None
) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(link.node_ip, PORT, ssl=ctx)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {NODE_NAME}\r\n{auth}\r\n".encode())
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return int(head.split()[1]), body


def _dechunk(data: bytes) -> bytes:
    out = b""
    while True:
        size, _, rest = data.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            return out
        out, data = out + rest[:n], rest[n + 2 :]


async def talker_second_run(admin: AsyncClient, agent: Agent) -> dict[str, Any]:
    body = pod_manifest("talker", TALKER, grace=1)
    body["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    body["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    await create(admin, body)

    async def running_again() -> dict[str, Any] | None:
        pod = await get_pod(admin, "talker")
        statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
        if statuses and statuses[0]["restartCount"] >= 1 and "running" in statuses[0]["state"]:
            return pod
        return None

    # The restart waits out the first backoff (10 s).
    return await async_wait_for(
        running_again, 60, interval=0.3, message=lambda: f"talker restarted\n{agent.log_tail()}"
    )


async def test_logs_through_kubectl_and_directly(
    api: ApiServerProcess, admin: AsyncClient, agent: Agent, link: Link
) -> None:
    await talker_second_run(admin, agent)

    assert kubectl(api, "logs", "talker", "--previous") == "first-run\n"
    current = await asyncio.to_thread(
        lambda: wait_for(
            lambda: (out := kubectl(api, "logs", "talker")).count("tick") >= 2 and out,
            30,
            interval=0.3,
        )
    )
    assert current.startswith("second-run\nline-1\nline-2\nline-3\ntick\n")
    assert kubectl(api, "logs", "talker", "--tail=1") == "tick\n"
    stamped = kubectl(api, "logs", "talker", "--timestamps", "--limit-bytes=200")
    first = stamped.splitlines()[0].split(" ", 1)
    assert first[1] == "second-run" and first[0].endswith("Z")

    # -f: lines written after the request arrive, until the client leaves.
    lines = await asyncio.to_thread(follow, api, "talker", 3)
    assert lines == ["tick\n"] * 3

    admin_token, plain = api.token, context(None, Path())
    logs = "/containerLogs/default/talker/main"
    code, body = await get(link, plain, f"{logs}?tailLines=2", admin_token)
    assert (code, body) == (200, b"tick\ntick\n")
    code, body = await get(link, plain, f"{logs}?limitBytes=6", admin_token)
    assert (code, body) == (200, b"second")
    code, body = await get(link, plain, f"{logs}?previous=1", admin_token)
    assert (code, body) == (200, b"first-run\n")
    code, body = await get(link, plain, f"{logs}?tailLines=x", admin_token)
    assert code == 400 and "tailLines" in json.loads(body)["message"]
    code, body = await get(link, plain, "/containerLogs/default/nope/main", admin_token)
    assert code == 404 and json.loads(body)["message"] == "pod default/nope not found on this node"


def _cpuacct(cid: str) -> int:
    for root, dirs, _ in os.walk("/sys/fs/cgroup/cpuacct"):
        if cid in dirs:
            return int(Path(root, cid, "cpuacct.usage").read_text())
    raise AssertionError(f"no cpuacct cgroup for {cid}")


async def test_stats_and_who_may_ask(
    api: ApiServerProcess,
    admin: AsyncClient,
    agent: Agent,
    link: Link,
    node: TestNode,
    tmp_path: Path,
) -> None:
    pod = await talker_second_run(admin, agent)
    cid = container_id(pod).partition("://")[2]

    before = _cpuacct(cid)
    summary = json.loads(
        kubectl(api, "get", "--raw", f"/api/v1/nodes/{NODE_NAME}/proxy/stats/summary")
    )
    after = _cpuacct(cid)
    assert summary["node"]["nodeName"] == NODE_NAME
    [talker] = [p for p in summary["pods"] if p["podRef"]["name"] == "talker"]
    [main] = talker["containers"]
    assert before <= main["cpu"]["usageCoreNanoSeconds"] <= after
    assert main["memory"]["workingSetBytes"] > 0
    assert talker["network"]["interfaces"], "the pod's own interfaces"
    st = os.statvfs(node.state_dir)
    assert summary["node"]["fs"]["capacityBytes"] == st.f_blocks * st.f_frsize

    metrics = kubectl(api, "get", "--raw", f"/api/v1/nodes/{NODE_NAME}/proxy/metrics/resource")
    labels = '{container="main",namespace="default",pod="talker"}'
    assert f"container_cpu_usage_seconds_total{labels}" in metrics
    assert "\nnode_memory_working_set_bytes " in metrics

    anonymous = context(None, tmp_path / "anon")
    code, _ = await get(link, anonymous, "/pods")
    assert code == 401
    code, _ = await get(link, anonymous, "/pods", "not-a-token")
    assert code == 401
    code, body = await get(link, anonymous, "/pods", api.token)  # the admin's token
    assert code == 200 and json.loads(body)["kind"] == "PodList"

    ca = TLSBundle.load_or_create(api.state_dir / "pki", ())
    alice = context(ca.issue("alice", ("devs",)), tmp_path / "alice")
    code, body = await get(link, alice, "/pods")
    assert code == 403
    assert json.loads(body)["message"].startswith("Forbidden (user=alice, verb=get")
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "stats-reader"},
        "rules": [{"apiGroups": [""], "resources": ["nodes/stats"], "verbs": ["get"]}],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "stats-reader"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "stats-reader",
        },
        "subjects": [{"kind": "Group", "name": "devs", "apiGroup": "rbac.authorization.k8s.io"}],
    }
    kubectl_apply(api, role, binding)
    code, _ = await get(link, alice, "/stats/summary")
    assert code == 200

    foreign = TLSBundle.load_or_create(tmp_path / "foreign", ())
    impostor = context(
        foreign.issue("kube-apiserver-kubelet-client", ("system:masters",)), tmp_path / "f"
    )
    with pytest.raises((ssl.SSLError, ConnectionError, IndexError)):
        await get(link, impostor, "/pods")  # refused in the TLS handshake: no HTTP answer


def follow(api: ApiServerProcess, pod: str, count: int) -> list[str]:
    """The first ``count`` lines of ``kubectl logs -f --tail=0``; the client then leaves."""
    argv = ["kubectl", "--kubeconfig", str(api.kubeconfig), "logs", "-f", "--tail=0", pod]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    timer = threading.Timer(30, proc.kill)  # a stream that never comes ends the read
    timer.start()
    try:
        assert proc.stdout is not None
        return [proc.stdout.readline() for _ in range(count)]
    finally:
        timer.cancel()
        proc.kill()
        proc.wait()


def kubectl_apply(api: ApiServerProcess, *objects: dict[str, Any]) -> None:
    doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
    argv = ["kubectl", "--kubeconfig", str(api.kubeconfig), "create", "--validate=false", "-f", "-"]
    result = subprocess.run(argv, input=doc, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


async def test_exec_is_relayed_to_the_runtimes_streaming_server(
    api: ApiServerProcess, admin: AsyncClient, agent: Agent, link: Link, runtime: str
) -> None:
    await talker_second_run(admin, agent)
    query = "command=sh&command=-c&command=echo+out%3B+echo+err+%3E%262%3B+exit+3"
    url = f"https://{link.node_ip}:{PORT}/exec/default/talker/main?{query}&stdout=1&stderr=1"
    headers = {"Authorization": f"Bearer {api.token}"}
    async with aiohttp.ClientSession() as session:
        if runtime == "docker":  # Docker has no streaming server to relay to (yet)
            async with session.get(url, headers=headers, ssl=False) as answer:
                assert answer.status == 501
                assert "need a CRI runtime" in (await answer.json())["message"]
            return
        channels: dict[int, bytes] = {}
        async with session.ws_connect(
            url, headers=headers, ssl=False, protocols=("v4.channel.k8s.io",)
        ) as ws:
            assert ws.protocol == "v4.channel.k8s.io"
            async for message in ws:
                if message.type is aiohttp.WSMsgType.BINARY and message.data:
                    channel, data = message.data[0], message.data[1:]
                    channels[channel] = channels.get(channel, b"") + data
    assert channels[1] == b"out\n" and channels[2] == b"err\n"
    status = json.loads(channels[3])
    assert status["status"] == "Failure" and status["reason"] == "NonZeroExitCode"
    assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]

    # A terminal: the size sent on channel 4 (resize) reaches the command's tty.
    script = 'until [ "$(stty size 2>/dev/null)" = "37 91" ]; do sleep 0.1; done; echo sized'
    query = "command=sh&command=-c&command=" + urllib.parse.quote(script)
    url = f"https://{link.node_ip}:{PORT}/exec/default/talker/main?{query}&stdin=1&stdout=1&tty=1"
    heard = b""
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url, headers=headers, ssl=False, protocols=("v4.channel.k8s.io",)) as ws,
    ):
        await ws.send_bytes(b"\x04" + json.dumps({"Width": 91, "Height": 37}).encode())
        async with asyncio.timeout(30):
            async for message in ws:
                if message.type is aiohttp.WSMsgType.BINARY and message.data[:1] == b"\x01":
                    heard += message.data[1:]
    assert heard == b"sized\r\n"  # a terminal's line end

    # kubectl through the API server: 1.27 speaks SPDY/3.1, the current one WebSocket first.
    for binary in (old_kubectl(), "kubectl"):
        argv = [binary, "--kubeconfig", str(api.kubeconfig), "exec", "-i", "talker", "--"]
        argv += ["sh", "-c", "read line; echo got-$line; exit 3"]
        result = await asyncio.to_thread(
            subprocess.run, argv, input="hello\n", capture_output=True, text=True, timeout=60
        )
        assert (result.returncode, result.stdout) == (3, "got-hello\n"), result.stderr


async def test_attach_reaches_the_containers_own_stdin_and_stdout(
    api: ApiServerProcess, admin: AsyncClient, agent: Agent, link: Link, runtime: str
) -> None:
    if runtime == "docker":
        pytest.skip("attach under Docker is not served yet (docs/kubeletapi.md)")
    body = pod_manifest("echoer", "while read line; do echo attached-$line; done", grace=1)
    body["spec"]["containers"][0]["stdin"] = True
    await create(admin, body)
    await wait_ready(admin, agent, "echoer")
    url = f"https://{link.node_ip}:{PORT}/attach/default/echoer/main?stdin=1&stdout=1"
    headers = {"Authorization": f"Bearer {api.token}"}
    heard = b""
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url, headers=headers, ssl=False, protocols=("v4.channel.k8s.io",)) as ws,
    ):
        await ws.send_bytes(b"\x00hello\n")  # channel 0: stdin
        async with asyncio.timeout(30):
            while b"attached-hello\n" not in heard:
                message = await ws.receive()
                assert message.type is aiohttp.WSMsgType.BINARY, message
                if message.data[:1] == b"\x01":  # stdout
                    heard += message.data[1:]
    assert heard == b"attached-hello\n"


async def test_port_forward_carries_an_http_request(
    api: ApiServerProcess, admin: AsyncClient, agent: Agent, runtime: str
) -> None:
    if runtime == "docker":
        pytest.skip("port-forward under Docker is not served yet (docs/kubeletapi.md)")
    script = "echo hello-from-web > /tmp/index.html && exec httpd -f -p 8080 -h /tmp"
    await create(admin, pod_manifest("web", script, grace=1))
    await wait_ready(admin, agent, "web")
    for binary in (old_kubectl(), "kubectl"):  # SPDY; WebSocket tunnelling first
        page = await asyncio.to_thread(forwarded_get, api, binary, "web", 8080)
        assert page == "hello-from-web\n", binary


def forwarded_get(api: ApiServerProcess, binary: str, pod: str, port: int) -> str:
    """GET / through ``kubectl port-forward POD :PORT`` (kubectl picks the local port)."""
    argv = [binary, "--kubeconfig", str(api.kubeconfig), "port-forward", pod, f":{port}"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    timer = threading.Timer(60, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "Forwarding from 127.0.0.1:NNNNN -> PORT"
        assert line.startswith("Forwarding from 127.0.0.1:"), line
        local = line.split()[2].rpartition(":")[2]
        with urllib.request.urlopen(f"http://127.0.0.1:{local}/", timeout=30) as answer:
            return str(answer.read().decode())
    finally:
        timer.cancel()
        proc.kill()
        proc.wait()


def old_kubectl() -> str:
    """The kubectl 1.27 that sits beside the real binary (SPDY only)."""
    real = Path(shutil.which("kubectl") or "kubectl").resolve()
    return str(real.parent / "kubectl.1.27")
