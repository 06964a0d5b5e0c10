"""Who is asking and whether they may: the kubelet's authentication and authorization.

Authentication, in the kubelet's order (its ``BuildAuthn``): a client certificate verified
against ``--client-ca-file`` (user = CN, groups = O, as kube-apiserver reads certificates);
else a bearer token checked with a TokenReview (``--authentication-token-webhook``, cluster
mode); else ``system:anonymous`` in ``system:unauthenticated`` when ``--anonymous-auth`` is
true, else 401. Every authenticated user also gets ``system:authenticated``.

Authorization asks about the node object: verb from the HTTP method, resource ``nodes``, the
node's name, and a subresource from the path (``attributes``, pure). ``Webhook`` asks the API
with a SubjectAccessReview; ``AlwaysAllow`` lets every authenticated request through (the
only choice standalone, where there is no API to ask).

Caches, as the kubelet's defaults: TokenReview answers 2 minutes (an unauthenticated answer
10 s, so a token minted a moment later works soon), SubjectAccessReview allowed 5 minutes and
denied 30 seconds. A review that fails (API down) is not cached: it costs that request a 401 or
403 and is asked again next time.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from nodeagent.log import get_logger

log = get_logger("nodeagent.kubeletapi")

TOKEN_TTL_S = 120.0
TOKEN_DENIED_TTL_S = 10.0
ALLOWED_TTL_S = 300.0
DENIED_TTL_S = 30.0
TOKEN_REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESS_REVIEW_PATH = "/apis/authorization.k8s.io/v1/subjectaccessreviews"

# (API path, body) -> the API's answer; raises on failure. The daemon gives the API client's.
Review = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]

_VERBS = {"GET": "get", "HEAD": "get", "POST": "create", "PUT": "update", "PATCH": "patch"}
_VERBS["DELETE"] = "delete"
# Path prefix -> the subresources to ask about, the first that allows wins: the fine-grained
# ones fall back to nodes/proxy (KubeletFineGrainedAuthz), so an older RBAC still works.
_SUBRESOURCES = (
    ("/stats", ("stats",)),
    ("/metrics", ("metrics",)),
    ("/logs", ("log",)),
    ("/healthz", ("healthz", "proxy")),
    ("/pods", ("pods", "proxy")),
)


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: Mapping[str, tuple[str, ...]] | None = None


ANONYMOUS = User("system:anonymous", ("system:unauthenticated",))


@dataclass(frozen=True)
class Attributes:
    """What a request does to the node object, as a SubjectAccessReview asks it."""

    verb: str
    node: str
    subresources: tuple[str, ...]  # asked in order; one allowing is enough


def attributes(method: str, path: str, node: str) -> Attributes:
    """The kubelet's mapping (server/auth.go GetRequestAttributes), pure."""
    verb = _VERBS.get(method.upper(), method.lower())
    for prefix, subresources in _SUBRESOURCES:
        if path == prefix or path.startswith(prefix + "/"):
            return Attributes(verb, node, subresources)
    return Attributes(verb, node, ("proxy",))


def user_from_cert(cert: Mapping[str, Any] | None) -> User | None:
    """CN and O of a verified client certificate (ssl's getpeercert() form)."""
    if not cert:
        return None
    cn, orgs = "", []
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                cn = value
            elif key == "organizationName":
                orgs.append(value)
    return User(cn, tuple(orgs)) if cn else None


def bearer_token(headers: Mapping[str, str]) -> str | None:
    kind, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() or None if kind.lower() == "bearer" else None


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    """Answers kept until their own deadline; bounded, oldest dropped first."""

    def __init__(self, *, max_entries: int = 4096, clock: Callable[[], float] = time.monotonic):
        self._entries: dict[K, tuple[float, V]] = {}
        self._max = max_entries
        self._clock = clock

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[key]
            return None
        return entry[1]

    def put(self, key: K, value: V, ttl_s: float) -> None:
        self._entries.pop(key, None)
        if len(self._entries) >= self._max:
            del self._entries[next(iter(self._entries))]
        self._entries[key] = (self._clock() + ttl_s, value)


class Authenticator:
    def __init__(
        self, *, anonymous: bool, review: Review | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """``review`` None: bearer tokens are not checked (no webhook)."""
        self._anonymous = anonymous
        self._review = review
        self._tokens: TTLCache[str, User | bool] = TTLCache(clock=clock)

    async def authenticate(
        self, headers: Mapping[str, str], cert: Mapping[str, Any] | None
    ) -> User | None:
        """The user, or None for a 401."""
        user = user_from_cert(cert)
        token = bearer_token(headers)
        if user is None and token is not None and self._review is not None:
            user = await self._token_user(token, self._review)
        if user is None:
            return ANONYMOUS if self._anonymous else None
        groups = tuple(dict.fromkeys((*user.groups, "system:authenticated")))
        return User(user.name, groups, user.uid, user.extra)

    async def _token_user(self, token: str, review: Review) -> User | None:
        cached = self._tokens.get(token)
        if cached is not None:
            return cached if isinstance(cached, User) else None
        body: dict[str, Any] = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token},
        }
        try:
            answer = await review(TOKEN_REVIEW_PATH, body)
        except Exception as exc:
            log.warning("token_review_failed", error=str(exc))
            return None
        status = answer.get("status") or {}
        user = _reviewed_user(status.get("user") or {}) if status.get("authenticated") else None
        if user is None:
            self._tokens.put(token, False, TOKEN_DENIED_TTL_S)
            return None
        self._tokens.put(token, user, TOKEN_TTL_S)
        return user


def _reviewed_user(raw: Mapping[str, Any]) -> User | None:
    name = raw.get("username")
    if not isinstance(name, str) or not name:
        return None
    groups = tuple(g for g in raw.get("groups") or () if isinstance(g, str))
    extra = {str(k): tuple(map(str, v)) for k, v in (raw.get("extra") or {}).items()}
    return User(name, groups, str(raw.get("uid") or ""), extra or None)


class Authorizer:
    """AlwaysAllow (``review`` None) or Webhook: a cached SubjectAccessReview per question."""

    def __init__(self, review: Review | None, *, clock: Callable[[], float] = time.monotonic):
        self._review = review
        self._answers: TTLCache[tuple[Any, ...], bool] = TTLCache(clock=clock)

    async def allowed(self, user: User, attrs: Attributes) -> bool:
        if self._review is None:
            return True
        for subresource in attrs.subresources:
            if await self._ask(self._review, user, attrs, subresource):
                return True
        return False

    async def _ask(self, review: Review, user: User, attrs: Attributes, subresource: str) -> bool:
        extra = tuple(sorted((user.extra or {}).items()))
        key = (user.name, user.groups, user.uid, extra, attrs.verb, attrs.node, subresource)
        cached = self._answers.get(key)
        if cached is not None:
            return cached
        spec: dict[str, Any] = {
            "user": user.name,
            "groups": list(user.groups),
            "resourceAttributes": {
                "verb": attrs.verb,
                "group": "",
                "version": "v1",
                "resource": "nodes",
                "subresource": subresource,
                "name": attrs.node,
            },
        }
        if user.uid:
            spec["uid"] = user.uid
        if user.extra:
            spec["extra"] = {k: list(v) for k, v in user.extra.items()}
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview"}
        try:
            answer = await review(ACCESS_REVIEW_PATH, {**body, "spec": spec})
        except Exception as exc:
            log.warning("access_review_failed", error=str(exc))
            return False
        allowed = (answer.get("status") or {}).get("allowed") is True
        self._answers.put(key, allowed, ALLOWED_TTL_S if allowed else DENIED_TTL_S)
        return allowed
