"""normalize_image: the spelling containerd and Docker give image names."""

from __future__ import annotations

import pytest

from nodeagent.runtime.image import InvalidImageReference, normalize_image

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("ref", "want"),
    [
        # Docker Hub official images get the domain, library/ and :latest.
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox:latest"),
        ("docker.io/busybox", "docker.io/library/busybox:latest"),
        ("index.docker.io/busybox:1", "docker.io/library/busybox:1"),
        # Docker Hub user images get the domain only.
        ("foo/bar:1", "docker.io/foo/bar:1"),
        ("foo/bar", "docker.io/foo/bar:latest"),
        ("docker.io/foo/bar:1", "docker.io/foo/bar:1"),
        # Other registries are left as they are, apart from the default tag.
        ("registry.k8s.io/pause:3.6", "registry.k8s.io/pause:3.6"),
        ("registry.k8s.io/pause", "registry.k8s.io/pause:latest"),
        ("quay.io/a/b/c:v2", "quay.io/a/b/c:v2"),
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/app:dev", "localhost:5000/app:dev"),
        ("10.0.0.1:5000/team/app:1.0", "10.0.0.1:5000/team/app:1.0"),
        # A registry-less first component with neither '.' nor ':' is a Hub user.
        ("myregistry/app", "docker.io/myregistry/app:latest"),
        # Separators allowed inside path components.
        ("foo/my_app.v2-x:latest", "docker.io/foo/my_app.v2-x:latest"),
        # Digests are kept, and no :latest is added beside them.
        (f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}"),
        (f"busybox:1.36@{DIGEST}", f"docker.io/library/busybox:1.36@{DIGEST}"),
        (f"registry.k8s.io/pause@{DIGEST}", f"registry.k8s.io/pause@{DIGEST}"),
        # An image ID is not a name.
        (DIGEST, DIGEST),
    ],
)
def test_normalize_image(ref: str, want: str) -> None:
    assert normalize_image(ref) == want


@pytest.mark.parametrize(
    "ref",
    ["docker.io/library/busybox:latest", "registry.k8s.io/pause:3.6", f"quay.io/a/b@{DIGEST}"],
)
def test_normalize_image_is_idempotent(ref: str) -> None:
    assert normalize_image(normalize_image(ref)) == normalize_image(ref)


@pytest.mark.parametrize(
    "ref",
    [
        "",
        "Busybox",  # repository names are lowercase
        "busybox:",  # empty tag
        "busybox:-x",  # a tag cannot start with '-'
        "busybox@sha256:abc",  # digest too short
        "busybox@",
        "foo//bar",
        "foo/bar/",
        "with space",
        "bad_.registry.io:/x",
        "a" * 260,
    ],
)
def test_normalize_image_rejects_invalid(ref: str) -> None:
    with pytest.raises(InvalidImageReference):
        normalize_image(ref)


def test_invalid_reference_is_a_value_error() -> None:
    assert issubclass(InvalidImageReference, ValueError)
