"""CSI node plugins end to end: the test plugin (tests/harness/csiplugin.py, a real gRPC
server doing real bind mounts) registers through the plugins registry dir, and the agent
publishes and unpublishes volumes with it.

- An inline ephemeral volume, on containerd and on Docker: registered, published, the data
  seen in the container, read-only really read-only; the agent killed with SIGKILL and
  restarted while the pod runs (the volume stays: the pod still uses it), then the pod is
  deleted: unpublished, nothing left mounted.
- The mounter's PV seam (``CSIVolumes.mount``) with a driver that stages, without a runtime:
  two pods share one staged volume; it is unstaged only when the second is gone.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodeagent.csi import layout
from nodeagent.csi.mounter import CSIVolumes, all_records
from nodeagent.csi.registry import PluginRegistry
from nodeagent.model.csi import CSIVolumeSource
from tests.harness import TestNode, wait_for
from tests.harness.agent import Agent, RuntimeTarget, container_status, is_ready
from tests.harness.csiplugin import DRIVER, CSIPlugin
from tests.harness.manifests import SLEEP, static_pod_yaml
from tests.harness.node import mounts_under

# The container writes what it sees into the read-write volume (the plugin's data dir), and
# whether a write to the read-only volume was refused.
SCRIPT = (
    "cat /data/volume-id > /data/seen; "
    "if touch /ro/x 2>/dev/null; then echo writable > /data/ro; else echo refused > /data/ro; fi; "
    + SLEEP
)
VOLUMES = f"""\
      volumeMounts:
        - {{name: data, mountPath: /data}}
        - {{name: ro, mountPath: /ro}}
  volumes:
    - name: data
      csi: {{driver: {DRIVER}, volumeAttributes: {{size: small}}}}
    - name: ro
      csi: {{driver: {DRIVER}, readOnly: true}}
"""


@pytest.fixture
def plugin(node: TestNode) -> Iterator[CSIPlugin]:
    started = CSIPlugin(node.root, node.root / "plugins_registry").start()
    try:
        yield started
    finally:
        started.close()


def published(plugin: CSIPlugin, volume: str) -> dict[str, Any]:
    """The NodePublishVolume request of the pod volume ``volume``."""
    calls = plugin.calls("NodePublishVolume")
    return next(c for c in calls if c["target_path"].endswith(f"/{volume}/mount"))


def test_inline_volume_published_kept_across_kill9_and_unpublished(
    node: TestNode, runtime_target: RuntimeTarget, plugin: CSIPlugin
) -> None:
    agent = Agent(node, runtime=runtime_target)
    for old in agent.manifests.iterdir():
        old.unlink()
    agent.start()
    try:
        plugin.wait_registered()
        assert {c["rpc"] for c in plugin.calls()} >= {"GetInfo", "NodeGetInfo"}
        agent.write_manifest("csi.yaml", static_pod_yaml("csi", script=SCRIPT, container=VOLUMES))
        pod = agent.wait_pod("csi", is_ready, 60, "running with its CSI volumes")
        started = container_status(pod, "main")["containerID"]

        data, ro = published(plugin, "data"), published(plugin, "ro")
        assert data["volume_context"] == {"size": "small"}
        assert ro["readonly"] is True and "readonly" not in data
        assert data["volume_capability"]["mount"] == {}
        assert "staging_target_path" not in data  # inline volumes are never staged
        uid = pod["metadata"]["uid"]
        assert data["volume_id"] == layout.inline_volume_handle(uid, "data")
        seen = wait_for(lambda: _read(plugin, data["volume_id"], "seen"), 30, message="seen")
        assert seen == data["volume_id"]
        assert wait_for(lambda: _read(plugin, data["volume_id"], "ro"), 30) == "refused"
        targets = {data["target_path"], ro["target_path"]}
        assert targets <= set(mounts_under(node.state_dir / "pods" / uid))

        agent.kill9()
        agent.start()  # the pod is still desired: adopted, its volumes kept
        pod = agent.wait_pod("csi", is_ready, 30, "adopted after the restart")
        assert container_status(pod, "main")["containerID"] == started
        assert targets <= set(mounts_under(node.state_dir / "pods" / uid))
        assert not plugin.calls("NodeUnpublishVolume")

        agent.kill9()
        (agent.manifests / "csi.yaml").unlink()  # deleted while the agent is down
        agent.start()
        wait_for(
            lambda: {c["target_path"] for c in plugin.calls("NodeUnpublishVolume")} >= targets,
            30,
            message=lambda: f"unpublished: {plugin.calls()}\n{agent.log_tail()}",
        )
        wait_for(lambda: agent.pod("csi") is None, 30, message="the pod gone")
        assert not mounts_under(node.state_dir / "pods")
        assert not all_records(node.state_dir)
    finally:
        agent.stop()


def _read(plugin: CSIPlugin, volume_id: str, name: str) -> str:
    """A file the container wrote into the volume, as the plugin's data dir has it."""
    path = plugin.dir / "data" / hashlib.sha256(volume_id.encode()).hexdigest() / name
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


@pytest.fixture
def staging_plugin(tmp_path: Path) -> Iterator[CSIPlugin]:
    started = CSIPlugin(tmp_path, tmp_path / "registry", stage=True).start()
    try:
        yield started
    finally:
        started.close()
        for point in mounts_under(tmp_path):  # the staging path, when a test failed
            subprocess.run(["umount", "-l", point], check=False)


async def test_pv_volume_staged_once_and_unstaged_after_its_last_pod(
    tmp_path: Path, staging_plugin: CSIPlugin
) -> None:
    registry = PluginRegistry(tmp_path / "registry", poll_s=0.1)
    watch = asyncio.create_task(registry.run())
    volumes = CSIVolumes(tmp_path / "state", registry)
    source = CSIVolumeSource(
        driver=DRIVER,
        volume_handle="pv-1",
        read_only=False,
        fs_type="ext4",
        volume_attributes={"tier": "gold"},
    )
    try:
        await registry.scanned()
        first = await volumes.mount(source, pod_uid="uid-1", volume_name="disk")
        second = await volumes.mount(source, pod_uid="uid-2", volume_name="disk")
        await volumes.mount(source, pod_uid="uid-1", volume_name="disk")  # already there
        assert [c["rpc"] for c in staging_plugin.calls() if "Volume" in c["rpc"]] == [
            "NodeStageVolume",
            "NodePublishVolume",
            "NodePublishVolume",
        ]
        staging = str(layout.staging_path(tmp_path / "state", DRIVER, "pv-1"))
        stage = staging_plugin.calls("NodeStageVolume")[0]
        assert stage["staging_target_path"] == staging
        assert stage["volume_capability"]["mount"] == {"fs_type": "ext4"}
        assert stage["volume_context"] == {"tier": "gold"}
        await asyncio.to_thread(Path(first, "shared").write_text, "one")
        assert await asyncio.to_thread(Path(second, "shared").read_text) == "one"

        await volumes.unmount_pod("uid-1")
        assert not staging_plugin.calls("NodeUnstageVolume")  # uid-2 still uses it
        assert await asyncio.to_thread(Path(second, "shared").read_text) == "one"
        await volumes.unmount_pod("uid-2")
        assert [c["staging_target_path"] for c in staging_plugin.calls("NodeUnstageVolume")] == [
            staging
        ]
        assert not mounts_under(tmp_path / "state")
        assert not all_records(tmp_path / "state")
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
