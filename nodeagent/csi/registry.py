"""The plugin watcher: CSI drivers register through sockets in the plugins registry dir.

As the kubelet's pluginwatcher: a plugin (usually its node-driver-registrar sidecar) creates
a unix socket in ``--csi-plugins-dir`` that answers ``pluginregistration.Registration``. For
each new socket we ask ``GetInfo``; a ``CSIPlugin`` speaking a 1.x CSI version is then asked
``NodeGetInfo`` and ``NodeGetCapabilities`` at the endpoint it names (its own socket when it
names none), and told the outcome with ``NotifyRegistrationStatus``. A socket that goes away
deregisters its driver; one that is replaced (a new inode: the plugin restarted) registers
again. A failed registration is tried again after ``RETRY_S``.

The directory is scanned every ``poll_s`` rather than watched with inotify: a scan is a
``listdir`` of a handful of entries, and it also finds sockets made while the agent was down.

``listener`` hears of each registration and deregistration (cluster mode keeps the CSINode
object with it). Registered drivers live in memory only: after a restart the sockets are
still there and register again on the first scan.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
import structlog

from nodeagent.csi import registration_pb2 as reg_pb
from nodeagent.csi import registration_pb2_grpc as reg_grpc
from nodeagent.csi.client import CSIError, NodeClient, NodeInfo, endpoint_target
from nodeagent.model.csi import CSI_DRIVER_NAME

log = structlog.get_logger("nodeagent.csi.registry")

DEFAULT_PLUGINS_DIR = Path("/var/lib/kubelet/plugins_registry")
CSI_PLUGIN_TYPE = "CSIPlugin"
RETRY_S = 5.0
REGISTRATION_TIMEOUT_S = 10.0

# (driver, its node info) on registration; (driver, None) on deregistration.
Listener = Callable[[str, NodeInfo | None], Awaitable[None]]


@dataclass(frozen=True)
class Driver:
    name: str
    socket: str  # the registration socket it came from
    client: NodeClient
    info: NodeInfo


class PluginRegistry:
    def __init__(
        self, plugins_dir: Path, *, poll_s: float = 1.0, listener: Listener | None = None
    ) -> None:
        self.plugins_dir = plugins_dir
        self.poll_s = poll_s
        self.listener = listener
        self._drivers: dict[str, Driver] = {}
        self._seen: dict[str, int] = {}  # socket path -> inode registered (or tried)
        self._retry_at: dict[str, float] = {}  # socket path -> when a failed one is tried again
        self._scanned = asyncio.Event()

    # -- queries ----------------------------------------------------------------------------

    def client(self, driver: str) -> NodeClient:
        return self.driver(driver).client

    def driver(self, driver: str) -> Driver:
        found = self._drivers.get(driver)
        if found is None:
            raise CSIError(f"CSI driver {driver!r} is not registered on this node")
        return found

    def drivers(self) -> dict[str, NodeInfo]:
        return {name: d.info for name, d in self._drivers.items()}

    async def scanned(self) -> None:
        """Returns once the directory has been scanned (and what was there registered)."""
        await self._scanned.wait()

    # -- the watch --------------------------------------------------------------------------

    async def run(self) -> None:
        await asyncio.to_thread(self.plugins_dir.mkdir, parents=True, exist_ok=True)
        try:
            while True:
                await self.scan()
                self._scanned.set()
                await asyncio.sleep(self.poll_s)
        finally:
            for driver in list(self._drivers.values()):
                await driver.client.close()

    async def scan(self) -> None:
        sockets = await asyncio.to_thread(_sockets, self.plugins_dir)
        for path in [p for p in self._seen if p not in sockets or sockets[p] != self._seen[p]]:
            await self._forget(path)
        now = time.monotonic()
        for path, inode in sockets.items():
            if path in self._seen or now < self._retry_at.get(path, 0.0):
                continue
            self._seen[path] = inode
            await self._register(path)

    async def _register(self, path: str) -> None:
        async with grpc.aio.insecure_channel(endpoint_target(path)) as channel:
            stub = reg_grpc.RegistrationStub(channel)  # type: ignore[no-untyped-call]
            try:
                driver = await self._handshake(stub, path)
            except (CSIError, grpc.RpcError) as exc:
                error = _message(exc)
                log.warning("csi_plugin_registration_failed", socket=path, error=error)
                self._seen.pop(path, None)
                self._retry_at[path] = time.monotonic() + RETRY_S
                await _notify(stub, registered=False, error=error)
                return
            await _notify(stub, registered=True, error="")
        self._retry_at.pop(path, None)
        old = self._drivers.get(driver.name)
        if old is not None:
            await old.client.close()
        self._drivers[driver.name] = driver
        log.info(
            "csi_driver_registered",
            driver=driver.name,
            node_id=driver.info.node_id,
            stages=driver.info.stages,
            endpoint=driver.client.endpoint,
        )
        if self.listener is not None:
            await self.listener(driver.name, driver.info)

    async def _handshake(self, stub: reg_grpc.RegistrationStub, path: str) -> Driver:
        info = await stub.GetInfo(reg_pb.InfoRequest(), timeout=REGISTRATION_TIMEOUT_S)
        if info.type != CSI_PLUGIN_TYPE:
            raise CSIError(f"plugin type {info.type!r} is not supported (only {CSI_PLUGIN_TYPE})")
        if not CSI_DRIVER_NAME.match(info.name):
            raise CSIError(f"{info.name!r} is not a valid CSI driver name")
        if not any(_is_v1(v) for v in info.supported_versions):
            versions = ", ".join(info.supported_versions) or "none"
            raise CSIError(f"CSI driver {info.name!r}: no supported version 1.x ({versions})")
        client = NodeClient(info.name, info.endpoint or path)
        try:
            node = await client.info()
        except CSIError:
            await client.close()
            raise
        if not node.node_id:
            await client.close()
            raise CSIError(f"CSI driver {info.name!r}: NodeGetInfo returned no node_id")
        return Driver(name=info.name, socket=path, client=client, info=node)

    async def _forget(self, path: str) -> None:
        del self._seen[path]
        for name, driver in list(self._drivers.items()):
            if driver.socket != path:
                continue
            del self._drivers[name]
            await driver.client.close()
            log.info("csi_driver_deregistered", driver=name, socket=path)
            if self.listener is not None:
                await self.listener(name, None)


def _sockets(directory: Path) -> dict[str, int]:
    """The unix sockets directly in ``directory`` (the kubelet also skips dot files)."""
    found: dict[str, int] = {}
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return found
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISSOCK(info.st_mode):
            found[entry.path] = info.st_ino
    return found


def _is_v1(version: str) -> bool:
    return version.removeprefix("v").split(".")[0] == "1"


def _message(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "details"):
        return f"registration: {exc.details()}"
    return str(exc)


async def _notify(stub: reg_grpc.RegistrationStub, *, registered: bool, error: str) -> None:
    status = reg_pb.RegistrationStatus(plugin_registered=registered, error=error)
    try:
        await stub.NotifyRegistrationStatus(status, timeout=REGISTRATION_TIMEOUT_S)
    except grpc.RpcError as exc:  # the plugin may not care to hear; registration stands
        log.debug("csi_plugin_notify_failed", error=_message(exc))
