"""The kubelet API's routes, behind authentication and authorization.

Each request is authenticated (401 with a Status when nobody is recognised), authorized
against the node object (403 naming the user, verb and subresources), then routed:

    GET /healthz                                  "ok"
    GET /pods                                     PodList of this node's pods
    GET /containerLogs/{namespace}/{pod}/{container}   see logs.py
    GET /stats/summary                            see stats.py
    GET /metrics/resource                         see stats.py
    GET|POST /exec/{namespace}/{pod}/{container}, /attach/..., /portForward/{namespace}/{pod}
                                                  see streams.py (a CRI runtime only: 501)

An unknown pod or container is a 404 and a malformed query a 400, each with a ``Status``
body as the API server's, naming what was not found or which parameter is wrong.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodeagent.kubeletapi import auth, logs, stats, streams
from nodeagent.kubeletapi.wire import Request, Response
from nodeagent.podlogs import LogsError, find_log
from nodeagent.runtime.base import RuntimeFailure, SandboxInfo, StreamRequest

Obj = dict[str, Any]
_REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound"}
_REASONS[405] = "MethodNotAllowed"
_EXTRAS = ("probes", "worker")  # the snapshot's own fields, not a Pod's


@dataclass(frozen=True)
class NodeView:
    """What the API serves from: the agent's pods, the runtime's sandboxes, the files."""

    node_name: str
    pods: Callable[[], list[Obj]]  # metadata + status, as the status socket's
    sandboxes: Callable[[], Awaitable[Sequence[SandboxInfo]]]
    pod_log_dir: Path
    # The runtime's streaming sessions (CRI); None: exec, attach, port-forward unavailable.
    streaming: Callable[[StreamRequest], Awaitable[str]] | None = None


def status(code: int, message: str) -> Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": _REASONS.get(code, ""),
        "code": code,
    }
    return Response(code, json.dumps(body).encode(), "application/json")


class Handlers:
    def __init__(
        self,
        view: NodeView,
        *,
        authenticator: auth.Authenticator,
        authorizer: auth.Authorizer,
        collector: stats.Collector,
    ) -> None:
        self._view = view
        self._authn = authenticator
        self._authz = authorizer
        self._stats = collector

    async def handle(self, request: Request) -> Response:
        user = await self._authn.authenticate(request.headers, request.peer_cert)
        if user is None:
            return status(401, "Unauthorized")
        attrs = auth.attributes(request.method, request.path, self._view.node_name)
        if not await self._authz.allowed(user, attrs):
            subresources = ",".join(attrs.subresources)
            return status(
                403,
                f"Forbidden (user={user.name}, verb={attrs.verb}, resource=nodes, "
                f"subresource(s)=[{subresources}])",
            )
        if request.method not in ("GET", "HEAD") and not _streaming(request.path):
            return status(405, f"{request.method} is not supported on {request.path}")
        return await self._route(request)

    async def _route(self, request: Request) -> Response:
        path = request.path.rstrip("/") or "/"
        if path == "/healthz":
            return Response(200, b"ok")
        if path == "/pods":
            return _json(self._pod_list())
        if path.split("/")[1] in ("exec", "attach", "portForward"):
            return await self._stream(request, path.split("/")[1:])
        if path.startswith("/containerLogs/"):
            return self._logs(request, path.split("/")[2:])
        if path == "/stats/summary":
            return _json(await self._summary())
        if path == "/metrics/resource":
            text = stats.resource_metrics(await self._summary(), parse_time=logs.parse_time)
            return Response(200, text.encode(), "text/plain; version=0.0.4; charset=utf-8")
        return status(404, f"the server could not find the requested resource {path}")

    async def _summary(self) -> Obj:
        return await self._stats.summary(self._pods(), await self._view.sandboxes())

    def _pods(self) -> list[Obj]:
        return [{k: v for k, v in p.items() if k not in _EXTRAS} for p in self._view.pods()]

    async def _stream(self, request: Request, parts: list[str]) -> Response:
        if self._view.streaming is None:
            return status(501, "exec, attach and port-forward need a CRI runtime (containerd)")
        sandboxes = await self._view.sandboxes() if parts[0] == "portForward" else []
        asked = streams.session(parts, request.query, self._view.pods(), sandboxes)
        if isinstance(asked, streams.Refusal):
            return status(asked.code, asked.message)
        try:
            url = await self._view.streaming(asked)
        except RuntimeFailure as exc:
            return status(502, f"the runtime refused the session: {exc}")
        head = streams.relay_head(request.method, url, request.raw_query, request.header_lines)

        async def takeover(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await streams.relay(url, head, (reader, writer))

        return Response(101, takeover=takeover)

    def _pod_list(self) -> Obj:
        items = [
            {"apiVersion": "v1", "kind": "Pod", **p, "spec": {"nodeName": self._view.node_name}}
            for p in self._pods()
        ]
        return {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}

    def _logs(self, request: Request, parts: list[str]) -> Response:
        if len(parts) != 3 or not all(parts):
            return status(400, "expected /containerLogs/{namespace}/{pod}/{container}")
        namespace, pod, container = parts
        try:
            options = logs.parse_options(request.query, now=logs.now())
        except logs.InvalidOptions as exc:
            return status(400, f"invalid log options: {exc}")
        try:
            path = find_log(
                {"pods": self._view.pods()},
                self._view.pod_log_dir,
                pod=pod,
                namespace=namespace,
                container=container,
                previous=options.previous,
            )
        except LogsError as exc:
            # A previous run that never was is a bad question, as the kubelet answers it.
            return status(400 if "no previous run" in str(exc) else 404, str(exc))
        running = self._still_running(namespace, pod, container, path.stem, options)
        return Response(200, stream=logs.stream(path, options, running=running))

    def _still_running(
        self, namespace: str, pod: str, container: str, attempt: str, options: logs.LogOptions
    ) -> Callable[[], bool]:
        """Whether the instance whose log is followed still runs (a restart ends it)."""

        def running() -> bool:
            if options.previous:
                return False
            for p in self._view.pods():
                meta = p["metadata"]
                if (meta["namespace"], meta["name"]) != (namespace, pod):
                    continue
                for s in p["status"].get("containerStatuses") or []:
                    if s["name"] == container and str(s.get("restartCount", 0)) == attempt:
                        return "running" in (s.get("state") or {})
            return False

        return running


def _streaming(path: str) -> bool:
    return path.split("/")[1] in ("exec", "attach", "portForward")


def _json(body: Obj) -> Response:
    return Response(200, json.dumps(body).encode(), "application/json")
