"""CRI message building and parsing (nodeagent.runtime.cri.convert), and the schema itself."""

from __future__ import annotations

import dataclasses

import pytest

from nodeagent.model.pod import PodUID
from nodeagent.runtime import base
from nodeagent.runtime.cri import api_pb2 as pb
from nodeagent.runtime.cri import convert

SANDBOX = base.SandboxConfig(
    name="web",
    namespace="shop",
    uid=PodUID("uid-1"),
    attempt=2,
    hostname="web",
    log_directory="/var/log/pods/shop_web_uid-1",
    labels={"app": "web", base.LABEL_POD_UID: "spoofed", base.LABEL_MANAGED_BY: "no"},
    annotations={"note": "x"},
    port_mappings=(base.PortMapping(container_port=80, host_port=8080, protocol="udp"),),
    dns=base.DNSConfig(servers=("10.96.0.10",), searches=("svc",), options=("ndots:5",)),
)
CONTAINER = base.ContainerConfig(
    name="app",
    attempt=1,
    image="busybox",
    log_path="app/1.log",
    command=("sh", "-c"),
    args=("echo hi",),
    working_dir="/w",
    env=(("A", "1"), ("B", "2")),
    mounts=(base.Mount(host_path="/h", container_path="/c", readonly=True),),
    labels={"tier": "front"},
    resources=base.Resources(
        cpu_period=100_000, cpu_quota=50_000, cpu_shares=512, memory_limit_bytes=1 << 26
    ),
    tty=True,
)
SANDBOX_ID = base.SandboxID("sb-1")


def test_sandbox_config_carries_our_labels_over_the_pods() -> None:
    msg = convert.sandbox_config_to_pb(SANDBOX)
    assert dict(msg.labels) == {
        "app": "web",
        base.LABEL_POD_NAME: "web",
        base.LABEL_POD_NAMESPACE: "shop",
        base.LABEL_POD_UID: "uid-1",
        base.LABEL_MANAGED_BY: "true",
    }
    assert dict(msg.annotations) == {"note": "x"}


def test_sandbox_config_fields() -> None:
    msg = convert.sandbox_config_to_pb(SANDBOX)
    assert (msg.metadata.name, msg.metadata.namespace, msg.metadata.uid) == ("web", "shop", "uid-1")
    assert msg.metadata.attempt == 2
    assert msg.hostname == "web"
    assert msg.log_directory == "/var/log/pods/shop_web_uid-1"
    assert list(msg.dns_config.servers) == ["10.96.0.10"]
    assert list(msg.dns_config.options) == ["ndots:5"]
    (port,) = msg.port_mappings
    assert (port.protocol, port.container_port, port.host_port) == (pb.UDP, 80, 8080)
    ns = msg.linux.security_context.namespace_options
    assert (ns.network, ns.pid, ns.ipc) == (pb.POD, pb.CONTAINER, pb.POD)


def test_sandbox_without_dns_leaves_it_unset() -> None:
    config = base.SandboxConfig(
        name="a", namespace="b", uid=PodUID("c"), attempt=0, hostname="a", log_directory="/l"
    )
    assert not convert.sandbox_config_to_pb(config).HasField("dns_config")


def test_host_network_uses_the_node_namespace_and_no_hostname() -> None:
    config = base.SandboxConfig(
        name="a",
        namespace="b",
        uid=PodUID("c"),
        attempt=0,
        hostname="a",
        log_directory="/l",
        host_network=True,
    )
    sandbox = convert.sandbox_config_to_pb(config)
    assert sandbox.linux.security_context.namespace_options.network == pb.NODE
    assert sandbox.hostname == ""
    container = convert.container_config_to_pb(SANDBOX_ID, CONTAINER, config)
    assert container.linux.security_context.namespace_options.network == pb.NODE


def test_unknown_port_protocol_is_invalid_input() -> None:
    port = base.PortMapping(container_port=1, host_port=1, protocol="ICMP")
    with pytest.raises(base.InvalidInput):
        convert.port_mapping_to_pb(port)


def test_container_config_fields() -> None:
    msg = convert.container_config_to_pb(SANDBOX_ID, CONTAINER, SANDBOX)
    assert (msg.metadata.name, msg.metadata.attempt) == ("app", 1)
    assert msg.image.image == "busybox"
    assert (list(msg.command), list(msg.args)) == (["sh", "-c"], ["echo hi"])
    assert msg.working_dir == "/w"
    assert [(e.key, e.value) for e in msg.envs] == [("A", "1"), ("B", "2")]
    (mount,) = msg.mounts
    assert (mount.host_path, mount.container_path, mount.readonly) == ("/h", "/c", True)
    assert msg.log_path == "app/1.log"
    assert msg.tty and not msg.stdin
    res = msg.linux.resources
    assert (res.cpu_period, res.cpu_quota, res.cpu_shares) == (100_000, 50_000, 512)
    assert res.memory_limit_in_bytes == 1 << 26
    assert res.oom_score_adj == 0  # unset: the runtime keeps its own


def test_container_labels() -> None:
    msg = convert.container_config_to_pb(SANDBOX_ID, CONTAINER, SANDBOX)
    assert dict(msg.labels) == {
        "tier": "front",
        base.LABEL_POD_NAME: "web",
        base.LABEL_POD_NAMESPACE: "shop",
        base.LABEL_POD_UID: "uid-1",
        base.LABEL_CONTAINER_NAME: "app",
        base.LABEL_MANAGED_BY: "true",
        base.LABEL_SANDBOX_ID: "sb-1",
    }


def test_managed_selector() -> None:
    assert convert.managed_selector(None) == {base.LABEL_MANAGED_BY: "true"}
    assert convert.managed_selector(PodUID("u")) == {
        base.LABEL_MANAGED_BY: "true",
        base.LABEL_POD_UID: "u",
    }


def test_sandbox_status_from_pb() -> None:
    msg = pb.PodSandboxStatus(
        id="sb",
        metadata=pb.PodSandboxMetadata(name="web", uid="u", namespace="shop", attempt=3),
        state=pb.SANDBOX_NOTREADY,
        created_at=123,
        network=pb.PodSandboxNetworkStatus(ip="10.0.0.5"),
        labels={"a": "b"},
    )
    info = convert.sandbox_status_from_pb(msg)
    assert info == base.SandboxInfo(
        id=base.SandboxID("sb"),
        uid=PodUID("u"),
        name="web",
        namespace="shop",
        attempt=3,
        state=base.SandboxState.NOTREADY,
        created_at_ns=123,
        labels={"a": "b"},
        ip="10.0.0.5",
    )


def test_container_from_pb_is_a_summary() -> None:
    msg = pb.Container(
        id="c",
        pod_sandbox_id="sb",
        metadata=pb.ContainerMetadata(name="app", attempt=1),
        image=pb.ImageSpec(image="busybox"),
        image_ref="sha256:x",
        state=pb.CONTAINER_RUNNING,
        created_at=5,
        labels={base.LABEL_POD_UID: "u"},
    )
    info = convert.container_from_pb(msg)
    assert (info.id, info.sandbox_id, info.uid, info.name, info.attempt) == (
        "c",
        "sb",
        "u",
        "app",
        1,
    )
    assert info.state is base.ContainerState.RUNNING
    assert not info.detailed


def test_container_status_from_pb_is_detailed() -> None:
    msg = pb.ContainerStatus(
        id="c",
        metadata=pb.ContainerMetadata(name="app"),
        state=pb.CONTAINER_EXITED,
        created_at=1,
        started_at=2,
        finished_at=3,
        exit_code=137,
        image=pb.ImageSpec(image="docker.io/library/busybox:latest"),
        image_ref="sha256:x",
        reason="OOMKilled",
        message="m",
        labels={base.LABEL_POD_UID: "u"},
    )
    info = convert.container_status_from_pb(msg, base.SandboxID("sb"))
    assert info.detailed
    assert info.state is base.ContainerState.EXITED
    assert (info.started_at_ns, info.finished_at_ns, info.exit_code) == (2, 3, 137)
    assert (info.reason, info.message, info.image_ref) == ("OOMKilled", "m", "sha256:x")
    assert (info.sandbox_id, info.uid) == ("sb", "u")


@pytest.mark.parametrize(
    ("state", "want"),
    [
        (pb.CONTAINER_CREATED, base.ContainerState.CREATED),
        (pb.CONTAINER_RUNNING, base.ContainerState.RUNNING),
        (pb.CONTAINER_EXITED, base.ContainerState.EXITED),
        (pb.CONTAINER_UNKNOWN, base.ContainerState.UNKNOWN),
        (42, base.ContainerState.UNKNOWN),  # a state newer than our schema
    ],
)
def test_container_state(state: int, want: base.ContainerState) -> None:
    assert convert.container_state(state) is want


# Field numbers checked against upstream k8s.io/cri-api runtime/v1 api.proto: the ones our code
# sends or reads, and every one that breaks the 1, 2, 3 ... pattern. A wrong number here makes
# the runtime silently read a different field.
UPSTREAM_FIELD_NUMBERS = {
    "PodSandboxConfig": {
        "metadata": 1,
        "hostname": 2,
        "log_directory": 3,
        "dns_config": 4,
        "port_mappings": 5,
        "labels": 6,
        "annotations": 7,
        "linux": 8,
    },
    "LinuxSandboxSecurityContext": {"namespace_options": 1, "run_as_user": 3, "run_as_group": 8},
    "LinuxContainerSecurityContext": {
        "namespace_options": 3,
        "run_as_user": 5,
        "no_new_privs": 11,
        "run_as_group": 12,
    },
    "Mount": {"container_path": 1, "host_path": 2, "readonly": 3},
    "Namespace": {"options": 2},
    "ContainerConfig": {
        "metadata": 1,
        "image": 2,
        "command": 3,
        "args": 4,
        "working_dir": 5,
        "envs": 6,
        "mounts": 7,
        "labels": 9,
        "annotations": 10,
        "log_path": 11,
        "stdin": 12,
        "tty": 14,
        "linux": 15,
    },
    "LinuxContainerResources": {
        "cpu_period": 1,
        "cpu_quota": 2,
        "cpu_shares": 3,
        "memory_limit_in_bytes": 4,
        "oom_score_adj": 5,
        "unified": 9,
        "memory_swap_limit_in_bytes": 10,
    },
    "PodSandboxStatus": {"state": 3, "created_at": 4, "network": 5, "labels": 7},
    "PodSandbox": {"labels": 5},
    "PodSandboxFilter": {"label_selector": 3},
    "ContainerFilter": {"pod_sandbox_id": 3, "label_selector": 4},
    "Container": {"state": 6, "created_at": 7, "labels": 8, "image_id": 10},
    "ContainerStatus": {
        "state": 3,
        "created_at": 4,
        "started_at": 5,
        "finished_at": 6,
        "exit_code": 7,
        "image": 8,
        "image_ref": 9,
        "reason": 10,
        "message": 11,
        "labels": 12,
        "log_path": 15,
        "image_id": 17,
    },
    "ExecSyncRequest": {"cmd": 2, "timeout": 3},
    "ExecSyncResponse": {"stdout": 1, "stderr": 2, "exit_code": 3},
    "StopContainerRequest": {"timeout": 2},
    "Image": {"id": 1, "repo_tags": 2, "size": 4, "uid": 5, "pinned": 8},
}


@pytest.mark.parametrize("message", sorted(UPSTREAM_FIELD_NUMBERS))
def test_field_numbers_match_upstream(message: str) -> None:
    fields = pb.DESCRIPTOR.message_types_by_name[message].fields_by_name
    got = {name: fields[name].number for name in UPSTREAM_FIELD_NUMBERS[message]}
    assert got == UPSTREAM_FIELD_NUMBERS[message]


def test_schema_package_and_services() -> None:
    assert pb.DESCRIPTOR.package == "runtime.v1"
    runtime = pb.DESCRIPTOR.services_by_name["RuntimeService"].methods_by_name
    images = pb.DESCRIPTOR.services_by_name["ImageService"].methods_by_name
    assert {"RunPodSandbox", "CreateContainer", "ExecSync", "ContainerStatus"} <= set(runtime)
    assert {"ImageStatus", "PullImage", "ListImages"} <= set(images)


# --- security contexts and namespaces -------------------------------------------------------

SECURE = base.ContainerSecurity(
    run_as_user=1000,
    run_as_group=3000,
    supplemental_groups=(2000, 4000),
    readonly_rootfs=True,
    no_new_privs=True,
    capabilities_add=("NET_ADMIN",),
    capabilities_drop=("NET_RAW",),
    seccomp="RuntimeDefault",
)


def test_container_security_context_carries_every_setting() -> None:
    config = base.ContainerConfig(
        name="app", attempt=0, image="busybox", log_path="a", security=SECURE
    )
    sc = convert.container_config_to_pb(SANDBOX_ID, config, SANDBOX).linux.security_context
    assert sc.HasField("run_as_user") and sc.run_as_user.value == 1000
    assert sc.HasField("run_as_group") and sc.run_as_group.value == 3000
    assert list(sc.supplemental_groups) == [2000, 4000]
    assert sc.readonly_rootfs and sc.no_new_privs and not sc.privileged
    assert list(sc.capabilities.add_capabilities) == ["NET_ADMIN"]
    assert list(sc.capabilities.drop_capabilities) == ["NET_RAW"]
    assert sc.HasField("seccomp")
    assert sc.seccomp.profile_type == pb.SecurityProfile.RuntimeDefault


def test_unset_ids_stay_unset_so_the_image_user_applies() -> None:
    sc = convert.container_config_to_pb(SANDBOX_ID, CONTAINER, SANDBOX).linux.security_context
    assert not sc.HasField("run_as_user") and not sc.HasField("run_as_group")
    assert not sc.HasField("seccomp")


def test_root_is_sent_as_an_explicit_zero() -> None:
    config = base.ContainerConfig(
        name="app",
        attempt=0,
        image="busybox",
        log_path="a",
        security=base.ContainerSecurity(run_as_user=0, seccomp="Unconfined"),
    )
    sc = convert.container_config_to_pb(SANDBOX_ID, config, SANDBOX).linux.security_context
    assert sc.HasField("run_as_user") and sc.run_as_user.value == 0
    assert sc.seccomp.profile_type == pb.SecurityProfile.Unconfined


@pytest.mark.parametrize(
    ("flags", "pid", "ipc"),
    [
        ({}, pb.CONTAINER, pb.POD),
        ({"share_pid": True}, pb.POD, pb.POD),
        ({"host_pid": True}, pb.NODE, pb.POD),
        ({"host_ipc": True}, pb.CONTAINER, pb.NODE),
    ],
)
def test_namespace_modes(flags: dict[str, bool], pid: int, ipc: int) -> None:
    sandbox = base.SandboxConfig(
        name="p",
        namespace="d",
        uid=PodUID("u"),
        attempt=0,
        hostname="p",
        log_directory="/l",
        share_pid=flags.get("share_pid", False),
        host_pid=flags.get("host_pid", False),
        host_ipc=flags.get("host_ipc", False),
    )
    for ns in (
        convert.sandbox_config_to_pb(sandbox).linux.security_context.namespace_options,
        convert.container_config_to_pb(
            SANDBOX_ID, CONTAINER, sandbox
        ).linux.security_context.namespace_options,
    ):
        assert (ns.network, ns.pid, ns.ipc) == (pb.POD, pid, ipc)


@pytest.mark.parametrize(("share_pid", "pid"), [(False, pb.TARGET), (True, pb.POD)])
def test_an_ephemeral_container_joins_its_targets_pid_namespace(share_pid: bool, pid: int) -> None:
    sandbox = base.SandboxConfig(
        name="p",
        namespace="d",
        uid=PodUID("u"),
        attempt=0,
        hostname="p",
        log_directory="/l",
        share_pid=share_pid,
    )
    config = dataclasses.replace(CONTAINER, pid_target="target-id")
    msg = convert.container_config_to_pb(SANDBOX_ID, config, sandbox)
    ns = msg.linux.security_context.namespace_options
    assert ns.pid == pid  # a pod sharing one PID namespace already shows it every process
    assert ns.target_id == ("target-id" if pid == pb.TARGET else "")


def test_sandbox_security_and_sysctls() -> None:
    sandbox = base.SandboxConfig(
        name="p",
        namespace="d",
        uid=PodUID("u"),
        attempt=0,
        hostname="p",
        log_directory="/l",
        sysctls={"net.ipv4.ip_unprivileged_port_start": "0"},
        security=base.SandboxSecurity(
            run_as_user=1000, supplemental_groups=(2000,), privileged=True, seccomp="Unconfined"
        ),
    )
    linux = convert.sandbox_config_to_pb(sandbox).linux
    assert dict(linux.sysctls) == {"net.ipv4.ip_unprivileged_port_start": "0"}
    sc = linux.security_context
    assert sc.run_as_user.value == 1000 and not sc.HasField("run_as_group")
    assert list(sc.supplemental_groups) == [2000] and sc.privileged
    assert sc.seccomp.profile_type == pb.SecurityProfile.Unconfined


def test_security_field_numbers_are_upstreams() -> None:
    # The runtime decodes with its own schema: a wrong number would set another field.
    numbers = {
        pb.LinuxContainerSecurityContext.DESCRIPTOR: {
            "seccomp": 15,
            "no_new_privs": 11,
            "privileged": 2,
        },
        pb.LinuxSandboxSecurityContext.DESCRIPTOR: {"seccomp": 9, "privileged": 6},
        pb.SecurityProfile.DESCRIPTOR: {"profile_type": 1, "localhost_ref": 2},
    }
    for descriptor, fields in numbers.items():
        for name, number in fields.items():
            assert descriptor.fields_by_name[name].number == number
    assert pb.SecurityProfile.ProfileType.Value("Unconfined") == 1
