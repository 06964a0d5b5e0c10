"""The runtime seam: the one protocol every container runtime backend implements.

The pod workers speak only this protocol. It is deliberately small (sandboxes, containers,
exec, images) and shaped after CRI, because CRI is the richer of our two backends and the
Docker backend can emulate it (as dockershim did).

Errors that cross the seam are the typed ones below. A backend translates its transport's
errors (grpc.RpcError, docker.errors.*, OSError) at its edge, so callers never import a
backend's error types. Every call is bounded by a timeout inside the backend: a hung runtime
surfaces as ``RuntimeUnavailable``, never as a hung pod worker.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NewType, Protocol, runtime_checkable

from nodeagent.model.pod import PodUID

SandboxID = NewType("SandboxID", str)
ContainerID = NewType("ContainerID", str)

# Labels every sandbox and container carries, so crictl, operators and our own adoption after
# a restart recognise which pod an object belongs to.
LABEL_POD_NAME = "io.kubernetes.pod.name"
LABEL_POD_NAMESPACE = "io.kubernetes.pod.namespace"
LABEL_POD_UID = "io.kubernetes.pod.uid"
LABEL_CONTAINER_NAME = "io.kubernetes.container.name"
# Our own marker, so that adoption never touches sandboxes some other agent created.
LABEL_MANAGED_BY = "io.nodeagent.managed"
# Not a Kubernetes label: CRI's ContainerStatus has no sandbox id, and asking for it costs a
# second RPC, so both backends record it on each container they create.
LABEL_SANDBOX_ID = "io.nodeagent.sandbox-id"


class RuntimeFailure(Exception):
    """Base of every error a runtime backend raises across the seam."""


class RuntimeUnavailable(RuntimeFailure):
    """The runtime cannot be reached, or a call timed out."""


class NotFound(RuntimeFailure):
    """The sandbox, container or image does not exist (any more)."""


class InvalidInput(RuntimeFailure):
    """The runtime rejected what we asked for (bad image name, bad config)."""


class ImagePullFailed(RuntimeFailure):
    """Pulling an image failed: unknown image, unreachable registry, bad reference."""


@dataclass(frozen=True)
class RegistryAuth:
    """Credentials for one pull, as CRI's AuthConfig (Docker takes the same fields)."""

    username: str = ""
    password: str = ""
    server_address: str = ""  # the config key they were found under
    identity_token: str = ""

    def __repr__(self) -> str:  # never log a password
        return f"RegistryAuth(username={self.username!r}, server={self.server_address!r})"


@dataclass(frozen=True)
class ImageInfo:
    """An image the runtime holds (CRI ``Image``; Docker's image list)."""

    id: str  # sha256:<config digest>
    repo_tags: tuple[str, ...] = ()
    repo_digests: tuple[str, ...] = ()
    size: int = 0  # bytes

    @property
    def names(self) -> tuple[str, ...]:
        """What the Node's status.images lists: repo digests, then tags (as the kubelet)."""
        return self.repo_digests + self.repo_tags


class ContainerState(enum.Enum):
    CREATED = "created"  # created, never started
    RUNNING = "running"  # process alive
    EXITED = "exited"  # process ended; exit_code is meaningful
    UNKNOWN = "unknown"  # runtime could not tell


class SandboxState(enum.Enum):
    READY = "ready"  # network namespace and pause process alive
    NOTREADY = "notready"  # stopped, or being torn down


@dataclass(frozen=True)
class PortMapping:
    container_port: int
    host_port: int
    protocol: str = "TCP"  # TCP, UDP or SCTP
    host_ip: str = ""


@dataclass(frozen=True)
class DNSConfig:
    servers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class SandboxSecurity:
    """The sandbox (pause) process's identity; ``privileged`` if any container is."""

    run_as_user: int | None = None
    run_as_group: int | None = None
    supplemental_groups: tuple[int, ...] = ()
    privileged: bool = False
    seccomp: str = ""  # "RuntimeDefault", "Unconfined", or "" for the runtime's choice


@dataclass(frozen=True)
class ContainerSecurity:
    """One container's effective security settings (pod defaults already applied)."""

    run_as_user: int | None = None  # None: the image's user
    run_as_group: int | None = None
    supplemental_groups: tuple[int, ...] = ()
    privileged: bool = False
    readonly_rootfs: bool = False
    no_new_privs: bool = False
    capabilities_add: tuple[str, ...] = ()  # without the CAP_ prefix; "ALL" allowed
    capabilities_drop: tuple[str, ...] = ()
    seccomp: str = ""  # "RuntimeDefault", "Unconfined", or "" for the runtime's choice


@dataclass(frozen=True)
class SandboxConfig:
    name: str
    namespace: str
    uid: PodUID
    attempt: int
    hostname: str
    log_directory: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    port_mappings: tuple[PortMapping, ...] = ()
    dns: DNSConfig | None = None
    host_network: bool = False
    host_pid: bool = False
    host_ipc: bool = False
    share_pid: bool = False  # shareProcessNamespace: one PID namespace for the pod
    sysctls: Mapping[str, str] = field(default_factory=dict)
    security: SandboxSecurity = SandboxSecurity()
    # The pod's cgroup (``/kubepods/burstable/pod<uid>``, or a systemd slice path); "": the
    # runtime's own default.
    cgroup_parent: str = ""


@dataclass(frozen=True)
class Mount:
    host_path: str
    container_path: str
    readonly: bool = False


@dataclass(frozen=True)
class Resources:
    cpu_period: int = 0  # microseconds; 0 means unset
    cpu_quota: int = 0  # microseconds per period; 0 means unlimited
    cpu_shares: int = 0
    memory_limit_bytes: int = 0  # 0 means unlimited
    oom_score_adj: int = 0  # 0 leaves the runtime's own score


@dataclass(frozen=True)
class ContainerConfig:
    name: str
    attempt: int
    image: str
    log_path: str  # relative to the sandbox's log_directory
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    working_dir: str = ""
    env: tuple[tuple[str, str], ...] = ()
    mounts: tuple[Mount, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    resources: Resources = Resources()
    stdin: bool = False
    tty: bool = False
    security: ContainerSecurity = ContainerSecurity()
    # A container of the same pod whose PID namespace this one joins (an ephemeral
    # container's target), when the pod shares none of its own.
    pid_target: str = ""


@dataclass(frozen=True)
class SandboxInfo:
    id: SandboxID
    uid: PodUID
    name: str
    namespace: str
    attempt: int
    state: SandboxState
    created_at_ns: int
    labels: Mapping[str, str] = field(default_factory=dict)
    ip: str = ""  # filled by sandbox_status; list_sandboxes may leave it empty


@dataclass(frozen=True)
class ContainerInfo:
    id: ContainerID
    sandbox_id: SandboxID
    uid: PodUID
    name: str
    attempt: int
    image: str
    state: ContainerState
    created_at_ns: int
    labels: Mapping[str, str] = field(default_factory=dict)
    # The fields below are only filled by container_status.
    image_ref: str = ""
    started_at_ns: int = 0
    finished_at_ns: int = 0
    exit_code: int = 0
    reason: str = ""  # runtime's reason, e.g. "OOMKilled", "Error", "Completed"
    message: str = ""
    detailed: bool = False  # True once container_status filled the fields above


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes


@dataclass(frozen=True)
class RuntimeVersion:
    name: str  # e.g. "containerd"
    version: str  # e.g. "1.6.20"
    api_version: str  # e.g. "v1"


@dataclass(frozen=True)
class RuntimeStatus:
    """CRI ``Status``: the RuntimeReady and NetworkReady conditions, with the reason and
    message of the first that is not ready ("" when both are)."""

    runtime_ready: bool
    network_ready: bool
    reason: str = ""
    message: str = ""


class Runtime(Protocol):
    """What a pod worker needs from a container runtime. All methods are coroutines."""

    async def version(self) -> RuntimeVersion: ...

    async def status(self) -> RuntimeStatus:
        """Whether the runtime and its pod network are ready (CRI ``Status``)."""
        ...

    async def run_sandbox(self, config: SandboxConfig) -> SandboxID: ...

    async def stop_sandbox(self, sandbox_id: SandboxID) -> None: ...

    async def remove_sandbox(self, sandbox_id: SandboxID) -> None: ...

    async def sandbox_status(self, sandbox_id: SandboxID) -> SandboxInfo: ...

    async def list_sandboxes(self, uid: PodUID | None = None) -> Sequence[SandboxInfo]:
        """Our sandboxes (labelled managed), optionally of one pod only."""
        ...

    async def create_container(
        self, sandbox_id: SandboxID, config: ContainerConfig, sandbox: SandboxConfig
    ) -> ContainerID: ...

    async def start_container(self, container_id: ContainerID) -> None: ...

    async def stop_container(self, container_id: ContainerID, timeout_s: int) -> None:
        """Signal the container (TERM or the image's STOPSIGNAL), KILL after timeout_s."""
        ...

    async def remove_container(self, container_id: ContainerID) -> None: ...

    async def container_status(self, container_id: ContainerID) -> ContainerInfo: ...

    async def reopen_container_log(self, container_id: ContainerID) -> None:
        """CRI ``ReopenContainerLog``: the running container writes to a new file at its log
        path (after the old one was renamed away). Runtimes that rotate their own logs
        (Docker's json-file) do nothing."""
        ...

    async def list_containers(self, uid: PodUID | None = None) -> Sequence[ContainerInfo]:
        """Our containers, optionally of one pod only; ``detailed`` is False on these."""
        ...

    async def exec_sync(
        self, container_id: ContainerID, command: Sequence[str], timeout_s: float
    ) -> ExecResult: ...

    async def image_present(self, image: str) -> bool: ...

    async def image_user(self, image: str) -> str:
        """The user a present image runs as: its USER ("", "1000", "app", "1000:50")."""
        ...

    async def list_images(self) -> Sequence[ImageInfo]: ...

    async def remove_image(self, image_id: str) -> None:
        """Remove the image (by id) and all its names; NotFound-tolerant callers expect it."""
        ...

    async def image_fs_path(self) -> str:
        """A path on the filesystem holding the images ("" when unknown), for image GC."""
        ...

    async def pull_image(self, image: str, auth: RegistryAuth | None = None) -> int:
        """Pull ``image`` (with ``auth``, else anonymously); its size in bytes (0: unknown)."""
        ...

    async def cgroup_driver(self) -> str:
        """The runtime's cgroup driver, "cgroupfs" or "systemd"; "" when it does not say."""
        ...

    async def close(self) -> None: ...


class StreamKind(enum.Enum):
    EXEC = "exec"  # a new process in a container
    ATTACH = "attach"  # the container's own stdio
    PORT_FORWARD = "portforward"  # connections into the sandbox's network namespace


@dataclass(frozen=True)
class StreamRequest:
    """One session the runtime's streaming server is to serve (CRI Exec/Attach/PortForward)."""

    kind: StreamKind
    target: str  # the container id (exec, attach) or the sandbox id (port-forward)
    command: tuple[str, ...] = ()
    stdin: bool = False
    stdout: bool = False
    stderr: bool = False
    tty: bool = False
    ports: tuple[int, ...] = ()


@runtime_checkable
class StreamingRuntime(Protocol):
    """A runtime with its own streaming server (CRI): it answers a session with the URL the
    kubelet API proxies the client's upgraded connection to."""

    async def streaming_url(self, request: StreamRequest) -> str: ...
