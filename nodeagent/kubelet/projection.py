"""Writing ConfigMap, Secret, downwardAPI and projected volumes: shared by both pod sources.

``refs.files_for`` (pure) says what files a volume holds; this module puts them on the node
the kubelet's atomic way (its ``AtomicWriter``): a new timestamped directory, then one
rename of the ``..data`` symlink, so a reader sees the old set or the new one, never a mix;
top-level names are symlinks through ``..data``. Secret and projected volumes are tmpfs
mounts, so secrets stay off the disk (``volumes.cleanup`` unmounts them with the pod).

Who calls it: ``apiserver/podrefs.py`` for API pods, ``kubelet/staticrefs.py`` for the
manifest directory's. Both rewrite the pod first (``refs.rewrite``) so that each of these
volumes is a read-only hostPath directory under the pod's own directory.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import shutil
from pathlib import Path
from typing import Any

import structlog

from nodeagent.model.refs import Files, Lookup, files_for, supported, volume_dir

log = structlog.get_logger("nodeagent.kubelet.projection")

Obj = dict[str, Any]

DATA_LINK = "..data"
TMPFS_KINDS = ("secret", "projected")


async def write_volumes(pod_dir: str, obj: Obj, lookup: Lookup) -> list[str]:
    """Write every such volume of the pod document ``obj``; return the names that changed.
    Raises RefError (what is missing) or OSError; a volume written before the failing one
    keeps its new content."""
    changed = []
    gid = fs_group(obj)
    for volume in (obj.get("spec") or {}).get("volumes") or []:
        path = volume_dir(pod_dir, volume)
        if path is None or not supported(volume):
            continue
        files = files_for(volume, obj, lookup)
        if gid is not None:  # the group may read every file, as the kubelet makes it
            files = {rel: (content, mode | 0o440) for rel, (content, mode) in files.items()}
        tmpfs = any(kind in volume for kind in TMPFS_KINDS)
        await ensure_dir(Path(path), tmpfs=tmpfs)
        if await asyncio.to_thread(write_atomic, Path(path), files, gid=gid):
            changed.append(str(volume.get("name")))
    return changed


def fs_group(obj: Obj) -> int | None:
    """The pod's ``spec.securityContext.fsGroup`` (validation has checked it)."""
    context = (obj.get("spec") or {}).get("securityContext") or {}
    value = context.get("fsGroup") if isinstance(context, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


async def ensure_dir(path: Path, *, tmpfs: bool) -> None:
    await asyncio.to_thread(path.mkdir, mode=0o755, parents=True, exist_ok=True)
    if not tmpfs or await asyncio.to_thread(os.path.ismount, path):
        return
    proc = await asyncio.create_subprocess_exec(
        "mount",
        "-t",
        "tmpfs",
        "-o",
        "mode=0755",
        "tmpfs",
        str(path),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:  # not fatal: the files still work, from the disk
        log.warning(
            "volume_tmpfs_failed", path=str(path), error=err.decode(errors="replace").strip()
        )


def write_atomic(target: Path, files: Files, *, gid: int | None = None) -> bool:
    """Make ``target`` hold exactly ``files`` (group ``gid``, with fsGroup); False if it
    already did. See the module docstring."""
    current = target / DATA_LINK
    if current.is_symlink() and _same(current, files, gid):
        return False
    stamp = datetime.datetime.now(datetime.UTC).strftime("..%Y_%m_%d_%H_%M_%S.%f")
    fresh = target / stamp
    fresh.mkdir(mode=0o755)
    for rel, (content, mode) in files.items():
        path = fresh / rel
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(mode)
        if gid is not None:
            os.chown(path, -1, gid)
    if gid is not None:
        os.chown(target, -1, gid)
        for directory in (fresh, *(p for p in fresh.rglob("*") if p.is_dir())):
            os.chown(directory, -1, gid)
            directory.chmod(0o2755)
    old = os.readlink(current) if current.is_symlink() else None
    tmp_link = target / "..data_tmp"
    tmp_link.unlink(missing_ok=True)
    tmp_link.symlink_to(stamp)
    os.replace(tmp_link, current)
    tops = {rel.split("/", 1)[0] for rel in files}
    for top in tops:
        link = target / top
        if not link.is_symlink():
            link.symlink_to(f"{DATA_LINK}/{top}")
    for entry in target.iterdir():
        if entry.is_symlink() and not entry.name.startswith("..") and entry.name not in tops:
            entry.unlink()
    if old is not None and old != stamp:
        shutil.rmtree(target / old, ignore_errors=True)
    return True


def _same(current: Path, files: Files, gid: int | None) -> bool:
    root = current.resolve()
    present = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    if present != set(files):
        return False
    for rel, (content, mode) in files.items():
        path = root / rel
        info = path.stat()
        if path.read_bytes() != content or (info.st_mode & 0o7777) != mode:
            return False
        if gid is not None and info.st_gid != gid:
            return False
    return True
