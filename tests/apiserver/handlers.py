"""The resource verbs over HTTP: list, watch, get, create, update, patch, delete.

Follows "API Concepts" for the wire shapes: a list is ``<Kind>List`` with
``metadata.resourceVersion`` and items without kind/apiVersion; ``limit`` and ``continue``
page through it ("Retrieving large results sets in chunks"); a watch is a chunked body of
newline-delimited ``{"type", "object"}`` events; create answers 201, the rest 200; errors are
Status bodies. DELETE takes ``gracePeriodSeconds`` from the query or a DeleteOptions body
(with ``preconditions``); pods answer with the object (upstream's ReturnDeletedObject), other
kinds with a Success Status once gone, or the object while it waits on a grace period or
finalizers. ``dryRun`` is refused (400): nothing here could honour it.

Simplified: a continued list reads the current state after the continue key, not a snapshot
at the first page's version (upstream serves the snapshot); a continue token older than the
history is 410 Expired all the same.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml
from aiohttp import web

from tests.apiserver import errors, noderestriction
from tests.apiserver.authz import Identity
from tests.apiserver.patch import PATCH_TYPES
from tests.apiserver.resources import NAMESPACES, PODS, ResourceType
from tests.apiserver.selectors import parse_fields, parse_labels
from tests.apiserver.store import Guard, Store
from tests.apiserver.subresources import (
    EPHEMERAL,
    Tokens,
    bind,
    patch_ephemeral,
    token_request,
    update_ephemeral,
)
from tests.apiserver.watch import (
    Expired,
    Filter,
    StreamOptions,
    encode_event,
    expired_event,
    stream,
    subscribed,
)

Obj = dict[str, Any]
_TRUE = ("1", "t", "T", "true", "TRUE", "True")


@dataclass(frozen=True)
class Target:
    rt: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None
    who: Identity | None = None  # the authenticated user (None: no admission by user)


def _guard(store: Store, target: Target) -> Guard | None:
    """NodeRestriction for a node's writes; nothing for other users."""
    node = target.who.node if target.who is not None else None
    if node is None:
        return None
    rt, sub = target.rt, target.subresource

    def check(old: Obj | None, new: Obj) -> None:
        if old is None:
            noderestriction.admit_create(store, node, rt, new)
        elif old is new:
            noderestriction.admit_delete(node, rt, old)
        else:
            noderestriction.admit_update(node, rt, old, new, sub)

    return check


def json_response(body: Any, status: int = 200) -> web.Response:
    data = json.dumps(body, separators=(",", ":")).encode()
    return web.Response(body=data, status=status, headers={"Content-Type": "application/json"})


def _flag(query: Any, name: str) -> bool:
    return str(query.get(name, "")) in _TRUE


def _int_param(query: Any, name: str) -> int | None:
    raw = query.get(name)
    if raw in (None, ""):
        return None
    try:
        return int(raw)
    except ValueError as exc:
        raise errors.bad_request(f"invalid {name}: {raw!r}") from exc


async def read_body(request: web.BaseRequest, *, required: bool = True) -> Any:
    raw = await request.read()
    if not raw.strip():
        if required:
            raise errors.bad_request("the request body is empty")
        return None
    ctype = request.headers.get("Content-Type", "application/json").split(";")[0].strip()
    try:
        if ctype in ("application/yaml", "application/apply-patch+yaml"):
            return yaml.safe_load(raw)
        return json.loads(raw)
    except (ValueError, yaml.YAMLError) as exc:
        raise errors.bad_request(f"the body is not valid {ctype}: {exc}") from exc


def _encode_continue(rv: int, key: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"rv": rv, "start": key}).encode()).decode()


def _decode_continue(token: str) -> tuple[int, str]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        return int(data["rv"]), str(data["start"])
    except (ValueError, KeyError, TypeError) as exc:
        raise errors.bad_request("continue key is not valid") from exc


def _item_key(obj: Obj) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


class ResourceHandlers:
    def __init__(
        self,
        store: Store,
        tokens: Tokens,
        *,
        bookmark_interval: Callable[[], float],
        min_request_timeout: float = 1800.0,
    ) -> None:
        self.store = store
        self.tokens = tokens
        self.bookmark_interval = bookmark_interval
        self.min_request_timeout = min_request_timeout

    def _filter(self, target: Target, query: Any) -> Filter:
        try:
            labels = parse_labels(query.get("labelSelector"))
            fields = parse_fields(query.get("fieldSelector"), target.rt.fields())
        except ValueError as exc:
            raise errors.bad_request(str(exc)) from exc
        return Filter(target.rt, target.namespace, labels, fields)

    async def get(self, request: web.BaseRequest, target: Target) -> web.StreamResponse:
        if target.name is None:
            if _flag(request.query, "watch"):
                return await self.watch(request, target)
            return self.list(request, target)
        if target.subresource not in (None, "status", EPHEMERAL):
            raise errors.method_not_allowed("GET")
        return json_response(self.store.get(target.rt, target.namespace, target.name))

    def list(self, request: web.BaseRequest, target: Target) -> web.Response:
        query = request.query
        flt = self._filter(target, query)
        rv = query.get("resourceVersion")
        if rv and not rv.isdigit():
            raise errors.bad_request(f"invalid resourceVersion {rv!r}")
        if query.get("resourceVersionMatch") == "Exact" and rv and int(rv) != self.store.rv:
            raise errors.gone(f"too old resource version: {rv} ({self.store.rv})")
        items = self.store.list(target.rt, target.namespace, labels=flt.labels, fields=flt.fields)
        list_rv = self.store.rv
        if query.get("continue"):
            list_rv, start = _decode_continue(query["continue"])
            if list_rv < self.store.hub.compacted_rv:
                raise errors.gone(
                    "The provided continue parameter is too old to display a consistent list "
                    "result. You can start a new list without the continue parameter."
                )
            items = [i for i in items if _item_key(i) > start]
        meta: Obj = {"resourceVersion": str(list_rv)}
        limit = _int_param(query, "limit")
        if limit and len(items) > limit:
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
            meta["continue"] = _encode_continue(list_rv, _item_key(items[-1]))
        for item in items:
            item.pop("apiVersion", None)
            item.pop("kind", None)
        rt = target.rt
        return json_response(
            {
                "kind": f"{rt.kind}List",
                "apiVersion": rt.api_version,
                "metadata": meta,
                "items": items,
            }
        )

    async def watch(self, request: web.BaseRequest, target: Target) -> web.StreamResponse:
        query = request.query
        flt = self._filter(target, query)
        rv = query.get("resourceVersion") or None
        if rv is not None and not rv.isdigit():
            raise errors.bad_request(f"invalid resourceVersion {rv!r}")
        timeout = _int_param(query, "timeoutSeconds")
        if timeout is None:
            timeout = int(self.min_request_timeout * (1 + random.random()))
        opts = StreamOptions(
            timeout=float(timeout),
            bookmarks=_flag(query, "allowWatchBookmarks"),
            bookmark_interval=self.bookmark_interval(),
        )
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        if rv is not None and int(rv) > self.store.rv:
            await resp.prepare(request)
            await asyncio.sleep(min(3.0, opts.timeout))
            if int(rv) > self.store.rv:
                status = errors.ApiError(
                    504, "Timeout", f"Too large resource version: {rv}, current: {self.store.rv}"
                ).status()
                await resp.write(encode_event("ERROR", status))
                await resp.write_eof()
                return resp
        try:
            sub = self.store.watch(flt, rv, send_initial_events=_flag(query, "sendInitialEvents"))
        except Expired as exc:
            if not resp.prepared:
                await resp.prepare(request)
            await resp.write(expired_event(str(exc)))
            await resp.write_eof()
            return resp
        try:
            with subscribed(self.store.hub, sub):
                if not resp.prepared:
                    await resp.prepare(request)
                await stream(sub, resp.write, lambda: self.store.rv, opts)
            await resp.write_eof()
        except ConnectionResetError:
            pass  # the client went away: the usual end of a watch
        return resp

    async def post(self, request: web.BaseRequest, target: Target) -> web.Response:
        body = await read_body(request)
        if not isinstance(body, dict):
            raise errors.bad_request("the body must be a JSON object")
        rt, ns = target.rt, target.namespace
        if target.name is None:
            return json_response(
                self.store.create(rt, ns, body, guard=_guard(self.store, target)), 201
            )
        if target.subresource == "token" and target.subresource in rt.actions:
            if target.who is not None and target.who.node is not None:
                noderestriction.admit_token(
                    self.store, target.who.node, rt, ns or "", target.name, body
                )
            return json_response(
                token_request(self.store, self.tokens, ns or "", target.name, body), 201
            )
        if target.subresource == "binding" and rt is PODS:
            return json_response(bind(self.store, ns or "", target.name, body), 201)
        raise errors.method_not_allowed("POST")

    def _writable(self, target: Target, method: str) -> str:
        if target.name is None:
            raise errors.method_not_allowed(method)
        if target.subresource is None or (
            target.subresource == "status" and target.rt.status_subresource
        ):
            return target.name
        if target.subresource == EPHEMERAL and target.rt is PODS:
            return target.name
        raise errors.method_not_allowed(method)

    async def put(self, request: web.BaseRequest, target: Target) -> web.Response:
        name = self._writable(target, "PUT")
        body = await read_body(request)
        if target.subresource == EPHEMERAL:
            if not isinstance(body, dict):
                raise errors.bad_request("the body must be a JSON object")
            return json_response(update_ephemeral(self.store, target.namespace or "", name, body))
        existed = self.store.find(target.rt, target.namespace, name) is not None
        obj = self.store.update(
            target.rt,
            target.namespace,
            name,
            body,
            subresource=target.subresource,
            guard=_guard(self.store, target),
        )
        return json_response(obj, 200 if existed else 201)

    async def patch(self, request: web.BaseRequest, target: Target) -> web.Response:
        name = self._writable(target, "PATCH")
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
        if ctype not in PATCH_TYPES:
            raise errors.unsupported_media_type(", ".join(PATCH_TYPES))
        body = await read_body(request)
        if target.subresource == EPHEMERAL:
            ns = target.namespace or ""
            return json_response(patch_ephemeral(self.store, ns, name, ctype, body))
        obj = self.store.patch(
            target.rt,
            target.namespace,
            name,
            ctype,
            body,
            subresource=target.subresource,
            guard=_guard(self.store, target),
        )
        return json_response(obj)

    async def delete(self, request: web.BaseRequest, target: Target) -> web.Response:
        body = await read_body(request, required=False) or {}
        if not isinstance(body, dict):
            raise errors.bad_request("the body must be a DeleteOptions object")
        grace = _int_param(request.query, "gracePeriodSeconds")
        if grace is None and body.get("gracePeriodSeconds") is not None:
            grace = int(body["gracePeriodSeconds"])
        rt, ns = target.rt, target.namespace
        if target.subresource is not None:
            raise errors.method_not_allowed("DELETE")
        if target.name is None:
            flt = self._filter(target, request.query)
            deleted = []
            for item in self.store.list(rt, ns, labels=flt.labels, fields=flt.fields):
                meta = item["metadata"]
                try:
                    obj, _ = self.store.delete(
                        rt, meta.get("namespace"), meta["name"], grace_period=grace
                    )
                except errors.ApiError:
                    continue
                obj.pop("apiVersion", None)
                obj.pop("kind", None)
                deleted.append(obj)
            return json_response(
                {
                    "kind": f"{rt.kind}List",
                    "apiVersion": rt.api_version,
                    "metadata": {"resourceVersion": str(self.store.rv)},
                    "items": deleted,
                }
            )
        obj, gone = self.store.delete(
            rt,
            ns,
            target.name,
            grace_period=grace,
            preconditions=body.get("preconditions"),
            guard=_guard(self.store, target),
        )
        if not gone or rt in (PODS, NAMESPACES):
            return json_response(obj)
        details: Obj = {"name": target.name, "kind": rt.plural, "uid": obj["metadata"]["uid"]}
        if rt.group:
            details["group"] = rt.group
        return json_response(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": details,
            }
        )
