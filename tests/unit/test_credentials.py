"""kubelet/credentials: docker configs from pull secrets and node files, and which of their
keys match an image (the kubelet's keyring rules)."""

from __future__ import annotations

import base64
import json

import pytest

from nodeagent.kubelet.credentials import (
    DOCKER_CFG,
    DOCKER_CONFIG_JSON,
    Credential,
    CredentialError,
    lookup,
    matches,
    parse_config,
    parse_secret,
)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def secret(kind: str, key: str, config: object) -> dict[str, object]:
    return {"type": kind, "data": {key: b64(json.dumps(config))}}


def keyring(*keys: str) -> list[Credential]:
    config = {"auths": {k: {"username": k, "password": "pw"} for k in keys}}
    return parse_config(json.dumps(config).encode(), key="t", wrapped=True)


def one(key: str) -> Credential:
    return keyring(key)[0]


def test_dockerconfigjson_secret_gives_user_and_password_from_auth() -> None:
    doc = secret(
        DOCKER_CONFIG_JSON,
        ".dockerconfigjson",
        {"auths": {"127.0.0.1:5000": {"auth": b64("alice:s3cret:x")}}},
    )
    (found,) = parse_secret(doc)
    assert (found.auth.username, found.auth.password) == ("alice", "s3cret:x")
    assert (found.host, found.port, found.path) == ("127.0.0.1", "5000", "")


def test_dockercfg_secret_has_its_entries_at_the_top_level() -> None:
    doc = secret(DOCKER_CFG, ".dockercfg", {"reg.example.com": {"username": "u", "password": "p"}})
    (found,) = parse_secret(doc)
    assert found.auth.username == "u" and found.host == "reg.example.com"


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ({"type": "Opaque", "data": {}}, "type"),
        ({"type": DOCKER_CONFIG_JSON, "data": {}}, "'.dockerconfigjson': missing"),
        ({"type": DOCKER_CONFIG_JSON, "data": {".dockerconfigjson": "%%%"}}, "base64"),
        ({"type": DOCKER_CONFIG_JSON, "data": {".dockerconfigjson": b64("{nope")}}, "JSON"),
        ({"type": DOCKER_CFG, "data": {".dockercfg": b64('{"r": {"auth": "@@"}}')}}, "auth"),
        ({"type": DOCKER_CFG, "data": {".dockercfg": b64('{"r": {"auth": "eA=="}}')}}, "user:"),
    ],
)
def test_a_bad_secret_is_an_error_naming_the_key(doc: dict[str, object], needle: str) -> None:
    with pytest.raises(CredentialError, match=needle):
        parse_secret(doc)


@pytest.mark.parametrize(
    ("key", "image", "expected"),
    [
        ("127.0.0.1:5000", "127.0.0.1:5000/private/busybox:1", True),
        ("127.0.0.1:5000", "127.0.0.1/private/busybox:1", False),  # ports must be equal
        ("127.0.0.1", "127.0.0.1:5000/busybox", False),
        ("http://127.0.0.1:5000/v2/", "127.0.0.1:5000/busybox", True),  # scheme, /v2/ dropped
        ("reg.example.com/team", "reg.example.com/team/app:1", True),  # a path prefix
        ("reg.example.com/team", "reg.example.com/other/app:1", False),
        ("*.example.com", "reg.example.com/app", True),  # one label per *
        ("*.example.com", "example.com/app", False),
        ("*.example.com", "a.b.example.com/app", False),
        ("*.*.example.com", "a.b.example.com/app", True),
        ("REG.example.com", "reg.example.com/app", True),
        ("https://index.docker.io/v1/", "busybox", True),  # Docker Hub's legacy key
        ("docker.io", "library/busybox:1", True),
        ("docker.io", "quay.io/busybox", False),
        ("reg.example.com", "sha256:" + "a" * 64, False),
    ],
)
def test_keys_match_images_with_the_kubelet_rules(key: str, image: str, expected: bool) -> None:
    assert matches(one(key), image) is expected


def test_lookup_tries_pod_secrets_before_the_node_and_specific_keys_first() -> None:
    pod = keyring("reg.example.com", "reg.example.com/team")
    node = keyring("*.example.com", "other.io")
    found = lookup([pod, node], "reg.example.com/team/app:1")
    assert [a.username for a in found] == [
        "reg.example.com/team",
        "reg.example.com",
        "*.example.com",
    ]
    assert lookup([pod, node], "elsewhere.io/app") == []


def test_the_same_credential_twice_is_tried_once() -> None:
    assert len(lookup([keyring("r.io"), keyring("r.io")], "r.io/app")) == 1


def test_a_password_is_never_in_the_repr() -> None:
    assert "pw" not in repr(one("r.io").auth)
