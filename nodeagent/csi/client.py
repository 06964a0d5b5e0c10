"""The CSI ``Node`` service of one driver, over its unix socket (grpc.aio).

One channel per driver endpoint, opened on first use (so that it binds to the running loop)
and closed when the driver is deregistered. Every call has a deadline: a hung plugin becomes
a ``CSIError`` in the pod's status, never a hung pod worker. ``grpc.RpcError`` is turned
into ``CSIError`` here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from nodeagent.csi import csi_pb2 as pb
from nodeagent.csi import csi_pb2_grpc as pb_grpc

# The kubelet's csiTimeout for node operations; NodeGetInfo and capabilities are quick.
NODE_OP_TIMEOUT_S = 120.0
QUERY_TIMEOUT_S = 10.0


class CSIError(Exception):
    """A CSI call failed, or a driver is unknown; the message names the driver and the call."""


@dataclass(frozen=True)
class NodeInfo:
    """``NodeGetInfo`` and ``NodeGetCapabilities`` of a driver: what registration learns."""

    node_id: str
    max_volumes: int = 0  # 0: no limit
    topology: Mapping[str, str] = field(default_factory=dict)
    stages: bool = False  # STAGE_UNSTAGE_VOLUME


@dataclass(frozen=True)
class Publish:
    """One NodePublishVolume (or NodeStageVolume, without target and read-only) request."""

    volume_id: str
    target_path: str
    staging_path: str = ""
    read_only: bool = False
    fs_type: str = ""
    volume_context: Mapping[str, str] = field(default_factory=dict)
    publish_context: Mapping[str, str] = field(default_factory=dict)
    secrets: Mapping[str, str] = field(default_factory=dict)


def endpoint_target(endpoint: str) -> str:
    """A gRPC target for a plugin endpoint: a socket path, or ``unix://`` / ``unix:`` URL."""
    if endpoint.startswith("unix://") or endpoint.startswith("unix:"):
        return endpoint
    return f"unix://{endpoint}"


class NodeClient:
    def __init__(self, driver: str, endpoint: str) -> None:
        self.driver = driver
        self.endpoint = endpoint
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.NodeStub | None = None

    def _node(self) -> pb_grpc.NodeStub:
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(endpoint_target(self.endpoint))
            self._stub = pb_grpc.NodeStub(self._channel)  # type: ignore[no-untyped-call]
        return self._stub

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        self._channel, self._stub = None, None

    async def _call(self, rpc: str, method: Callable[..., Awaitable[Any]], request: Any) -> Any:
        timeout = QUERY_TIMEOUT_S if rpc.startswith("NodeGet") else NODE_OP_TIMEOUT_S
        try:
            return await method(request, timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            details = exc.details() if hasattr(exc, "details") else str(exc)
            name = code.name if code is not None else "UNKNOWN"
            raise CSIError(f"CSI driver {self.driver!r}: {rpc}: {name}: {details}") from exc

    async def info(self) -> NodeInfo:
        node = self._node()
        got = await self._call("NodeGetInfo", node.NodeGetInfo, pb.NodeGetInfoRequest())
        caps = await self._call(
            "NodeGetCapabilities", node.NodeGetCapabilities, pb.NodeGetCapabilitiesRequest()
        )
        stage = pb.NodeServiceCapability.RPC.STAGE_UNSTAGE_VOLUME
        return NodeInfo(
            node_id=got.node_id,
            max_volumes=got.max_volumes_per_node,
            topology=dict(got.accessible_topology.segments),
            stages=any(c.rpc.type == stage for c in caps.capabilities),
        )

    async def stage(self, request: Publish) -> None:
        await self._call(
            "NodeStageVolume",
            self._node().NodeStageVolume,
            pb.NodeStageVolumeRequest(
                volume_id=request.volume_id,
                publish_context=dict(request.publish_context),
                staging_target_path=request.staging_path,
                volume_capability=_capability(request),
                secrets=dict(request.secrets),
                volume_context=dict(request.volume_context),
            ),
        )

    async def unstage(self, volume_id: str, staging_path: str) -> None:
        await self._call(
            "NodeUnstageVolume",
            self._node().NodeUnstageVolume,
            pb.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=staging_path),
        )

    async def publish(self, request: Publish) -> None:
        await self._call(
            "NodePublishVolume",
            self._node().NodePublishVolume,
            pb.NodePublishVolumeRequest(
                volume_id=request.volume_id,
                publish_context=dict(request.publish_context),
                staging_target_path=request.staging_path,
                target_path=request.target_path,
                volume_capability=_capability(request),
                readonly=request.read_only,
                secrets=dict(request.secrets),
                volume_context=dict(request.volume_context),
            ),
        )

    async def unpublish(self, volume_id: str, target_path: str) -> None:
        await self._call(
            "NodeUnpublishVolume",
            self._node().NodeUnpublishVolume,
            pb.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=target_path),
        )


def _capability(request: Publish) -> Any:
    # A filesystem volume, single-node writer: what the kubelet asks for an inline volume
    # and for a ReadWriteOnce PV; read-only is the publish request's own flag.
    mode = pb.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
    return pb.VolumeCapability(
        mount=pb.VolumeCapability.MountVolume(fs_type=request.fs_type),
        access_mode=pb.VolumeCapability.AccessMode(mode=mode),
    )
