"""docker_convert: names, labels, create requests, Docker states, times and error translation."""

from __future__ import annotations

from typing import Any

import docker.errors
import pytest
import requests

from nodeagent.model.pod import PodUID
from nodeagent.runtime import base
from nodeagent.runtime import docker_convert as convert
from nodeagent.runtime import docker_read as read

SANDBOX_ID = base.SandboxID("s" * 64)


def sandbox_config(**kw: Any) -> base.SandboxConfig:
    defaults: dict[str, Any] = {
        "name": "web",
        "namespace": "default",
        "uid": PodUID("0f3c-uid"),
        "attempt": 2,
        "hostname": "web",
        "log_directory": "/var/log/pods/default_web_0f3c-uid",
    }
    return base.SandboxConfig(**{**defaults, **kw})


def container_config(**kw: Any) -> base.ContainerConfig:
    defaults: dict[str, Any] = {
        "name": "main",
        "attempt": 3,
        "image": "busybox",
        "log_path": "main/3.log",
    }
    return base.ContainerConfig(**{**defaults, **kw})


# --- names ---------------------------------------------------------------------------------


def test_names_follow_dockershim() -> None:
    assert convert.sandbox_name(sandbox_config()) == "k8s_POD_web_default_0f3c-uid_2"
    name = convert.container_name(container_config(), sandbox_config())
    assert name == "k8s_main_web_default_0f3c-uid_3"


def test_names_parse_back() -> None:
    parsed = convert.parse_name("/k8s_main_web.v2_kube-system_0f3c-uid_3")
    assert parsed == convert.ParsedName("main", "web.v2", "kube-system", "0f3c-uid", 3)
    assert convert.parse_name("k8s_POD_web_default_u_0") == convert.ParsedName(
        "POD", "web", "default", "u", 0
    )
    # dockershim's random suffix after a name conflict
    assert convert.parse_name("k8s_main_web_default_u_1_9f2a").attempt == 1  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "name",
    ["", "/nginx", "k8s_main_web_default_u", "k8s_main_web_default_u_x", "k9_a_b_c_d_1", "k8s_a_b"],
)
def test_foreign_names_do_not_parse(name: str) -> None:
    assert convert.parse_name(name) is None


@pytest.mark.parametrize("bad", ["we_b", "", "-web", "web/x", "wéb"])
def test_names_refuse_parts_that_would_not_parse_back(bad: str) -> None:
    with pytest.raises(base.InvalidInput, match="Docker container name"):
        convert.sandbox_name(sandbox_config(name=bad))


# --- labels --------------------------------------------------------------------------------------


def test_our_labels_win_over_the_pods() -> None:
    config = sandbox_config(
        labels={base.LABEL_POD_UID: "forged", base.LABEL_MANAGED_BY: "x", "app": "web"},
        annotations={"note": "hi"},
    )
    labels = convert.sandbox_labels(config)
    assert labels[base.LABEL_POD_UID] == "0f3c-uid"
    assert labels[base.LABEL_MANAGED_BY] == "true"
    assert labels[convert.LABEL_TYPE] == "podsandbox"
    assert labels["app"] == "web"
    assert labels["annotation.note"] == "hi"


def test_container_labels_carry_pod_container_and_sandbox() -> None:
    config = container_config(labels={base.LABEL_SANDBOX_ID: "forged"})
    labels = convert.container_labels(SANDBOX_ID, config, sandbox_config(), log_path="/l/0.log")
    assert labels == {
        base.LABEL_POD_NAME: "web",
        base.LABEL_POD_NAMESPACE: "default",
        base.LABEL_POD_UID: "0f3c-uid",
        base.LABEL_CONTAINER_NAME: "main",
        base.LABEL_MANAGED_BY: "true",
        base.LABEL_SANDBOX_ID: SANDBOX_ID,
        convert.LABEL_TYPE: "container",
        convert.LABEL_LOG_PATH: "/l/0.log",
    }


def test_bookkeeping_labels_do_not_cross_the_seam() -> None:
    labels = convert.container_labels(
        SANDBOX_ID,
        container_config(annotations={"io.kubernetes.container.restartCount": "3"}),
        sandbox_config(),
        log_path="/l",
    )
    visible = convert.visible_labels(labels)
    # The same keys the CRI backend reports for a container.
    assert set(visible) == {
        base.LABEL_POD_NAME,
        base.LABEL_POD_NAMESPACE,
        base.LABEL_POD_UID,
        base.LABEL_CONTAINER_NAME,
        base.LABEL_MANAGED_BY,
        base.LABEL_SANDBOX_ID,
    }
    assert convert.visible_labels(None) == {}


def test_list_filters() -> None:
    assert convert.list_filters("podsandbox", None) == {
        "label": ["io.nodeagent.managed=true", "io.kubernetes.docker.type=podsandbox"]
    }
    uid_filter = convert.list_filters("container", PodUID("u1"))["label"]
    assert uid_filter[-1] == "io.kubernetes.pod.uid=u1"


# --- create requests -------------------------------------------------------------------------


def test_sandbox_spec_has_no_network_and_a_shareable_ipc() -> None:
    spec = convert.sandbox_spec(sandbox_config(), image="registry.k8s.io/pause:3.6", ipv6=False)
    assert spec.host == {"network_mode": "none", "ipc_mode": "shareable"}
    assert spec.container["image"] == "registry.k8s.io/pause:3.6"
    assert spec.container["name"] == "k8s_POD_web_default_0f3c-uid_2"
    assert spec.container["hostname"] == "web"


def test_host_network_sandbox_has_no_hostname() -> None:
    spec = convert.sandbox_spec(sandbox_config(host_network=True), image="p")
    assert spec.host["network_mode"] == "host"
    assert "hostname" not in spec.container
    assert "sysctls" not in spec.host  # the node's own namespace is not ours to tune


def test_sandbox_keeps_ipv6_enabled_like_containerd() -> None:
    spec = convert.sandbox_spec(sandbox_config(), image="p")
    assert spec.host["sysctls"] == {
        "net.ipv6.conf.all.disable_ipv6": "0",
        "net.ipv6.conf.default.disable_ipv6": "0",
    }


def test_sandbox_dns() -> None:
    dns = base.DNSConfig(servers=("10.96.0.10",), searches=("svc.local",), options=("ndots:5",))
    spec = convert.sandbox_spec(sandbox_config(dns=dns), image="p")
    assert spec.host["dns"] == ["10.96.0.10"]
    assert spec.host["dns_search"] == ["svc.local"]
    assert spec.host["dns_opt"] == ["ndots:5"]


def test_container_spec_joins_the_sandbox() -> None:
    config = container_config(
        command=("sh", "-c"),
        args=("echo hi",),
        env=(("A", "1"), ("B", "x=y")),
        working_dir="/w",
        mounts=(base.Mount("/host/a", "/a", readonly=True), base.Mount("/host/b", "/b")),
        resources=base.Resources(
            cpu_period=100_000, cpu_quota=50_000, cpu_shares=512, memory_limit_bytes=20 << 20
        ),
        tty=True,
    )
    spec = convert.container_spec(SANDBOX_ID, config, sandbox_config(), log_path="/l")
    assert spec.container["name"] == "k8s_main_web_default_0f3c-uid_3"
    assert spec.container["entrypoint"] == ["sh", "-c"]
    assert spec.container["command"] == ["echo hi"]
    assert spec.container["environment"] == ["A=1", "B=x=y"]
    assert spec.container["working_dir"] == "/w"
    assert spec.container["tty"] is True
    assert spec.container["stdin_open"] is False
    assert spec.host["network_mode"] == f"container:{SANDBOX_ID}"
    assert spec.host["ipc_mode"] == f"container:{SANDBOX_ID}"
    assert "pid_mode" not in spec.host  # PID per container, as the CRI backend asks
    assert spec.host["mounts"] == [
        {"Type": "bind", "Source": "/host/a", "Target": "/a", "ReadOnly": True},
        {"Type": "bind", "Source": "/host/b", "Target": "/b", "ReadOnly": False},
    ]
    assert spec.host["cpu_period"] == 100_000
    assert spec.host["cpu_quota"] == 50_000
    assert spec.host["cpu_shares"] == 512
    assert spec.host["mem_limit"] == spec.host["memswap_limit"] == 20 << 20


def test_container_spec_asks_docker_to_rotate_its_log() -> None:
    rotation = convert.LogRotation(max_bytes=10 * 2**20, max_files=5)
    spec = convert.container_spec(
        SANDBOX_ID, container_config(), sandbox_config(), log_rotation=rotation
    )
    assert spec.host["log_config"] == {
        "Type": "json-file",
        "Config": {"max-size": "10485760", "max-file": "5"},
    }
    assert (
        "log_config"
        not in convert.container_spec(SANDBOX_ID, container_config(), sandbox_config()).host
    )


def test_container_spec_keeps_image_defaults_when_unset() -> None:
    spec = convert.container_spec(SANDBOX_ID, container_config(), sandbox_config())
    assert spec.container["entrypoint"] is None
    assert spec.container["command"] is None
    assert spec.container["working_dir"] is None
    assert convert.resource_args(base.Resources()) == {}


def test_container_of_a_host_network_pod_uses_the_host_network() -> None:
    spec = convert.container_spec(SANDBOX_ID, container_config(), sandbox_config(host_network=True))
    assert spec.host["network_mode"] == "host"
    assert spec.host["ipc_mode"] == f"container:{SANDBOX_ID}"


def test_cni_port_mappings_and_args() -> None:
    config = sandbox_config(
        port_mappings=(
            base.PortMapping(container_port=80, host_port=8080, protocol="TCP"),
            base.PortMapping(container_port=53, host_port=5353, protocol="UDP", host_ip="1.2.3.4"),
            base.PortMapping(container_port=9, host_port=0),
        )
    )
    assert convert.cni_port_mappings(config) == [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""},
        {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "1.2.3.4"},
    ]
    assert dict(convert.cni_args(config, "sid")) == {
        "K8S_POD_NAMESPACE": "default",
        "K8S_POD_NAME": "web",
        "K8S_POD_INFRA_CONTAINER_ID": "sid",
        "K8S_POD_UID": "0f3c-uid",
    }


# --- times ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2026-11-25T16:11:24.240685171Z", 1795623084_240685171),
        ("2026-11-25T16:11:24.5Z", 1795623084_500000000),
        ("2026-11-25T16:11:24Z", 1795623084_000000000),
        ("2026-11-25T17:11:24.000000001+01:00", 1795623084_000000001),
        ("0001-01-01T00:00:00Z", 0),
        ("", 0),
        (None, 0),
        ("yesterday", 0),
    ],
)
def test_parse_time_ns(text: str | None, ns: int) -> None:
    assert read.parse_time_ns(text) == ns


# --- responses -----------------------------------------------------------------------------------


def inspect(status: str, **state: Any) -> dict[str, Any]:
    labels = convert.container_labels(
        SANDBOX_ID, container_config(), sandbox_config(), log_path="/l"
    )
    return {
        "Id": "c" * 64,
        "Name": "/k8s_main_web_default_0f3c-uid_3",
        "Created": "2026-11-25T16:11:24.1Z",
        "Image": "sha256:" + "d" * 64,
        "Config": {"Image": "busybox", "Labels": labels},
        "HostConfig": {
            "NetworkMode": f"container:{SANDBOX_ID}",
            "IpcMode": f"container:{SANDBOX_ID}",
        },
        "State": {
            "Status": status,
            "ExitCode": 0,
            "Error": "",
            "OOMKilled": False,
            "StartedAt": "2026-11-25T16:11:25Z",
            "FinishedAt": "0001-01-01T00:00:00Z",
            **state,
        },
    }


def test_running_container() -> None:
    info = read.container_from_inspect(inspect("running"))
    assert info.state is base.ContainerState.RUNNING
    assert (info.name, info.attempt, info.uid, info.sandbox_id) == (
        "main",
        3,
        "0f3c-uid",
        SANDBOX_ID,
    )
    assert info.image == "docker.io/library/busybox:latest"  # as containerd reports it
    assert info.image_ref == "sha256:" + "d" * 64
    assert info.created_at_ns == 1795623084_100000000
    assert info.started_at_ns == 1795623085_000000000
    assert info.finished_at_ns == 0
    assert (info.exit_code, info.reason) == (0, "")
    assert info.detailed
    assert convert.LABEL_LOG_PATH not in info.labels


@pytest.mark.parametrize(
    ("state", "code", "reason"),
    [
        ({"ExitCode": 0}, 0, "Completed"),
        ({"ExitCode": 3}, 3, "Error"),
        ({"ExitCode": 137}, 137, "Error"),
        ({"ExitCode": 137, "OOMKilled": True}, 137, "OOMKilled"),
    ],
)
def test_exited_container(state: dict[str, Any], code: int, reason: str) -> None:
    info = read.container_from_inspect(
        inspect("exited", FinishedAt="2026-11-25T16:11:26Z", **state)
    )
    assert info.state is base.ContainerState.EXITED
    assert (info.exit_code, info.reason) == (code, reason)
    assert info.finished_at_ns == 1795623086_000000000


def test_failed_start_is_exited_the_containerd_way() -> None:
    error = 'exec: "/no/such": stat /no/such: no such file or directory: unknown'
    info = read.container_from_inspect(inspect("created", ExitCode=127, Error=error))
    assert info.state is base.ContainerState.EXITED
    assert (info.exit_code, info.reason) == (128, "StartError")
    assert info.message == error
    assert info.finished_at_ns == info.created_at_ns  # Docker keeps no time for the failure


@pytest.mark.parametrize(
    ("code", "output", "failure"),
    [
        (126, b'OCI runtime exec failed: exec: "/x": permission denied\r\n', True),
        (127, b'OCI runtime exec failed: exec: "/x": no such file\r\n', True),
        (126, b"sh: can't execute\n", False),
        (1, b"OCI runtime exec failed: printed by the command itself", False),
    ],
)
def test_exec_start_failure(code: int, output: bytes, failure: bool) -> None:
    found = read.exec_start_failure(base.ExecResult(code, output, b""))
    assert bool(found) is failure
    if failure:
        assert found.startswith("OCI runtime exec failed") and not found.endswith("\n")


def test_created_container() -> None:
    info = read.container_from_inspect(inspect("created", StartedAt="0001-01-01T00:00:00Z"))
    assert info.state is base.ContainerState.CREATED
    assert (info.exit_code, info.reason, info.started_at_ns) == (0, "", 0)


def test_sandbox_id_falls_back_to_the_ipc_mode() -> None:
    data = inspect("running")
    del data["Config"]["Labels"][base.LABEL_SANDBOX_ID]
    assert read.container_from_inspect(data).sandbox_id == SANDBOX_ID


def summary(state: str, name: str, labels: dict[str, str], mode: str = "none") -> dict[str, Any]:
    return {
        "Id": "x" * 64,
        "Names": [name],
        "Image": "busybox",
        "State": state,
        "Created": 1795623084,
        "Labels": labels,
        "HostConfig": {"NetworkMode": mode},
    }


@pytest.mark.parametrize(
    ("state", "want"),
    [
        ("created", base.ContainerState.CREATED),
        ("running", base.ContainerState.RUNNING),
        ("paused", base.ContainerState.RUNNING),
        ("restarting", base.ContainerState.RUNNING),
        ("removing", base.ContainerState.EXITED),
        ("exited", base.ContainerState.EXITED),
        ("dead", base.ContainerState.EXITED),
        ("weird", base.ContainerState.UNKNOWN),
    ],
)
def test_container_summary_states(state: str, want: base.ContainerState) -> None:
    labels = convert.container_labels(SANDBOX_ID, container_config(), sandbox_config())
    info = read.container_from_summary(summary(state, "/k8s_main_web_default_0f3c-uid_3", labels))
    assert info.state is want
    assert (info.name, info.attempt, info.sandbox_id) == ("main", 3, SANDBOX_ID)
    assert info.image == "docker.io/library/busybox:latest"
    assert info.created_at_ns == 1795623084 * 10**9
    assert not info.detailed
    assert convert.LABEL_TYPE not in info.labels


@pytest.mark.parametrize(
    ("state", "network_ready", "want"),
    [
        ("running", True, base.SandboxState.READY),
        ("running", False, base.SandboxState.NOTREADY),  # attachment never completed
        ("exited", True, base.SandboxState.NOTREADY),
    ],
)
def test_sandbox_summary(state: str, network_ready: bool, want: base.SandboxState) -> None:
    labels = convert.sandbox_labels(sandbox_config(annotations={"a": "b"}))
    item = summary(state, "/k8s_POD_web_default_0f3c-uid_2", labels)
    info = read.sandbox_from_summary(item, network_ready=network_ready)
    assert info.state is want
    assert (info.name, info.namespace, info.uid, info.attempt) == ("web", "default", "0f3c-uid", 2)
    assert info.ip == ""
    assert set(info.labels) == {
        base.LABEL_POD_NAME,
        base.LABEL_POD_NAMESPACE,
        base.LABEL_POD_UID,
        base.LABEL_MANAGED_BY,
    }
    assert not read.summary_is_host_network(item)
    assert read.summary_is_host_network(summary(state, "/n", {}, mode="host"))


def test_sandbox_inspect_reports_the_ip_only_while_ready() -> None:
    data = inspect("running", Running=True)
    data["Name"] = "/k8s_POD_web_default_0f3c-uid_2"
    ready = read.sandbox_from_inspect(data, network_ready=True, ip="10.244.1.5")
    assert (ready.state, ready.ip, ready.attempt) == (base.SandboxState.READY, "10.244.1.5", 2)
    data["State"]["Running"] = False
    stopped = read.sandbox_from_inspect(data, network_ready=True, ip="10.244.1.5")
    assert (stopped.state, stopped.ip) == (base.SandboxState.NOTREADY, "")


# --- errors --------------------------------------------------------------------------------------


class FakeResponse:
    def __init__(self, status: int, reason: str = "") -> None:
        self.status_code = status
        self.reason = reason
        self.url = "http+docker://localhost/v1.41/x"

    def json(self) -> Any:
        raise ValueError


def api_error(cls: type[docker.errors.APIError], status: int, text: str) -> docker.errors.APIError:
    return cls("x", response=FakeResponse(status), explanation=text)


@pytest.mark.parametrize(
    ("exc", "want"),
    [
        (api_error(docker.errors.NotFound, 404, "No such container: c"), base.NotFound),
        (api_error(docker.errors.ImageNotFound, 404, "No such image: i"), base.NotFound),
        (api_error(docker.errors.APIError, 409, "name in use"), base.InvalidInput),
        (api_error(docker.errors.APIError, 400, "invalid reference"), base.InvalidInput),
        (api_error(docker.errors.APIError, 500, "OCI runtime create failed"), base.RuntimeFailure),
        (requests.exceptions.ConnectionError("refused"), base.RuntimeUnavailable),
        (requests.exceptions.ReadTimeout("slow"), base.RuntimeUnavailable),
        (FileNotFoundError(2, "no socket"), base.RuntimeUnavailable),
        (docker.errors.DockerException("odd"), base.RuntimeFailure),
    ],
)
def test_translate_error(exc: BaseException, want: type[base.RuntimeFailure]) -> None:
    err = convert.translate_error(exc, "StartContainer")
    assert type(err) is want
    assert str(err).startswith("StartContainer: ")


def test_translate_error_keeps_dockers_message() -> None:
    err = convert.translate_error(
        api_error(docker.errors.NotFound, 404, "No such container: c1"), "InspectContainer"
    )
    assert str(err) == "InspectContainer: No such container: c1"


@pytest.mark.parametrize(
    ("exc", "want"),
    [
        (api_error(docker.errors.NotFound, 404, "not found"), base.ImagePullFailed),
        (api_error(docker.errors.APIError, 500, "dial tcp: lookup"), base.ImagePullFailed),
        (docker.errors.DockerException("odd"), base.ImagePullFailed),
        (requests.exceptions.ConnectionError("refused"), base.RuntimeUnavailable),
    ],
)
def test_pull_failures_stay_pull_failures_unless_the_daemon_is_gone(
    exc: BaseException, want: type[base.RuntimeFailure]
) -> None:
    assert type(convert.translate_error(exc, "PullImage", failure=base.ImagePullFailed)) is want


def test_seam_errors_pass_through() -> None:
    original = base.ImagePullFailed("PullImage: manifest unknown")
    assert convert.translate_error(original, "PullImage") is original


@pytest.mark.parametrize(
    ("image", "want"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("registry.k8s.io/pause:3.6", "registry.k8s.io/pause:3.6"),
        ("sha256:" + "d" * 64, "sha256:" + "d" * 64),  # Docker lists an image ID once untagged
        ("Not A Reference", "Not A Reference"),
    ],
)
def test_reported_image(image: str, want: str) -> None:
    assert read.reported_image(image) == want


# --- security and namespaces -----------------------------------------------------------------


def test_container_security_becomes_host_config() -> None:
    security = base.ContainerSecurity(
        run_as_user=1000,
        run_as_group=3000,
        supplemental_groups=(2000,),
        readonly_rootfs=True,
        no_new_privs=True,
        capabilities_add=("NET_ADMIN",),
        capabilities_drop=("NET_RAW",),
        seccomp="RuntimeDefault",
    )
    spec = convert.container_spec(SANDBOX_ID, container_config(security=security), sandbox_config())
    assert spec.container["user"] == "1000:3000"
    assert spec.host["read_only"] is True
    assert spec.host["group_add"] == ["2000"]
    assert spec.host["cap_add"] == ["NET_ADMIN"] and spec.host["cap_drop"] == ["NET_RAW"]
    # RuntimeDefault is Docker's own default profile: nothing to say.
    assert spec.host["security_opt"] == ["no-new-privileges"]
    assert "privileged" not in spec.host


def test_unconfined_seccomp_is_said_unless_privileged() -> None:
    unconfined = base.ContainerSecurity(seccomp="Unconfined")
    spec = convert.container_spec(
        SANDBOX_ID, container_config(security=unconfined), sandbox_config()
    )
    assert spec.host["security_opt"] == ["seccomp=unconfined"]
    assert "user" not in spec.container
    privileged = base.ContainerSecurity(seccomp="Unconfined", privileged=True)
    host = convert.security_args(privileged)
    assert host == {"privileged": True}


@pytest.mark.parametrize(
    ("security", "image_user", "want"),
    [
        (base.ContainerSecurity(), "app", ""),
        (base.ContainerSecurity(run_as_user=0), "", "0"),
        (base.ContainerSecurity(run_as_group=50), "1000:10", "1000:50"),
        (base.ContainerSecurity(run_as_group=50), "", "0:50"),
    ],
)
def test_docker_user(security: base.ContainerSecurity, image_user: str, want: str) -> None:
    assert convert.docker_user(security, image_user) == want


@pytest.mark.parametrize(
    ("flags", "pid", "ipc"),
    [
        ({}, None, f"container:{SANDBOX_ID}"),
        ({"share_pid": True}, f"container:{SANDBOX_ID}", f"container:{SANDBOX_ID}"),
        ({"host_pid": True}, "host", f"container:{SANDBOX_ID}"),
        ({"host_ipc": True}, None, "host"),
    ],
)
def test_container_namespace_modes(flags: dict[str, bool], pid: str | None, ipc: str) -> None:
    spec = convert.container_spec(SANDBOX_ID, container_config(), sandbox_config(**flags))
    assert spec.host.get("pid_mode") == pid
    assert spec.host["ipc_mode"] == ipc


def test_an_ephemeral_container_joins_its_targets_pid_namespace() -> None:
    config = container_config(pid_target="target-id")
    assert convert.container_spec(SANDBOX_ID, config, sandbox_config()).host["pid_mode"] == (
        "container:target-id"
    )
    shared = convert.container_spec(SANDBOX_ID, config, sandbox_config(share_pid=True))
    assert shared.host["pid_mode"] == f"container:{SANDBOX_ID}"


def test_sandbox_host_namespaces_and_sysctls() -> None:
    spec = convert.sandbox_spec(
        sandbox_config(host_pid=True, host_ipc=True, sysctls={"kernel.shm_rmid_forced": "1"}),
        image="pause",
    )
    assert spec.host["pid_mode"] == "host" and spec.host["ipc_mode"] == "host"
    assert spec.host["sysctls"]["kernel.shm_rmid_forced"] == "1"
    assert spec.host["sysctls"]["net.ipv6.conf.all.disable_ipv6"] == "0"
