"""A fake kube-apiserver speaking the real HTTP(S)/JSON wire protocol, for tests.

``ApiServer`` listens on an address the test picks, serves the resources in ``resources.py``
from an in-memory ``Store``, and runs the controllers a node agent depends on. It is an async
context manager (in-process use) and the engine of ``python -m tests.apiserver`` (a separate
process, reachable from network namespaces).

- Authentication (upstream "Authenticating"): a bearer token (the server's own, or one issued
  by TokenRequest) or a client certificate signed by the server's CA (user = CN); otherwise
  401. The certificate's O entries are the user's groups; the admin token is in
  ``system:masters``. ``/healthz``, ``/livez``, ``/readyz`` and ``/version`` are open, as
  upstream's system:public-info-viewer makes them.
- Authorization (``authz.py``, ``noderestriction.py``): a node credential gets what the Node
  authorizer, RBAC ClusterRoleBindings and NodeRestriction give it; ``node_kubeconfig`` binds
  ``system:node-proxier`` to the node's user unless told not to (the access our docs ask
  users to grant). Other users may do everything.
- Discovery: ``/api``, ``/api/v1``, ``/apis``, ``/apis/<group>[/<version>]``.
- Test hooks: ``faults`` (next N requests fail), ``drop_history()`` / ``set_history(n)``
  (force 410 Gone), ``stop()`` / ``start()`` / ``restart()`` on the same port (open connections
  are cut, as when an apiserver dies; the objects and their versions stay, as in etcd), and
  ``requests``, the log of requests served, and ``ipam`` (node IPAM, when on, assigns every
  waiting Node now). The same hooks are under ``/fake/v1/`` over HTTP
  for a server in another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import secrets
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from tests.apiserver import authz, errors, ipam, kubelet, resources
from tests.apiserver.authz import Attributes, Identity
from tests.apiserver.controllers import (
    DEFAULT_NODE_MONITOR_GRACE_S,
    EndpointSliceController,
    NamespaceController,
    NodeLifecycleController,
    ensure_kubernetes_service,
)
from tests.apiserver.faults import WRITES, Faults
from tests.apiserver.handlers import ResourceHandlers, Target, json_response, read_body
from tests.apiserver.store import Store
from tests.apiserver.subresources import Tokens
from tests.apiserver.tls import TLSBundle, write_kubeconfig

log = logging.getLogger(__name__)

VERSION = {
    "major": "1",
    "minor": "33",
    "gitVersion": "v1.33.0",
    "gitCommit": "0" * 40,
    "gitTreeState": "clean",
    "buildDate": "2025-04-23T00:00:00Z",
    "goVersion": "go1.24.2",
    "compiler": "gc",
    "platform": "linux/amd64",
}
HEALTH_PATHS = ("/healthz", "/livez", "/readyz")
ADMIN_USER = "kubernetes-admin"
_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch"}


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    """One served request, for tests that count calls (e.g. "status patched only once")."""

    method: str
    path: str
    query: str
    content_type: str
    code: int
    user: str | None
    time: float


def _attributes(request: web.BaseRequest, target: Target) -> Attributes:
    """The authorizer's view of a request (verb from method, name and ``watch``)."""
    method = request.method
    if method == "GET":
        verb = "get" if target.name else ("watch" if _watching(request) else "list")
    elif method == "DELETE":
        verb = "delete" if target.name else "deletecollection"
    else:
        verb = _VERBS.get(method, method.lower())
    terms: dict[str, str] = {}
    for term in (request.query.get("fieldSelector") or "").split(","):
        key, sep, value = term.partition("==") if "==" in term else term.partition("=")
        if sep and not key.endswith("!"):
            terms[key.strip()] = value.strip()
    return Attributes(verb, target.rt, target.namespace, target.name, target.subresource, terms)


def _watching(request: web.BaseRequest) -> bool:
    return str(request.query.get("watch", "")) in ("1", "t", "T", "true", "TRUE", "True")


def token_groups(user: str) -> tuple[str, ...]:
    """The groups of a bearer token's user: the admin's, or a service account's."""
    if user == ADMIN_USER:
        return (authz.MASTERS, "system:authenticated")
    namespace = user.split(":")[2] if user.startswith("system:serviceaccount:") else ""
    return ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated")


def _unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host == ""


class ApiServer:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: bool = True,
        require_auth: bool = True,
        token: str | None = None,
        history_size: int = 1000,
        bookmark_interval: float = 60.0,
        min_token_seconds: int = 600,
        state_dir: Path | None = None,
        advertise_address: str | None = None,
        kubernetes_service: bool = True,
        service_account_admission: bool = True,
        node_monitor_grace_s: float = DEFAULT_NODE_MONITOR_GRACE_S,
        node_ipam: tuple[ipaddress.IPv4Network, int] | None = None,
        node_ipam_delay_s: float = ipam.DEFAULT_DELAY_S,
    ) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.require_auth = require_auth
        self.token = token or secrets.token_urlsafe(24)
        self.bookmark_interval = bookmark_interval
        self.advertise_address = advertise_address or ("127.0.0.1" if _unspecified(host) else host)
        self.kubernetes_service = kubernetes_service
        self._own_dir = state_dir is None
        self.state_dir = (
            Path(tempfile.mkdtemp(prefix="apiserver-")) if state_dir is None else state_dir
        )
        hosts = tuple(h for h in (host, self.advertise_address) if h and not _unspecified(h))
        self.pki = TLSBundle.load_or_create(self.state_dir / "pki", hosts)
        self.store = Store(
            history_size=history_size, service_account_admission=service_account_admission
        )
        self.tokens = Tokens(
            static={self.token: ADMIN_USER}, min_expiration_seconds=min_token_seconds
        )
        self.faults = Faults()
        self.requests: deque[RequestRecord] = deque(maxlen=10000)
        self.namespaces = NamespaceController(self.store, root_ca_pem=self.pki.ca_pem)
        self.endpointslices = EndpointSliceController(self.store)
        self.store.add_hook(self.namespaces.on_change)
        self.store.add_hook(self.endpointslices.on_change)
        self.node_lifecycle = NodeLifecycleController(self.store, grace_s=node_monitor_grace_s)
        self.store.add_hook(self.node_lifecycle.on_change)
        # Node IPAM (ipam.py), when given a cluster CIDR and node mask size: off by default,
        # as a control plane without --allocate-node-cidrs.
        self.node_ipam: ipam.NodeIPAM | None = None
        if node_ipam is not None:
            cidr, mask = node_ipam
            self.node_ipam = ipam.NodeIPAM(
                self.store, cluster_cidr=cidr, mask_size=mask, delay_s=node_ipam_delay_s
            )
            self.store.add_hook(self.node_ipam.on_change)
        self.namespaces.bootstrap()
        authz.bootstrap(self.store)
        self.kubelets = kubelet.KubeletProxy(self.store, self.pki, self.state_dir / "kubelet")
        self._handlers = ResourceHandlers(
            self.store, self.tokens, bookmark_interval=lambda: self.bookmark_interval
        )
        self._web: web.Server | None = None
        self._runner: web.ServerRunner | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.starts = 0  # how many times start() opened the listener

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        host = self.advertise_address if _unspecified(self.host) else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        if self._runner is not None:
            return
        self._web = web.Server(self._handle, handler_cancellation=True, access_log=None)
        runner = web.ServerRunner(self._web, shutdown_timeout=0.5)
        await runner.setup()
        ctx = self.pki.server_context() if self.tls else None
        site = web.TCPSite(runner, self.host, self.port, ssl_context=ctx, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.starts += 1
        if not any(t.get_name() == "node-lifecycle" for t in self._background):
            self._in_background(self.node_lifecycle.run(), name="node-lifecycle")
        if self.node_ipam is not None and not any(
            t.get_name() == "node-ipam" for t in self._background
        ):
            self._in_background(self.node_ipam.run(), name="node-ipam")
        if self.port == 0:
            self.port = int(runner.addresses[0][1])
        if self.kubernetes_service:
            ensure_kubernetes_service(self.store, self.advertise_address, self.port)

    async def stop(self) -> None:
        """Stop listening and cut every open connection (watches end without a clean EOF)."""
        runner, server = self._runner, self._web
        if runner is None or server is None:
            return
        self._runner = None
        for conn in server.connections:
            if conn.transport is not None:
                conn.transport.abort()
        await runner.cleanup()

    def _in_background(self, work: Coroutine[Any, Any, None], *, name: str) -> None:
        """A task the server owns (kept referenced, cancelled by ``close``)."""
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def restart(self, down_seconds: float = 0.0) -> None:
        await self.stop()
        await asyncio.sleep(down_seconds)
        await self.start()

    async def close(self) -> None:
        await self.stop()
        for task in list(self._background):
            task.cancel()
        if self._own_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    async def __aenter__(self) -> ApiServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- test hooks ----------------------------------------------------------------------

    def drop_history(self) -> None:
        """Forget the watch history: a watch from any version before now gets 410 Gone."""
        self.store.compact()

    def set_history(self, capacity: int) -> None:
        self.store.hub.set_capacity(capacity)

    def write_kubeconfig(
        self,
        path: Path,
        *,
        token: str | None = None,
        cert_user: str | None = None,
        cert_groups: tuple[str, ...] = (),
        namespace: str = "default",
    ) -> Path:
        """A kubeconfig for this server: the admin token by default, or a client
        certificate for ``cert_user`` (e.g. ``system:node:n1`` in ``system:nodes``)."""
        ca = self.pki.ca_pem if self.tls else None
        if cert_user is not None:
            pair = self.pki.issue(cert_user, cert_groups)
            return write_kubeconfig(
                path,
                server=self.url,
                ca_pem=ca,
                client_cert=pair,
                namespace=namespace,
                user=cert_user,
            )
        return write_kubeconfig(
            path, server=self.url, ca_pem=ca, token=token or self.token, namespace=namespace
        )

    def node_kubeconfig(self, path: Path, node_name: str, *, node_proxier: bool = True) -> Path:
        """What a kubelet gets from TLS bootstrap: a client cert for system:node:<name>.
        With ``node_proxier`` (the default, as docs/rbac.md asks of users) the node's user is
        also bound to ``system:node-proxier``, so it may list Nodes and EndpointSlices."""
        if node_proxier:
            self.bind_node_proxier(node_name)
        return self.write_kubeconfig(
            path, cert_user=f"{authz.NODE_PREFIX}{node_name}", cert_groups=(authz.NODES_GROUP,)
        )

    def bind_node_proxier(self, node_name: str) -> str:
        """A ClusterRoleBinding of system:node-proxier to ``system:node:<node_name>``; its name."""
        name = f"nodeagent:node-proxier:{node_name}"
        if self.store.find(resources.CLUSTERROLEBINDINGS, None, name) is None:
            body = authz.binding_body(
                name, authz.NODE_PROXIER, [("User", f"{authz.NODE_PREFIX}{node_name}")]
            )
            self.store.create(resources.CLUSTERROLEBINDINGS, None, body)
        return name

    # -- HTTP ----------------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        code = 500
        seen: dict[str, str] = {}  # the authenticated user, for the request log
        try:
            resp = await self._route(request, seen)
            code = resp.status
            return resp
        except errors.ApiError as exc:
            code = exc.code
            return json_response(exc.status(), exc.code)
        except (asyncio.CancelledError, ConnectionResetError):
            code = 499  # the client (or a stop()) went away
            raise
        except Exception as exc:
            log.exception("test API server: %s %s failed", request.method, request.path)
            return json_response(errors.internal(str(exc)).status(), 500)
        finally:
            self.requests.append(
                RequestRecord(
                    request.method,
                    request.path,
                    request.query_string,
                    request.headers.get("Content-Type", ""),
                    code,
                    seen.get("user"),
                    time.time(),
                )
            )

    def _authenticate(self, request: web.BaseRequest) -> Identity:
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            user = self.tokens.authenticate(header[len("Bearer ") :].strip())
            if user is None:
                raise errors.unauthorized()  # a bad token fails even with a good cert
            return Identity(user, token_groups(user))
        transport = request.transport
        peer = transport.get_extra_info("peercert") if transport is not None else None
        if peer:
            user, groups = "", []
            for rdn in peer.get("subject", ()):
                for key, value in rdn:
                    if key == "commonName":
                        user = str(value)
                    elif key == "organizationName":
                        groups.append(str(value))
            if user:
                return Identity(user, (*groups, "system:authenticated"))
        if self.require_auth:
            raise errors.unauthorized()
        return Identity("system:anonymous", ("system:unauthenticated",))

    async def _route(self, request: web.BaseRequest, seen: dict[str, str]) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        if path in HEALTH_PATHS:
            return web.Response(text="ok", content_type="text/plain")
        if path == "/version":
            return json_response(VERSION)
        who = self._authenticate(request)
        seen["user"] = who.user
        parts = path.strip("/").split("/")
        if parts[0] == "fake":
            return await self._control(request, parts[1:])
        if parts[0] == "api":
            if len(parts) == 1:
                return json_response(
                    resources.api_versions(f"{self.advertise_address}:{self.port}")
                )
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis":
            if len(parts) == 1:
                return json_response(resources.api_group_list())
            if len(parts) == 2:
                return self._discovery(resources.api_group(parts[1]))
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise errors.path_not_found()
        answer = await kubelet.review_answer(
            request, self.store, self.tokens, group, rest, token_groups
        ) or await self.kubelets.maybe(request, who, group, rest)
        if answer is not None:
            return answer
        if not rest:
            return self._discovery(resources.api_resource_list(group, version))
        target = dataclasses.replace(self._target(group, version, rest), who=who)
        method = request.method
        authz.authorize(self.store, who, _attributes(request, target))
        if method in WRITES or method == "GET":
            fault = self.faults.check(method, target.rt.plural, target.subresource)
            if fault is not None:
                raise fault
        h = self._handlers
        if method == "GET":
            return await h.get(request, target)
        if method == "POST":
            return await h.post(request, target)
        if method == "PUT":
            return await h.put(request, target)
        if method == "PATCH":
            return await h.patch(request, target)
        if method == "DELETE":
            return await h.delete(request, target)
        raise errors.method_not_allowed(method)

    @staticmethod
    def _discovery(doc: dict[str, Any] | None) -> web.Response:
        if doc is None:
            raise errors.path_not_found()
        return json_response(doc)

    @staticmethod
    def _target(group: str, version: str, rest: list[str]) -> Target:
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            inner = resources.lookup(group, version, rest[2])
            if inner is not None and inner.namespaced:
                namespace, rest = rest[1], rest[2:]
        rt = resources.lookup(group, version, rest[0])
        if rt is None or len(rest) > 3 or (rt.namespaced and namespace is None and len(rest) > 1):
            raise errors.path_not_found()
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and sub not in ("status", *rt.actions, *rt.subresources):
            raise errors.path_not_found()
        if sub == "status" and not rt.status_subresource:
            raise errors.path_not_found()
        return Target(rt, namespace, name, sub)

    async def _control(self, request: web.BaseRequest, parts: list[str]) -> web.Response:
        """``/fake/v1/...``: the test hooks, for a server in another process."""
        if parts[:1] != ["v1"] or len(parts) != 2:
            raise errors.path_not_found()
        what, method = parts[1], request.method
        if what == "faults" and method == "POST":
            rule = self.faults.from_json(await read_body(request))
            return json_response({"count": rule.count, "code": rule.code})
        if what == "faults" and method == "DELETE":
            self.faults.clear()
            return json_response({})
        if what == "history" and method == "POST":
            body = await read_body(request)
            if body.get("drop"):
                self.drop_history()
            if "capacity" in body:
                self.set_history(int(body["capacity"]))
            return json_response({"compactedResourceVersion": str(self.store.hub.compacted_rv)})
        if what == "restart" and method == "POST":
            body = await read_body(request, required=False) or {}
            self._in_background(
                self._restart_soon(float(body.get("downSeconds", 0.0))), name="restart"
            )
            return json_response({}, 202)
        if what == "ipam" and method == "POST" and self.node_ipam is not None:
            return json_response({"assigned": self.node_ipam.assign_now()})
        if what == "status" and method == "GET":
            return json_response({"starts": self.starts, "resourceVersion": str(self.store.rv)})
        if what == "requests" and method == "GET":
            return json_response([dataclasses.asdict(r) for r in self.requests])
        raise errors.path_not_found()

    async def _restart_soon(self, down_seconds: float) -> None:
        await asyncio.sleep(0.05)  # let the 202 reach the caller first
        with contextlib.suppress(Exception):
            await self.restart(down_seconds)
