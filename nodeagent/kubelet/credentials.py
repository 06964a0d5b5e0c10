"""Registry credentials: parsing docker configs and choosing the ones for an image (pure).

Where credentials come from, in the kubelet's order (``credentialprovider/secrets`` and
``keyring.go``): first the pod's ``imagePullSecrets`` in the order the pod names them, then
the node's own docker config (``--image-credentials``, else the kubelet's default paths,
``node_config_paths``). Every credential whose key matches the image is tried in turn
(``ImageManager``); with none, the image is pulled anonymously.

Two secret types carry a docker config:
- ``kubernetes.io/dockerconfigjson``: key ``.dockerconfigjson``, ``{"auths": {KEY: ENTRY}}``;
- ``kubernetes.io/dockercfg`` (older): key ``.dockercfg``, ``{KEY: ENTRY}``.
An ENTRY has ``username``/``password``, or ``auth`` (base64 ``user:password``, which wins
when both are given, as docker's config loader), and may have ``identitytoken``.

A KEY matches an image the way ``URLsMatch`` does upstream: a scheme and a ``/v1/`` or
``/v2/`` path prefix are dropped; the host must have as many dot-separated labels as the
image's registry, each matched as a glob (``*.example.com`` matches ``a.example.com``, not
``example.com`` nor ``a.b.example.com``); ports must be equal (none matches none); the
image's repository path must start with the key's path. ``index.docker.io`` (also as
``https://index.docker.io/v1/``) is Docker Hub's legacy name and matches ``docker.io``
images. More specific keys come first (upstream sorts its index in reverse order).

Bad input is a ``CredentialError`` (never another exception) naming the key and what is
wrong, so that the caller can tell the pod which secret and key to fix.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodeagent.runtime.base import RegistryAuth
from nodeagent.runtime.image import DEFAULT_DOMAIN, InvalidImageReference, normalize_image

DOCKER_CONFIG_JSON = "kubernetes.io/dockerconfigjson"
DOCKER_CFG = "kubernetes.io/dockercfg"
SECRET_KEYS = {DOCKER_CONFIG_JSON: ".dockerconfigjson", DOCKER_CFG: ".dockercfg"}
_HUB_HOSTS = ("index.docker.io", "registry-1.docker.io")


class CredentialError(ValueError):
    """A docker config that cannot be used; ``key`` is the secret key it came from."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"key {key!r}: {message}")
        self.key = key


@dataclass(frozen=True)
class Credential:
    """One config entry: the key it was written under, and what to hand the runtime."""

    key: str
    host: str  # lower-case host, without port
    port: str
    path: str  # "" or a repository path prefix, without a leading slash
    auth: RegistryAuth


def node_config_paths(home: str) -> tuple[Path, ...]:
    """Where the kubelet looks for the node's docker config, first found wins."""
    return (
        Path("/var/lib/kubelet/config.json"),
        Path(home) / ".docker" / "config.json",
        Path("/.docker/config.json"),
        Path("/var/lib/kubelet/.dockercfg"),
        Path(home) / ".dockercfg",
    )


def parse_secret(secret: Mapping[str, Any]) -> list[Credential]:
    """The credentials of a pull Secret as the API serves it (``data`` is base64)."""
    kind = str(secret.get("type") or "")
    key = SECRET_KEYS.get(kind)
    if key is None:
        raise CredentialError("type", f"type {kind!r} is not {DOCKER_CONFIG_JSON} nor {DOCKER_CFG}")
    data = secret.get("data") or {}
    encoded = data.get(key) if isinstance(data, Mapping) else None
    if not isinstance(encoded, str):
        raise CredentialError(key, "missing")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CredentialError(key, f"not valid base64: {exc}") from exc
    return parse_config(raw, key=key, wrapped=kind == DOCKER_CONFIG_JSON)


def parse_config(raw: bytes, *, key: str, wrapped: bool) -> list[Credential]:
    """A docker ``config.json`` (``wrapped``: entries under ``auths``) or ``.dockercfg``."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CredentialError(key, f"not valid JSON: {exc}") from exc
    if not isinstance(doc, Mapping):
        raise CredentialError(key, "not a JSON object")
    # A config.json where a .dockercfg was expected still has its entries under "auths".
    entries = doc.get("auths") if wrapped or isinstance(doc.get("auths"), Mapping) else doc
    if not isinstance(entries, Mapping):
        raise CredentialError(key, "auths is not a JSON object")
    return [_credential(name, entry, key) for name, entry in entries.items()]


def _credential(name: str, entry: object, key: str) -> Credential:
    if not isinstance(entry, Mapping):
        raise CredentialError(key, f"entry {name!r} is not a JSON object")
    username = str(entry.get("username") or "")
    password = str(entry.get("password") or "")
    if entry.get("auth"):
        try:
            decoded = base64.b64decode(str(entry["auth"]), validate=True).decode()
        except (binascii.Error, ValueError) as exc:
            raise CredentialError(key, f"entry {name!r}: auth is not base64: {exc}") from exc
        username, sep, password = decoded.partition(":")
        if not sep:
            raise CredentialError(key, f"entry {name!r}: auth is not user:password")
    host, port, path = _split_key(name)
    auth = RegistryAuth(
        username=username,
        password=password,
        server_address=name,
        identity_token=str(entry.get("identitytoken") or ""),
    )
    return Credential(key=name, host=host, port=port, path=path, auth=auth)


def _split_key(name: str) -> tuple[str, str, str]:
    rest = name.split("://", 1)[1] if "://" in name else name
    hostport, _, path = rest.partition("/")
    if path.startswith(("v1/", "v2/")) or path in ("v1", "v2"):
        path = path[3:]
    host, _, port = hostport.partition(":")
    host = host.lower()
    if host in _HUB_HOSTS:
        host = DEFAULT_DOMAIN
    return host, port, path.strip("/")


def _split_image(image: str) -> tuple[str, str, str]:
    """Registry host, port and repository path of ``image`` (normalized first)."""
    name = normalize_image(image).split("@", 1)[0]
    domain, _, path = name.partition("/")
    colon = path.rfind(":")
    if colon >= 0:
        path = path[:colon]
    host, _, port = domain.partition(":")
    return host.lower(), port, path


def matches(credential: Credential, image: str) -> bool:
    try:
        host, port, path = _split_image(image)
    except InvalidImageReference:
        return False
    labels, patterns = host.split("."), credential.host.split(".")
    if len(labels) != len(patterns):
        return False
    if not all(
        fnmatch.fnmatchcase(label, pattern) for label, pattern in zip(labels, patterns, strict=True)
    ):
        return False
    if port != credential.port:
        return False
    return path.startswith(credential.path)


def lookup(keyrings: Iterable[Sequence[Credential]], image: str) -> list[RegistryAuth]:
    """Every matching credential, keyring by keyring (pod secrets first, then the node's);
    within one keyring the most specific key first. Duplicates are tried once."""
    found: list[RegistryAuth] = []
    for keyring in keyrings:
        ordered = sorted(keyring, key=lambda c: (c.host, c.port, c.path), reverse=True)
        for credential in ordered:
            if matches(credential, image) and credential.auth not in found:
                found.append(credential.auth)
    return found
