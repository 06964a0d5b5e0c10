"""DockerRuntime's orchestration and edge, without a Docker Engine.

``FakeEngine`` stands in for docker-py's APIClient (the methods the backend calls, with
Docker's answers and errors); ``FakeNetwork`` for the CNI runner. Both log what happened in
one list, so the tests can check the order of effects (containers stopped before the network
is torn down, the network torn down before the pause container stops). The last tests use
real unix sockets: none at all, and one that accepts and never answers.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import docker
import docker.errors
import psutil
import pytest

from nodeagent.model.pod import PodUID
from nodeagent.runtime import base
from nodeagent.runtime import docker as dockerrt
from nodeagent.runtime import docker_convert as convert
from tests.harness.wait import wait_for

PAUSE = "registry.k8s.io/pause:3.6"


class FakeResponse:
    def __init__(self, status: int) -> None:
        self.status_code, self.reason, self.url = status, "", "http+docker://x"

    def json(self) -> Any:
        raise ValueError


def not_found(what: str) -> docker.errors.NotFound:
    return docker.errors.NotFound(what, response=FakeResponse(404), explanation=what)


class FakeEngine:
    """The subset of docker.APIClient the backend uses, over an in-memory engine."""

    def __init__(self, log: list[tuple[str, ...]], tmp: Path) -> None:
        self.log = log
        self.tmp = tmp
        self.containers_: dict[str, dict[str, Any]] = {}
        self.images = {PAUSE, "busybox"}
        self.pull_events: list[dict[str, Any]] = [{"status": "Downloaded"}]
        self.exec_delay = 0.0
        self.exec_exit = 0
        self.exec_exit_lag = 0
        self.exec_process: subprocess.Popen[bytes] | None = None
        self._ids = itertools.count(1)
        self._pids = itertools.count(4000)

    # -- containers ---------------------------------------------------------------------------

    def create_host_config(self, **kw: Any) -> dict[str, Any]:
        return {"NetworkMode": kw.get("network_mode", ""), "IpcMode": kw.get("ipc_mode", "")}

    def create_container(
        self, *, image: str, name: str, labels: Mapping[str, str], host_config: Any, **_: Any
    ) -> dict[str, str]:
        if image not in self.images:
            raise docker.errors.ImageNotFound(
                f"No such image: {image}",
                response=FakeResponse(404),
                explanation=f"No such image: {image}",
            )
        cid = f"{next(self._ids):064x}"
        self.containers_[cid] = {
            "Id": cid,
            "Name": "/" + name,
            "Created": "2026-11-25T16:11:24Z",
            "Config": {"Image": image, "Labels": dict(labels)},
            "HostConfig": dict(host_config),
            "State": {"Status": "created", "Running": False, "Pid": 0, "ExitCode": 0},
            "LogPath": "",  # Docker sets it when the container starts
        }
        self.log.append(("create", "/" + name))
        return {"Id": cid}

    def _get(self, cid: str) -> dict[str, Any]:
        if cid not in self.containers_:
            raise not_found(f"No such container: {cid}")
        return self.containers_[cid]

    def start(self, cid: str) -> None:
        c = self._get(cid)
        c["State"].update(Status="running", Running=True, Pid=next(self._pids))
        c["LogPath"] = str(self.tmp / f"{cid}-json.log")
        self.log.append(("start", c["Name"]))

    def stop(self, cid: str, timeout: int) -> None:
        c = self._get(cid)
        c["State"].update(Status="exited", Running=False, Pid=0, ExitCode=137)
        self.log.append(("stop", c["Name"], str(timeout)))

    def inspect_container(self, cid: str) -> dict[str, Any]:
        return self._get(cid)

    def remove_container(self, cid: str, v: bool, force: bool) -> None:
        c = self._get(cid)
        del self.containers_[cid]
        self.log.append(("remove", c["Name"]))

    def containers(self, all: bool, filters: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
        wanted = [f.split("=", 1) for f in filters.get("label", ())]
        found = []
        for c in self.containers_.values():
            labels = c["Config"]["Labels"]
            if all and all_match(labels, wanted):
                found.append(
                    {
                        "Id": c["Id"],
                        "Names": [c["Name"]],
                        "Image": c["Config"]["Image"],
                        "State": c["State"]["Status"],
                        "Created": 1795623084,
                        "Labels": labels,
                        "HostConfig": {"NetworkMode": c["HostConfig"]["NetworkMode"]},
                    }
                )
        return found

    # -- exec, images, version ------------------------------------------------------------------

    def exec_create(self, cid: str, cmd: list[str]) -> dict[str, str]:
        self._get(cid)
        self.log.append(("exec", *cmd))
        return {"Id": "exec1"}

    def exec_start(self, exec_id: str, demux: bool) -> tuple[bytes, bytes]:
        if self.exec_process is not None:  # the stream ends when the process does
            self.exec_process.wait()
            return b"", b""
        time.sleep(self.exec_delay)
        return b"out", b"err"

    def exec_inspect(self, exec_id: str) -> dict[str, Any]:
        proc = self.exec_process
        if proc is not None:
            running = proc.poll() is None
            return {"ExitCode": None if running else 137, "Running": running, "Pid": proc.pid}
        if self.exec_exit_lag > 0:  # Docker has not recorded the exit yet
            self.exec_exit_lag -= 1
            return {"ExitCode": None, "Running": True, "Pid": 4242}
        return {"ExitCode": self.exec_exit, "Running": False, "Pid": 0}

    def inspect_image(self, image: str) -> dict[str, Any]:
        if image not in self.images:
            raise not_found(f"No such image: {image}")
        return {"Id": "sha256:1"}

    def pull(
        self, image: str, stream: bool, decode: bool, auth_config: dict[str, str] | None
    ) -> Iterator[dict[str, Any]]:
        self.log.append(("pull", image, *(auth_config or {}).values()))
        yield from self.pull_events
        self.images.add(image)

    def version(self) -> dict[str, str]:
        return {"Version": "20.10.24", "ApiVersion": "1.41"}

    def close(self) -> None:
        pass


def all_match(labels: Mapping[str, str], wanted: list[list[str]]) -> bool:
    return all(labels.get(k) == v for k, v in wanted)


class FakeNetwork:
    def __init__(self, log: list[tuple[str, ...]]) -> None:
        self.log = log
        self.ips: dict[str, str] = {}
        self.fail_add: Exception | None = None
        self.calls: list[dict[str, Any]] = []

    async def add(
        self,
        container_id: str,
        netns: str,
        *,
        cni_args: Sequence[tuple[str, str]],
        capability_args: Mapping[str, Any],
    ) -> str:
        self.log.append(("net-add", netns))
        self.calls.append({"cni_args": list(cni_args), "capability_args": dict(capability_args)})
        if self.fail_add is not None:
            raise self.fail_add
        self.ips[container_id] = "10.244.1.7"
        return "10.244.1.7"

    async def delete(self, container_id: str, netns: str) -> None:
        self.log.append(("net-del", netns))
        self.ips.pop(container_id, None)

    def address(self, container_id: str) -> str | None:
        return self.ips.get(container_id)

    def problem(self) -> str:
        return ""

    def recorded(self) -> list[str]:
        return list(self.ips)


@pytest.fixture
def log() -> list[tuple[str, ...]]:
    return []


@pytest.fixture
def engine(
    log: list[tuple[str, ...]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> FakeEngine:
    fake = FakeEngine(log, tmp_path)
    monkeypatch.setattr(docker, "APIClient", lambda **_: fake)
    return fake


@pytest.fixture
def network(log: list[tuple[str, ...]]) -> FakeNetwork:
    return FakeNetwork(log)


@pytest.fixture
async def runtime(engine: FakeEngine, network: FakeNetwork) -> dockerrt.DockerRuntime:
    return dockerrt.DockerRuntime("/run/fake.sock", network=network, pause_image=PAUSE)


def sandbox_config(tmp_path: Path, **kw: Any) -> base.SandboxConfig:
    fields: dict[str, Any] = {
        "name": "web",
        "namespace": "default",
        "uid": PodUID("u1"),
        "attempt": 0,
        "hostname": "web",
        "log_directory": str(tmp_path / "pods" / "default_web_u1"),
    }
    return base.SandboxConfig(**{**fields, **kw})


def container_config(**kw: Any) -> base.ContainerConfig:
    fields: dict[str, Any] = {
        "name": "main",
        "attempt": 0,
        "image": "busybox",
        "log_path": "m/0.log",
    }
    return base.ContainerConfig(**{**fields, **kw})


async def test_run_sandbox_attaches_the_pause_netns(
    runtime: dockerrt.DockerRuntime,
    network: FakeNetwork,
    log: list[tuple[str, ...]],
    tmp_path: Path,
) -> None:
    ports = (base.PortMapping(container_port=80, host_port=8080),)
    sid = await runtime.run_sandbox(sandbox_config(tmp_path, port_mappings=ports))
    assert log == [
        ("create", "/k8s_POD_web_default_u1_0"),
        ("start", "/k8s_POD_web_default_u1_0"),
        ("net-add", "/proc/4000/ns/net"),
    ]
    [call] = network.calls
    assert ("K8S_POD_INFRA_CONTAINER_ID", sid) in call["cni_args"]
    assert call["capability_args"] == {
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}]
    }
    status = await runtime.sandbox_status(sid)
    assert (status.state, status.ip) == (base.SandboxState.READY, "10.244.1.7")
    [listed] = await runtime.list_sandboxes()
    assert (listed.id, listed.state) == (sid, base.SandboxState.READY)


async def test_a_sandbox_without_a_completed_attachment_is_not_ready(
    runtime: dockerrt.DockerRuntime, network: FakeNetwork, tmp_path: Path
) -> None:
    sid = await runtime.run_sandbox(sandbox_config(tmp_path))
    network.ips.clear()  # as if the agent died between starting the pause and ADD
    [listed] = await runtime.list_sandboxes()
    assert listed.state is base.SandboxState.NOTREADY
    assert (await runtime.sandbox_status(sid)).ip == ""


async def test_a_full_relist_frees_the_network_of_sandboxes_removed_behind_our_back(
    runtime: dockerrt.DockerRuntime,
    engine: FakeEngine,
    network: FakeNetwork,
    log: list[tuple[str, ...]],
    tmp_path: Path,
) -> None:
    kept = await runtime.run_sandbox(sandbox_config(tmp_path))
    gone = await runtime.run_sandbox(sandbox_config(tmp_path, name="gone", uid=PodUID("u2")))
    engine.remove_container(gone, v=True, force=True)  # docker rm -f by an operator
    log.clear()
    assert [s.id for s in await runtime.list_sandboxes(PodUID("u1"))] == [kept]
    assert log == []  # a one-pod list sees too little to judge
    assert [s.id for s in await runtime.list_sandboxes()] == [kept]
    assert log == [("net-del", "")]
    assert set(network.ips) == {kept}


async def test_failed_network_setup_leaves_nothing(
    runtime: dockerrt.DockerRuntime,
    engine: FakeEngine,
    network: FakeNetwork,
    log: list[tuple[str, ...]],
    tmp_path: Path,
) -> None:
    network.fail_add = RuntimeError("plugin bridge: no IP addresses available")
    with pytest.raises(base.RuntimeFailure, match="no IP addresses available"):
        await runtime.run_sandbox(sandbox_config(tmp_path))
    assert log[-2:] == [("net-del", "/proc/4000/ns/net"), ("remove", "/k8s_POD_web_default_u1_0")]
    assert engine.containers_ == {}


async def test_host_network_sandbox_runs_no_cni(
    runtime: dockerrt.DockerRuntime, log: list[tuple[str, ...]], tmp_path: Path
) -> None:
    sid = await runtime.run_sandbox(sandbox_config(tmp_path, host_network=True))
    status = await runtime.sandbox_status(sid)
    assert (status.state, status.ip) == (base.SandboxState.READY, "")
    await runtime.stop_sandbox(sid)
    await runtime.remove_sandbox(sid)
    assert not [entry for entry in log if entry[0].startswith("net-")]


async def test_missing_pause_image_is_pulled_and_pull_errors_are_pull_failures(
    runtime: dockerrt.DockerRuntime, engine: FakeEngine, log: list[tuple[str, ...]], tmp_path: Path
) -> None:
    engine.images.discard(PAUSE)
    await runtime.run_sandbox(sandbox_config(tmp_path))
    assert log[0] == ("pull", PAUSE)
    engine.pull_events = [{"status": "Pulling"}, {"error": "manifest unknown"}]
    with pytest.raises(base.ImagePullFailed, match="PullImage: manifest unknown"):
        await runtime.pull_image("example.invalid/nope:1")


async def test_a_pull_hands_its_credentials_to_docker_as_auth_config(
    runtime: dockerrt.DockerRuntime, log: list[tuple[str, ...]]
) -> None:
    auth = base.RegistryAuth(username="alice", password="pw", server_address="reg.io")
    await runtime.pull_image("reg.io/app:1", auth)
    assert ("pull", "reg.io/app:1", "alice", "pw") in log


async def test_stop_sandbox_kills_members_then_detaches_then_stops_the_pause(
    runtime: dockerrt.DockerRuntime, log: list[tuple[str, ...]], tmp_path: Path
) -> None:
    sandbox = sandbox_config(tmp_path)
    sid = await runtime.run_sandbox(sandbox)
    cid = await runtime.create_container(sid, container_config(), sandbox)
    await runtime.start_container(cid)
    log.clear()
    await runtime.stop_sandbox(sid)
    assert log == [
        ("stop", "/k8s_main_web_default_u1_0", "0"),
        ("net-del", "/proc/4000/ns/net"),
        ("stop", "/k8s_POD_web_default_u1_0", str(dockerrt.SANDBOX_STOP_GRACE_S)),
    ]
    assert (await runtime.sandbox_status(sid)).state is base.SandboxState.NOTREADY


async def test_remove_sandbox_removes_members_and_is_idempotent(
    runtime: dockerrt.DockerRuntime, engine: FakeEngine, log: list[tuple[str, ...]], tmp_path: Path
) -> None:
    sandbox = sandbox_config(tmp_path)
    sid = await runtime.run_sandbox(sandbox)
    await runtime.create_container(sid, container_config(), sandbox)
    log.clear()
    await runtime.remove_sandbox(sid)
    assert log == [
        ("remove", "/k8s_main_web_default_u1_0"),
        ("net-del", "/proc/4000/ns/net"),
        ("remove", "/k8s_POD_web_default_u1_0"),
    ]
    assert engine.containers_ == {}
    await runtime.remove_sandbox(sid)  # gone already: fine, as containerd's
    await runtime.remove_container(base.ContainerID("f" * 64))
    with pytest.raises(base.NotFound):
        await runtime.stop_sandbox(sid)
    with pytest.raises(base.NotFound):
        await runtime.container_status(base.ContainerID("f" * 64))


async def test_container_joins_the_sandbox_and_links_its_log(
    runtime: dockerrt.DockerRuntime, engine: FakeEngine, tmp_path: Path
) -> None:
    sandbox = sandbox_config(tmp_path)
    sid = await runtime.run_sandbox(sandbox)
    cid = await runtime.create_container(sid, container_config(), sandbox)
    data = engine.containers_[cid]
    assert data["HostConfig"] == {"NetworkMode": f"container:{sid}", "IpcMode": f"container:{sid}"}
    [info] = await runtime.list_containers(PodUID("u1"))
    assert (info.id, info.sandbox_id, info.state) == (cid, sid, base.ContainerState.CREATED)
    link = Path(sandbox.log_directory) / "m" / "0.log"
    await runtime.start_container(cid)
    assert os.readlink(link) == data["LogPath"]
    assert await runtime.list_containers(PodUID("other")) == []
    await runtime.remove_container(cid)
    assert not link.is_symlink()


async def test_create_with_an_absent_image_is_not_found(
    runtime: dockerrt.DockerRuntime, tmp_path: Path
) -> None:
    sandbox = sandbox_config(tmp_path)
    sid = await runtime.run_sandbox(sandbox)
    with pytest.raises(base.NotFound, match="CreateContainer: No such image: nope"):
        await runtime.create_container(sid, container_config(image="nope"), sandbox)


async def test_exec_reports_exit_code_and_output(
    runtime: dockerrt.DockerRuntime, engine: FakeEngine, tmp_path: Path
) -> None:
    sandbox = sandbox_config(tmp_path)
    sid = await runtime.run_sandbox(sandbox)
    cid = await runtime.create_container(sid, container_config(), sandbox)
    engine.exec_exit = 3
    result = await runtime.exec_sync(cid, ["sh", "-c", "exit 3"], 5)
    assert result == base.ExecResult(exit_code=3, stdout=b"out", stderr=b"err")


async def test_exec_waits_for_docker_to_record_the_exit(
    runtime: dockerrt.DockerRuntime, engine: FakeEngine, tmp_path: Path
) -> None:
    sandbox = sandbox_config(tmp_path)
    sid = await runtime.run_sandbox(sandbox)
    cid = await runtime.create_container(sid, container_config(), sandbox)
    engine.exec_exit, engine.exec_exit_lag = 1, 3
    assert (await runtime.exec_sync(cid, ["false"], 5)).exit_code == 1  # never a false 0


async def test_exec_of_a_command_that_cannot_start_is_an_error(
    runtime: dockerrt.DockerRuntime,
    engine: FakeEngine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sandbox = sandbox_config(tmp_path)
    sid = await runtime.run_sandbox(sandbox)
    cid = await runtime.create_container(sid, container_config(), sandbox)
    message = b'OCI runtime exec failed: exec failed: exec: "/nope": stat /nope: no such file\r\n'
    monkeypatch.setattr(engine, "exec_start", lambda exec_id, demux: (message, None))
    engine.exec_exit = 126
    with pytest.raises(base.RuntimeFailure, match=r'ExecSync: OCI runtime exec failed: .*"/nope"'):
        await runtime.exec_sync(cid, ["/nope"], 5)


@pytest.fixture
def process_tree() -> Iterator[tuple[subprocess.Popen[bytes], list[int]]]:
    """A shell with a child of its own (which would keep an exec's output open if only the
    shell were killed), and the pids of both."""
    proc = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60; wait"])
    try:
        children = wait_for(lambda: psutil.Process(proc.pid).children(), 5)
        yield proc, [proc.pid, *(c.pid for c in children)]
    finally:
        proc.kill()
        proc.wait()


def gone(pids: list[int]) -> bool:
    def dead(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    return all(dead(p) for p in pids)


async def test_exec_past_its_timeout_is_killed_with_its_children_and_reports_124(
    runtime: dockerrt.DockerRuntime,
    engine: FakeEngine,
    tmp_path: Path,
    process_tree: tuple[subprocess.Popen[bytes], list[int]],
) -> None:
    sandbox = sandbox_config(tmp_path)
    sid = await runtime.run_sandbox(sandbox)
    cid = await runtime.create_container(sid, container_config(), sandbox)
    engine.exec_process, family = process_tree  # what the exec runs, as Docker reports it
    started = time.monotonic()
    result = await runtime.exec_sync(cid, ["sleep", "100"], 0.2)  # rounded up to 1 s
    assert 0.9 < time.monotonic() - started < 5
    assert result == base.ExecResult(124, b"", b"command timed out after 1s")
    assert wait_for(lambda: gone(family), 5)


async def test_image_present_and_version(runtime: dockerrt.DockerRuntime) -> None:
    assert await runtime.image_present("busybox")
    assert not await runtime.image_present("nope:1")
    version = await runtime.version()
    assert (version.name, version.version, version.api_version) == ("docker", "20.10.24", "1.41")


async def test_list_shows_only_our_objects(
    runtime: dockerrt.DockerRuntime, engine: FakeEngine
) -> None:
    engine.containers_["other"] = {
        "Id": "other",
        "Name": "/nginx",
        "Config": {"Image": "nginx", "Labels": {"app": "nginx"}},
        "HostConfig": {"NetworkMode": "bridge"},
        "State": {"Status": "running"},
    }
    assert await runtime.list_sandboxes() == []
    assert await runtime.list_containers() == []


# --- a daemon that is not there, or does not answer ---------------------------------------------


async def test_no_daemon_is_unavailable(tmp_path: Path) -> None:
    rt = dockerrt.DockerRuntime(str(tmp_path / "none.sock"), network=FakeNetwork([]))
    try:
        with pytest.raises(base.RuntimeUnavailable, match="Version"):
            await rt.version()
    finally:
        await rt.close()


async def test_hung_daemon_is_unavailable_within_the_timeout(tmp_path: Path) -> None:
    path = str(tmp_path / "hung.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)  # accepts connections (the kernel does) and never answers
    rt = dockerrt.DockerRuntime(path, network=FakeNetwork([]), timeout_s=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(base.RuntimeUnavailable, match="ListSandboxes"):
            await rt.list_sandboxes()
        assert time.monotonic() - started < 5
    finally:
        await rt.close()
        server.close()


async def test_calls_do_not_block_the_event_loop(
    runtime: dockerrt.DockerRuntime, engine: FakeEngine, tmp_path: Path
) -> None:
    sandbox = sandbox_config(tmp_path)
    sid = await runtime.run_sandbox(sandbox)
    cid = await runtime.create_container(sid, container_config(), sandbox)
    engine.exec_delay = 0.3
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    await asyncio.gather(*(runtime.exec_sync(cid, ["true"], 5) for _ in range(4)))
    ticker.cancel()
    assert ticks > 3  # a blocked loop would not tick at all


def test_labels_on_created_objects_match_convert(engine: FakeEngine, tmp_path: Path) -> None:
    # A guard for the fake itself: it stores exactly what the backend asked for.
    labels = convert.sandbox_labels(sandbox_config(tmp_path))
    engine.create_container(
        image=PAUSE, name="k8s_POD_web_default_u1_0", labels=labels, host_config={}
    )
    [created] = engine.containers_.values()
    assert created["Config"]["Labels"] == labels
