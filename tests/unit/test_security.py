"""securityContext, host namespaces and hostAliases: validation (model.security), the node's
privilege policy, and the effective settings and runAsNonRoot check (kubelet.security)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nodeagent.cli import build_parser
from nodeagent.config import ConfigError, load_config
from nodeagent.kubelet import security
from nodeagent.model.fields import ValidationError
from nodeagent.model.pod import (
    Capabilities,
    HostAlias,
    Pod,
    SeccompProfile,
    TerminationMessagePolicy,
)
from nodeagent.model.security import API_SOURCE, PrivilegePolicy, privilege_errors
from nodeagent.model.validate import parse_pod

Doc = dict[str, Any]


def doc(spec: Doc | None = None, container: Doc | None = None) -> Doc:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "sec", "namespace": "demo", "uid": "u-1"},
        "spec": {
            "containers": [{"name": "app", "image": "busybox:1.36", **(container or {})}],
            **(spec or {}),
        },
    }


def parse(d: Doc) -> Pod:
    return parse_pod(d, source="t.yaml", node_name="n")


def errors(d: Doc) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        parse(d)
    return {e.path: e.message for e in info.value.errors}


# The documented example (tasks/configure-pod-container/security-context), as our manifest.
DOCUMENTED = doc(
    {"securityContext": {"runAsUser": 1000, "runAsGroup": 3000, "fsGroup": 2000}},
    {"securityContext": {"allowPrivilegeEscalation": False}},
)


def test_the_documented_example_is_read() -> None:
    pod = parse(DOCUMENTED)
    psc = pod.spec.security_context
    assert (psc.run_as_user, psc.run_as_group, psc.fs_group) == (1000, 3000, 2000)
    assert pod.spec.containers[0].security_context.allow_privilege_escalation is False


def test_effective_security_of_the_documented_example() -> None:
    pod = parse(DOCUMENTED)
    sec = security.container_security(pod, pod.spec.containers[0])
    assert (sec.run_as_user, sec.run_as_group) == (1000, 3000)
    assert sec.supplemental_groups == (2000,)  # fsGroup is a supplemental group
    assert sec.no_new_privs and not sec.privileged
    assert sec.seccomp == "Unconfined"  # the kubelet's default


def test_container_settings_win_over_the_pods() -> None:
    pod = parse(
        doc(
            {
                "securityContext": {
                    "runAsUser": 1000,
                    "runAsGroup": 3000,
                    "supplementalGroups": [4000, 5000],
                    "fsGroup": 2000,
                    "seccompProfile": {"type": "RuntimeDefault"},
                }
            },
            {
                "securityContext": {
                    "runAsUser": 2000,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"add": ["NET_ADMIN"], "drop": ["CAP_NET_RAW"]},
                    "seccompProfile": {"type": "Unconfined"},
                    "allowPrivilegeEscalation": True,
                }
            },
        )
    )
    sec = security.container_security(pod, pod.spec.containers[0])
    assert (sec.run_as_user, sec.run_as_group) == (2000, 3000)
    assert sec.supplemental_groups == (2000, 4000, 5000)
    assert sec.readonly_rootfs and not sec.no_new_privs
    assert (sec.capabilities_add, sec.capabilities_drop) == (("NET_ADMIN",), ("NET_RAW",))
    assert sec.seccomp == "Unconfined"
    box = security.sandbox_security(pod)
    assert (box.run_as_user, box.seccomp, box.privileged) == (1000, "RuntimeDefault", False)


def test_a_privileged_container_makes_the_sandbox_privileged() -> None:
    pod = parse(doc(container={"securityContext": {"privileged": True}}))
    assert pod.spec.containers[0].security_context.privileged
    assert security.sandbox_security(pod).privileged


def test_unset_fields_read_as_unset() -> None:
    sc = parse(doc()).spec.containers[0].security_context
    assert sc.run_as_user is None and sc.run_as_non_root is None
    assert sc.allow_privilege_escalation is None
    assert sc.capabilities == Capabilities() and sc.seccomp is SeccompProfile.UNSET


@pytest.mark.parametrize(
    ("spec", "container", "path", "words"),
    [
        ({}, {"securityContext": {"runAsUser": -1}}, "securityContext.runAsUser", ">= 0"),
        (
            {},
            {"securityContext": {"seLinuxOptions": {}}},
            "securityContext.seLinuxOptions",
            "not supported",
        ),
        (
            {},
            {"securityContext": {"procMount": "Unmasked"}},
            "securityContext.procMount",
            "unsupported",
        ),
        (
            {},
            {"securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": "x"}}},
            "securityContext.seccompProfile.type",
            "Localhost",
        ),
        (
            {},
            {"securityContext": {"privileged": True, "allowPrivilegeEscalation": False}},
            "securityContext.allowPrivilegeEscalation",
            "privileged",
        ),
        (
            {},
            {"securityContext": {"capabilities": {"add": ["net admin"]}}},
            "securityContext.capabilities.add[0]",
            "capability",
        ),
        ({}, {"terminationMessagePath": "log"}, "terminationMessagePath", "absolute"),
        ({}, {"terminationMessagePolicy": "Always"}, "terminationMessagePolicy", "unsupported"),
    ],
)
def test_bad_container_fields_are_named(spec: Doc, container: Doc, path: str, words: str) -> None:
    found = errors(doc(spec, container))
    full = f"spec.containers[0].{path}"
    assert full in found, found
    assert words in found[full]


@pytest.mark.parametrize(
    ("spec", "path", "words"),
    [
        (
            {"securityContext": {"fsGroupChangePolicy": "Sometimes"}},
            "securityContext.fsGroupChangePolicy",
            "unsupported value",
        ),
        (
            {"securityContext": {"supplementalGroups": [-5]}},
            "securityContext.supplementalGroups[0]",
            "non-negative",
        ),
        (
            {"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}},
            "securityContext.sysctls[0].name",
            "safe set",
        ),
        (
            {
                "hostNetwork": True,
                "securityContext": {"sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "1"}]},
            },
            "securityContext.sysctls[0].name",
            "host network",
        ),
        (
            {"hostAliases": [{"ip": "300.1.1.1", "hostnames": ["a"]}]},
            "hostAliases[0].ip",
            "valid IP",
        ),
        (
            {"hostAliases": [{"ip": "1.2.3.4", "hostnames": ["A_B"]}]},
            "hostAliases[0].hostnames[0]",
            "hostname",
        ),
        ({"shareProcessNamespace": True, "hostPID": True}, "shareProcessNamespace", "hostPID"),
    ],
)
def test_bad_pod_fields_are_named(spec: Doc, path: str, words: str) -> None:
    found = errors(doc(spec))
    assert f"spec.{path}" in found, found
    assert words in found[f"spec.{path}"]


def test_pod_fields_are_read() -> None:
    pod = parse(
        doc(
            {
                "hostPID": True,
                "hostIPC": True,
                "hostAliases": [{"ip": "127.0.0.1", "hostnames": ["foo.local", "bar.local"]}],
                "securityContext": {
                    "runAsNonRoot": True,
                    "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}],
                },
            },
            {"terminationMessagePolicy": "FallbackToLogsOnError"},
        )
    )
    assert pod.spec.host_pid and pod.spec.host_ipc and not pod.spec.share_process_namespace
    assert pod.spec.host_aliases == (HostAlias("127.0.0.1", ("foo.local", "bar.local")),)
    assert pod.spec.security_context.sysctls == (("net.ipv4.ip_unprivileged_port_start", "0"),)
    app = pod.spec.containers[0]
    assert app.termination_message_path == "/dev/termination-log"
    assert app.termination_message_policy is TerminationMessagePolicy.FALLBACK_TO_LOGS_ON_ERROR


# --- runAsNonRoot against the image user ---------------------------------------------------


@pytest.mark.parametrize(
    ("pod_sc", "container_sc", "image_user", "want"),
    [
        ({}, {}, "", ""),  # no runAsNonRoot: nothing checked
        ({"runAsNonRoot": True}, {}, "1000", ""),
        ({"runAsNonRoot": True}, {}, "1000:1000", ""),
        ({"runAsNonRoot": True}, {}, "", "image will run as root"),
        ({"runAsNonRoot": True}, {}, "0", "image will run as root"),
        ({"runAsNonRoot": True}, {}, "root", "non-numeric user (root)"),
        ({"runAsNonRoot": True, "runAsUser": 1000}, {}, "root", ""),
        ({"runAsNonRoot": True}, {"runAsUser": 0}, "1000", "runAsUser breaks non-root policy"),
        ({"runAsNonRoot": True}, {"runAsNonRoot": False}, "", ""),  # the container wins
        ({}, {"runAsNonRoot": True}, "", "image will run as root"),
    ],
)
def test_run_as_non_root(pod_sc: Doc, container_sc: Doc, image_user: str, want: str) -> None:
    pod = parse(doc({"securityContext": pod_sc}, {"securityContext": container_sc}))
    app = pod.spec.containers[0]
    message = security.run_as_non_root_error(pod, app, image_user)
    if not want:
        assert message == ""
        return
    assert want in message
    assert "(pod: sec_demo(u-1), container: app)" in message
    assert security.wants_non_root(pod, app)


# --- the node's privilege policy ----------------------------------------------------------

PRIVILEGED = doc(
    {
        "hostNetwork": True,
        "hostPID": True,
        "hostIPC": True,
        "volumes": [{"name": "logs", "hostPath": {"path": "/var/log"}}],
        "initContainers": [
            {"name": "init", "image": "busybox", "securityContext": {"privileged": True}}
        ],
    },
    {"securityContext": {"privileged": True}},
)


def test_privileged_fields_are_refused_by_default_each_by_name() -> None:
    found = {e.path for e in privilege_errors(parse(PRIVILEGED), PrivilegePolicy())}
    assert found == {
        "spec.hostNetwork",
        "spec.hostPID",
        "spec.hostIPC",
        "spec.volumes[0].hostPath",
        "spec.initContainers[0].securityContext.privileged",
        "spec.containers[0].securityContext.privileged",
    }
    message = str(privilege_errors(parse(PRIVILEGED), PrivilegePolicy())[0])
    assert "--allow-privileged" in message


def test_allow_privileged_allows_them() -> None:
    assert privilege_errors(parse(PRIVILEGED), PrivilegePolicy(allow_privileged=True)) == []
    assert privilege_errors(parse(doc()), PrivilegePolicy()) == []


def test_api_pods_are_the_api_servers_to_admit() -> None:
    # Pod Security admission let it in; --allow-privileged is about manifest pods only.
    api_pod = parse_pod(PRIVILEGED, source=API_SOURCE, node_name="n1")
    assert privilege_errors(api_pod, PrivilegePolicy()) == []
    agents_own = doc({"volumes": [{"name": "v", "hostPath": {"path": "/var/lib/nodeagent"}}]})
    own = parse_pod(agents_own, source=API_SOURCE, node_name="n1")
    protected = PrivilegePolicy(protected_paths=("/var/lib/nodeagent",))
    assert [e.path for e in privilege_errors(own, protected)] == ["spec.volumes[0].hostPath.path"]


@pytest.mark.parametrize(
    "path",
    ["/var/lib/nodeagent", "/var/lib/nodeagent/pods/x", "/var/lib", "/", "/run/na/status.sock"],
)
def test_the_agents_own_files_are_never_mountable(path: str) -> None:
    pod = parse(doc({"volumes": [{"name": "state", "hostPath": {"path": path}}]}))
    policy = PrivilegePolicy(
        allow_privileged=True, protected_paths=("/var/lib/nodeagent", "/run/na/status.sock")
    )
    (error,) = privilege_errors(pod, policy)
    assert error.path == "spec.volumes[0].hostPath.path"
    assert "'state'" in error.message and "agent's own" in error.message


def test_the_pods_own_directory_is_no_host_access() -> None:
    # configMap/secret/projected volumes reach the runtime as hostPaths into the pod's dir.
    own = "/var/lib/nodeagent/pods/u-1"
    pod = parse(doc({"volumes": [{"name": "cfg", "hostPath": {"path": f"{own}/volumes/cm/cfg"}}]}))
    policy = PrivilegePolicy(protected_paths=("/var/lib/nodeagent",))
    assert privilege_errors(pod, policy, own_dir=own) == []
    other = parse(doc({"volumes": [{"name": "cfg", "hostPath": {"path": f"{own}/../u-2"}}]}))
    assert len(privilege_errors(other, policy, own_dir=own)) == 2


@pytest.mark.parametrize(
    ("user", "want"),
    [
        ("", (0, "")),
        ("0", (0, "")),
        ("1000", (1000, "")),
        ("1000:50", (1000, "")),
        ("app", (None, "app")),
    ],
)
def test_image_uid(user: str, want: tuple[int | None, str]) -> None:
    assert security.image_uid(user) == want


# --- the --allow-privileged setting ---------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "want"),
    [
        ([], False),
        (["--allow-privileged"], True),
        (["--allow-privileged", "true"], True),
        (["--allow-privileged=false"], False),
    ],
)
def test_allow_privileged_flag(
    argv: list[str], want: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NODEAGENT_ALLOW_PRIVILEGED", raising=False)
    args = build_parser().parse_args(["run", "--node-name", "n", *argv])
    assert load_config(args).allow_privileged is want


def test_allow_privileged_from_file_and_bad_values(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("allow_privileged: true\n")
    args = build_parser().parse_args(["run", "--node-name", "n", "--config", str(config)])
    assert load_config(args).allow_privileged is True
    args = build_parser().parse_args(["run", "--node-name", "n", "--allow-privileged", "yes"])
    with pytest.raises(ConfigError) as info:
        load_config(args)
    assert "allow-privileged" in str(info.value) and "true or false" in str(info.value)
