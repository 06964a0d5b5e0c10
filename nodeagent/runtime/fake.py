"""An in-memory ``Runtime`` for unit tests, in the spirit of httpx's ``MockTransport``.

``FakeRuntime`` keeps sandboxes and containers in dicts and behaves like the CRI backend
(``runtime.cri.client``) over containerd, as far as the pod workers can tell:

- Labels. Sandboxes and containers get the pod's name, namespace and uid, containers also
  their name, and our managed-by marker; ours are applied over the caller's, as
  ``cri.convert`` does. ``list_*`` return only managed objects, of one pod when ``uid`` is
  given. ``run_unmanaged_sandbox`` makes one that some other agent owns, to test that.
- Detail. ``list_containers`` entries are summaries (``detailed`` False: no exit code, no
  times); ``container_status`` fills them in. ``list_sandboxes`` leaves ``ip`` empty;
  ``sandbox_status`` has it. IPs come from a counter; host-network sandboxes have none.
- Names. Like containerd, a sandbox (pod, attempt) and a container (pod, name, attempt) name
  is reserved while the object exists: creating it twice fails.
- States. Containers go CREATED -> RUNNING -> EXITED; exited containers report the reason
  containerd gives ("Completed" for 0, "Error" otherwise) unless the test chose one. Stopping
  a sandbox kills its containers; removing one removes them.
- Missing objects. Every call on an unknown id is ``NotFound``, removals included: stricter
  than containerd (which ignores a second removal), so callers that must tolerate both are
  tested against the harder one.
- Images. Names are compared the way CRI normalizes them (``busybox`` is
  ``docker.io/library/busybox:latest``). A pull succeeds and adds the image, unless
  ``registry`` is set and lacks it. Creating a container of an absent image is ``NotFound``.

The stored objects and their naming rules are in ``fakeobjects``.

Test controls: ``exit_container``, ``kill_sandbox``, ``fail_next(method, exc)`` (raised at
the start of the next call of ``method``, before it has any effect), ``start_errors`` (start
failures the containerd way: the container exits 128 with reason ``StartError``),
``exec_handler``, and the ``calls`` log of every call as ``(method, *args)``.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from nodeagent.model.pod import PodUID
from nodeagent.runtime.base import (
    LABEL_CONTAINER_NAME,
    LABEL_MANAGED_BY,
    LABEL_POD_NAME,
    LABEL_POD_NAMESPACE,
    LABEL_POD_UID,
    ContainerConfig,
    ContainerID,
    ContainerInfo,
    ContainerState,
    ExecResult,
    ImageInfo,
    ImagePullFailed,
    InvalidInput,
    NotFound,
    RegistryAuth,
    Runtime,
    RuntimeFailure,
    RuntimeStatus,
    RuntimeVersion,
    SandboxConfig,
    SandboxID,
    SandboxInfo,
    SandboxState,
)
from nodeagent.runtime.fakeobjects import (
    KILLED_EXIT_CODE,
    MANAGED_VALUE,
    START_ERROR_EXIT_CODE,
    START_ERROR_REASON,
    FakeContainer,
    FakeSandbox,
    container_name,
    normalized,
    normalized_set,
    sandbox_name,
    selected,
)
from nodeagent.runtime.fakeobjects import image_id as fake_image_id

METHODS = frozenset(
    {
        "version",
        "run_sandbox",
        "stop_sandbox",
        "remove_sandbox",
        "sandbox_status",
        "list_sandboxes",
        "create_container",
        "start_container",
        "stop_container",
        "remove_container",
        "container_status",
        "list_containers",
        "exec_sync",
        "image_present",
        "image_user",
        "pull_image",
        "list_images",
        "remove_image",
        "close",
    }
)

ExecHandler = Callable[[ContainerID, tuple[str, ...]], ExecResult]


@dataclass
class FakeRuntime:
    """``base.Runtime`` in memory; see the module docstring for what it emulates."""

    images: set[str] = field(default_factory=set)
    registry: set[str] | None = None  # images a pull can fetch; None: any image
    exec_handler: ExecHandler | None = None  # None: every command exits 0 with no output
    start_errors: dict[str, str] = field(default_factory=dict)  # container name -> message
    image_users: dict[str, str] = field(default_factory=dict)  # image -> USER; absent: ""
    # Set: the registry answers only these users (401 otherwise); pull_auths records each try.
    registry_users: set[str] = field(default_factory=set)
    pull_auths: list[RegistryAuth | None] = field(default_factory=list)
    image_fs: str = ""  # what image_fs_path answers ("": unknown, no image GC)
    calls: list[tuple[str, ...]] = field(default_factory=list)
    sandboxes: dict[SandboxID, FakeSandbox] = field(default_factory=dict)
    containers: dict[ContainerID, FakeContainer] = field(default_factory=dict)
    name: str = "fake"
    closed: bool = False
    # What ``status`` answers (CRI Status); a test sets it to play a runtime not ready.
    runtime_status: RuntimeStatus = field(
        default_factory=lambda: RuntimeStatus(runtime_ready=True, network_ready=True)
    )

    def __post_init__(self) -> None:
        self._failures: dict[str, list[BaseException]] = {}
        self._ids = itertools.count(1)
        self._ips = itertools.count(2)
        self._last_ns = 0

    # -- test controls ----------------------------------------------------------------------

    def fail_next(self, method: str, exc: BaseException, *, times: int = 1) -> None:
        """Make the next ``times`` calls of ``method`` raise ``exc`` before doing anything."""
        if method not in METHODS:
            raise ValueError(f"not a Runtime method: {method!r}")
        self._failures.setdefault(method, []).extend([exc] * times)

    def exit_container(self, container_id: ContainerID, code: int, reason: str = "") -> None:
        """The container's process ends with ``code`` (reason e.g. "OOMKilled")."""
        container = self._container(container_id)
        if container.state is not ContainerState.RUNNING:
            raise ValueError(f"container {container_id} is {container.state.value}, not running")
        self._exit(container, code, reason)

    def revise_exit_reason(self, container_id: ContainerID, reason: str) -> None:
        """The runtime's late word on an exit (containerd's OOM event after the exit event)."""
        self._container(container_id).reason = reason

    def kill_sandbox(self, sandbox_id: SandboxID) -> None:
        """The sandbox dies (its pause process, say); its containers are left as they are."""
        self._sandbox(sandbox_id).state = SandboxState.NOTREADY

    def run_unmanaged_sandbox(self, config: SandboxConfig) -> SandboxID:
        """A sandbox that some other agent made: without our managed-by label."""
        sandbox_id = self._create_sandbox(config)
        self.sandboxes[sandbox_id].labels.pop(LABEL_MANAGED_BY, None)
        return sandbox_id

    def count(self, method: str) -> int:
        return sum(1 for call in self.calls if call[0] == method)

    def container_ids(
        self,
        name: str | None = None,
        *,
        uid: PodUID | None = None,
        state: ContainerState | None = None,
    ) -> list[ContainerID]:
        """Matching containers, oldest first."""
        found = [
            c
            for c in self.containers.values()
            if (name is None or c.config.name == name)
            and (uid is None or c.uid == uid)
            and (state is None or c.state is state)
        ]
        return [c.id for c in sorted(found, key=lambda c: c.created_at_ns)]

    def sandbox_ids(
        self, *, uid: PodUID | None = None, state: SandboxState | None = None
    ) -> list[SandboxID]:
        """Matching sandboxes, oldest first."""
        found = [
            s
            for s in self.sandboxes.values()
            if (uid is None or s.labels.get(LABEL_POD_UID) == uid)
            and (state is None or s.state is state)
        ]
        return [s.id for s in sorted(found, key=lambda s: s.created_at_ns)]

    # -- Runtime: general -------------------------------------------------------------------

    async def version(self) -> RuntimeVersion:
        self._enter("version")
        return RuntimeVersion(name=self.name, version="0.1.0", api_version="v1")

    async def status(self) -> RuntimeStatus:
        self._enter("status")
        return self.runtime_status

    async def cgroup_driver(self) -> str:
        self._enter("cgroup_driver")
        return "cgroupfs"

    async def close(self) -> None:
        self._enter("close")
        self.closed = True

    # -- Runtime: sandboxes -----------------------------------------------------------------

    async def run_sandbox(self, config: SandboxConfig) -> SandboxID:
        self._enter("run_sandbox", config.name, config.namespace, config.uid, str(config.attempt))
        return self._create_sandbox(config)

    async def stop_sandbox(self, sandbox_id: SandboxID) -> None:
        self._enter("stop_sandbox", sandbox_id)
        sandbox = self._sandbox(sandbox_id)
        for container in self._in_sandbox(sandbox_id):
            if container.state is ContainerState.RUNNING:
                self._exit(container, KILLED_EXIT_CODE, "")
        sandbox.state = SandboxState.NOTREADY

    async def remove_sandbox(self, sandbox_id: SandboxID) -> None:
        self._enter("remove_sandbox", sandbox_id)
        self._sandbox(sandbox_id)
        for container in self._in_sandbox(sandbox_id):
            del self.containers[container.id]
        del self.sandboxes[sandbox_id]

    async def sandbox_status(self, sandbox_id: SandboxID) -> SandboxInfo:
        self._enter("sandbox_status", sandbox_id)
        return self._sandbox(sandbox_id).info(with_ip=True)

    async def list_sandboxes(self, uid: PodUID | None = None) -> Sequence[SandboxInfo]:
        self._enter("list_sandboxes", *(() if uid is None else (uid,)))
        return [s.info(with_ip=False) for s in self.sandboxes.values() if selected(s.labels, uid)]

    # -- Runtime: containers ----------------------------------------------------------------

    async def create_container(
        self, sandbox_id: SandboxID, config: ContainerConfig, sandbox: SandboxConfig
    ) -> ContainerID:
        self._enter("create_container", sandbox_id, config.name, str(config.attempt))
        owner = self._sandbox(sandbox_id)
        if owner.state is not SandboxState.READY:
            raise RuntimeFailure(f"CreateContainer: sandbox {sandbox_id} is not ready")
        image = self._present(config.image)
        if image is None:
            raise NotFound(f'CreateContainer: failed to resolve image "{config.image}": not found')
        reserved = container_name(sandbox, config)
        for other in self.containers.values():
            if container_name(other.sandbox_config, other.config) == reserved:
                raise RuntimeFailure(
                    f'CreateContainer: name "{reserved}" is reserved for "{other.id}"'
                )
        container_id = ContainerID(self._new_id("c"))
        labels = {
            **config.labels,
            LABEL_POD_NAME: sandbox.name,
            LABEL_POD_NAMESPACE: sandbox.namespace,
            LABEL_POD_UID: sandbox.uid,
            LABEL_CONTAINER_NAME: config.name,
            LABEL_MANAGED_BY: MANAGED_VALUE,
        }
        self.containers[container_id] = FakeContainer(
            id=container_id,
            sandbox_id=sandbox_id,
            config=config,
            sandbox_config=sandbox,
            labels=labels,
            image_ref=fake_image_id(image),
            created_at_ns=self._now_ns(),
        )
        return container_id

    async def start_container(self, container_id: ContainerID) -> None:
        self._enter("start_container", container_id)
        container = self._container(container_id)
        if container.state is not ContainerState.CREATED:
            raise RuntimeFailure(
                f"StartContainer: container {container_id} is {container.state.value}"
            )
        sandbox = self.sandboxes.get(container.sandbox_id)
        if sandbox is None or sandbox.state is not SandboxState.READY:
            raise RuntimeFailure(f"StartContainer: sandbox {container.sandbox_id} is not running")
        error = self.start_errors.get(container.config.name)
        if error is not None:
            container.started_at_ns = 0
            self._exit(container, START_ERROR_EXIT_CODE, START_ERROR_REASON, message=error)
            raise RuntimeFailure(f"StartContainer: {error}")
        container.state = ContainerState.RUNNING
        container.started_at_ns = self._now_ns()

    async def stop_container(self, container_id: ContainerID, timeout_s: int) -> None:
        self._enter("stop_container", container_id, str(timeout_s))
        container = self._container(container_id)
        if container.state is ContainerState.RUNNING:
            self._exit(container, KILLED_EXIT_CODE, "")

    async def remove_container(self, container_id: ContainerID) -> None:
        self._enter("remove_container", container_id)
        self._container(container_id)
        del self.containers[container_id]

    async def reopen_container_log(self, container_id: ContainerID) -> None:
        self._enter("reopen_container_log", container_id)
        self._container(container_id)

    async def container_status(self, container_id: ContainerID) -> ContainerInfo:
        self._enter("container_status", container_id)
        return self._container(container_id).info(detailed=True)

    async def list_containers(self, uid: PodUID | None = None) -> Sequence[ContainerInfo]:
        self._enter("list_containers", *(() if uid is None else (uid,)))
        return [c.info(detailed=False) for c in self.containers.values() if selected(c.labels, uid)]

    async def exec_sync(
        self, container_id: ContainerID, command: Sequence[str], timeout_s: float
    ) -> ExecResult:
        self._enter("exec_sync", container_id, *command)
        container = self._container(container_id)
        if container.state is not ContainerState.RUNNING:
            raise RuntimeFailure(f"ExecSync: container {container_id} is not running")
        if self.exec_handler is None:
            return ExecResult(exit_code=0, stdout=b"", stderr=b"")
        return self.exec_handler(container_id, tuple(command))

    # -- Runtime: images --------------------------------------------------------------------

    async def image_present(self, image: str) -> bool:
        self._enter("image_present", image)
        if normalized(image) is None:
            raise InvalidInput(f"ImageStatus: invalid image reference {image!r}")
        return self._present(image) is not None

    async def image_user(self, image: str) -> str:
        self._enter("image_user", image)
        if self._present(image) is None:
            raise NotFound(f"ImageStatus: image {image!r} is not present")
        return self.image_users.get(image, "")

    async def list_images(self) -> Sequence[ImageInfo]:
        self._enter("list_images")
        return [
            ImageInfo(id=fake_image_id(name), repo_tags=(name,), size=len(name))
            for name in sorted(normalized_set(self.images))
        ]

    async def remove_image(self, image_id: str) -> None:
        self._enter("remove_image", image_id)
        wanted = image_id
        gone = {i for i in self.images if (n := normalized(i)) and fake_image_id(n) == wanted}
        if not gone:
            raise NotFound(f"RemoveImage: no image {wanted!r}")
        self.images -= gone

    async def image_fs_path(self) -> str:
        return self.image_fs

    async def pull_image(self, image: str, auth: RegistryAuth | None = None) -> int:
        self._enter("pull_image", image)
        self.pull_auths.append(auth)
        wanted = normalized(image)
        if wanted is None:
            raise ImagePullFailed(f"PullImage: invalid image reference {image!r}")
        if self.registry is not None and wanted not in normalized_set(self.registry):
            raise ImagePullFailed(f'PullImage: "{image}": not found')
        if self.registry_users and (auth is None or auth.username not in self.registry_users):
            raise ImagePullFailed(f'PullImage: "{image}": 401 Unauthorized')
        self.images.add(image)
        return len(image)

    # -- internals --------------------------------------------------------------------------

    def _enter(self, method: str, *args: str) -> None:
        self.calls.append((method, *args))
        pending = self._failures.get(method)
        if pending:
            raise pending.pop(0)

    def _now_ns(self) -> int:
        # Strictly increasing, so that creation order is never a tie.
        self._last_ns = max(time.time_ns(), self._last_ns + 1)
        return self._last_ns

    def _new_id(self, prefix: str) -> str:
        seq = next(self._ids)
        return f"{prefix}{seq:03d}" + hashlib.sha256(f"{prefix}{seq}".encode()).hexdigest()[:60]

    def _create_sandbox(self, config: SandboxConfig) -> SandboxID:
        for other in self.sandboxes.values():
            if sandbox_name(other.config) == sandbox_name(config):
                raise RuntimeFailure(
                    f'RunPodSandbox: name "{sandbox_name(config)}" is reserved for "{other.id}"'
                )
        sandbox_id = SandboxID(self._new_id("s"))
        labels = {
            **config.labels,
            LABEL_POD_NAME: config.name,
            LABEL_POD_NAMESPACE: config.namespace,
            LABEL_POD_UID: config.uid,
            LABEL_MANAGED_BY: MANAGED_VALUE,
        }
        ip = ""
        if not config.host_network:
            n = next(self._ips)
            ip = f"10.88.{n // 256}.{n % 256}"
        self.sandboxes[sandbox_id] = FakeSandbox(
            id=sandbox_id,
            config=config,
            labels=labels,
            state=SandboxState.READY,
            ip=ip,
            created_at_ns=self._now_ns(),
        )
        return sandbox_id

    def _sandbox(self, sandbox_id: SandboxID) -> FakeSandbox:
        sandbox = self.sandboxes.get(sandbox_id)
        if sandbox is None:
            raise NotFound(f"sandbox {sandbox_id} not found")
        return sandbox

    def _container(self, container_id: ContainerID) -> FakeContainer:
        container = self.containers.get(container_id)
        if container is None:
            raise NotFound(f"container {container_id} not found")
        return container

    def _in_sandbox(self, sandbox_id: SandboxID) -> list[FakeContainer]:
        return [c for c in self.containers.values() if c.sandbox_id == sandbox_id]

    def _exit(self, container: FakeContainer, code: int, reason: str, message: str = "") -> None:
        container.state = ContainerState.EXITED
        container.finished_at_ns = self._now_ns()
        container.exit_code = code
        container.reason = reason
        container.message = message

    def _present(self, image: str) -> str | None:
        """The normalized name of ``image`` if it is present."""
        wanted = normalized(image)
        if wanted is not None and wanted in normalized_set(self.images):
            return wanted
        return None


def _conforms(fake: FakeRuntime) -> Runtime:
    """Never called: makes mypy check that FakeRuntime implements the Runtime protocol."""
    return fake
