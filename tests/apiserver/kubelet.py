"""What kube-apiserver does with and for the kubelets: reviews, and proxying to their API.

- TokenReview (``POST /apis/authentication.k8s.io/v1/tokenreviews``): the server's own
  bearer tokens (static, TokenRequest-issued) reviewed, with the groups authentication gives.
- SubjectAccessReview (``POST /apis/authorization.k8s.io/v1/subjectaccessreviews``): decided
  as this server decides (``authz.allows``: system:masters, the Node authorizer, RBAC), and
  strictly: a user no rule allows is denied, unlike the server's own permissive default for
  non-node users.
- ``pods/{name}/log``, ``pods/{name}/exec|attach|portforward`` and
  ``nodes/{name}/proxy/{path}``: forwarded to the node's kubelet
  endpoint (its InternalIP and ``status.daemonEndpoints.kubeletEndpoint.Port``) over HTTPS with
  the server's kubelet client certificate (CN ``kube-apiserver-kubelet-client`` in
  ``system:masters``, as kubeadm issues it), streaming the answer back (``kubectl logs -f``).
  As kube-apiserver without ``--kubelet-certificate-authority``, the kubelet's serving
  certificate is not verified. The caller needs ``get`` on pods/log or nodes/proxy, ``create``
  (POST) or ``get`` on pods/exec and the like. The streaming ones are upgrades (SPDY/3.1 or
  WebSocket): the request goes to the kubelet as it came, and the client's connection is
  taken from aiohttp and joined byte for byte to the kubelet's (no protocol translation:
  kube-apiserver 1.30+ would turn a WebSocket client into SPDY towards the kubelet).

Simplified: anyone authenticated may create reviews (upstream: RBAC ``create`` on them).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
from aiohttp import web

from tests.apiserver import authz, errors, resources
from tests.apiserver.authz import Attributes, Identity
from tests.apiserver.handlers import json_response, read_body
from tests.apiserver.store import Store
from tests.apiserver.subresources import Tokens
from tests.apiserver.tls import TLSBundle

Obj = dict[str, Any]
# pods/<subresource> -> the kubelet's path
_STREAMS = {"exec": "exec", "attach": "attach", "portforward": "portForward"}
_HOP = ("host", "authorization", "content-length")  # not the kubelet's to see
Groups = Callable[[str], tuple[str, ...]]  # a token user's groups, as authentication gives
KUBELET_CLIENT = "kube-apiserver-kubelet-client"
# PodLogOptions that travel to the kubelet as its query parameters.
LOG_PARAMS = frozenset(
    ("follow", "previous", "timestamps", "tailLines", "limitBytes", "sinceSeconds", "sinceTime")
)


def token_review(tokens: Tokens, body: Obj, groups_of: Groups) -> Obj:
    token = str((body.get("spec") or {}).get("token") or "")
    user = tokens.authenticate(token) if token else None
    status: Obj = {"authenticated": user is not None}
    if user is not None:
        status["user"] = {"username": user, "groups": list(groups_of(user))}
    return {**body, "status": status}


def access_review(store: Store, body: Obj) -> Obj:
    spec = body.get("spec") or {}
    attrs = spec.get("resourceAttributes") or {}
    rt = resources.lookup(
        str(attrs.get("group") or ""),
        str(attrs.get("version") or "v1"),
        str(attrs.get("resource") or ""),
    )
    allowed = False
    if rt is not None:
        who = Identity(str(spec.get("user") or ""), tuple(spec.get("groups") or ()))
        asked = Attributes(
            str(attrs.get("verb") or ""),
            rt,
            attrs.get("namespace") or None,
            attrs.get("name") or None,
            attrs.get("subresource") or None,
        )
        allowed = authz.allows(store, who, asked)
    return {**body, "status": {"allowed": allowed}}


class KubeletProxy:
    def __init__(self, store: Store, pki: TLSBundle, workdir: Path) -> None:
        self._store = store
        cert, key = pki.issue(KUBELET_CLIENT, (authz.MASTERS,))
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "kubelet-client.crt").write_bytes(cert)
        (workdir / "kubelet-client.key").write_bytes(key)
        (workdir / "kubelet-client.key").chmod(0o600)
        self._ssl = ssl.create_default_context()
        self._ssl.check_hostname = False
        self._ssl.verify_mode = ssl.CERT_NONE
        self._ssl.load_cert_chain(workdir / "kubelet-client.crt", workdir / "kubelet-client.key")

    async def maybe(
        self, request: web.BaseRequest, who: Identity, group: str, rest: list[str]
    ) -> web.StreamResponse | None:
        """The answer when the request is a review or for a kubelet; None otherwise."""
        if group:
            return None
        if len(rest) >= 3 and rest[0] == "nodes" and rest[2] == "proxy":
            node = rest[1]
            authz.authorize(
                self._store, who, Attributes("get", resources.NODES, None, node, "proxy")
            )
            path = "/" + "/".join(rest[3:])
            return await self._forward(request, node, path, request.query_string)
        if len(rest) == 5 and rest[0] == "namespaces" and rest[2] == "pods" and rest[4] in _STREAMS:
            namespace, name, sub = rest[1], rest[3], rest[4]
            verb = "create" if request.method == "POST" else "get"
            authz.authorize(
                self._store, who, Attributes(verb, resources.PODS, namespace, name, sub)
            )
            return await self._stream(request, namespace, name, sub)
        if len(rest) == 5 and rest[0] == "namespaces" and rest[2] == "pods" and rest[4] == "log":
            namespace, name = rest[1], rest[3]
            attrs = Attributes("get", resources.PODS, namespace, name, "log")
            authz.authorize(self._store, who, attrs)
            return await self._logs(request, namespace, name)
        return None

    async def _logs(
        self, request: web.BaseRequest, namespace: str, name: str
    ) -> web.StreamResponse:
        pod = self._store.get(resources.PODS, namespace, name)
        node = str((pod.get("spec") or {}).get("nodeName") or "")
        if not node:
            raise errors.bad_request(f"pod {name} does not have a host assigned")
        container = request.query.get("container")
        if not container:
            names = [c["name"] for c in pod["spec"].get("containers") or []]
            if len(names) != 1:
                raise errors.bad_request(
                    f"a container name must be specified for pod {name}, choose one of: {names}"
                )
            container = names[0]
        query = urlencode([(k, v) for k, v in request.query.items() if k in LOG_PARAMS])
        return await self._forward(
            request, node, f"/containerLogs/{namespace}/{name}/{container}", query
        )

    async def _stream(
        self, request: web.BaseRequest, namespace: str, name: str, sub: str
    ) -> web.StreamResponse:
        pod = self._store.get(resources.PODS, namespace, name)
        node = str((pod.get("spec") or {}).get("nodeName") or "")
        if not node:
            raise errors.bad_request(f"pod {name} does not have a host assigned")
        path = f"/{_STREAMS[sub]}/{namespace}/{name}"
        query = [(k, v) for k, v in request.query.items() if k != "container"]
        if sub != "portforward":
            names = [c["name"] for c in pod["spec"].get("containers") or []]
            container = request.query.get("container") or (names[0] if len(names) == 1 else "")
            if not container:
                raise errors.bad_request(f"a container name must be specified for pod {name}")
            path += f"/{container}"
        return await self._upgrade(request, node, f"{path}?{urlencode(query)}")

    async def _upgrade(self, request: web.BaseRequest, node: str, target: str) -> web.Response:
        """Relay an upgrade (SPDY or WebSocket) byte for byte: the request goes to the kubelet,
        and the client's connection is taken from aiohttp and joined to the kubelet's."""
        base = urlsplit(self._endpoint(node))
        reader, writer = await asyncio.open_connection(base.hostname, base.port, ssl=self._ssl)
        lines = [f"{request.method} {target} HTTP/1.1", f"Host: {base.netloc}"]
        lines += [f"{k}: {v}" for k, v in request.headers.items() if k.lower() not in _HOP]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        transport = request.transport
        if transport is None:
            raise errors.internal("the client went away")
        transport.set_protocol(_Pipe(writer))
        try:
            while data := await reader.read(64 * 1024):
                transport.write(data)
        finally:
            writer.close()
            transport.close()
        return web.Response()  # written nowhere: the transport is closed

    def _endpoint(self, node: str) -> str:
        obj = self._store.get(resources.NODES, None, node)
        status = obj.get("status") or {}
        port = ((status.get("daemonEndpoints") or {}).get("kubeletEndpoint") or {}).get("Port")
        ips = [a["address"] for a in status.get("addresses") or [] if a.get("type") == "InternalIP"]
        if not port or not ips:
            raise errors.bad_request(f"node {node} has no kubelet endpoint")
        return f"https://{ips[0]}:{port}"

    async def _forward(
        self, request: web.BaseRequest, node: str, path: str, query: str
    ) -> web.StreamResponse:
        url = self._endpoint(node) + path + (f"?{query}" if query else "")
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            try:
                upstream = await session.get(url, ssl=self._ssl)
            except aiohttp.ClientError as exc:
                raise errors.ApiError(
                    503, "ServiceUnavailable", f"error dialing kubelet: {exc}"
                ) from None
            async with upstream:
                response = web.StreamResponse(status=upstream.status)
                response.content_type = upstream.content_type
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response


class _Pipe(asyncio.Protocol):
    """The client's side of a relayed upgrade: what it sends goes to the kubelet."""

    def __init__(self, upstream: asyncio.StreamWriter) -> None:
        self._upstream = upstream

    def data_received(self, data: bytes) -> None:
        self._upstream.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._upstream.close()


async def review_answer(
    request: web.BaseRequest,
    store: Store,
    tokens: Tokens,
    group: str,
    rest: list[str],
    groups_of: Groups,
) -> web.Response | None:
    if request.method != "POST" or len(rest) != 1:
        return None
    if group == "authentication.k8s.io" and rest[0] == "tokenreviews":
        return json_response(token_review(tokens, await read_body(request), groups_of), 201)
    if group == "authorization.k8s.io" and rest[0] == "subjectaccessreviews":
        return json_response(access_review(store, await read_body(request)), 201)
    return None
