"""A small CSI node plugin for the tests, run as its own process.

It serves, over unix sockets, what a real driver and its node-driver-registrar serve:

- ``pluginregistration.Registration`` on ``<registry_dir>/<driver>-reg.sock`` (GetInfo names
  the CSI socket as the endpoint; NotifyRegistrationStatus is recorded);
- the CSI ``Identity`` and ``Node`` services on ``<plugin_dir>/csi.sock``. A volume is a
  directory ``<plugin_dir>/data/<sha256(volume_id)>``; NodeStageVolume bind-mounts it on the
  staging path (with ``--stage``, else the driver does not advertise STAGE_UNSTAGE_VOLUME),
  NodePublishVolume bind-mounts it (or the staging path) on the target, read-only when asked;
  the Unpublish/Unstage calls unmount. Every call is idempotent, as the spec asks.

Every RPC is appended to ``<plugin_dir>/calls.jsonl`` (rpc name plus the request's fields) so
that tests can check what the agent asked. It shares only the protocol stubs with the agent:
nothing of the agent's client, registry or mounter.

``CSIPlugin`` starts and stops it from a test.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from google.protobuf.json_format import MessageToDict

from nodeagent.csi import csi_pb2 as pb
from nodeagent.csi import csi_pb2_grpc as pb_grpc
from nodeagent.csi import registration_pb2 as reg_pb
from nodeagent.csi import registration_pb2_grpc as reg_grpc
from tests.harness.node import mounts_under
from tests.harness.wait import wait_for

DRIVER = "csi.test.nodeagent.io"
ZONE_KEY = "topology.test.nodeagent.io/zone"


class Plugin:
    def __init__(self, args: argparse.Namespace) -> None:
        self.driver: str = args.driver
        self.node_id: str = args.node_id
        self.stage: bool = args.stage
        self.dir = Path(args.plugin_dir)
        self.socket = self.dir / "csi.sock"
        self.calls = self.dir / "calls.jsonl"

    def record(self, rpc: str, request: Any) -> None:
        entry = {"rpc": rpc, **MessageToDict(request, preserving_proto_field_name=True)}
        with open(self.calls, "a", encoding="utf-8") as out:
            out.write(json.dumps(entry) + "\n")

    def data(self, volume_id: str) -> Path:
        path = self.dir / "data" / hashlib.sha256(volume_id.encode()).hexdigest()
        path.mkdir(parents=True, exist_ok=True)
        (path / "volume-id").write_text(volume_id)
        return path


class Registration(reg_grpc.RegistrationServicer):
    def __init__(self, plugin: Plugin) -> None:
        self.plugin = plugin

    async def GetInfo(self, request: Any, context: Any) -> Any:
        self.plugin.record("GetInfo", request)
        return reg_pb.PluginInfo(
            type="CSIPlugin",
            name=self.plugin.driver,
            endpoint=str(self.plugin.socket),
            supported_versions=["1.0.0"],
        )

    async def NotifyRegistrationStatus(self, request: Any, context: Any) -> Any:
        self.plugin.record("NotifyRegistrationStatus", request)
        return reg_pb.RegistrationStatusResponse()


class Identity(pb_grpc.IdentityServicer):
    def __init__(self, plugin: Plugin) -> None:
        self.plugin = plugin

    async def GetPluginInfo(self, request: Any, context: Any) -> Any:
        return pb.GetPluginInfoResponse(name=self.plugin.driver, vendor_version="0.1")


class Refusal(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class Node(pb_grpc.NodeServicer):
    """Each call runs in a thread (mount(8) and the file checks block); a ``Refusal`` is
    the gRPC error it answers with."""

    def __init__(self, plugin: Plugin) -> None:
        self.plugin = plugin

    async def _run(self, rpc: str, request: Any, context: Any, work: Any, reply: Any) -> Any:
        self.plugin.record(rpc, request)
        try:
            await asyncio.to_thread(work, request)
        except Refusal as exc:
            await context.abort(exc.code, str(exc))
        except subprocess.CalledProcessError as exc:
            await context.abort(grpc.StatusCode.INTERNAL, exc.stderr.decode(errors="replace"))
        return reply

    async def NodeGetInfo(self, request: Any, context: Any) -> Any:
        self.plugin.record("NodeGetInfo", request)
        return pb.NodeGetInfoResponse(
            node_id=self.plugin.node_id,
            accessible_topology=pb.Topology(segments={ZONE_KEY: "z1"}),
        )

    async def NodeGetCapabilities(self, request: Any, context: Any) -> Any:
        self.plugin.record("NodeGetCapabilities", request)
        caps = []
        if self.plugin.stage:
            kind = pb.NodeServiceCapability.RPC.STAGE_UNSTAGE_VOLUME
            caps.append(pb.NodeServiceCapability(rpc=pb.NodeServiceCapability.RPC(type=kind)))
        return pb.NodeGetCapabilitiesResponse(capabilities=caps)

    async def NodeStageVolume(self, request: Any, context: Any) -> Any:
        reply = pb.NodeStageVolumeResponse()
        return await self._run("NodeStageVolume", request, context, self._stage, reply)

    async def NodeUnstageVolume(self, request: Any, context: Any) -> Any:
        reply = pb.NodeUnstageVolumeResponse()
        return await self._run("NodeUnstageVolume", request, context, self._unstage, reply)

    async def NodePublishVolume(self, request: Any, context: Any) -> Any:
        reply = pb.NodePublishVolumeResponse()
        return await self._run("NodePublishVolume", request, context, self._publish, reply)

    async def NodeUnpublishVolume(self, request: Any, context: Any) -> Any:
        reply = pb.NodeUnpublishVolumeResponse()
        return await self._run("NodeUnpublishVolume", request, context, self._unpublish, reply)

    def _stage(self, request: Any) -> None:
        if not self.plugin.stage:
            raise Refusal(grpc.StatusCode.FAILED_PRECONDITION, "this plugin does not stage")
        if not request.volume_id or not request.staging_target_path:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "volume_id and staging path needed")
        staging = request.staging_target_path
        if not is_mount(staging):
            os.makedirs(staging, exist_ok=True)
            mount("--bind", str(self.plugin.data(request.volume_id)), staging)

    def _unstage(self, request: Any) -> None:
        if is_mount(request.staging_target_path):
            umount(request.staging_target_path)

    def _publish(self, request: Any) -> None:
        if not request.volume_id or not request.target_path:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "volume_id and target_path needed")
        if self.plugin.stage and not is_mount(request.staging_target_path):
            raise Refusal(grpc.StatusCode.FAILED_PRECONDITION, "the volume is not staged")
        target = request.target_path
        if is_mount(target):
            return
        if not os.path.isdir(os.path.dirname(target)):
            raise Refusal(grpc.StatusCode.FAILED_PRECONDITION, "the target has no parent")
        data = self.plugin.data(request.volume_id)
        context = json.dumps(dict(request.volume_context), sort_keys=True)
        (data / "volume-context.json").write_text(context)
        os.makedirs(target, exist_ok=True)
        mount("--bind", request.staging_target_path or str(data), target)
        if request.readonly:
            mount("-o", "remount,bind,ro", target)

    def _unpublish(self, request: Any) -> None:
        target = request.target_path
        if is_mount(target):
            umount(target)
        if os.path.isdir(target):
            os.rmdir(target)


def is_mount(path: str) -> bool:
    """From the mount table: a same-filesystem bind mount fools ``os.path.ismount``."""
    real = os.path.realpath(path)
    table = Path("/proc/self/mountinfo").read_text().splitlines()
    return any(line.split()[4].encode().decode("unicode_escape") == real for line in table)


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def umount(target: str) -> None:
    subprocess.run(["umount", target], check=True, capture_output=True)


async def serve(args: argparse.Namespace) -> None:
    plugin = Plugin(args)
    plugin.dir.mkdir(parents=True, exist_ok=True)
    registration = Path(args.registry_dir) / f"{plugin.driver}-reg.sock"
    for path in (plugin.socket, registration):
        path.unlink(missing_ok=True)
    csi = grpc.aio.server()
    pb_grpc.add_IdentityServicer_to_server(Identity(plugin), csi)  # type: ignore[no-untyped-call]
    pb_grpc.add_NodeServicer_to_server(Node(plugin), csi)  # type: ignore[no-untyped-call]
    csi.add_insecure_port(f"unix://{plugin.socket}")
    await csi.start()
    reg = grpc.aio.server()
    reg_grpc.add_RegistrationServicer_to_server(Registration(plugin), reg)  # type: ignore[no-untyped-call]
    reg.add_insecure_port(f"unix://{registration}")
    await reg.start()  # last: the registration socket appears when the plugin can serve
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    registration.unlink(missing_ok=True)  # as the registrar: the driver goes away
    await reg.stop(None)
    await csi.stop(None)


class CSIPlugin:
    """The test plugin as a child process of the test."""

    __test__ = False

    def __init__(
        self, root: Path, registry_dir: Path, *, stage: bool = False, node_id: str = "node-a"
    ) -> None:
        self.dir = root / "csi-plugin"
        self.registry_dir = registry_dir
        self.stage = stage
        self.node_id = node_id
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def registration(self) -> Path:
        return self.registry_dir / f"{DRIVER}-reg.sock"

    def start(self) -> CSIPlugin:
        self.registry_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "tests.harness.csiplugin", "--plugin-dir", str(self.dir)]
        argv += ["--registry-dir", str(self.registry_dir), "--node-id", self.node_id]
        argv += ["--stage"] if self.stage else []
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "calls.jsonl").unlink(missing_ok=True)  # this start's calls only
        log = open(self.dir / "plugin.log", "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        wait_for(self.registration.exists, 20, message="the CSI test plugin's socket")
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def close(self) -> None:
        """Stop it and take away what a failed test left mounted below its directory."""
        self.stop()
        for point in mounts_under(self.dir):
            subprocess.run(["umount", "-l", point], check=False)

    def data_dir(self, volume_id: str) -> Path:
        """Where the plugin keeps the data of ``volume_id`` (what it bind-mounts)."""
        return self.dir / "data" / hashlib.sha256(volume_id.encode()).hexdigest()

    def calls(self, rpc: str | None = None) -> list[dict[str, Any]]:
        try:
            lines = (self.dir / "calls.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return []
        entries = [json.loads(line) for line in lines if line.strip()]
        return [e for e in entries if rpc is None or e["rpc"] == rpc]

    def registered(self) -> bool:
        notes = self.calls("NotifyRegistrationStatus")
        return bool(notes) and bool(notes[-1].get("plugin_registered"))

    def wait_registered(self, timeout: float = 20) -> None:
        wait_for(self.registered, timeout, message=lambda: f"registration: {self.calls()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--plugin-dir", required=True)
    parser.add_argument("--registry-dir", required=True)
    parser.add_argument("--driver", default=DRIVER)
    parser.add_argument("--node-id", default="node-a")
    parser.add_argument("--stage", action="store_true")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
