"""Volume paths on the node (nodeagent.kubelet.volumes): subPath creation and escapes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nodeagent.kubelet import volumes
from nodeagent.kubelet.projection import fs_group, write_atomic
from nodeagent.model.pod import Container, VolumeMount


def mounting(*sub_paths: str) -> Container:
    mounts = tuple(VolumeMount("data", f"/m{i}", sub_path=s) for i, s in enumerate(sub_paths))
    return Container("app", "busybox:1.36", volume_mounts=mounts)


async def test_missing_sub_path_is_created_as_a_directory(tmp_path: Path) -> None:
    await volumes.prepare_sub_paths({"data": str(tmp_path)}, mounting("a/b", ""))
    assert (tmp_path / "a" / "b").is_dir()


async def test_sub_path_to_a_file_through_the_data_link_is_kept(tmp_path: Path) -> None:
    # A ConfigMap volume's key: a symlink through ..data to the file, inside the volume.
    (tmp_path / "..data").mkdir()
    (tmp_path / "..data" / "game.properties").write_text("lives=3\n")
    os.symlink("..data/game.properties", tmp_path / "game.properties")
    await volumes.prepare_sub_paths({"data": str(tmp_path)}, mounting("game.properties"))
    assert (tmp_path / "game.properties").read_text() == "lives=3\n"


async def test_sub_path_symlink_out_of_the_volume_is_refused(tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    os.symlink("/etc", volume / "escape")  # what a container could leave in an emptyDir
    with pytest.raises(volumes.VolumeError, match="resolves outside the volume"):
        await volumes.prepare_sub_paths({"data": str(volume)}, mounting("escape"))


async def test_fs_group_owns_an_empty_dir_setgid_and_group_writable(tmp_path: Path) -> None:
    directory = tmp_path / "scratch"
    directory.mkdir(mode=0o777)
    os.chmod(directory, 0o777)
    volumes.share_with_group(directory, 2345)
    info = directory.stat()
    assert info.st_gid == 2345
    assert info.st_mode & 0o7777 == 0o2777


def test_fs_group_on_a_persistent_volume_walks_it_unless_the_root_already_matches(
    tmp_path: Path,
) -> None:
    root = tmp_path / "pv"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "f").write_text("x")
    os.chmod(root / "sub" / "f", 0o600)
    outside = tmp_path / "outside"
    outside.write_text("host")
    (root / "link").symlink_to(outside)  # a symlink's target is not the volume's
    volumes.set_ownership(root, 2345, on_root_mismatch=True)
    assert (root / "sub" / "f").stat().st_gid == 2345
    assert (root / "sub" / "f").stat().st_mode & 0o7777 == 0o660
    assert (root / "sub").stat().st_mode & 0o2070 == 0o2070
    assert outside.stat().st_gid != 2345
    # OnRootMismatch: the root matches now, so a new file is left as it is...
    (root / "new").write_text("y")
    os.chmod(root / "new", 0o600)
    volumes.set_ownership(root, 2345, on_root_mismatch=True)
    assert (root / "new").stat().st_mode & 0o777 == 0o600
    # ...while Always walks the volume again.
    volumes.set_ownership(root, 2345, on_root_mismatch=False)
    assert (root / "new").stat().st_mode & 0o777 == 0o660


def test_fs_group_makes_projected_files_group_readable(tmp_path: Path) -> None:
    assert fs_group({"spec": {"securityContext": {"fsGroup": 2000}}}) == 2000
    assert fs_group({"spec": {}}) is None
    assert write_atomic(tmp_path, {"a": (b"x", 0o440), "d/b": (b"y", 0o640)}, gid=2000)
    for rel, mode in (("a", 0o440), ("d/b", 0o640)):
        info = (tmp_path / rel).stat()
        assert (info.st_gid, info.st_mode & 0o777) == (2000, mode)
    assert (tmp_path / "..data" / "d").stat().st_gid == 2000
    # The same files with another group are a change, rewritten with that group.
    assert not write_atomic(tmp_path, {"a": (b"x", 0o440), "d/b": (b"y", 0o640)}, gid=2000)
    assert write_atomic(tmp_path, {"a": (b"x", 0o440), "d/b": (b"y", 0o640)}, gid=3000)
    assert (tmp_path / "a").stat().st_gid == 3000


def test_sub_path_expr_expands_from_the_environment() -> None:
    mounts = (
        VolumeMount("data", "/logs", sub_path_expr="$(POD_NAME)/logs"),
        VolumeMount("data", "/other", sub_path_expr="$(UNDEFINED)"),
        VolumeMount("data", "/plain", sub_path="fixed"),
    )
    container = Container("app", "busybox:1.36", volume_mounts=mounts)
    expanded = volumes.expand_sub_path_exprs(container, {"POD_NAME": "web-1"})
    assert [m.sub_path for m in expanded.volume_mounts] == [
        "web-1/logs",
        "$(UNDEFINED)",  # left as written, as upstream
        "fixed",
    ]
    assert not any(m.sub_path_expr for m in expanded.volume_mounts)
    for expr, env in (("$(P)/logs", {"P": ".."}), ("$(P)", {"P": "/etc"}), ("$(P)", {"P": ""})):
        mount = VolumeMount("data", "/logs", sub_path_expr=expr)
        with pytest.raises(volumes.VolumeError, match="subPathExpr"):
            volumes.expand_sub_path_exprs(Container("a", "b", volume_mounts=(mount,)), env)
