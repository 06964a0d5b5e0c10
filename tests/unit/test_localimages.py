"""The offline image builder: archives are self-consistent, named, deterministic."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from nodeagent import localimages as li

FAKE_APPLETS = ["sh", "sleep", "httpd", "nc", "echo", "[", "busybox"]


@pytest.fixture
def fake_busybox(tmp_path: Path) -> Path:
    """A stand-in for /bin/busybox: answers --list like the real one."""
    path = tmp_path / "busybox"
    path.write_text("#!/bin/sh\nprintf '%s\\n' " + " ".join(f"'{a}'" for a in FAKE_APPLETS) + "\n")
    path.chmod(0o755)
    return path


def read_archive(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


def blob(files: dict[str, bytes], digest: str) -> bytes:
    data = files[li.blob_path(digest)]
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    return data


def layer_members(files: dict[str, bytes], manifest: dict[str, Any]) -> dict[str, tarfile.TarInfo]:
    layer = gzip.decompress(blob(files, manifest["layers"][0]["digest"]))
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_archive_is_consistent_and_named(tmp_path: Path, fake_busybox: Path) -> None:
    out = tmp_path / "bb.tar"
    (built,) = li.write_archive([li.busybox_spec(busybox=fake_busybox)], out)
    files = read_archive(out)

    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]

    (entry,) = json.loads(files["index.json"])["manifests"]
    assert entry["annotations"] == {
        "io.containerd.image.name": "docker.io/library/busybox:latest",
        "org.opencontainers.image.ref.name": "latest",
    }
    assert entry["digest"] == built.manifest_digest
    manifest_bytes = blob(files, entry["digest"])
    assert entry["size"] == len(manifest_bytes)
    manifest = json.loads(manifest_bytes)
    assert manifest["config"]["size"] == len(blob(files, manifest["config"]["digest"]))
    assert manifest["layers"][0]["mediaType"] == li.MEDIA_LAYER_GZIP

    config = json.loads(blob(files, manifest["config"]["digest"]))
    raw_layer = gzip.decompress(blob(files, manifest["layers"][0]["digest"]))
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(raw_layer).hexdigest()]
    assert config["config"]["Cmd"] == ["sh"]
    assert any(e.startswith("PATH=") for e in config["config"]["Env"])

    (docker,) = json.loads(files["manifest.json"])
    assert docker["RepoTags"] == ["docker.io/library/busybox:latest"]
    assert docker["Config"] == li.blob_path(manifest["config"]["digest"])
    assert docker["Layers"] == [li.blob_path(manifest["layers"][0]["digest"])]


def test_busybox_layer_contents(tmp_path: Path, fake_busybox: Path) -> None:
    out = tmp_path / "bb.tar"
    li.write_archive([li.busybox_spec(busybox=fake_busybox)], out)
    files = read_archive(out)
    manifest = json.loads(blob(files, json.loads(files["index.json"])["manifests"][0]["digest"]))
    members = layer_members(files, manifest)

    assert members["bin/busybox"].isfile()
    for applet in ("sh", "sleep", "httpd", "nc", "echo", "["):
        assert members[f"bin/{applet}"].issym()
        assert members[f"bin/{applet}"].linkname == "busybox"
    assert "bin/busybox" in members and not members["bin/busybox"].issym()
    assert members["tmp"].isdir() and members["tmp"].mode == 0o1777
    assert members["var/www"].isdir()
    assert {m.mtime for m in members.values()} == {li.EPOCH}
    names = list(members)
    assert names == sorted(names)


def test_users_and_groups(tmp_path: Path, fake_busybox: Path) -> None:
    spec = li.busybox_spec(busybox=fake_busybox)
    by_path = {e.path: e for e in spec.entries}
    assert b"root:x:0:0:" in by_path["etc/passwd"].data
    assert b"nobody:x:65534:65534:" in by_path["etc/passwd"].data
    assert by_path["etc/group"].data.splitlines() == [b"root:x:0:", b"nobody:x:65534:"]


def test_output_is_deterministic(tmp_path: Path, fake_busybox: Path) -> None:
    spec = li.busybox_spec(busybox=fake_busybox)
    li.write_archive([spec], tmp_path / "a.tar")
    li.write_archive([li.busybox_spec(busybox=fake_busybox)], tmp_path / "b.tar")
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()


def test_pause_fallback_without_compiler(
    tmp_path: Path, fake_busybox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CC", "no-such-compiler")
    spec = li.pause_spec(name="example.test/pause:9", busybox=fake_busybox)
    assert spec.entrypoint == ("/pause",)
    by_path = {e.path: e for e in spec.entries}
    assert by_path["pause"].data.startswith(b"#!/bin/busybox sh")
    (built,) = li.write_archive([spec], tmp_path / "p.tar")
    index = json.loads(read_archive(tmp_path / "p.tar")["index.json"])
    assert index["manifests"][0]["annotations"][li.ANNOTATION_CONTAINERD_NAME] == built.name


def test_build_all_caches(
    tmp_path: Path, fake_busybox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CC", "no-such-compiler")
    opts = li.BuildOptions(build_dir=tmp_path / "out", busybox=fake_busybox, pause_image="x/p:1")
    first = li.build_all(opts)
    assert set(first) == {li.BUSYBOX_IMAGE, "x/p:1"}
    for path in first.values():
        path.write_bytes(b"cached")  # a rebuild would overwrite this
    second = li.build_all(opts)
    assert second == first
    assert all(p.read_bytes() == b"cached" for p in second.values())
    forced = li.build_all(li.BuildOptions(**{**opts.__dict__, "force": True}))
    assert all(p.read_bytes() != b"cached" for p in forced.values())


@pytest.mark.parametrize(
    ("name", "tag"),
    [
        ("docker.io/library/busybox:latest", "latest"),
        ("registry.k8s.io/pause:3.6", "3.6"),
        ("localhost:5000/x/y", "latest"),
        ("localhost:5000/x/y:v1", "v1"),
    ],
)
def test_tag_of(name: str, tag: str) -> None:
    assert li.tag_of(name) == tag


def test_archive_names_are_plain_file_names() -> None:
    assert li.archive_name("registry.k8s.io/pause:3.6") == "registry.k8s.io_pause_3.6.tar"
    assert "/" not in li.archive_name("a/b/c:d")
