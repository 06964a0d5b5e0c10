"""containerd's own task service, for the one state its CRI plugin cannot leave by itself.

A SIGKILL of the agent inside StartContainer cancels the call. containerd 1.6's CRI plugin
then marks the container exited (a start error) while its task may live on in the shim,
sometimes with the container's process running. CRI has no way out of that: StopContainer
does nothing for a container it believes exited, and RemoveContainer is refused ("cannot
delete running task") for as long as the task exists, so the container, its sandbox, its IP
and its veth would stay for good. containerd's task service, on the same socket, can: kill
the task's processes and delete the task. The CRI plugin hears the task exit and lets the
container go.

Runtimes without that service (CRI-O) answer UNIMPLEMENTED; that, and every answer but an
unreachable runtime, leaves the caller where CRI left it, retrying RemoveContainer.
"""

from __future__ import annotations

import grpc
import grpc.aio
import structlog

from nodeagent.runtime import base
from nodeagent.runtime.cri import tasks_pb2

log = structlog.get_logger("nodeagent.runtime.cri")

# containerd's CRI plugin keeps its containers in this namespace (its default).
CRI_NAMESPACE = "k8s.io"
_SERVICE = "/containerd.services.tasks.v1.Tasks/"
_SIGKILL = 9


async def reap(channel: grpc.aio.Channel, container_id: str, timeout_s: float) -> None:
    """Kill and delete the task containerd holds for ``container_id``, if it holds one."""
    metadata = (("containerd-namespace", CRI_NAMESPACE),)
    kill = tasks_pb2.KillRequest(container_id=container_id, signal=_SIGKILL, all=True)
    delete = tasks_pb2.DeleteTaskRequest(container_id=container_id)
    for method, request in (("Kill", kill), ("Delete", delete)):
        rpc = channel.unary_unary(
            _SERVICE + method, request_serializer=type(request).SerializeToString
        )
        try:
            await rpc(request, timeout=timeout_s, metadata=metadata)
        except grpc.aio.AioRpcError as err:
            if err.code() is grpc.StatusCode.UNAVAILABLE:
                raise base.RuntimeUnavailable(f"Tasks/{method}: {err.details()}") from err
            # NOT_FOUND: no task (any more); FAILED_PRECONDITION: the task is still exiting
            # (the caller retries); UNIMPLEMENTED: not containerd.
            log.debug(
                "runtime_task_reap", container=container_id, call=method, error=err.code().name
            )
            continue
        log.info("runtime_task_reaped", container=container_id, call=method)
