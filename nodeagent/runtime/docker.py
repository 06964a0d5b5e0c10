"""The Docker Engine backend of the runtime seam: pods the way dockershim ran them.

Shape:

- A pod sandbox is a pause container (``--pause-image``) with network ``none`` and a
  shareable IPC namespace; app and init containers join its network and IPC namespaces.
  Names, labels and create requests live in ``docker_convert``, the reading of Docker's
  answers (states, times) in ``docker_read`` (both pure).
- Docker does not run CNI, so we do: after the pause container starts, ``network.add``
  attaches ``/proc/<pause pid>/ns/net`` to the node's CNI network (the same conflist
  containerd reads), and ``stop_sandbox``/``remove_sandbox`` call ``network.delete``, which
  frees the IP. The network keeps its own record per sandbox (``network.cniexec``), and
  that record is where the pod IP comes from, also after an agent restart. A sandbox is READY
  only while its pause process runs *and* its attachment completed, so a sandbox left half
  made by a crash is replaced, never used without a network. A full relist also detaches
  records whose sandbox no longer exists (removed behind our back), which containerd does
  for its own sandboxes and Docker cannot do for ours.
- ``network`` is anything with ``PodNetwork``'s three methods: the runtime and network
  packages are independent layers, so the daemon hands ``network.cniexec.CNIExec`` in.
- Every Docker call goes through ``docker_engine.Engine.call``: a blocking docker-py call
  on the engine's own thread pool, bounded, its errors translated to the seam's.

CRI semantics kept on purpose, because a user switching ``--runtime`` must see the same pods:
``stop_sandbox`` first kills the sandbox's containers without grace and ``remove_sandbox``
removes them, as containerd does; removing what is already gone is not an error; an exec
that times out is exit code 124 with the reason on stderr, as the CRI client reports it.

Logs: Docker keeps each container's output in its own json-file log (``LogPath``); we link
the CRI log path (``<log_directory>/<log_path>``) to it, as dockershim did, so the file is
where the kubelet layout says, but in Docker's JSON-lines format, not CRI's text format.
Docker rotates that file itself: ``log_rotation`` (``--container-log-max-size``/``-max-files``)
becomes the json-file driver's ``max-size``/``max-file`` options of each container, as
dockershim passed them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import structlog

from nodeagent.model.pod import PodUID
from nodeagent.runtime import base
from nodeagent.runtime import docker_convert as convert
from nodeagent.runtime import docker_read as read
from nodeagent.runtime.docker_engine import Engine

log = structlog.get_logger("nodeagent.runtime.docker")

DEFAULT_PAUSE_IMAGE = "registry.k8s.io/pause:3.6"
# What exec_sync reports for a command killed at its timeout (the exit code of timeout(1)).
EXEC_TIMEOUT_EXIT_CODE = 124
# How long a timed-out exec's output may take to close after its processes were killed.
EXEC_DRAIN_S = 2.0
# How often a failing DEL of an orphaned attachment is retried.
ORPHAN_RETRY_S = 60.0
# The pause process exits on TERM; dockershim gave sandboxes this much before KILL.
SANDBOX_STOP_GRACE_S = 10


class PodNetwork(Protocol):
    """Attaches sandboxes to the pod network (``network.cniexec.CNIExec`` is one)."""

    async def add(
        self,
        container_id: str,
        netns: str,
        *,
        cni_args: Sequence[tuple[str, str]],
        capability_args: Mapping[str, Any],
    ) -> str:
        """Attach netns; return the pod IP. Raises any Exception on failure."""
        ...

    async def delete(self, container_id: str, netns: str) -> None:
        """Detach (idempotent; netns may be "" once the sandbox is gone)."""
        ...

    def address(self, container_id: str) -> str | None:
        """The IP of a completed attachment, None if there is none. Blocking: a file read."""
        ...

    def problem(self) -> str:
        """ "" when a network config is there to attach with; else why not. Blocking."""
        ...

    def recorded(self) -> list[str]:
        """The ids of every attachment made (or being made). Blocking: a directory read."""
        ...


def _netns(data: Mapping[str, Any]) -> str:
    """The sandbox's network namespace while its pause process lives, else ""."""
    state = data.get("State") or {}
    pid = int(state.get("Pid") or 0)
    return f"/proc/{pid}/ns/net" if state.get("Running") and pid > 0 else ""


class DockerRuntime(base.Runtime):
    """``base.Runtime`` over Docker Engine at ``endpoint``, with CNI run through ``network``."""

    def __init__(
        self,
        endpoint: str,
        *,
        network: PodNetwork,
        pause_image: str = DEFAULT_PAUSE_IMAGE,
        timeout_s: float = 10.0,
        pull_timeout_s: float = 300.0,
        log_rotation: convert.LogRotation | None = None,
    ) -> None:
        self._timeout_s = timeout_s
        self._log_rotation = log_rotation
        self._pull_timeout_s = pull_timeout_s
        self._pause_image = pause_image
        self._repo_digests: dict[str, tuple[str, ...]] = {}  # image id -> its RepoDigests
        self._network = network
        self._engine = Engine(endpoint, timeout_s=timeout_s)
        self._api = self._engine.api
        self._call = self._engine.call
        # Docker turns IPv6 off in the namespaces it makes; containerd's pods have it (a new
        # namespace's default) wherever the kernel has IPv6 at all.
        self._ipv6 = os.path.isdir("/proc/sys/net/ipv6")
        self._orphan_retry: dict[str, float] = {}  # sandbox id -> monotonic time of next try

    async def close(self) -> None:
        await self._engine.close()

    # --- runtime -------------------------------------------------------------------------------

    async def version(self) -> base.RuntimeVersion:
        data = await self._call("Version", self._api.version)
        return base.RuntimeVersion(
            name="docker",
            version=str(data.get("Version", "")),
            api_version=str(data.get("ApiVersion", "")),
        )

    async def cgroup_driver(self) -> str:
        data = await self._call("Info", self._api.info)
        driver = str(data.get("CgroupDriver", ""))
        return driver if driver in ("cgroupfs", "systemd") else ""

    async def status(self) -> base.RuntimeStatus:
        """Docker is ready when it answers; its network is ours, ready when our CNI config
        loads (Docker runs no CNI itself)."""
        await self._call("Ping", self._api.ping)
        problem = await asyncio.to_thread(self._network.problem)
        if not problem:
            return base.RuntimeStatus(runtime_ready=True, network_ready=True)
        return base.RuntimeStatus(
            runtime_ready=True,
            network_ready=False,
            reason="NetworkPluginNotReady",
            message=f"Network plugin returns error: {problem}",
        )

    # --- sandboxes -----------------------------------------------------------------------------

    async def run_sandbox(self, config: base.SandboxConfig) -> base.SandboxID:
        if not await self.image_present(self._pause_image):
            await self.pull_image(self._pause_image)
        spec = convert.sandbox_spec(config, image=self._pause_image, ipv6=self._ipv6)
        sandbox_id = base.SandboxID(await self._call("CreateSandbox", self._engine.create, spec))
        try:
            await self._call("StartSandbox", self._api.start, sandbox_id)
            if not config.host_network:
                await self._attach(sandbox_id, config)
        except Exception:
            # Nothing half-made stays behind; an agent killed right here leaves a sandbox
            # that is never READY (no completed attachment), which the pod worker replaces.
            with contextlib.suppress(base.RuntimeFailure):
                await self._discard_sandbox(sandbox_id)
            raise
        return sandbox_id

    async def _attach(self, sandbox_id: base.SandboxID, config: base.SandboxConfig) -> None:
        data = await self._call("InspectSandbox", self._api.inspect_container, sandbox_id)
        netns = _netns(data)
        if not netns:
            state = data.get("State") or {}
            raise base.RuntimeFailure(
                f"sandbox {_pod_name(config)} exited at once (exit code {state.get('ExitCode')})"
            )
        ports = convert.cni_port_mappings(config)
        try:
            await self._network.add(
                sandbox_id,
                netns,
                cni_args=convert.cni_args(config, sandbox_id),
                capability_args={"portMappings": ports} if ports else {},
            )
        except Exception as exc:
            raise base.RuntimeFailure(
                f"failed to set up the network of sandbox {_pod_name(config)}: {exc}"
            ) from exc

    async def _detach(self, sandbox_id: base.SandboxID, netns: str) -> None:
        try:
            await self._network.delete(sandbox_id, netns)
        except Exception as exc:
            raise base.RuntimeFailure(
                f"failed to tear down the network of sandbox {sandbox_id[:12]}: {exc}"
            ) from exc

    async def _discard_sandbox(self, sandbox_id: base.SandboxID) -> None:
        try:
            data = await self._call("InspectSandbox", self._api.inspect_container, sandbox_id)
            await self._detach(sandbox_id, _netns(data))
        finally:
            await self._call(
                "RemoveSandbox",
                self._engine.remove_quietly,
                sandbox_id,
                timeout_s=self._timeout_s * 2,
            )

    async def stop_sandbox(self, sandbox_id: base.SandboxID) -> None:
        data = await self._call("InspectSandbox", self._api.inspect_container, sandbox_id)
        members = await self._members(sandbox_id)
        await asyncio.gather(
            *(
                self.stop_container(c.id, 0)
                for c in members
                if c.state is base.ContainerState.RUNNING
            )
        )
        if not read.inspect_is_host_network(data):
            await self._detach(sandbox_id, _netns(data))
        await self._call(
            "StopSandbox",
            self._api.stop,
            sandbox_id,
            timeout=SANDBOX_STOP_GRACE_S,
            timeout_s=SANDBOX_STOP_GRACE_S + self._timeout_s,
        )

    async def remove_sandbox(self, sandbox_id: base.SandboxID) -> None:
        try:
            data = await self._call("InspectSandbox", self._api.inspect_container, sandbox_id)
        except base.NotFound:
            return  # already gone: removal is idempotent, as containerd's
        for container in await self._members(sandbox_id):
            await self.remove_container(container.id)
        if not read.inspect_is_host_network(data):
            await self._detach(sandbox_id, _netns(data))
        await self._call(
            "RemoveSandbox", self._engine.remove_quietly, sandbox_id, timeout_s=self._timeout_s * 2
        )

    async def sandbox_status(self, sandbox_id: base.SandboxID) -> base.SandboxInfo:
        return await self._call("InspectSandbox", self._sandbox_status, sandbox_id)

    async def list_sandboxes(self, uid: PodUID | None = None) -> Sequence[base.SandboxInfo]:
        found, orphans = await self._call("ListSandboxes", self._list_sandboxes, uid)
        for sandbox_id in orphans:
            await self._detach_orphan(sandbox_id)
        return found

    async def _detach_orphan(self, sandbox_id: str) -> None:
        """Free the network of a sandbox removed behind our back (``docker rm -f``).

        containerd tears down the network of a sandbox it removes; Docker knows nothing of
        ours, so the relist does it. A failing DEL is retried at most every ORPHAN_RETRY_S.
        """
        if time.monotonic() < self._orphan_retry.get(sandbox_id, 0.0):
            return
        try:
            await self._detach(base.SandboxID(sandbox_id), "")
        except base.RuntimeFailure as exc:
            self._orphan_retry[sandbox_id] = time.monotonic() + ORPHAN_RETRY_S
            log.warning("orphan_network_detach_failed", sandbox=sandbox_id[:12], error=str(exc))
            return
        self._orphan_retry.pop(sandbox_id, None)
        log.info("orphan_network_detached", sandbox=sandbox_id[:12])

    async def _members(self, sandbox_id: base.SandboxID) -> list[base.ContainerInfo]:
        """The sandbox's containers (ours, by the sandbox-id label)."""
        filters = {
            "label": [
                f"{base.LABEL_MANAGED_BY}={convert.MANAGED_VALUE}",
                f"{base.LABEL_SANDBOX_ID}={sandbox_id}",
            ]
        }
        items = await self._call("ListContainers", self._api.containers, all=True, filters=filters)
        return [read.container_from_summary(item) for item in items]

    # --- containers ----------------------------------------------------------------------------

    async def create_container(
        self,
        sandbox_id: base.SandboxID,
        config: base.ContainerConfig,
        sandbox: base.SandboxConfig,
    ) -> base.ContainerID:
        log_path = ""
        if sandbox.log_directory and config.log_path:
            log_path = os.path.join(sandbox.log_directory, config.log_path)
        image_user = ""
        if config.security.run_as_group is not None and config.security.run_as_user is None:
            image_user = await self.image_user(config.image)
        spec = convert.container_spec(
            sandbox_id,
            config,
            sandbox,
            log_path=log_path,
            image_user=image_user,
            log_rotation=self._log_rotation,
        )
        return base.ContainerID(await self._call("CreateContainer", self._engine.create, spec))

    async def start_container(self, container_id: base.ContainerID) -> None:
        try:
            await self._call("StartContainer", self._api.start, container_id)
        finally:
            # Docker names its log file only when the container starts (or fails to). The
            # container runs fine without the link; only the file layout suffers.
            try:
                await self._call("LinkLog", self._engine.link_log, container_id)
            except base.RuntimeFailure as exc:
                log.warning("log_link_failed", container=container_id[:12], error=str(exc))

    async def stop_container(self, container_id: base.ContainerID, timeout_s: int) -> None:
        # Docker sends the image's STOPSIGNAL (TERM by default), KILL after timeout_s; its
        # client adds timeout_s to the socket timeout itself.
        grace = max(0, timeout_s)
        await self._call(
            "StopContainer",
            self._api.stop,
            container_id,
            timeout=grace,
            timeout_s=grace + self._timeout_s,
        )

    async def remove_container(self, container_id: base.ContainerID) -> None:
        await self._call(
            "RemoveContainer",
            self._engine.remove_quietly,
            container_id,
            timeout_s=self._timeout_s * 2,
        )

    async def reopen_container_log(self, container_id: base.ContainerID) -> None:
        """Nothing to do: dockerd rotates its json-file logs itself (``log_config``)."""

    async def container_status(self, container_id: base.ContainerID) -> base.ContainerInfo:
        data = await self._call("InspectContainer", self._api.inspect_container, container_id)
        info = read.container_from_inspect(data)
        return dataclasses.replace(info, image_ref=await self._repo_digest(info))

    async def _repo_digest(self, info: base.ContainerInfo) -> str:
        """The image as containerd's CRI reports it (``repo@sha256:...``, what the kubelet
        shows as imageID); the image id when it came from no registry (``docker load``)."""
        digests = self._repo_digests.get(info.image_ref)
        if digests is None:
            try:
                found = await self._call("InspectImage", self._api.inspect_image, info.image_ref)
            except base.NotFound:
                return info.image_ref
            digests = tuple(str(d) for d in found.get("RepoDigests") or ())
            if digests:  # an image id's digests only grow (pulled by another name)
                self._repo_digests[info.image_ref] = digests
        return read.repo_digest(digests, info.image) or info.image_ref

    async def list_containers(self, uid: PodUID | None = None) -> Sequence[base.ContainerInfo]:
        filters = convert.list_filters(convert.TYPE_CONTAINER, uid)
        items = await self._call("ListContainers", self._api.containers, all=True, filters=filters)
        return [read.container_from_summary(item) for item in items]

    async def exec_sync(
        self, container_id: base.ContainerID, command: Sequence[str], timeout_s: float
    ) -> base.ExecResult:
        # Whole seconds, never 0, as the CRI backend rounds them.
        timeout = max(1, math.ceil(timeout_s))
        created = await self._call("ExecCreate", self._api.exec_create, container_id, list(command))
        exec_id = str(created["Id"])
        output = self._engine.submit(self._engine.long.exec_start, exec_id, demux=True)
        finished = False
        try:
            stdout, stderr = await asyncio.wait_for(asyncio.shield(output), timeout)
            finished = True
        except TimeoutError:
            return _exec_timed_out(timeout)
        except Exception as exc:
            raise convert.translate_error(exc, "ExecStart") from exc
        finally:
            if not finished:  # timed out, failed or cancelled: the command must not linger
                await asyncio.shield(self._kill_exec(exec_id, output))
        exit_code = await self._call("ExecInspect", self._engine.exec_exit_code, exec_id)
        result = base.ExecResult(exit_code=exit_code, stdout=stdout or b"", stderr=stderr or b"")
        failure = read.exec_start_failure(result)
        if failure:  # the command never ran: an error, as the CRI backend reports it
            raise base.RuntimeFailure(f"ExecSync: {failure}")
        return result

    async def _kill_exec(self, exec_id: str, output: asyncio.Future[Any]) -> None:
        with contextlib.suppress(base.RuntimeFailure):
            await self._call("ExecKill", self._engine.kill_exec_processes, exec_id)
        with contextlib.suppress(Exception):
            # Once its processes are dead, the stream ends and the thread returns.
            await asyncio.wait_for(asyncio.shield(output), EXEC_DRAIN_S)

    # --- images --------------------------------------------------------------------------------

    async def image_present(self, image: str) -> bool:
        try:
            await self._call("InspectImage", self._api.inspect_image, image)
        except base.NotFound:
            return False
        return True

    async def image_user(self, image: str) -> str:
        found = await self._call("InspectImage", self._api.inspect_image, image)
        user = (found.get("Config") or {}).get("User") or ""
        return str(user)

    async def list_images(self) -> Sequence[base.ImageInfo]:
        items = await self._call("ListImages", self._api.images)
        return [read.image_from_summary(item) for item in items]

    async def remove_image(self, image_id: str) -> None:
        # force: an image with several names goes as a whole (the caller checked its use).
        await self._call("RemoveImage", self._api.remove_image, image_id, force=True)
        self._repo_digests.pop(image_id, None)

    async def image_fs_path(self) -> str:
        info = await self._call("Info", self._api.info)
        return str(info.get("DockerRootDir") or "")

    async def pull_image(self, image: str, auth: base.RegistryAuth | None = None) -> int:
        await self._call(
            "PullImage",
            self._engine.pull,
            image,
            auth,
            timeout_s=self._pull_timeout_s,
            failure=base.ImagePullFailed,
        )
        found = await self._call("InspectImage", self._api.inspect_image, image)
        return int(found.get("Size") or 0)

    # --- blocking helpers, run through the engine -------------------------------------------

    def _sandbox_status(self, sandbox_id: str) -> base.SandboxInfo:
        data = self._api.inspect_container(sandbox_id)
        if read.inspect_is_host_network(data):
            return read.sandbox_from_inspect(data, network_ready=True, ip="")
        ip = self._network.address(sandbox_id)
        return read.sandbox_from_inspect(data, network_ready=ip is not None, ip=ip or "")

    def _list_sandboxes(self, uid: PodUID | None) -> tuple[list[base.SandboxInfo], list[str]]:
        """Our sandboxes and, on a full list, the attachments whose sandbox is gone.

        The records are read *before* the list: a record is written after its container was
        created, so every record read then belongs to a container the list shows, unless
        that container is really gone. (Read after, a sandbox made in between would look
        orphaned, and lose its network.)
        """
        recorded = self._network.recorded() if uid is None else []
        filters = convert.list_filters(convert.TYPE_SANDBOX, uid)
        found = []
        for item in self._api.containers(all=True, filters=filters):
            ready = item.get("State") == "running" and (
                read.summary_is_host_network(item)
                or self._network.address(str(item["Id"])) is not None
            )
            found.append(read.sandbox_from_summary(item, network_ready=ready))
        listed = {s.id for s in found}
        return found, [r for r in recorded if r not in listed]


def _pod_name(config: base.SandboxConfig) -> str:
    return f"{config.namespace}/{config.name}"


def _exec_timed_out(timeout_s: int) -> base.ExecResult:
    message = f"command timed out after {timeout_s}s"
    return base.ExecResult(exit_code=EXEC_TIMEOUT_EXIT_CODE, stdout=b"", stderr=message.encode())
