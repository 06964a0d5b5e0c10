"""CRIRuntime's edge: gRPC errors become the seam's errors, and every call has a deadline.

A fake CRI server (grpc.aio, on a unix socket under tmp_path) answers with chosen status codes,
or not at all, so these run anywhere, without containerd or root.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from nodeagent.runtime import base
from nodeagent.runtime.cri import CRIRuntime, tasks, tasks_pb2
from nodeagent.runtime.cri import api_pb2 as pb
from nodeagent.runtime.cri import api_pb2_grpc as pb_grpc
from nodeagent.runtime.cri.client import EXEC_TIMEOUT_EXIT_CODE, Refused, translate_rpc_error


class FakeRpcError(grpc.RpcError):  # type: ignore[misc]  # grpc ships no type hints
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "want"),
    [
        (grpc.StatusCode.NOT_FOUND, base.NotFound),
        (grpc.StatusCode.UNAVAILABLE, base.RuntimeUnavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, base.RuntimeUnavailable),
        (grpc.StatusCode.INVALID_ARGUMENT, base.InvalidInput),
        (grpc.StatusCode.UNKNOWN, base.RuntimeFailure),
        (grpc.StatusCode.INTERNAL, base.RuntimeFailure),
    ],
)
def test_translate_by_code(code: grpc.StatusCode, want: type[base.RuntimeFailure]) -> None:
    err = translate_rpc_error(FakeRpcError(code, "boom"), "StartContainer")
    assert type(err) is want
    assert str(err) == "StartContainer: boom"


@pytest.mark.parametrize(
    ("code", "want"),
    [
        (grpc.StatusCode.NOT_FOUND, base.ImagePullFailed),
        (grpc.StatusCode.UNKNOWN, base.ImagePullFailed),
        (grpc.StatusCode.DEADLINE_EXCEEDED, base.ImagePullFailed),
        (grpc.StatusCode.UNAVAILABLE, base.RuntimeUnavailable),
    ],
)
def test_translate_with_a_failure_override(
    code: grpc.StatusCode, want: type[base.RuntimeFailure]
) -> None:
    err = translate_rpc_error(FakeRpcError(code, "x"), "PullImage", failure=base.ImagePullFailed)
    assert type(err) is want


def test_translate_an_error_without_a_code() -> None:
    err = translate_rpc_error(grpc.RpcError("odd"), "Version")
    assert type(err) is base.RuntimeFailure


class FakeRuntime(pb_grpc.RuntimeServiceServicer):
    """Answers each RPC with the status code set in ``codes``, or hangs if the code is None."""

    def __init__(self) -> None:
        self.codes: dict[str, grpc.StatusCode | None] = {}
        # RemoveContainer refuses this many times with FAILED_PRECONDITION, as containerd
        # does while it still holds the container's task.
        self.refuse_removal = 0
        self.calls: list[str] = []
        self.killed: list[tuple[int, bool]] = []  # (signal, all) of each Tasks/Kill

    async def _answer(self, rpc: str, context: Any, response: Any) -> Any:
        if rpc not in self.codes:
            return response
        code = self.codes[rpc]
        if code is None:
            await asyncio.sleep(3600)
        await context.abort(code, f"fake {rpc} failure")

    async def Version(self, request: Any, context: Any) -> Any:
        return await self._answer("Version", context, pb.VersionResponse(runtime_name="fake"))

    async def ContainerStatus(self, request: Any, context: Any) -> Any:
        return await self._answer("ContainerStatus", context, pb.ContainerStatusResponse())

    async def StopContainer(self, request: Any, context: Any) -> Any:
        self.calls.append("StopContainer")
        return await self._answer("StopContainer", context, pb.StopContainerResponse())

    async def RemoveContainer(self, request: Any, context: Any) -> Any:
        self.calls.append("RemoveContainer")
        if self.refuse_removal > 0:
            self.refuse_removal -= 1
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "cannot delete running task")
        return await self._answer("RemoveContainer", context, pb.RemoveContainerResponse())

    async def ExecSync(self, request: Any, context: Any) -> Any:
        return await self._answer("ExecSync", context, pb.ExecSyncResponse(stdout=b"ok"))


class FakeImages(pb_grpc.ImageServiceServicer):
    async def PullImage(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNKNOWN, "failed to resolve reference")

    async def ImageStatus(self, request: Any, context: Any) -> Any:
        if request.image.image == "present":
            return pb.ImageStatusResponse(image=pb.Image(id="sha256:x"))
        return pb.ImageStatusResponse()


def fake_tasks(servicer: FakeRuntime) -> grpc.GenericRpcHandler:
    """containerd's task service, as far as the client uses it: records Kill and Delete."""

    def handler(name: str, request_type: Any) -> Any:
        async def answer(request: Any, context: Any) -> bytes:
            namespace = dict(context.invocation_metadata()).get("containerd-namespace")
            servicer.calls.append(f"Tasks/{name} {request.container_id} in {namespace}")
            if name == "Kill":
                servicer.killed.append((request.signal, request.all))
            return b""  # google.protobuf.Empty and an empty DeleteResponse alike

        return grpc.unary_unary_rpc_method_handler(
            answer, request_deserializer=request_type.FromString, response_serializer=bytes
        )

    return grpc.method_handlers_generic_handler(
        "containerd.services.tasks.v1.Tasks",
        {
            "Kill": handler("Kill", tasks_pb2.KillRequest),
            "Delete": handler("Delete", tasks_pb2.DeleteTaskRequest),
        },
    )


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[tuple[FakeRuntime, CRIRuntime]]:
    socket = tmp_path / "cri.sock"
    server = grpc.aio.server()
    servicer = FakeRuntime()
    # The generated registration functions are untyped.
    pb_grpc.add_RuntimeServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    pb_grpc.add_ImageServiceServicer_to_server(FakeImages(), server)  # type: ignore[no-untyped-call]
    server.add_generic_rpc_handlers((fake_tasks(servicer),))
    server.add_insecure_port(f"unix://{socket}")
    await server.start()
    client = CRIRuntime(str(socket), timeout_s=0.5)  # a bare path is accepted too
    try:
        yield servicer, client
    finally:
        await client.close()
        await server.stop(grace=None)


async def test_a_call_succeeds(fake: tuple[FakeRuntime, CRIRuntime]) -> None:
    _, client = fake
    assert (await client.version()).name == "fake"


async def test_a_hung_runtime_is_unavailable(fake: tuple[FakeRuntime, CRIRuntime]) -> None:
    servicer, client = fake
    servicer.codes["Version"] = None
    with pytest.raises(base.RuntimeUnavailable):
        await asyncio.wait_for(client.version(), timeout=5)


async def test_not_found_crosses_the_seam(fake: tuple[FakeRuntime, CRIRuntime]) -> None:
    servicer, client = fake
    servicer.codes["ContainerStatus"] = grpc.StatusCode.NOT_FOUND
    with pytest.raises(base.NotFound, match="fake ContainerStatus failure"):
        await client.container_status(base.ContainerID("c"))


async def test_exec_timeout_is_a_failed_command(fake: tuple[FakeRuntime, CRIRuntime]) -> None:
    servicer, client = fake
    servicer.codes["ExecSync"] = grpc.StatusCode.DEADLINE_EXCEEDED
    result = await client.exec_sync(base.ContainerID("c"), ["sleep", "9"], timeout_s=0.2)
    assert result.exit_code == EXEC_TIMEOUT_EXIT_CODE
    assert b"timed out" in result.stderr


async def test_exec_other_errors_are_raised(fake: tuple[FakeRuntime, CRIRuntime]) -> None:
    servicer, client = fake
    servicer.codes["ExecSync"] = grpc.StatusCode.UNKNOWN
    with pytest.raises(base.RuntimeFailure, match="fake ExecSync failure"):
        await client.exec_sync(base.ContainerID("c"), ["true"], timeout_s=1)


async def test_pull_failure(fake: tuple[FakeRuntime, CRIRuntime]) -> None:
    _, client = fake
    with pytest.raises(base.ImagePullFailed, match="failed to resolve reference"):
        await client.pull_image("nope")


async def test_image_present(fake: tuple[FakeRuntime, CRIRuntime]) -> None:
    _, client = fake
    assert await client.image_present("present")
    assert not await client.image_present("absent")


async def test_an_absent_socket_is_unavailable(tmp_path: Path) -> None:
    client = CRIRuntime(f"unix://{tmp_path}/absent.sock", timeout_s=2.0)
    try:
        with pytest.raises(base.RuntimeUnavailable):
            await client.version()
    finally:
        await client.close()


async def test_a_hung_call_of_any_kind_is_bounded(fake: tuple[FakeRuntime, CRIRuntime]) -> None:
    servicer, client = fake
    servicer.codes["ContainerStatus"] = None
    servicer.codes["RemoveContainer"] = None
    with pytest.raises(base.RuntimeUnavailable):
        await asyncio.wait_for(client.container_status(base.ContainerID("c")), timeout=5)
    with pytest.raises(base.RuntimeUnavailable):
        await asyncio.wait_for(client.remove_container(base.ContainerID("c")), timeout=5)


async def test_remove_outwaits_a_task_the_runtime_still_holds(
    fake: tuple[FakeRuntime, CRIRuntime],
) -> None:
    servicer, client = fake
    servicer.refuse_removal = 2
    await client.remove_container(base.ContainerID("c"))
    # CRI's stop is a no-op for a container CRI believes exited: containerd's task service
    # kills and deletes the task, in the namespace of containerd's CRI objects.
    reap = ["Tasks/Kill c in k8s.io", "Tasks/Delete c in k8s.io"]
    assert servicer.calls == [
        "RemoveContainer",
        "StopContainer",
        *reap,
        "RemoveContainer",
        "StopContainer",
        *reap,
        "RemoveContainer",
    ]
    assert servicer.killed == [(9, True), (9, True)]


async def test_remove_gives_up_when_the_task_never_goes(
    fake: tuple[FakeRuntime, CRIRuntime],
) -> None:
    servicer, client = fake
    servicer.refuse_removal = 10**6
    with pytest.raises(Refused, match="cannot delete running task"):
        await asyncio.wait_for(client.remove_container(base.ContainerID("c")), timeout=10)
    assert servicer.calls.count("StopContainer") >= 1


async def test_remove_retries_when_stop_finds_nothing_to_stop(
    fake: tuple[FakeRuntime, CRIRuntime],
) -> None:
    servicer, client = fake
    servicer.refuse_removal = 1
    servicer.codes["StopContainer"] = grpc.StatusCode.NOT_FOUND  # stop finds it gone: fine
    await client.remove_container(base.ContainerID("c"))
    assert servicer.calls == [
        "RemoveContainer",
        "StopContainer",
        "Tasks/Kill c in k8s.io",
        "Tasks/Delete c in k8s.io",
        "RemoveContainer",
    ]


async def test_a_runtime_without_containerd_task_service_is_left_to_cri(tmp_path: Path) -> None:
    socket = tmp_path / "other.sock"
    server = grpc.aio.server()  # serves nothing: every call is UNIMPLEMENTED, as on CRI-O
    server.add_insecure_port(f"unix://{socket}")
    await server.start()
    channel = grpc.aio.insecure_channel(f"unix://{socket}")
    try:
        await tasks.reap(channel, "c", timeout_s=0.5)  # no error: removal is retried by CRI
    finally:
        await channel.close()
        await server.stop(grace=None)
