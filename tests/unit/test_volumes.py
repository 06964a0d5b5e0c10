"""Volume paths on the node (nodeagent.kubelet.volumes): subPath creation and escapes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nodeagent.kubelet import volumes
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
