"""Image reference normalization, the way CRI runtimes and Docker spell image names.

A pod says ``busybox``; containerd stores, lists and reports ``docker.io/library/busybox:latest``.
The kubelet compares the two (is the image present? which image does this container run?), so
both sides must be brought to one spelling first. This module does that without a runtime, with
the rules of the reference grammar that containerd and Docker share
(github.com/distribution/reference):

- no registry part -> ``docker.io``; a single path component on docker.io gets ``library/``;
- the first component is a registry only if it has a ``.`` or a ``:``, or is ``localhost``;
- ``index.docker.io`` is the legacy name of ``docker.io``;
- no tag and no digest -> ``:latest``; a digest is kept, and no tag is added beside it;
- an image ID (``sha256:<64 hex>``) is not a name, and is returned unchanged.

Invalid references raise ``InvalidImageReference`` (a ``ValueError``), which the kubelet reports
as ``InvalidImageName`` rather than trying to pull.
"""

from __future__ import annotations

import re

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"

# The pieces of the grammar, as distribution/reference writes them.
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_DOMAIN_RE = re.compile(rf"^{_DOMAIN}$")
_PATH_RE = re.compile(rf"^{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*$")
_TAG_RE = re.compile(rf"^{_TAG}$")
_DIGEST_RE = re.compile(rf"^{_DIGEST}$")
_IMAGE_ID_RE = re.compile(r"^sha256:[0-9a-f]{64}$")

# distribution/reference caps the whole name (domain and path) at 255 characters.
_NAME_MAX = 255


class InvalidImageReference(ValueError):
    """The string is not a valid image reference."""


def normalize_image(ref: str) -> str:
    """Return the fully qualified spelling of ``ref`` (see the module docstring)."""
    if _IMAGE_ID_RE.match(ref):
        return ref
    rest, digest = _split_digest(ref)
    name, tag = _split_tag(rest)
    domain, path = _split_domain(name)
    full = f"{domain}/{path}"
    if len(full) > _NAME_MAX:
        raise InvalidImageReference(f"image name longer than {_NAME_MAX} characters: {ref!r}")
    if tag:
        full += f":{tag}"
    if digest:
        return f"{full}@{digest}"
    return full if tag else f"{full}:{DEFAULT_TAG}"


def _split_digest(ref: str) -> tuple[str, str]:
    rest, sep, digest = ref.partition("@")
    if sep and not _DIGEST_RE.match(digest):
        raise InvalidImageReference(f"invalid digest in image reference {ref!r}")
    return rest, digest


def _split_tag(ref: str) -> tuple[str, str]:
    # A colon after the last slash starts the tag; one before it belongs to a registry port.
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon <= slash:
        return ref, ""
    name, tag = ref[:colon], ref[colon + 1 :]
    if not _TAG_RE.match(tag):
        raise InvalidImageReference(f"invalid tag in image reference {ref!r}")
    return name, tag


def _split_domain(name: str) -> tuple[str, str]:
    first, sep, remainder = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        domain, path = first, remainder
        if not _DOMAIN_RE.match(domain):
            raise InvalidImageReference(f"invalid registry in image reference {name!r}")
    else:
        domain, path = DEFAULT_DOMAIN, name
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_REPO_PREFIX + path
    if not _PATH_RE.match(path):
        raise InvalidImageReference(f"invalid repository name in image reference {name!r}")
    return domain, path
