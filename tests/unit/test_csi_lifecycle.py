"""The pod manager and workers with CSI volumes, over a FakeRuntime: after a start, the CSI
volumes of a pod that left nothing in the runtime are taken away, those of a pod that still
runs are not; a removed pod's volumes are unpublished before its directory goes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from nodeagent.csi import layout
from nodeagent.csi.layout import VolumeRecord
from nodeagent.csi.mounter import CSIVolumes
from nodeagent.csi.registry import PluginRegistry
from nodeagent.kubelet import specs
from nodeagent.kubelet.envvars import PodFacts
from nodeagent.kubelet.manager import PodManager
from nodeagent.model.pod import Pod
from tests.unit.rig import NODE, WorkerRig, eventually, make_pod


class RecordingCSI(CSIVolumes):
    """Unmounts by forgetting the records, and says for which pods."""

    unmounted: list[str]

    async def unmount_pod(self, pod_uid: str) -> None:
        self.unmounted.append(pod_uid)
        for name in ("data",):
            (layout.volume_dir(self.state_dir, pod_uid, name) / layout.RECORD).unlink(
                missing_ok=True
            )


def rig_with_csi(tmp_path: Path) -> tuple[WorkerRig, RecordingCSI]:
    rig = WorkerRig(tmp_path)
    csi = RecordingCSI(rig.state_dir, PluginRegistry(tmp_path / "registry"))
    csi.unmounted = []
    rig.ctx = dataclasses.replace(rig.ctx, csi=csi)
    rig.manager = PodManager(rig.ctx)
    return rig, csi


def record(state_dir: Path, uid: str) -> None:
    directory = layout.volume_dir(state_dir, uid, "data")
    directory.mkdir(parents=True)
    target = str(directory / layout.MOUNT)
    entry = VolumeRecord("csi.example.com", f"h-{uid}", uid, "data", target)
    (directory / layout.RECORD).write_text(entry.to_json())


async def populate(rig: WorkerRig, pod: Pod, tmp_path: Path) -> None:
    """``pod`` running in the runtime, as an earlier agent left it."""
    config = specs.sandbox_config(pod, attempt=0, pod_log_dir=str(tmp_path / "logs"))
    sid = await rig.fake.run_sandbox(config)
    for container in pod.spec.containers:
        cconfig = specs.container_config(
            pod, container, attempt=0, facts=PodFacts(NODE), volume_paths={"data": "/x"}
        )
        await rig.fake.start_container(await rig.fake.create_container(sid, cconfig, config))


async def test_after_a_start_volumes_of_vanished_pods_go_and_running_ones_stay(
    tmp_path: Path,
) -> None:
    rig, csi = rig_with_csi(tmp_path)
    running, orphan = make_pod("running"), make_pod("orphan")
    await populate(rig, running, tmp_path)
    await populate(rig, orphan, tmp_path)
    for uid in (running.uid, orphan.uid, "vanished"):
        record(rig.state_dir, uid)
    try:
        await rig.start()
        rig.run(running)
        await eventually(lambda: sorted(csi.unmounted) == sorted([orphan.uid, "vanished"]))
        await eventually(lambda: rig.running(running), what="the running pod adopted")
        rig.manager.cleanup_orphans()  # later sweeps look at the runtime only
        assert running.uid not in csi.unmounted
        assert sorted(csi.unmounted) == sorted([orphan.uid, "vanished"])

        rig.run()  # the running pod is deleted: unpublished before its directory goes
        await eventually(lambda: running.uid in csi.unmounted, what="unmounted on removal")
    finally:
        await rig.close()
