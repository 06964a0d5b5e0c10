"""The connection to the API server: a kubeconfig in, one client out, our own errors.

``load_kubeconfig`` reads a kubeconfig as kubectl does (current context, its cluster and
user; paths relative to the file) and refuses what would make the connection unsafe or
unusable: no server, ``insecure-skip-tls-verify``. The server's certificate is always
verified, against the cluster's ``certificate-authority[-data]`` or else the system's CAs.
Credentials are a bearer token (``token``, ``tokenFile``), a client certificate
(``client-certificate[-data]`` + ``client-key[-data]``, what kubelet TLS bootstrap leaves) or
an exec plugin.

``ApiClient`` holds two clients built from the same kubeconfig by lightkube: its typed
``AsyncClient`` (``typed``) for writes of objects we build (Node, Lease, Event), and the raw
HTTP client lightkube configures underneath (same TLS and credentials) for the calls lightkube
lacks: a watch with ``allowWatchBookmarks``, DELETE with ``preconditions``, and lists and
watches as plain JSON. Pods stay plain JSON on purpose: ``nodeagent.model.validate`` rejects
fields we cannot honour, and a typed decode would drop the fields its models do not know
before validation could see them.

Every failure, of either client, leaves this module as an ``ApiFailure`` (see
``api_errors``): the rest of the package never sees httpx or lightkube exceptions.

Credential rotation, as the kubelet's certificate manager leaves it on disk: a new client
certificate and key written over the old files (or a symlink such as
``kubelet-client-current.pem`` pointed at a new pair), or a kubeconfig rewritten with new
data. At most once per ``ROTATION_CHECK_S``, before a call, the files the connection was
built from (kubeconfig, certificate, key, CA) are stat()ed; when any changed, the kubeconfig
is loaded again and both clients are rebuilt, and the old ones are closed, which ends their
open watches: the reflectors reconnect with the new credentials, as the kubelet closes its
connections after a rotation. A pair caught half-written (a key that does not match its
certificate) keeps the old clients until a later look finds the pair whole. Obtaining the
certificate (TLS bootstrap, CSRs) is not done here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx2
import msgspec
import structlog
from lightkube import ApiError as LightkubeApiError
from lightkube import AsyncClient, KubeConfig, SingleConfig
from lightkube import ConfigError as LightkubeConfigError
from lightkube.config.client_adapter import AsyncClient as raw_async_client
from lightkube.config.client_adapter import ConnectionParams

log = structlog.get_logger("nodeagent.apiserver.client")

Obj = dict[str, Any]
Stamp = tuple[tuple[int, int, int] | None, ...]

ROTATION_CHECK_S = 1.0
FIELD_MANAGER = "nodeagent"
REQUEST_TIMEOUT_S = 10.0
WATCH_READ_SLACK_S = 60.0  # a watch that stays silent this long past its timeout is dead


class KubeconfigError(ValueError):
    """The kubeconfig cannot be used; the message says why and names the file."""


class ApiFailure(Exception):
    """A failed API call. ``code`` is the HTTP status, 0 when no answer came at all."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(f"{code or 'no answer'} {reason}: {message}" if reason else message)
        self.code = code
        self.reason = reason
        self.message = message

    @property
    def retryable(self) -> bool:
        """Worth trying again unchanged: no answer, throttled, or a server-side failure."""
        return self.code == 0 or self.code == 429 or self.code >= 500

    @property
    def not_found(self) -> bool:
        return self.code == 404

    @property
    def conflict(self) -> bool:
        return self.code == 409

    @property
    def gone(self) -> bool:
        """410: the resourceVersion is older than the server's history."""
        return self.code == 410


class WatchEventError(ApiFailure):
    """A watch stream's ERROR event: the server gave up on this watch (410: too old)."""


def failure_from_status(
    status: Mapping[str, Any], code: int = 0, *, kind: type[ApiFailure] = ApiFailure
) -> ApiFailure:
    """An ApiFailure from a metav1.Status body (an error response or a watch ERROR event)."""
    return kind(
        int(status.get("code") or code),
        str(status.get("reason") or ""),
        str(status.get("message") or ""),
    )


def _failure_from_body(code: int, content: bytes) -> ApiFailure:
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("kind") == "Status":
        return failure_from_status(body, code)
    text = content.decode(errors="replace").strip()[:200]
    return ApiFailure(code, "", text or f"HTTP {code}")


@contextlib.contextmanager
def api_errors() -> Iterator[None]:
    """Translate the clients' exceptions into ApiFailure (the module docstring says why)."""
    try:
        yield
    except LightkubeApiError as exc:
        status = exc.status
        code = status.code or (exc.response.status_code if exc.response is not None else 0)
        raise ApiFailure(int(code), status.reason or "", status.message or "") from exc
    except httpx2.HTTPStatusError as exc:
        raise _failure_from_body(exc.response.status_code, exc.response.content) from exc
    except httpx2.HTTPError as exc:
        raise ApiFailure(0, type(exc).__name__, str(exc) or repr(exc)) from exc
    except (msgspec.MsgspecError, ValueError) as exc:
        raise ApiFailure(0, "BadResponse", str(exc)) from exc


def load_kubeconfig(path: Path) -> SingleConfig:
    """The current context of the kubeconfig at ``path``, checked; KubeconfigError if not."""
    try:
        config = KubeConfig.from_file(path).get()
    except (LightkubeConfigError, KeyError, TypeError, msgspec.MsgspecError) as exc:
        raise KubeconfigError(f"{path}: not a usable kubeconfig: {exc}") from exc
    except (OSError, ValueError) as exc:  # unreadable, or not YAML
        raise KubeconfigError(f"{path}: cannot read: {exc}") from exc
    if config is None:
        raise KubeconfigError(f"{path}: no current context")
    cluster = config.cluster
    if not cluster.server.startswith(("https://", "http://")):
        raise KubeconfigError(f"{path}: cluster server {cluster.server!r} is not an http(s) URL")
    if cluster.insecure:
        raise KubeconfigError(
            f"{path}: insecure-skip-tls-verify is set; nodeagent always verifies the API "
            "server's certificate (give certificate-authority or certificate-authority-data)"
        )
    user = config.user
    if user is not None and bool(user.client_cert or user.client_cert_data) != bool(
        user.client_key or user.client_key_data
    ):
        raise KubeconfigError(f"{path}: a client certificate needs its key, and a key its cert")
    return config


def credential_files(config: SingleConfig) -> tuple[Path, ...]:
    """The files a connection is built from: a change in any means new credentials."""
    names: list[Any] = [config.cluster.certificate_auth]
    if config.user is not None:
        names += [config.user.client_cert, config.user.client_key]
    files = [Path(config.fname)] if config.fname is not None else []
    files += [Path(config.abs_file(n)) for n in names if n]
    return tuple(dict.fromkeys(files))


def _stamp(files: tuple[Path, ...]) -> Stamp:
    """What tells a rewritten file from the old one (stat follows symlinks: a re-pointed
    link shows its new target)."""

    def one(path: Path) -> tuple[int, int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    return tuple(one(f) for f in files)


def _build(config: SingleConfig, timeout_s: float) -> tuple[AsyncClient, httpx2.AsyncClient]:
    timeout = httpx2.Timeout(timeout_s)
    try:
        typed = AsyncClient(config, timeout=timeout, field_manager=FIELD_MANAGER)
        http = raw_async_client(config, ConnectionParams(timeout=timeout))
    except (OSError, LightkubeConfigError, ValueError) as exc:  # bad cert or key files
        server = config.cluster.server
        raise KubeconfigError(f"cannot set up the connection to {server}: {exc}") from exc
    return typed, http


class ApiClient:
    """Both clients of one kubeconfig context; ``close`` them together. Built from a file,
    they follow its credentials when they rotate (see the module docstring)."""

    def __init__(self, config: SingleConfig, *, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.server = config.cluster.server
        self._typed, self._http = _build(config, timeout_s)
        self._timeout_s = timeout_s
        self._path = Path(config.fname) if config.fname is not None else None
        self._files = credential_files(config)
        self._stamp = _stamp(self._files)
        self._refused: Stamp | None = None  # files found unusable (logged once)
        self._next_check = time.monotonic() + ROTATION_CHECK_S
        self._closing: set[asyncio.Task[None]] = set()
        self.rotations = 0

    @classmethod
    def from_file(cls, path: Path) -> ApiClient:
        return cls(load_kubeconfig(path))

    @property
    def typed(self) -> AsyncClient:
        """lightkube's typed client, current credentials."""
        self._follow_rotation()
        return self._typed

    async def close(self) -> None:
        await asyncio.gather(*self._closing, return_exceptions=True)
        await _close(self._typed, self._http)

    def _follow_rotation(self) -> None:
        now = time.monotonic()
        if self._path is None or now < self._next_check:
            return
        self._next_check = now + ROTATION_CHECK_S
        stamp = _stamp(self._files)
        if stamp == self._stamp:
            return
        try:
            config = load_kubeconfig(self._path)
            typed, http = _build(config, self._timeout_s)
        except KubeconfigError as exc:  # half-written, say: keep what works, look again
            if stamp != self._refused:
                self._refused = stamp
                log.warning("kubeconfig_reload_failed", error=str(exc))
            return
        old = (self._typed, self._http)
        self._typed, self._http, self.server = typed, http, config.cluster.server
        self._files = credential_files(config)
        self._stamp = _stamp(self._files)
        self.rotations += 1
        log.info("client_credentials_reloaded", server=self.server, rotations=self.rotations)
        task = asyncio.get_running_loop().create_task(_close(*old))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    # -- raw JSON ---------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Obj:
        """One call; the answer's JSON object (``{}`` for an empty body)."""
        self._follow_rotation()
        content = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        with api_errors():
            resp = await self._http.request(
                method, path, params=dict(params or {}), content=content, headers=headers
            )
            if resp.status_code >= 400:
                raise _failure_from_body(resp.status_code, resp.content)
            if not resp.content.strip():
                return {}
            answer = json.loads(resp.content)
        if not isinstance(answer, dict):
            raise ApiFailure(0, "BadResponse", f"{method} {path}: the answer is not an object")
        return answer

    async def delete_pod_now(self, namespace: str, name: str, uid: str) -> None:
        """The kubelet's final DELETE: no grace left, and a uid precondition, so a namesake
        that replaced the pod meanwhile is never removed (409 then)."""
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": uid},
        }
        await self.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", body=body)

    async def list(self, path: str, params: Mapping[str, str]) -> tuple[list[Obj], str]:
        """Every item of a collection (following ``continue``) and the list's version."""
        items: list[Obj] = []
        query = dict(params)
        while True:
            answer = await self.request("GET", path, params=query)
            items.extend(i for i in answer.get("items") or [] if isinstance(i, dict))
            meta = answer.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                return items, str(meta.get("resourceVersion") or "")
            query["continue"] = str(token)

    async def watch(
        self,
        path: str,
        params: Mapping[str, str],
        on_event: Callable[[str, Obj], None],
        *,
        timeout_s: float,
    ) -> None:
        """Stream a watch into ``on_event(type, object)`` until the server ends it.

        An ERROR event raises its Status as an ApiFailure (410 for "too old"); a broken
        connection raises ApiFailure with code 0. The read timeout covers a connection that
        died without a word: the server ends every watch after ``timeoutSeconds``.
        """
        self._follow_rotation()
        query = {**params, "watch": "true", "timeoutSeconds": str(int(timeout_s))}
        timeout = httpx2.Timeout(self._timeout_s, read=timeout_s + WATCH_READ_SLACK_S)
        with api_errors():
            async with self._http.stream("GET", path, params=query, timeout=timeout) as resp:
                if resp.status_code >= 400:
                    raise _failure_from_body(resp.status_code, await resp.aread())
                async for line in resp.aiter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind, obj = event.get("type"), event.get("object")
                    if not isinstance(kind, str) or not isinstance(obj, dict):
                        raise ApiFailure(0, "BadResponse", f"not a watch event: {line[:200]}")
                    if kind == "ERROR":
                        raise failure_from_status(obj, kind=WatchEventError)
                    on_event(kind, obj)


async def _close(typed: AsyncClient, http: httpx2.AsyncClient) -> None:
    with contextlib.suppress(Exception):
        await typed.close()
    with contextlib.suppress(Exception):
        await http.aclose()
