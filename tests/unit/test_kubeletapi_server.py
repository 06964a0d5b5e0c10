"""The kubelet API over real TLS on 127.0.0.1: certificates, 401/403, routes, Status bodies.

The agent's parts are stood in for by a NodeView over fixed pods and log files; the reviews
by a fake API. The serving certificate is the self-signed one the server makes, so the
client verifies it (its SANs must hold 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from nodeagent.kubeletapi import auth
from nodeagent.kubeletapi.handlers import NodeView
from nodeagent.kubeletapi.server import ApiSettings, KubeletApi
from nodeagent.runtime.base import SandboxInfo
from tests.apiserver.tls import TLSBundle

POD = {
    "metadata": {"name": "web", "namespace": "default", "uid": "u1"},
    "status": {
        "phase": "Running",
        "containerStatuses": [
            {"name": "app", "restartCount": 1, "state": {"running": {"startedAt": "x"}}}
        ],
    },
    "probes": [],
}


async def no_sandboxes() -> Sequence[SandboxInfo]:
    return []


async def review(path: str, body: dict[str, Any]) -> dict[str, Any]:
    if path == auth.TOKEN_REVIEW_PATH:
        ok = body["spec"]["token"] == "alice-token"
        return {"status": {"authenticated": ok, "user": {"username": "alice"} if ok else {}}}
    # Only the admin group may do anything; alice may read stats.
    spec = body["spec"]
    allowed = "system:masters" in spec["groups"] or (
        spec["user"] == "alice" and spec["resourceAttributes"]["subresource"] == "stats"
    )
    return {"status": {"allowed": allowed}}


@pytest.fixture
def ca(tmp_path: Path) -> TLSBundle:
    return TLSBundle.load_or_create(tmp_path / "ca", ("127.0.0.1",))


@pytest.fixture
async def api(tmp_path: Path, ca: TLSBundle) -> AsyncIterator[KubeletApi]:
    logs = tmp_path / "logs" / "default_web_u1" / "app"
    logs.mkdir(parents=True)
    (logs / "0.log").write_text("2026-12-06T22:00:00Z stdout F before\n")
    (logs / "1.log").write_text(
        "2026-12-06T22:00:01Z stdout F a\n2026-12-06T22:00:02Z stdout F b\n"
    )
    settings = ApiSettings(
        bind="127.0.0.1:0",
        state_dir=tmp_path / "state",
        node_ip="127.0.0.1",
        tls_cert_file=None,
        tls_private_key_file=None,
        client_ca_file=ca.ca_path,
        anonymous_auth=False,
        token_webhook=True,
        webhook_authz=True,
    )
    view = NodeView("n1", lambda: [POD], no_sandboxes, tmp_path / "logs")
    server = KubeletApi(settings, view, review)
    await server.start()
    yield server
    await server.close()


def client_context(state: Path, cert: tuple[bytes, bytes] | None, tmp: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(state / "pki" / "kubelet.crt"))
    if cert is not None:
        (tmp / "c.crt").write_bytes(cert[0])
        (tmp / "c.key").write_bytes(cert[1])
        context.load_cert_chain(tmp / "c.crt", tmp / "c.key")
    return context


async def get(
    port: int, context: ssl.SSLContext, path: str, headers: str = ""
) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: n1\r\n{headers}\r\n".encode())
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        body = dechunk(body)
    return int(head.split()[1]), body


def dechunk(data: bytes) -> bytes:
    out = b""
    while True:
        size, _, rest = data.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            return out
        out, data = out + rest[:n], rest[n + 2 :]


@pytest.fixture
def admin(tmp_path: Path, ca: TLSBundle) -> ssl.SSLContext:
    cert = ca.issue("kube-apiserver-kubelet-client", ("system:masters",))
    return client_context(tmp_path / "state", cert, tmp_path)


async def test_nobody_is_401_and_a_foreign_ca_fails_the_handshake(
    api: KubeletApi, tmp_path: Path
) -> None:
    anonymous = client_context(tmp_path / "state", None, tmp_path)
    code, body = await get(api.port, anonymous, "/pods")
    assert code == 401 and json.loads(body)["reason"] == "Unauthorized"
    code, _ = await get(api.port, anonymous, "/pods", "Authorization: Bearer wrong\r\n")
    assert code == 401
    foreign = TLSBundle.load_or_create(tmp_path / "foreign", ("127.0.0.1",))
    cert = foreign.issue("kube-apiserver-kubelet-client", ("system:masters",))
    (tmp_path / "f").mkdir()
    impostor = client_context(tmp_path / "state", cert, tmp_path / "f")
    # TLS 1.3: the client hears of the refused certificate after its handshake, as an
    # alert or a closed connection; never as an HTTP answer.
    with pytest.raises((ssl.SSLError, ConnectionError, IndexError)):
        await get(api.port, impostor, "/pods")
    code, _ = await get(api.port, anonymous, "/healthz")  # the server lives on
    assert code == 401


async def test_a_token_user_gets_what_the_review_allows(api: KubeletApi, tmp_path: Path) -> None:
    context = client_context(tmp_path / "state", None, tmp_path)
    token = "Authorization: Bearer alice-token\r\n"
    code, body = await get(api.port, context, "/pods", token)
    assert code == 403
    message = json.loads(body)["message"]
    assert (
        message == "Forbidden (user=alice, verb=get, resource=nodes, subresource(s)=[pods,proxy])"
    )
    code, body = await get(api.port, context, "/stats/summary", token)
    assert code == 200 and json.loads(body)["node"]["nodeName"] == "n1"


async def test_routes_for_a_certificate_user(api: KubeletApi, admin: ssl.SSLContext) -> None:
    assert await get(api.port, admin, "/healthz") == (200, b"ok")
    code, body = await get(api.port, admin, "/pods")
    pods = json.loads(body)
    assert code == 200 and pods["kind"] == "PodList"
    [item] = pods["items"]
    assert item["metadata"]["uid"] == "u1" and "probes" not in item
    assert item["spec"]["nodeName"] == "n1"
    logs = "/containerLogs/default/web/app"
    assert await get(api.port, admin, logs) == (200, b"a\nb\n")
    assert await get(api.port, admin, logs + "?tailLines=1&timestamps=true") == (
        200,
        b"2026-12-06T22:00:02Z b\n",
    )
    assert await get(api.port, admin, logs + "?previous=true") == (200, b"before\n")
    code, body = await get(api.port, admin, "/metrics/resource")
    assert code == 200 and b"node_cpu_usage_seconds_total " in body
    assert b"# TYPE container_memory_working_set_bytes gauge" in body


@pytest.mark.parametrize(
    ("path", "code", "message"),
    [
        ("/containerLogs/default/nope/app", 404, "pod default/nope not found on this node"),
        ("/containerLogs/default/web/nope", 404, "container 'nope' not found in pod default/web"),
        ("/containerLogs/default/web/app?tailLines=-3", 400, "tailLines: must be greater"),
        ("/containerLogs/default/web", 400, "expected /containerLogs/{namespace}/{pod}"),
        ("/nothing", 404, "could not find the requested resource"),
    ],
)
async def test_bad_requests_get_a_status_naming_the_problem(
    api: KubeletApi, admin: ssl.SSLContext, path: str, code: int, message: str
) -> None:
    got, body = await get(api.port, admin, path)
    status = json.loads(body)
    assert got == code == status["code"] and status["kind"] == "Status"
    assert message in status["message"]


async def test_a_malformed_request_is_400_and_a_silent_client_does_not_block_others(
    api: KubeletApi, admin: ssl.SSLContext
) -> None:
    silent = await asyncio.open_connection("127.0.0.1", api.port, ssl=admin)
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port, ssl=admin)
    writer.write(b"NONSENSE\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 10)
    assert answer.startswith(b"HTTP/1.1 400 ")
    writer.close()
    assert await get(api.port, admin, "/healthz") == (200, b"ok")
    silent[1].close()


async def test_the_self_signed_certificate_is_kept_until_the_names_change(tmp_path: Path) -> None:
    from nodeagent.kubeletapi import certs

    first = certs.self_signed(tmp_path, "n1", ("10.0.0.1",))
    pem = first.cert.read_bytes()
    assert certs.self_signed(tmp_path, "n1", ("10.0.0.1",)).cert.read_bytes() == pem
    assert certs.self_signed(tmp_path, "n1", ("10.0.0.2",)).cert.read_bytes() != pem
    assert oct(first.key.stat().st_mode & 0o777) == "0o600"


def test_the_flags_parse_as_documented(tmp_path: Path) -> None:
    import argparse

    from nodeagent.config import ConfigError, add_flags, load_config

    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_flags(parser)
    ca = tmp_path / "ca.crt"
    ca.write_text("x")

    def load(*argv: str) -> Any:
        return load_config(parser.parse_args(["--node-name", "n1", *argv]))

    defaults = load()
    assert defaults.kubelet_api_bind == "0.0.0.0:10250"
    assert (defaults.anonymous_auth, defaults.authorization_mode) == (False, "")
    given = load(
        "--kubelet-api-bind",
        "off",
        "--authorization-mode",
        "AlwaysAllow",
        "--anonymous-auth",
        "--client-ca-file",
        str(ca),
    )
    assert given.kubelet_api_bind == "" and given.anonymous_auth is True
    assert given.authorization_mode == "alwaysallow" and given.client_ca_file == ca
    with pytest.raises(ConfigError, match="authorization_mode: 'Node' is not one of"):
        load("--authorization-mode", "Node")
    with pytest.raises(ConfigError, match=r"client_ca_file: .* is not a readable file"):
        load("--client-ca-file", str(tmp_path / "missing"))


async def test_a_certificate_without_its_key_is_refused(tmp_path: Path) -> None:
    settings = ApiSettings(
        bind="127.0.0.1:0",
        state_dir=tmp_path,
        node_ip="",
        tls_cert_file=tmp_path / "c.crt",
        tls_private_key_file=None,
        client_ca_file=None,
        anonymous_auth=False,
        token_webhook=False,
        webhook_authz=False,
    )
    server = KubeletApi(settings, NodeView("n1", lambda: [], no_sandboxes, tmp_path), None)
    with pytest.raises(ValueError, match="--tls-cert-file and --tls-private-key-file go together"):
        await server.start()


async def test_a_failing_route_is_a_500_and_the_server_lives_on(
    tmp_path: Path, ca: TLSBundle
) -> None:
    def broken() -> list[dict[str, Any]]:
        raise RuntimeError("a bug")

    settings = ApiSettings(
        bind="127.0.0.1:0",
        state_dir=tmp_path / "state",
        node_ip="127.0.0.1",
        tls_cert_file=None,
        tls_private_key_file=None,
        client_ca_file=ca.ca_path,
        anonymous_auth=False,
        token_webhook=False,
        webhook_authz=False,
    )
    server = KubeletApi(settings, NodeView("n1", broken, no_sandboxes, tmp_path), None)
    await server.start()
    try:
        cert = ca.issue("admin", ("system:masters",))
        context = client_context(tmp_path / "state", cert, tmp_path)
        assert (await get(server.port, context, "/pods"))[0] == 500
        assert await get(server.port, context, "/healthz") == (200, b"ok")
    finally:
        await server.close()
