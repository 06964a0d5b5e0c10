"""CSI node support without a plugin process: the state-dir layout and records (pure), the
``volumes[].csi`` validation, read-only volumes forced on container mounts, and the plugin
registry's handshake against an in-process gRPC server on a unix socket."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from nodeagent.csi import csi_pb2 as pb
from nodeagent.csi import csi_pb2_grpc as pb_grpc
from nodeagent.csi import layout
from nodeagent.csi import registration_pb2 as reg_pb
from nodeagent.csi import registration_pb2_grpc as reg_grpc
from nodeagent.csi.client import CSIError, NodeInfo
from nodeagent.csi.layout import VolumeRecord
from nodeagent.csi.registry import PluginRegistry
from nodeagent.kubelet import volumes
from nodeagent.model.csi import CSIInlineSource
from nodeagent.model.fields import ValidationError
from nodeagent.model.pod import Container, Pod, PodSpec, PodUID, Volume, VolumeMount
from nodeagent.model.validate import parse_pod

DRIVER = "csi.example.com"

# -- layout -----------------------------------------------------------------------------------


def test_inline_volume_handle_is_the_kubelets_and_stable() -> None:
    expected = "csi-" + hashlib.sha256(b"uid-1data").hexdigest()
    assert layout.inline_volume_handle("uid-1", "data") == expected
    assert layout.inline_volume_handle("uid-2", "data") != expected


def test_paths_follow_the_kubelet_layout_under_the_state_dir() -> None:
    state = Path("/state")
    assert layout.target_path(state, "u", "v") == Path(
        "/state/pods/u/volumes/kubernetes.io~csi/v/mount"
    )
    digest = hashlib.sha256(b"pv-1").hexdigest()
    assert layout.staging_path(state, DRIVER, "pv-1") == Path(
        f"/state/plugins/kubernetes.io/csi/{DRIVER}/{digest}/globalmount"
    )
    assert layout.attachment_name("pv-1", DRIVER, "n") == (
        "csi-" + hashlib.sha256(f"pv-1{DRIVER}n".encode()).hexdigest()
    )


def test_record_round_trips_and_garbage_is_refused() -> None:
    record = VolumeRecord(DRIVER, "h", "u", "v", "/t", staging_path="/s")
    assert VolumeRecord.from_json(record.to_json()) == record
    for bad in ('{"driver": 1}', "[]", '{"driver": "d"}'):
        with pytest.raises(ValueError):
            VolumeRecord.from_json(bad)


def test_staging_is_kept_while_any_record_names_it() -> None:
    one = VolumeRecord(DRIVER, "h", "u1", "v", "/t1", staging_path="/s")
    other = VolumeRecord(DRIVER, "h2", "u2", "v", "/t2", staging_path="/s2")
    assert layout.still_staged("/s", {"/t1": one, "/t2": other})
    assert not layout.still_staged("/s", {"/t2": other})


# -- validation -------------------------------------------------------------------------------


def pod_with(csi: dict[str, Any]) -> dict[str, Any]:
    mount = {"name": "v", "mountPath": "/v"}
    container = {"name": "c", "image": "busybox", "volumeMounts": [mount]}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "default", "uid": "u"},
        "spec": {"containers": [container], "volumes": [{"name": "v", "csi": csi}]},
    }


def test_inline_csi_volume_is_read() -> None:
    csi = {
        "driver": DRIVER,
        "readOnly": True,
        "fsType": "ext4",
        "volumeAttributes": {"b": "2", "a": "1"},
        "nodePublishSecretRef": {"name": "creds"},
    }
    pod = parse_pod(pod_with(csi), source="api", node_name="n")
    assert pod.spec.volumes[0].source == CSIInlineSource(
        driver=DRIVER,
        read_only=True,
        fs_type="ext4",
        volume_attributes=(("a", "1"), ("b", "2")),
        node_publish_secret_ref="creds",
    )


@pytest.mark.parametrize(
    ("csi", "field", "words"),
    [
        ({}, "csi.driver", "is required"),
        ({"driver": "-bad-"}, "csi.driver", "not a valid CSI driver name"),
        ({"driver": DRIVER, "nodePublishSecretRef": {}}, "nodePublishSecretRef.name", "required"),
        ({"driver": DRIVER, "volumeHandle": "x"}, "csi.volumeHandle", "not supported"),
        ({"driver": DRIVER, "volumeAttributes": {"a": 1}}, "volumeAttributes", "string"),
    ],
)
def test_bad_inline_csi_volume_names_the_field(csi: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(ValidationError) as failed:
        parse_pod(pod_with(csi), source="api", node_name="n")
    assert any(field in e.path and words in e.message for e in failed.value.errors), failed.value


def test_read_only_csi_volume_makes_its_mounts_read_only() -> None:
    ro = Volume("ro", CSIInlineSource(driver=DRIVER, read_only=True))
    rw = Volume("rw", CSIInlineSource(driver=DRIVER))
    container = Container(
        name="c",
        image="busybox",
        volume_mounts=(VolumeMount("ro", "/ro"), VolumeMount("rw", "/rw")),
    )
    pod = Pod(
        uid=PodUID("u"),
        name="p",
        namespace="d",
        spec=PodSpec(containers=(container,), volumes=(ro, rw)),
    )
    forced = volumes.read_only_volumes(pod, container)
    assert [m.read_only for m in forced.volume_mounts] == [True, False]


# -- registration -----------------------------------------------------------------------------


class Registration(reg_grpc.RegistrationServicer):
    def __init__(self, kind: str, versions: list[str]) -> None:
        self.kind, self.versions = kind, versions
        self.notes: list[tuple[bool, str]] = []

    async def GetInfo(self, request: Any, context: Any) -> Any:
        return reg_pb.PluginInfo(type=self.kind, name=DRIVER, supported_versions=self.versions)

    async def NotifyRegistrationStatus(self, request: Any, context: Any) -> Any:
        self.notes.append((request.plugin_registered, request.error))
        return reg_pb.RegistrationStatusResponse()


class NodeService(pb_grpc.NodeServicer):
    async def NodeGetInfo(self, request: Any, context: Any) -> Any:
        return pb.NodeGetInfoResponse(node_id="id-1", max_volumes_per_node=8)

    async def NodeGetCapabilities(self, request: Any, context: Any) -> Any:
        kind = pb.NodeServiceCapability.RPC.STAGE_UNSTAGE_VOLUME
        rpc = pb.NodeServiceCapability.RPC(type=kind)
        return pb.NodeGetCapabilitiesResponse(capabilities=[pb.NodeServiceCapability(rpc=rpc)])


async def serve(socket: Path, registration: Registration) -> grpc.aio.Server:
    """Registration and Node on one socket (GetInfo names no endpoint: this one)."""
    server = grpc.aio.server()
    reg_grpc.add_RegistrationServicer_to_server(registration, server)  # type: ignore[no-untyped-call]
    pb_grpc.add_NodeServicer_to_server(NodeService(), server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"unix://{socket}")
    await server.start()
    return server


@pytest.fixture
async def plugins_dir(tmp_path: Path) -> AsyncIterator[Path]:
    directory = tmp_path / "registry"
    directory.mkdir()
    yield directory


async def test_plugin_registers_and_goes_away_with_its_socket(plugins_dir: Path) -> None:
    heard: list[tuple[str, NodeInfo | None]] = []

    async def listener(driver: str, info: NodeInfo | None) -> None:
        heard.append((driver, info))

    registration = Registration("CSIPlugin", ["1.0.0"])
    server = await serve(plugins_dir / "plugin.sock", registration)
    registry = PluginRegistry(plugins_dir, listener=listener)
    try:
        await registry.scan()
        info = NodeInfo(node_id="id-1", max_volumes=8, topology={}, stages=True)
        assert registry.drivers() == {DRIVER: info}
        assert registration.notes == [(True, "")]
        assert heard == [(DRIVER, info)]
        await registry.scan()  # nothing new: no second handshake
        assert registration.notes == [(True, "")]
        (plugins_dir / "plugin.sock").unlink()
        await registry.scan()
        assert registry.drivers() == {}
        assert heard[-1] == (DRIVER, None)
        with pytest.raises(CSIError, match="not registered"):
            registry.client(DRIVER)
    finally:
        await server.stop(None)


@pytest.mark.parametrize(
    ("kind", "versions", "words"),
    [("DevicePlugin", ["1.0.0"], "plugin type"), ("CSIPlugin", ["0.3.0"], "no supported version")],
)
async def test_plugin_refused_is_told_why(
    plugins_dir: Path, kind: str, versions: list[str], words: str
) -> None:
    registration = Registration(kind, versions)
    server = await serve(plugins_dir / "plugin.sock", registration)
    try:
        await PluginRegistry(plugins_dir).scan()
        ((registered, error),) = registration.notes
        assert not registered and words in error
    finally:
        await server.stop(None)
