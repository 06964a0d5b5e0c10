"""Security fields of a Pod: securityContext (pod and container), hostAliases, and the
node's privilege policy.

Reading follows the API's validation: ids are non-negative, a Localhost seccomp profile or
an SELinux/AppArmor/Windows option is rejected by name (we cannot honour it on this node),
and sysctls are limited to the kubelet's safe set, because the others reach outside the pod.

The privilege policy (``--allow-privileged``) is a separate check of an already valid pod: it
is node configuration, not API validation, so the same pod may run on one node and be
refused on another. It applies to the manifest directory's pods only: an API pod was let in
by the API server (Pod Security admission decides there what a namespace may run), so
privileged, hostNetwork and hostPath DaemonSet pods run on a node without the flag. A
hostPath that reaches the agent's own state or status socket is refused on every node: a
pod that can write there can forge what the agent believes it runs.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from nodeagent.model.fields import FieldError, Node
from nodeagent.model.pod import (
    Capabilities,
    HostAlias,
    HostPathSource,
    Pod,
    PodSecurityContext,
    SeccompProfile,
    SecurityContext,
)

# The kubelet's safe sysctls: namespaced, and unable to affect other pods or the node.
SAFE_SYSCTLS = (
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
)
_CAPABILITY = re.compile(r"^(CAP_)?[A-Z][A-Z_]*$")
_HOSTNAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

_POD_KNOWN = (
    "runAsUser",
    "runAsGroup",
    "runAsNonRoot",
    "fsGroup",
    "fsGroupChangePolicy",
    "supplementalGroups",
    "sysctls",
    "seccompProfile",
)
_CONTAINER_KNOWN = (
    "runAsUser",
    "runAsGroup",
    "runAsNonRoot",
    "privileged",
    "allowPrivilegeEscalation",
    "readOnlyRootFilesystem",
    "capabilities",
    "seccompProfile",
    "procMount",
)


def _id(node: Node, key: str) -> int | None:
    if not node.present(key):
        return None
    return node.integer(key, default=0, minimum=0)


def _optional_bool(node: Node, key: str) -> bool | None:
    return node.boolean(key) if node.present(key) else None


def _seccomp(node: Node) -> SeccompProfile:
    if not node.present("seccompProfile"):
        return SeccompProfile.UNSET
    profile = node.child("seccompProfile")
    profile.reject_unknown(("type", "localhostProfile"))
    kind = profile.string("type", required=True)
    if kind == "Localhost":
        profile.error("Localhost profiles are not supported by nodeagent", "type")
        return SeccompProfile.UNSET
    allowed = (SeccompProfile.RUNTIME_DEFAULT.value, SeccompProfile.UNCONFINED.value)
    if kind and kind not in allowed:
        profile.error(f"unsupported value {kind!r}: must be one of {', '.join(allowed)}", "type")
        return SeccompProfile.UNSET
    if profile.present("localhostProfile"):
        profile.error("may only be set with type Localhost", "localhostProfile")
    return SeccompProfile(kind) if kind else SeccompProfile.UNSET


def pod_security_context(spec: Node) -> PodSecurityContext:
    sc = spec.child("securityContext")
    sc.reject_unknown(_POD_KNOWN)
    groups = []
    for item in sc.items("supplementalGroups"):
        if isinstance(item.value, bool) or not isinstance(item.value, int) or item.value < 0:
            item.error("must be a non-negative integer")
        else:
            groups.append(item.value)
    return PodSecurityContext(
        run_as_user=_id(sc, "runAsUser"),
        run_as_group=_id(sc, "runAsGroup"),
        run_as_non_root=_optional_bool(sc, "runAsNonRoot"),
        fs_group=_id(sc, "fsGroup"),
        fs_group_change_policy=sc.enum_value(
            "fsGroupChangePolicy", ("Always", "OnRootMismatch"), default="Always"
        ),
        supplemental_groups=tuple(groups),
        sysctls=_sysctls(sc, host_network=spec.boolean("hostNetwork")),
        seccomp=_seccomp(sc),
    )


def _sysctls(sc: Node, *, host_network: bool) -> tuple[tuple[str, str], ...]:
    result: list[tuple[str, str]] = []
    for item in sc.items("sysctls"):
        item.reject_unknown(("name", "value"))
        name = item.string("name", required=True)
        value = item.string("value")
        if not name:
            continue
        if name not in SAFE_SYSCTLS:
            item.error(f"sysctl {name!r} is not in the safe set nodeagent allows", "name")
        elif host_network and name.startswith("net."):
            item.error(f"sysctl {name!r} cannot be set in a pod using the host network", "name")
        else:
            result.append((name, value))
    names = [n for n, _ in result]
    if len(set(names)) != len(names):
        sc.error("duplicate sysctl names", "sysctls")
    return tuple(result)


def container_security_context(c: Node) -> SecurityContext:
    sc = c.child("securityContext")
    sc.reject_unknown(_CONTAINER_KNOWN)
    if sc.present("procMount"):
        sc.enum_value("procMount", ("Default",), default="Default")
    caps = sc.child("capabilities")
    caps.reject_unknown(("add", "drop"))
    capabilities = Capabilities(add=_capabilities(caps, "add"), drop=_capabilities(caps, "drop"))
    context = SecurityContext(
        run_as_user=_id(sc, "runAsUser"),
        run_as_group=_id(sc, "runAsGroup"),
        run_as_non_root=_optional_bool(sc, "runAsNonRoot"),
        privileged=sc.boolean("privileged"),
        allow_privilege_escalation=_optional_bool(sc, "allowPrivilegeEscalation"),
        read_only_root_filesystem=sc.boolean("readOnlyRootFilesystem"),
        capabilities=capabilities,
        seccomp=_seccomp(sc),
    )
    # The API's own rule: no_new_privs cannot hold for a process that is privileged anyway.
    if context.allow_privilege_escalation is False:
        if context.privileged:
            sc.error("cannot be false when privileged is true", "allowPrivilegeEscalation")
        if "SYS_ADMIN" in capabilities.add:
            sc.error("cannot be false when adding SYS_ADMIN", "allowPrivilegeEscalation")
    return context


def _capabilities(caps: Node, key: str) -> tuple[str, ...]:
    names = []
    for item in caps.items(key):
        value = item.value
        if not isinstance(value, str) or not _CAPABILITY.match(value):
            item.error("must be a capability name such as NET_ADMIN or ALL")
            continue
        names.append(value.removeprefix("CAP_"))
    return tuple(names)


def host_aliases(spec: Node) -> tuple[HostAlias, ...]:
    aliases = []
    for item in spec.items("hostAliases"):
        item.reject_unknown(("ip", "hostnames"))
        ip = item.string("ip", required=True)
        if ip:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                item.error(f"{ip!r} is not a valid IP address", "ip")
        names = item.strings("hostnames")
        for index, name in enumerate(names):
            if not _HOSTNAME.match(name):
                item.error(f"{name!r} is not a valid hostname", f"hostnames[{index}]")
        aliases.append(HostAlias(ip=ip, hostnames=names))
    return tuple(aliases)


# --- the node's privilege policy -----------------------------------------------------------


API_SOURCE = "api"  # ``Pod.source`` of the API's pods


@dataclass(frozen=True)
class PrivilegePolicy:
    allow_privileged: bool = False  # --allow-privileged (manifest-directory pods only)
    protected_paths: tuple[str, ...] = ()  # the agent's state dir and status socket


def _own(source: HostPathSource, own_dir: str) -> bool:
    return bool(own_dir) and _inside(os.path.normpath(source.path), os.path.normpath(own_dir))


def privilege_errors(pod: Pod, policy: PrivilegePolicy, *, own_dir: str = "") -> list[FieldError]:
    """Why the node refuses ``pod``: each error names the field; empty if it may run.

    ``own_dir`` is the pod's own directory: configMap, secret, downwardAPI and projected
    volumes reach the runtime as hostPaths into it, which are no access to the host.
    """
    errors: list[FieldError] = []
    host_paths = [
        (index, volume.name, volume.source)
        for index, volume in enumerate(pod.spec.volumes)
        if isinstance(volume.source, HostPathSource) and not _own(volume.source, own_dir)
    ]
    for index, name, source in host_paths:
        hit = _protected_hit(source.path, policy.protected_paths)
        if hit:
            path = f"spec.volumes[{index}].hostPath.path"
            errors.append(FieldError(path, f"volume {name!r} would expose the agent's own {hit}"))
    if policy.allow_privileged or pod.source == API_SOURCE:
        return errors  # the API server's admission decided for its pods
    reason = "is not allowed on this node (--allow-privileged is false)"
    for key, used in (
        ("hostNetwork", pod.spec.host_network),
        ("hostPID", pod.spec.host_pid),
        ("hostIPC", pod.spec.host_ipc),
    ):
        if used:
            errors.append(FieldError(f"spec.{key}", reason))
    for index, _, _ in host_paths:
        errors.append(FieldError(f"spec.volumes[{index}].hostPath", f"volume {reason}"))
    for group, containers in (
        ("initContainers", pod.spec.init_containers),
        ("containers", pod.spec.containers),
    ):
        for index, container in enumerate(containers):
            if container.security_context.privileged:
                path = f"spec.{group}[{index}].securityContext.privileged"
                errors.append(FieldError(path, f"privileged container {reason}"))
    return errors


def _protected_hit(path: str, protected: Iterable[str]) -> str:
    """The protected path that ``path`` is, contains, or lies inside; "" if none."""
    mine = os.path.normpath(path)
    for target in protected:
        other = os.path.normpath(target)
        if mine == other or _inside(other, mine) or _inside(mine, other):
            return other
    return ""


def _inside(child: str, parent: str) -> bool:
    return parent == "/" or child.startswith(parent.rstrip("/") + "/")
