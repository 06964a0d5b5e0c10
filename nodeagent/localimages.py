"""Offline images: build the busybox and pause images from this machine's own files.

No image registry is reachable where nodeagent is developed and tested, so the two images
everything needs are built here, with the standard library only:

- ``docker.io/library/busybox:latest``: Debian's static busybox binary plus one symlink per
  applet, a writable ``/tmp``, ``/etc/passwd`` and ``/etc/group`` with root and nobody, and an
  empty ``/var/www`` for ``httpd -h``. CRI normalizes ``busybox`` to this name.
- the sandbox ("pause") image, ``registry.k8s.io/pause:3.6`` unless told otherwise: a tiny
  static C program that sleeps in ``pause()``, exits 0 on SIGINT/SIGTERM and reaps zombies
  on SIGCHLD. Without a working C compiler it falls back to a busybox shell loop.

One archive serves both runtimes. It is an OCI image layout (``oci-layout``, ``index.json``,
``blobs/sha256/...``) that also carries a Docker ``manifest.json`` pointing at the same blobs.
containerd's importer reads the OCI layout when ``oci-layout`` is present and ignores
``manifest.json``; ``docker load`` reads only ``manifest.json`` (it decompresses gzip layers
itself). ``ctr images import`` names an image after the ``io.containerd.image.name``
annotation first, so each index entry carries the full normalized name there (the
``org.opencontainers.image.ref.name`` annotation carries the tag, as containerd's own export
does).

The output is deterministic: fixed mtimes, root ownership, sorted entries, gzip without a
timestamp. The same inputs give the same digests, so a cached archive is as good as a new one.

Usage: ``python -m nodeagent.localimages build|import-containerd|load-docker``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodeagent.fsutil import open_atomic

BUSYBOX_IMAGE = "docker.io/library/busybox:latest"
PAUSE_IMAGE = "registry.k8s.io/pause:3.6"
DEFAULT_BUILD_DIR = Path("build/images")
DEFAULT_BUSYBOX = Path("/bin/busybox")
DEFAULT_NAMESPACE = "k8s.io"

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"

# Every entry gets this mtime; any fixed value works, a round one reads well in `ls -l`.
EPOCH = 946684800  # 2000-01-01T00:00:00Z
CREATED = "2000-01-01T00:00:00Z"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnobody:x:65534:\n"

PAUSE_C = r"""
/* The sandbox's first process: hold the namespaces, reap orphans, exit on request. */
#include <signal.h>
#include <stddef.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig) { (void)sig; _exit(0); }

static void on_child(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction sa = {0};
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_stop;
    if (sigaction(SIGINT, &sa, NULL) < 0 || sigaction(SIGTERM, &sa, NULL) < 0) return 1;
    sa.sa_handler = on_child;
    sa.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    if (sigaction(SIGCHLD, &sa, NULL) < 0) return 2;
    for (;;) pause();
    return 42;
}
"""

# Fallback when no C compiler works: PID 1 ignores signals it has no handler for, so the
# shell traps TERM/INT itself; `wait` returns on a trapped signal at once.
PAUSE_SH = """#!/bin/busybox sh
trap 'exit 0' INT TERM
while :; do /bin/busybox sleep 2147483647 & wait $!; done
"""


class ImageToolError(Exception):
    """Building or importing a local image failed."""


@dataclass(frozen=True)
class Entry:
    """One file-system entry of a layer."""

    path: str  # relative, no leading slash
    kind: str  # "dir", "file" or "symlink"
    mode: int = 0o755
    data: bytes = b""  # file contents
    target: str = ""  # symlink target


@dataclass(frozen=True)
class ImageSpec:
    """What goes into one single-layer image."""

    name: str  # full normalized reference, e.g. docker.io/library/busybox:latest
    entries: tuple[Entry, ...]
    cmd: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    env: tuple[str, ...] = (PATH_ENV,)
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BuiltImage:
    """The digests of an image written into an archive."""

    name: str
    manifest_digest: str
    config_digest: str
    layer_digest: str
    diff_id: str


def go_arch() -> str:
    """This machine's architecture, spelled the way OCI platforms spell it."""
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(
        machine, machine
    )


def tag_of(name: str) -> str:
    """The tag of a reference ("latest" when it has none)."""
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else "latest"


def archive_name(name: str) -> str:
    """A file name for the archive of one image reference."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) + ".tar"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _with_parents(entries: Iterable[Entry]) -> list[Entry]:
    """Add missing parent directories; sort so parents come before children."""
    by_path = {e.path: e for e in entries}
    for path in list(by_path):
        parent = os.path.dirname(path)
        while parent and parent not in by_path:
            by_path[parent] = Entry(parent, "dir")
            parent = os.path.dirname(parent)
    return [by_path[p] for p in sorted(by_path)]


def layer_tar(entries: Iterable[Entry]) -> bytes:
    """An uncompressed, deterministic layer tar."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in _with_parents(entries):
            info = tarfile.TarInfo(entry.path)
            info.mtime = EPOCH
            info.mode = entry.mode
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif entry.kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = entry.target
                info.mode = 0o777
                tar.addfile(info)
            elif entry.kind == "file":
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
            else:
                raise ValueError(f"unknown entry kind {entry.kind!r} for {entry.path}")
    return buf.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    """gzip with no file name and a zero timestamp, so equal input gives equal output."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=6) as gz:
        gz.write(data)
    return buf.getvalue()


def image_blobs(spec: ImageSpec) -> tuple[BuiltImage, dict[str, bytes], dict[str, Any]]:
    """Build the blobs of one image; return them with the index entry that names it."""
    raw = layer_tar(spec.entries)
    layer = gzip_bytes(raw)
    diff_id = sha256(raw)
    image_config: dict[str, Any] = {"Env": list(spec.env)}
    if spec.cmd:
        image_config["Cmd"] = list(spec.cmd)
    if spec.entrypoint:
        image_config["Entrypoint"] = list(spec.entrypoint)
    if spec.labels:
        image_config["Labels"] = dict(spec.labels)
    config = canonical_json(
        {
            "architecture": go_arch(),
            "os": "linux",
            "created": CREATED,
            "config": image_config,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": CREATED, "created_by": "nodeagent.localimages"}],
        }
    )
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [
                {"mediaType": MEDIA_LAYER_GZIP, "digest": sha256(layer), "size": len(layer)}
            ],
        }
    )
    built = BuiltImage(
        name=spec.name,
        manifest_digest=sha256(manifest),
        config_digest=sha256(config),
        layer_digest=sha256(layer),
        diff_id=diff_id,
    )
    blobs = {sha256(b): b for b in (layer, config, manifest)}
    index_entry = {
        "mediaType": MEDIA_MANIFEST,
        "digest": built.manifest_digest,
        "size": len(manifest),
        "platform": {"architecture": go_arch(), "os": "linux"},
        "annotations": {
            ANNOTATION_CONTAINERD_NAME: spec.name,
            ANNOTATION_REF_NAME: tag_of(spec.name),
        },
    }
    return built, blobs, index_entry


def blob_path(digest: str) -> str:
    algo, hexdigest = digest.split(":", 1)
    return f"blobs/{algo}/{hexdigest}"


def write_archive(specs: Sequence[ImageSpec], out: Path) -> list[BuiltImage]:
    """Write one archive (OCI layout + Docker manifest.json) holding every image in specs.

    The file appears atomically: a reader never sees a half-written archive.
    """
    built: list[BuiltImage] = []
    blobs: dict[str, bytes] = {}
    index_entries: list[dict[str, Any]] = []
    docker_manifest: list[dict[str, Any]] = []
    for spec in specs:
        image, image_blobs_, entry = image_blobs(spec)
        built.append(image)
        blobs.update(image_blobs_)
        index_entries.append(entry)
        docker_manifest.append(
            {
                "Config": blob_path(image.config_digest),
                "RepoTags": [spec.name],
                "Layers": [blob_path(image.layer_digest)],
            }
        )
    files: dict[str, bytes] = {
        "oci-layout": canonical_json({"imageLayoutVersion": "1.0.0"}),
        "index.json": canonical_json(
            {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": index_entries}
        ),
        "manifest.json": canonical_json(docker_manifest),
    }
    files.update({blob_path(d): b for d, b in blobs.items()})
    dirs = sorted({os.path.dirname(p) for p in files if os.path.dirname(p)} | {"blobs"})

    out.parent.mkdir(parents=True, exist_ok=True)
    with (
        open_atomic(out, mode=0o644, fsync=False) as raw,
        tarfile.open(fileobj=raw, mode="w") as tar,
    ):
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, EPOCH
            tar.addfile(info)
        for path in sorted(files):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(files[path]), 0o644, EPOCH
            tar.addfile(info, io.BytesIO(files[path]))
    return built


def busybox_applets(busybox: Path) -> list[str]:
    """The applet names this busybox binary offers (`busybox --list`)."""
    try:
        out = subprocess.run(
            [str(busybox), "--list"], check=True, capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ImageToolError(f"cannot list applets of {busybox}: {exc}") from exc
    names = {line.strip() for line in out.splitlines()}
    return sorted(n for n in names if n and "/" not in n and n != "busybox")


def base_entries(busybox: Path) -> list[Entry]:
    """The busybox file system: binary, applet links, users, /tmp and friends."""
    entries = [
        Entry("bin/busybox", "file", 0o755, data=busybox.read_bytes()),
        Entry("etc/passwd", "file", 0o644, data=PASSWD.encode()),
        Entry("etc/group", "file", 0o644, data=GROUP.encode()),
        Entry("tmp", "dir", 0o1777),
        Entry("root", "dir", 0o700),
        Entry("var/www", "dir", 0o755),
    ]
    entries += [Entry(d, "dir") for d in ("dev", "proc", "sys", "usr/bin", "usr/sbin")]
    entries += [Entry(f"bin/{a}", "symlink", target="busybox") for a in busybox_applets(busybox)]
    # Scripts that start with `#!/usr/bin/env sh` work too.
    entries.append(Entry("usr/bin/env", "symlink", target="../../bin/busybox"))
    return entries


def busybox_spec(*, busybox: Path = DEFAULT_BUSYBOX, name: str = BUSYBOX_IMAGE) -> ImageSpec:
    return ImageSpec(name=name, entries=tuple(base_entries(busybox)), cmd=("sh",))


def compile_pause(workdir: Path) -> bytes | None:
    """A static pause binary, or None when no C compiler can build one."""
    cc = os.environ.get("CC", "gcc")
    if shutil.which(cc) is None:
        return None
    src, out = workdir / "pause.c", workdir / "pause"
    src.write_text(PAUSE_C)
    argv = [cc, "-static", "-Os", "-s", "-o", str(out), str(src)]
    try:
        subprocess.run(argv, check=True, capture_output=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.read_bytes()


def pause_spec(*, name: str = PAUSE_IMAGE, busybox: Path = DEFAULT_BUSYBOX) -> ImageSpec:
    with tempfile.TemporaryDirectory(prefix="nodeagent-pause-") as tmp:
        binary = compile_pause(Path(tmp))
    if binary is not None:
        entries = (Entry("pause", "file", 0o755, data=binary),)
        return ImageSpec(name=name, entries=entries, entrypoint=("/pause",))
    fallback = (
        Entry("pause", "file", 0o755, data=PAUSE_SH.encode()),
        Entry("bin/busybox", "file", 0o755, data=busybox.read_bytes()),
        Entry("bin/sh", "symlink", target="busybox"),
    )
    return ImageSpec(
        name=name,
        entries=fallback,
        entrypoint=("/pause",),
        labels={"io.nodeagent.pause": "busybox-fallback"},
    )


@dataclass(frozen=True)
class BuildOptions:
    build_dir: Path = DEFAULT_BUILD_DIR
    busybox: Path = DEFAULT_BUSYBOX
    busybox_image: str = BUSYBOX_IMAGE
    pause_image: str = PAUSE_IMAGE
    force: bool = False


def build_all(opts: BuildOptions) -> dict[str, Path]:
    """Build (or reuse from the build dir) one archive per image; map image name to archive."""
    makers: dict[str, Callable[[], ImageSpec]] = {
        opts.busybox_image: lambda: busybox_spec(busybox=opts.busybox, name=opts.busybox_image),
        opts.pause_image: lambda: pause_spec(name=opts.pause_image, busybox=opts.busybox),
    }
    result: dict[str, Path] = {}
    for name, make in makers.items():
        out = opts.build_dir / archive_name(name)
        if opts.force or not out.is_file():
            write_archive([make()], out)
        result[name] = out
    return result


def _run(argv: Sequence[str], *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=timeout)
    except subprocess.CalledProcessError as exc:
        raise ImageToolError(f"{' '.join(argv)} failed: {exc.stderr.strip()}") from exc
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ImageToolError(f"{' '.join(argv)} failed: {exc}") from exc


def containerd_images(address: str, *, namespace: str = DEFAULT_NAMESPACE) -> set[str]:
    out = _run(["ctr", "-a", address, "-n", namespace, "images", "ls", "-q"]).stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


def import_containerd(
    archives: dict[str, Path], *, address: str, namespace: str = DEFAULT_NAMESPACE
) -> None:
    """Import every archive into containerd and check each image got its exact name."""
    for archive in archives.values():
        _run(["ctr", "-a", address, "-n", namespace, "images", "import", str(archive)])
    missing = set(archives) - containerd_images(address, namespace=namespace)
    if missing:
        raise ImageToolError(f"imported, but containerd does not list {sorted(missing)}")


def load_docker(archives: dict[str, Path], *, host: str | None = None) -> None:
    """`docker load` every archive into a Docker Engine."""
    base = ["docker"] + (["-H", host] if host else [])
    for archive in archives.values():
        _run([*base, "load", "-i", str(archive)])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nodeagent.localimages", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--build-dir", type=Path, default=DEFAULT_BUILD_DIR)
    common.add_argument("--busybox", type=Path, default=DEFAULT_BUSYBOX, help="busybox binary")
    common.add_argument("--busybox-image", default=BUSYBOX_IMAGE)
    common.add_argument("--pause-image", default=PAUSE_IMAGE)
    common.add_argument("--force", action="store_true", help="rebuild even if cached")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", parents=[common], help="build the image archives")
    imp = sub.add_parser("import-containerd", parents=[common], help="build and ctr import")
    imp.add_argument("--address", default="/run/containerd/containerd.sock")
    imp.add_argument("--namespace", default=DEFAULT_NAMESPACE)
    load = sub.add_parser("load-docker", parents=[common], help="build and docker load")
    load.add_argument("--host", default=None, help="Docker host, e.g. unix:///run/docker.sock")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    opts = BuildOptions(
        build_dir=args.build_dir,
        busybox=args.busybox,
        busybox_image=args.busybox_image,
        pause_image=args.pause_image,
        force=args.force,
    )
    try:
        archives = build_all(opts)
        if args.command == "import-containerd":
            import_containerd(archives, address=args.address, namespace=args.namespace)
        elif args.command == "load-docker":
            load_docker(archives, host=args.host)
    except (ImageToolError, OSError) as exc:
        print(f"localimages: {exc}", file=sys.stderr)
        return 1
    for name, path in archives.items():
        print(f"{name}\t{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
