"""The kubelet API's checks: request attributes, who a request is, reviews and their caches."""

from __future__ import annotations

from typing import Any

import pytest

from nodeagent.kubeletapi import auth


@pytest.mark.parametrize(
    ("method", "path", "verb", "subresources"),
    [
        ("GET", "/stats/summary", "get", ("stats",)),
        ("GET", "/metrics/resource", "get", ("metrics",)),
        ("GET", "/metrics", "get", ("metrics",)),
        ("GET", "/logs/syslog", "get", ("log",)),
        ("GET", "/healthz", "get", ("healthz", "proxy")),
        ("GET", "/pods", "get", ("pods", "proxy")),
        ("GET", "/containerLogs/ns/p/c", "get", ("proxy",)),
        ("POST", "/exec/ns/p/c", "create", ("proxy",)),
        ("HEAD", "/statsfoo", "get", ("proxy",)),  # a prefix, not a path segment
        ("DELETE", "/x", "delete", ("proxy",)),
    ],
)
def test_attributes_follow_the_kubelets_mapping(
    method: str, path: str, verb: str, subresources: tuple[str, ...]
) -> None:
    assert auth.attributes(method, path, "n1") == auth.Attributes(verb, "n1", subresources)


def test_a_certificate_names_the_user_and_its_organizations_the_groups() -> None:
    cert = {
        "subject": (
            (("organizationName", "system:masters"),),
            (("organizationName", "ops"),),
            (("commonName", "kube-apiserver-kubelet-client"),),
        )
    }
    user = auth.user_from_cert(cert)
    assert user == auth.User("kube-apiserver-kubelet-client", ("system:masters", "ops"))
    assert auth.user_from_cert({"subject": ((("organizationName", "x"),),)}) is None
    assert auth.user_from_cert(None) is None


def test_bearer_token_is_read_from_the_authorization_header() -> None:
    assert auth.bearer_token({"authorization": "Bearer abc"}) == "abc"
    assert auth.bearer_token({"authorization": "bearer  abc "}) == "abc"
    assert auth.bearer_token({"authorization": "Basic abc"}) is None
    assert auth.bearer_token({"authorization": "Bearer "}) is None
    assert auth.bearer_token({}) is None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Reviews:
    """A fake API answering reviews from tables; counts the calls."""

    def __init__(self) -> None:
        self.tokens: dict[str, dict[str, Any]] = {}
        self.allowed: set[tuple[str, str]] = set()  # (user, subresource)
        self.calls: list[dict[str, Any]] = []
        self.fail = False

    async def __call__(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(body)
        if self.fail:
            raise ConnectionError("API down")
        if path == auth.TOKEN_REVIEW_PATH:
            user = self.tokens.get(body["spec"]["token"])
            return {"status": {"authenticated": user is not None, "user": user or {}}}
        assert path == auth.ACCESS_REVIEW_PATH
        spec = body["spec"]
        key = (spec["user"], spec["resourceAttributes"]["subresource"])
        return {"status": {"allowed": key in self.allowed}}


async def test_certificate_then_token_then_anonymous_or_nobody() -> None:
    reviews = Reviews()
    reviews.tokens["good"] = {"username": "alice", "groups": ["dev"], "uid": "u1"}
    strict = auth.Authenticator(anonymous=False, review=reviews)
    cert = {"subject": ((("commonName", "bob"),),)}

    by_cert = await strict.authenticate({"authorization": "Bearer good"}, cert)
    assert by_cert == auth.User("bob", ("system:authenticated",))
    assert reviews.calls == []  # a certificate is enough; the token is not asked about
    by_token = await strict.authenticate({"authorization": "Bearer good"}, None)
    assert by_token == auth.User("alice", ("dev", "system:authenticated"), "u1")
    assert await strict.authenticate({"authorization": "Bearer bad"}, None) is None
    assert await strict.authenticate({}, None) is None

    lenient = auth.Authenticator(anonymous=True, review=None)
    assert await lenient.authenticate({"authorization": "Bearer good"}, None) == auth.ANONYMOUS


async def test_token_reviews_are_cached_two_minutes_and_denials_briefly() -> None:
    reviews, clock = Reviews(), Clock()
    reviews.tokens["t"] = {"username": "alice"}
    authn = auth.Authenticator(anonymous=False, review=reviews, clock=clock)
    header = {"authorization": "Bearer t"}
    assert await authn.authenticate(header, None) is not None
    reviews.tokens.clear()  # revoked: the cache still vouches until its TTL ends
    clock.now += auth.TOKEN_TTL_S - 1
    assert await authn.authenticate(header, None) is not None
    assert len(reviews.calls) == 1
    clock.now += 2
    assert await authn.authenticate(header, None) is None
    reviews.tokens["t"] = {"username": "alice"}
    assert await authn.authenticate(header, None) is None  # the denial is cached too
    clock.now += auth.TOKEN_DENIED_TTL_S + 1
    assert await authn.authenticate(header, None) is not None
    assert len(reviews.calls) == 3


async def test_a_failed_review_is_refused_and_not_cached() -> None:
    reviews = Reviews()
    reviews.tokens["t"] = {"username": "alice"}
    reviews.fail = True
    authn = auth.Authenticator(anonymous=False, review=reviews)
    assert await authn.authenticate({"authorization": "Bearer t"}, None) is None
    reviews.fail = False
    assert await authn.authenticate({"authorization": "Bearer t"}, None) is not None


async def test_webhook_asks_each_subresource_in_turn_and_caches_per_answer() -> None:
    reviews, clock = Reviews(), Clock()
    authz = auth.Authorizer(reviews, clock=clock)
    user = auth.User("alice", ("dev",))
    healthz = auth.attributes("GET", "/healthz", "n1")
    assert not await authz.allowed(user, healthz)  # healthz, then the proxy fallback
    asked = [c["spec"]["resourceAttributes"] for c in reviews.calls]
    assert [a["subresource"] for a in asked] == ["healthz", "proxy"]
    assert asked[0] == {
        "verb": "get",
        "group": "",
        "version": "v1",
        "resource": "nodes",
        "subresource": "healthz",
        "name": "n1",
    }
    reviews.allowed.add(("alice", "proxy"))
    assert not await authz.allowed(user, healthz)  # denials are kept 30 s
    clock.now += auth.DENIED_TTL_S + 1
    assert await authz.allowed(user, healthz)
    reviews.allowed.clear()
    clock.now += auth.ALLOWED_TTL_S - auth.DENIED_TTL_S - 5
    assert await authz.allowed(user, healthz)  # the proxy allowance is kept 5 min
    # healthz+proxy, healthz+proxy after the denials ran out, healthz once more: not proxy.
    assert [c["spec"]["resourceAttributes"]["subresource"] for c in reviews.calls] == [
        "healthz",
        "proxy",
        "healthz",
        "proxy",
        "healthz",
    ]


async def test_always_allow_asks_nobody() -> None:
    assert await auth.Authorizer(None).allowed(auth.ANONYMOUS, auth.attributes("GET", "/", "n"))


def test_ttl_cache_is_bounded() -> None:
    clock = Clock()
    cache: auth.TTLCache[int, str] = auth.TTLCache(max_entries=2, clock=clock)
    for i in range(3):
        cache.put(i, str(i), 10)
    assert cache.get(0) is None and cache.get(1) == "1" and cache.get(2) == "2"
    clock.now += 10
    assert cache.get(1) is None
