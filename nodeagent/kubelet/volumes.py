"""Pod volumes on the node: emptyDir (disk or tmpfs), hostPath and CSI, laid out per pod uid.

A PersistentVolumeClaim reaches here as the hostPath of its PV's directory (see
``apiserver/claims.py``); ``set_ownership`` applies the pod's fsGroup to a local PV.

Layout: ``<state_dir>/pods/<uid>/volumes/<kind>/<name>``, the kubelet's shape, so that a
restarted agent finds the same directories for the pods it adopts, and removing a pod is
removing one directory (after unmounting any tmpfs in it). CSI volumes are published by
their driver (``nodeagent.csi``) under ``volumes/kubernetes.io~csi/<name>/mount``; the pod
worker has the driver unpublish them before ``cleanup`` removes the directory.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import stat
from collections.abc import Mapping
from pathlib import Path

from nodeagent.csi.client import CSIError
from nodeagent.csi.mounter import CSIVolumes
from nodeagent.kubelet import envvars
from nodeagent.model.csi import CSIInlineSource
from nodeagent.model.pod import Container, EmptyDirSource, HostPathSource, Pod


class VolumeError(Exception):
    """A volume cannot be set up; the message names the volume and why."""


def pod_dir(state_dir: Path, pod: Pod | str) -> Path:
    uid = pod if isinstance(pod, str) else pod.uid
    return state_dir / "pods" / uid


async def prepare(state_dir: Path, pod: Pod, csi: CSIVolumes | None = None) -> dict[str, str]:
    """Create every volume of the pod; return volume name -> host path."""
    paths: dict[str, str] = {}
    for volume in pod.spec.volumes:
        if isinstance(volume.source, CSIInlineSource):
            paths[volume.name] = await _csi_inline(pod, volume.name, volume.source, csi)
        elif isinstance(volume.source, HostPathSource):
            paths[volume.name] = await asyncio.to_thread(_host_path, volume.name, volume.source)
        else:
            target = pod_dir(state_dir, pod) / "volumes" / "empty-dir" / volume.name
            await _empty_dir(volume.name, target, volume.source)
            fs_group = pod.spec.security_context.fs_group
            if fs_group is not None:
                await asyncio.to_thread(share_with_group, target, fs_group)
            paths[volume.name] = str(target)
    return paths


async def _csi_inline(pod: Pod, name: str, source: CSIInlineSource, csi: CSIVolumes | None) -> str:
    if csi is None:
        raise VolumeError(f"volume {name!r}: csi volumes need the CSI plugin registry")
    try:
        return await csi.mount_inline(pod, name, source)
    except CSIError as exc:
        raise VolumeError(str(exc)) from exc


def read_only_volumes(pod: Pod, container: Container) -> Container:
    """``container`` with its mounts of read-only CSI volumes made read-only too, as the
    kubelet does: the read-only promise is the runtime's to keep as well, not only the
    plugin's (a plugin that ignores ``readonly`` still gives the container a read-only view)."""
    forced = {
        v.name
        for v in pod.spec.volumes
        if isinstance(v.source, CSIInlineSource) and v.source.read_only
    }
    if not any(m.name in forced and not m.read_only for m in container.volume_mounts):
        return container
    mounts = tuple(
        dataclasses.replace(m, read_only=True) if m.name in forced else m
        for m in container.volume_mounts
    )
    return dataclasses.replace(container, volume_mounts=mounts)


def share_with_group(directory: Path, gid: int) -> None:
    """fsGroup on a writable volume, as the kubelet sets it: the group owns the directory,
    which is group-writable and setgid, so what the containers create there is the
    group's too. Only the top: an emptyDir is empty when this runs."""
    os.chown(directory, -1, gid)
    os.chmod(directory, os.stat(directory).st_mode & 0o777 | 0o070 | stat.S_ISGID)


def set_ownership(directory: Path, gid: int, *, on_root_mismatch: bool) -> None:
    """fsGroup on a persistent volume, as the kubelet's SetVolumeOwnership: every file and
    directory becomes the group's and group-readable and -writable, directories setgid.
    With ``fsGroupChangePolicy: OnRootMismatch`` a root that already has the group and the
    permissions means the volume is done (a large volume is not walked at every start)."""
    if on_root_mismatch and _owned(directory, gid):
        return
    for root, dirs, files in os.walk(directory):
        for name in [*dirs, *files]:
            _own(Path(root) / name, gid)
    _own(directory, gid)


def _owned(path: Path, gid: int) -> bool:
    st = os.stat(path)
    return st.st_gid == gid and st.st_mode & (0o060 | stat.S_ISGID) == 0o060 | stat.S_ISGID


def _own(path: Path, gid: int) -> None:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return  # a symlink's target may be outside the volume
    os.chown(path, -1, gid)
    extra = 0o060 | (0o010 | stat.S_ISGID if stat.S_ISDIR(st.st_mode) else 0)
    os.chmod(path, stat.S_IMODE(st.st_mode) | extra)


def expand_sub_path_exprs(container: Container, env: Mapping[str, str]) -> Container:
    """``container`` with each ``subPathExpr`` expanded ($(VAR) from its environment, an
    undefined one left as written) into a plain ``subPath``, checked as one."""
    mounts = []
    for mount in container.volume_mounts:
        if mount.sub_path_expr:
            sub = envvars.expand(mount.sub_path_expr, env)
            if not sub or sub.startswith("/") or ".." in sub.split("/"):
                raise VolumeError(
                    f"volumeMounts {mount.name!r}: subPathExpr {mount.sub_path_expr!r} expands "
                    f"to {sub!r}, not a relative path without '..'"
                )
            mount = dataclasses.replace(mount, sub_path=sub, sub_path_expr="")
        mounts.append(mount)
    return dataclasses.replace(container, volume_mounts=tuple(mounts))


async def prepare_sub_paths(paths: Mapping[str, str], container: Container) -> None:
    """Before each start of ``container``: create each missing subPath (a directory, as
    upstream), and refuse one that resolves outside its volume. A container may have put a
    symlink there (``sub -> /``): mounting it would hand the host's files to the pod."""
    await asyncio.to_thread(_sub_paths, paths, container)


def _sub_paths(paths: Mapping[str, str], container: Container) -> None:
    for mount in container.volume_mounts:
        if not mount.sub_path or mount.name not in paths:
            continue
        root = os.path.realpath(paths[mount.name])
        sub = os.path.join(paths[mount.name], mount.sub_path)
        if not os.path.lexists(sub):
            os.makedirs(sub, mode=0o755, exist_ok=True)
        real = os.path.realpath(sub)
        if real != root and not real.startswith(root + os.sep):
            raise VolumeError(
                f"volumeMounts {mount.name!r}: subPath {mount.sub_path!r} resolves outside "
                "the volume"
            )


async def _empty_dir(name: str, target: Path, source: EmptyDirSource) -> None:
    await asyncio.to_thread(target.mkdir, parents=True, exist_ok=True)
    # World-writable like upstream: containers may run as any user.
    await asyncio.to_thread(os.chmod, target, 0o777)
    if source.medium != "Memory" or await asyncio.to_thread(os.path.ismount, target):
        return
    options = "mode=0777"
    if source.size_limit_bytes:
        options += f",size={source.size_limit_bytes}"
    await _run("mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target), what=name)


def _host_path(name: str, source: HostPathSource) -> str:
    path = Path(source.path)
    kind = source.type
    if kind == "DirectoryOrCreate":
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
    elif kind == "FileOrCreate":
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        path.touch(mode=0o644, exist_ok=True)
    checks = {
        "Directory": stat.S_ISDIR,
        "DirectoryOrCreate": stat.S_ISDIR,
        "File": stat.S_ISREG,
        "FileOrCreate": stat.S_ISREG,
        "Socket": stat.S_ISSOCK,
        "CharDevice": stat.S_ISCHR,
        "BlockDevice": stat.S_ISBLK,
    }
    check = checks.get(kind)
    if check is not None:
        try:
            mode = path.stat().st_mode
        except OSError as exc:
            raise VolumeError(f"volume {name!r}: hostPath {path} does not exist") from exc
        if not check(mode):
            raise VolumeError(f"volume {name!r}: hostPath {path} is not a {kind}")
    return str(path)


async def cleanup(state_dir: Path, uid: str) -> None:
    """Unmount and remove everything the pod's volumes left on the node."""
    root = pod_dir(state_dir, uid)
    if not await asyncio.to_thread(root.exists):
        return
    mounts = await asyncio.to_thread(_mounts_under, root)
    for mount in sorted(mounts, reverse=True):
        await _run("umount", "-l", mount, what=mount)
    await asyncio.to_thread(shutil.rmtree, root, True)


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root) + "/"
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as info:
        for line in info:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                found.append(point)
    return found


async def _run(*argv: str, what: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise VolumeError(f"{what}: {argv[0]} failed: {err.decode(errors='replace').strip()}")
