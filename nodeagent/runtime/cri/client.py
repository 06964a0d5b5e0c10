"""The CRI backend of the runtime seam: ``Runtime`` over CRI ``runtime.v1`` gRPC.

Shape:

- One ``grpc.aio`` channel to the runtime's unix socket, opened lazily on the first call so
  that it binds to the event loop that actually runs the calls (a channel made outside the
  loop, e.g. while wiring the daemon, would bind to another one). ``close`` releases it.
- Every RPC goes through ``_call``: it sets a deadline (every call has one, so a hung runtime
  becomes ``RuntimeUnavailable`` instead of a hung pod worker) and turns ``grpc.RpcError`` into
  the seam's typed errors with ``translate_rpc_error``. No other code catches gRPC errors,
  except ``exec_sync``, which must tell a command timeout from a failure.
- Message building and parsing live in ``convert``; so do the labels we put on every sandbox
  and container (callers need not set them), and the host-network namespace rule.

Deadlines: calls get ``timeout_s``; PullImage gets ``pull_timeout_s``; StopContainer and
ExecSync get their own timeout plus ``timeout_s``, so that the runtime's timer (which kills the
process) fires before ours (which only gives up waiting). A command that outlives its ExecSync
timeout is reported as exit code 124 (timeout(1)'s) with the reason on stderr: for a probe that
is a failed check, not a broken runtime.

Not here, on purpose: stop signals (the runtime reads the image's STOPSIGNAL and sends KILL
when StopContainer's timeout ends), retries (the pod workers back off; the one exception is
``remove_container``, which outwaits a task the runtime still holds, so that the workers and
the test harness both get it), and image name normalization for comparisons
(``runtime/image.py``; the runtime normalizes on its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import Message

from nodeagent.model.pod import PodUID
from nodeagent.runtime import base
from nodeagent.runtime.cri import api_pb2 as pb
from nodeagent.runtime.cri import api_pb2_grpc as pb_grpc
from nodeagent.runtime.cri import convert, tasks

# The CRI API version we speak; runtimes answer with theirs in VersionResponse.
CRI_API_VERSION = "v1"
# The kubelet's limit too: ExecSync output and long container lists exceed gRPC's 4 MiB default.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# What exec_sync reports for a command killed at its timeout (the exit code of timeout(1)).
EXEC_TIMEOUT_EXIT_CODE = 124
# How soon the channel tries again after losing the runtime (doubling up to the max).
RECONNECT_BACKOFF_MIN_MS = 250
RECONNECT_BACKOFF_MAX_MS = 2000
# remove_container's backoff while the runtime still holds a container's task.
REMOVE_RETRY_FIRST_S = 0.05
REMOVE_RETRY_MAX_S = 1.0

_Response = TypeVar("_Response", bound=Message)
_Rpc = Callable[..., Awaitable[Any]]  # a grpc.aio unary-unary stub method


class Refused(base.RuntimeFailure):
    """FAILED_PRECONDITION: the runtime refuses the call in the object's current state."""


_ERRORS_BY_CODE: Mapping[grpc.StatusCode, type[base.RuntimeFailure]] = {
    grpc.StatusCode.NOT_FOUND: base.NotFound,
    grpc.StatusCode.UNAVAILABLE: base.RuntimeUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: base.RuntimeUnavailable,
    grpc.StatusCode.INVALID_ARGUMENT: base.InvalidInput,
    grpc.StatusCode.FAILED_PRECONDITION: Refused,
}


def translate_rpc_error(
    err: grpc.RpcError, rpc: str, *, failure: type[base.RuntimeFailure] | None = None
) -> base.RuntimeFailure:
    """The seam's error for a failed RPC, carrying the runtime's own message.

    ``failure``, when given, replaces the per-code mapping for every code except UNAVAILABLE:
    a pull that fails for any reason is an image pull failure, but an unreachable runtime is
    still an unreachable runtime.
    """
    code = _code(err)
    details = _details(err) or (code.name if code is not None else str(err))
    message = f"{rpc}: {details}"
    if code is grpc.StatusCode.UNAVAILABLE:
        return base.RuntimeUnavailable(message)
    if failure is not None:
        return failure(message)
    return _ERRORS_BY_CODE.get(code, base.RuntimeFailure)(message)


def _code(err: grpc.RpcError) -> grpc.StatusCode | None:
    # grpc.RpcError itself has no code(); the Call errors grpc raises (AioRpcError) do.
    code = getattr(err, "code", None)
    return code() if callable(code) else None


def _details(err: grpc.RpcError) -> str:
    details = getattr(err, "details", None)
    return str(details() or "") if callable(details) else ""


def _target(endpoint: str) -> str:
    """A gRPC target: ``unix:///abs/path`` as given, a bare absolute path made into one."""
    if endpoint.startswith("/"):
        return f"unix://{endpoint}"
    return endpoint


@dataclass(frozen=True)
class _Stubs:
    channel: grpc.aio.Channel
    runtime: pb_grpc.RuntimeServiceStub
    images: pb_grpc.ImageServiceStub


class CRIRuntime(base.Runtime):
    """``base.Runtime`` over a CRI runtime (containerd, CRI-O) at ``endpoint``.

    Subclasses the protocol explicitly so that mypy checks every signature against it.
    """

    def __init__(
        self, endpoint: str, *, timeout_s: float = 10.0, pull_timeout_s: float = 300.0
    ) -> None:
        self._target = _target(endpoint)
        self._timeout_s = timeout_s
        self._pull_timeout_s = pull_timeout_s
        self._stubs: _Stubs | None = None

    # --- plumbing ------------------------------------------------------------------------------

    def _open(self) -> _Stubs:
        if self._stubs is None:
            channel = grpc.aio.insecure_channel(
                self._target,
                options=[
                    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                    # gRPC's reconnect backoff grows to 120 s by default: a containerd that
                    # restarts would leave the node NotReady for up to two minutes after it
                    # is back. The relister calls every second; reconnect within seconds.
                    ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MIN_MS),
                    ("grpc.min_reconnect_backoff_ms", RECONNECT_BACKOFF_MIN_MS),
                    ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MAX_MS),
                ],
            )
            # The generated stubs are untyped (grpc_tools writes no annotations).
            self._stubs = _Stubs(
                channel=channel,
                runtime=pb_grpc.RuntimeServiceStub(channel),  # type: ignore[no-untyped-call]
                images=pb_grpc.ImageServiceStub(channel),  # type: ignore[no-untyped-call]
            )
        return self._stubs

    @property
    def _runtime(self) -> pb_grpc.RuntimeServiceStub:
        return self._open().runtime

    @property
    def _images(self) -> pb_grpc.ImageServiceStub:
        return self._open().images

    async def _call(
        self,
        rpc: _Rpc,
        request: Message,
        response_type: type[_Response],
        *,
        timeout_s: float | None = None,
        failure: type[base.RuntimeFailure] | None = None,
    ) -> _Response:
        name = type(request).__name__.removesuffix("Request")
        try:
            response = await rpc(request, timeout=timeout_s or self._timeout_s)
        except grpc.RpcError as err:
            raise translate_rpc_error(err, name, failure=failure) from err
        if not isinstance(response, response_type):  # a stub wired to the wrong method
            raise base.RuntimeFailure(f"{name}: unexpected response {type(response).__name__}")
        return response

    async def close(self) -> None:
        stubs, self._stubs = self._stubs, None
        if stubs is not None:
            await stubs.channel.close()

    # --- runtime -------------------------------------------------------------------------------

    async def version(self) -> base.RuntimeVersion:
        request = pb.VersionRequest(version=CRI_API_VERSION)
        response = await self._call(self._runtime.Version, request, pb.VersionResponse)
        return base.RuntimeVersion(
            name=response.runtime_name,
            version=response.runtime_version,
            api_version=response.runtime_api_version,
        )

    async def status(self) -> base.RuntimeStatus:
        response = await self._call(self._runtime.Status, pb.StatusRequest(), pb.StatusResponse)
        return convert.runtime_status_from_pb(response.status)

    async def cgroup_driver(self) -> str:
        """The kubelet's way: RuntimeConfig where the runtime has it; else (containerd 1.6)
        the runc options in the verbose Status's config; "" when neither tells."""
        try:
            response = await self._call(
                self._runtime.RuntimeConfig, pb.RuntimeConfigRequest(), pb.RuntimeConfigResponse
            )
        except base.RuntimeUnavailable:
            raise
        except base.RuntimeFailure:  # UNIMPLEMENTED: an older runtime
            request = pb.StatusRequest(verbose=True)
            status = await self._call(self._runtime.Status, request, pb.StatusResponse)
            return convert.cgroup_driver_from_info(status.info)
        if not response.HasField("linux"):
            return ""
        return "systemd" if response.linux.cgroup_driver == pb.SYSTEMD else "cgroupfs"

    # --- sandboxes -----------------------------------------------------------------------------

    async def run_sandbox(self, config: base.SandboxConfig) -> base.SandboxID:
        request = pb.RunPodSandboxRequest(config=convert.sandbox_config_to_pb(config))
        response = await self._call(self._runtime.RunPodSandbox, request, pb.RunPodSandboxResponse)
        return base.SandboxID(response.pod_sandbox_id)

    async def stop_sandbox(self, sandbox_id: base.SandboxID) -> None:
        request = pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id)
        await self._call(self._runtime.StopPodSandbox, request, pb.StopPodSandboxResponse)

    async def remove_sandbox(self, sandbox_id: base.SandboxID) -> None:
        request = pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id)
        await self._call(self._runtime.RemovePodSandbox, request, pb.RemovePodSandboxResponse)

    async def sandbox_status(self, sandbox_id: base.SandboxID) -> base.SandboxInfo:
        request = pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id)
        response = await self._call(
            self._runtime.PodSandboxStatus, request, pb.PodSandboxStatusResponse
        )
        return convert.sandbox_status_from_pb(response.status)

    async def list_sandboxes(self, uid: PodUID | None = None) -> Sequence[base.SandboxInfo]:
        selector = convert.managed_selector(uid)
        request = pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(label_selector=selector))
        response = await self._call(
            self._runtime.ListPodSandbox, request, pb.ListPodSandboxResponse
        )
        return [convert.sandbox_from_pb(item) for item in response.items]

    # --- containers ----------------------------------------------------------------------------

    async def create_container(
        self,
        sandbox_id: base.SandboxID,
        config: base.ContainerConfig,
        sandbox: base.SandboxConfig,
    ) -> base.ContainerID:
        request = pb.CreateContainerRequest(
            pod_sandbox_id=sandbox_id,
            config=convert.container_config_to_pb(sandbox_id, config, sandbox),
            sandbox_config=convert.sandbox_config_to_pb(sandbox),
        )
        response = await self._call(
            self._runtime.CreateContainer, request, pb.CreateContainerResponse
        )
        return base.ContainerID(response.container_id)

    async def start_container(self, container_id: base.ContainerID) -> None:
        request = pb.StartContainerRequest(container_id=container_id)
        await self._call(self._runtime.StartContainer, request, pb.StartContainerResponse)

    async def stop_container(self, container_id: base.ContainerID, timeout_s: int) -> None:
        # The runtime sends the image's STOPSIGNAL (TERM by default), KILL after timeout_s.
        request = pb.StopContainerRequest(container_id=container_id, timeout=max(0, timeout_s))
        await self._call(
            self._runtime.StopContainer,
            request,
            pb.StopContainerResponse,
            timeout_s=max(0, timeout_s) + self._timeout_s,
        )

    async def remove_container(self, container_id: base.ContainerID) -> None:
        """Remove a container, also one whose task the runtime still holds.

        A SIGKILL landing inside StartContainer can leave containerd 1.6 holding a task it
        calls running for a container CRI reports exited; RemoveContainer then fails with
        FAILED_PRECONDITION ("cannot delete running task"). Stopping it (timeout 0: it is
        meant to be dead) lets the task go where CRI still knows it runs; where CRI believes
        it exited, only containerd's task service can (``tasks.reap``). Removal is retried
        with a bounded backoff until the runtime lets go of it, or ``timeout_s`` has passed.
        """
        request = pb.RemoveContainerRequest(container_id=container_id)
        deadline = time.monotonic() + self._timeout_s
        delay = REMOVE_RETRY_FIRST_S
        while True:
            try:
                await self._call(self._runtime.RemoveContainer, request, pb.RemoveContainerResponse)
                return
            except Refused as refused:
                if time.monotonic() + delay > deadline:
                    raise
                held = "running task" in str(refused)
            with contextlib.suppress(base.NotFound):
                await self.stop_container(container_id, 0)
            if held:
                await tasks.reap(self._open().channel, container_id, self._timeout_s)
            await asyncio.sleep(delay)
            delay = min(delay * 2, REMOVE_RETRY_MAX_S)

    async def reopen_container_log(self, container_id: base.ContainerID) -> None:
        request = pb.ReopenContainerLogRequest(container_id=container_id)
        await self._call(self._runtime.ReopenContainerLog, request, pb.ReopenContainerLogResponse)

    async def container_status(self, container_id: base.ContainerID) -> base.ContainerInfo:
        request = pb.ContainerStatusRequest(container_id=container_id)
        response = await self._call(
            self._runtime.ContainerStatus, request, pb.ContainerStatusResponse
        )
        status = response.status
        sandbox_id = status.labels.get(base.LABEL_SANDBOX_ID)
        if sandbox_id is None:  # not created by us: ask the list, which does carry it
            sandbox_id = await self._sandbox_of(container_id)
        return convert.container_status_from_pb(status, base.SandboxID(sandbox_id))

    async def _sandbox_of(self, container_id: base.ContainerID) -> str:
        request = pb.ListContainersRequest(filter=pb.ContainerFilter(id=container_id))
        response = await self._call(
            self._runtime.ListContainers, request, pb.ListContainersResponse
        )
        return response.containers[0].pod_sandbox_id if response.containers else ""

    async def list_containers(self, uid: PodUID | None = None) -> Sequence[base.ContainerInfo]:
        selector = convert.managed_selector(uid)
        request = pb.ListContainersRequest(filter=pb.ContainerFilter(label_selector=selector))
        response = await self._call(
            self._runtime.ListContainers, request, pb.ListContainersResponse
        )
        return [convert.container_from_pb(item) for item in response.containers]

    async def exec_sync(
        self, container_id: base.ContainerID, command: Sequence[str], timeout_s: float
    ) -> base.ExecResult:
        # CRI counts whole seconds and reads 0 as "no timeout": round up, never down to 0.
        runtime_timeout = max(1, math.ceil(timeout_s))
        request = pb.ExecSyncRequest(
            container_id=container_id, cmd=list(command), timeout=runtime_timeout
        )
        try:
            response = await self._runtime.ExecSync(
                request, timeout=runtime_timeout + self._timeout_s
            )
        except grpc.RpcError as err:
            if _code(err) is grpc.StatusCode.DEADLINE_EXCEEDED:
                # The runtime killed the command at its timeout (containerd answers so), or
                # the runtime hung past our margin; either way the command did not finish.
                return _exec_timed_out(runtime_timeout, _details(err))
            raise translate_rpc_error(err, "ExecSync") from err
        return base.ExecResult(
            exit_code=response.exit_code, stdout=response.stdout, stderr=response.stderr
        )

    async def streaming_url(self, request: base.StreamRequest) -> str:
        """The streaming server's URL for one exec, attach or port-forward session."""
        kind = base.StreamKind
        if request.kind is kind.EXEC:
            exec_request = pb.ExecRequest(
                container_id=request.target,
                cmd=list(request.command),
                tty=request.tty,
                stdin=request.stdin,
                stdout=request.stdout,
                stderr=request.stderr,
            )
            return (await self._call(self._runtime.Exec, exec_request, pb.ExecResponse)).url
        if request.kind is kind.ATTACH:
            attach = pb.AttachRequest(
                container_id=request.target,
                stdin=request.stdin,
                tty=request.tty,
                stdout=request.stdout,
                stderr=request.stderr,
            )
            return (await self._call(self._runtime.Attach, attach, pb.AttachResponse)).url
        forward = pb.PortForwardRequest(pod_sandbox_id=request.target, port=list(request.ports))
        response = await self._call(self._runtime.PortForward, forward, pb.PortForwardResponse)
        return response.url

    # --- images --------------------------------------------------------------------------------

    async def image_present(self, image: str) -> bool:
        # An absent image is an empty response, not NOT_FOUND.
        request = pb.ImageStatusRequest(image=pb.ImageSpec(image=image))
        response = await self._call(self._images.ImageStatus, request, pb.ImageStatusResponse)
        return response.HasField("image")

    async def image_user(self, image: str) -> str:
        request = pb.ImageStatusRequest(image=pb.ImageSpec(image=image))
        response = await self._call(self._images.ImageStatus, request, pb.ImageStatusResponse)
        if not response.HasField("image"):
            raise base.NotFound(f"image {image!r} is not present")
        # The runtime splits USER into a numeric uid or a name; either stands for the user.
        found = response.image
        return str(found.uid.value) if found.HasField("uid") else found.username

    async def list_images(self) -> Sequence[base.ImageInfo]:
        response = await self._call(
            self._images.ListImages, pb.ListImagesRequest(), pb.ListImagesResponse
        )
        return [
            base.ImageInfo(
                id=image.id,
                repo_tags=tuple(image.repo_tags),
                repo_digests=tuple(image.repo_digests),
                size=int(image.size),
            )
            for image in response.images
        ]

    async def remove_image(self, image_id: str) -> None:
        request = pb.RemoveImageRequest(image=pb.ImageSpec(image=image_id))
        await self._call(self._images.RemoveImage, request, pb.RemoveImageResponse)

    async def image_fs_path(self) -> str:
        response = await self._call(
            self._images.ImageFsInfo, pb.ImageFsInfoRequest(), pb.ImageFsInfoResponse
        )
        return next((fs.fs_id.mountpoint for fs in response.image_filesystems), "")

    async def pull_image(self, image: str, auth: base.RegistryAuth | None = None) -> int:
        request = pb.PullImageRequest(image=pb.ImageSpec(image=image))
        if auth is not None:
            # No server_address, as the kubelet: containerd would parse a config key like
            # "127.0.0.1:5000" as a URL and fail; the image names the registry anyway.
            request.auth.CopyFrom(
                pb.AuthConfig(
                    username=auth.username,
                    password=auth.password,
                    identity_token=auth.identity_token,
                )
            )
        response = await self._call(
            self._images.PullImage,
            request,
            pb.PullImageResponse,
            timeout_s=self._pull_timeout_s,
            failure=base.ImagePullFailed,
        )
        status = pb.ImageStatusRequest(image=pb.ImageSpec(image=response.image_ref or image))
        found = await self._call(self._images.ImageStatus, status, pb.ImageStatusResponse)
        return int(found.image.size) if found.HasField("image") else 0


def _exec_timed_out(timeout_s: int, details: str) -> base.ExecResult:
    message = f"command timed out after {timeout_s}s"
    if details:
        message += f" ({details})"
    return base.ExecResult(exit_code=EXEC_TIMEOUT_EXIT_CODE, stdout=b"", stderr=message.encode())
