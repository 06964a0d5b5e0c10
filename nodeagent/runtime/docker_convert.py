"""Conversions between the runtime seam and Docker Engine API objects, as dockershim did them.

Pure functions, no I/O, so ``runtime.docker`` stays a thin list of API calls. The policies:

- Names. A pod sandbox is a pause container named ``k8s_POD_<pod>_<namespace>_<uid>_<attempt>``,
  a container ``k8s_<container>_<pod>_<namespace>_<uid>_<attempt>``, as dockershim and
  cri-dockerd name them (operators and tools recognise them). Kubernetes names hold no ``_``,
  so the name splits back into its parts; the attempt is read from it. A seventh part (the
  random suffix dockershim added on name conflicts) is tolerated.
- Labels. The same labels the CRI backend sets (``cri.convert``): pod name, namespace and
  uid, container name, our managed marker, and the sandbox id on containers; ours applied
  last, so a pod label never overrides them. Docker-only bookkeeping rides along in labels
  too, and is stripped from what crosses the seam so both backends report the same labels:
  the object type (``io.kubernetes.docker.type``: ``podsandbox`` or ``container``, the
  labels dockershim used), the CRI log path, and annotations (as ``annotation.<key>``).
- Namespaces. The sandbox runs with network ``none`` (the CNI plugins give it its interface;
  ``host`` for a host-network pod) and a *shareable* IPC namespace; containers join its
  network (``container:<sandbox id>``, or ``host``) and IPC namespaces. PID stays per
  container, as the CRI backend asks containerd for, unless the pod shares one (the
  sandbox's, ``container:<sandbox id>``) or the host's; hostIPC makes IPC ``host``.
- IPv6. The sandbox namespace keeps IPv6 enabled, as a namespace containerd makes does.

Docker's answers (lists, inspects, exec results) are read back in ``docker_read``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import docker.errors

from nodeagent.model.pod import PodUID
from nodeagent.runtime import base

MANAGED_VALUE = "true"
LABEL_TYPE = "io.kubernetes.docker.type"
TYPE_SANDBOX = "podsandbox"
TYPE_CONTAINER = "container"
LABEL_LOG_PATH = "io.kubernetes.container.logpath"
ANNOTATION_PREFIX = "annotation."
_INTERNAL_LABELS = frozenset({LABEL_TYPE, LABEL_LOG_PATH})

NAME_PREFIX = "k8s"
SANDBOX_CONTAINER_NAME = "POD"

_NAME_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*$")


# --- names -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedName:
    container: str  # SANDBOX_CONTAINER_NAME for a sandbox
    pod: str
    namespace: str
    uid: str
    attempt: int


def _join(*parts: str | int) -> str:
    for part in parts:
        if not _NAME_PART.match(str(part)):
            raise base.InvalidInput(f"cannot use {str(part)!r} in a Docker container name")
    return "_".join(str(p) for p in (NAME_PREFIX, *parts))


def sandbox_name(config: base.SandboxConfig) -> str:
    return _join(SANDBOX_CONTAINER_NAME, config.name, config.namespace, config.uid, config.attempt)


def container_name(config: base.ContainerConfig, sandbox: base.SandboxConfig) -> str:
    return _join(config.name, sandbox.name, sandbox.namespace, sandbox.uid, config.attempt)


def parse_name(name: str) -> ParsedName | None:
    """The parts of one of our names (Docker lists them with a leading "/"); None if foreign."""
    parts = name.lstrip("/").split("_")
    if len(parts) not in (6, 7) or parts[0] != NAME_PREFIX or not parts[5].isdigit():
        return None
    return ParsedName(parts[1], parts[2], parts[3], parts[4], int(parts[5]))


# --- labels and filters -------------------------------------------------------------------------


def _annotation_labels(annotations: Mapping[str, str]) -> dict[str, str]:
    return {ANNOTATION_PREFIX + k: v for k, v in annotations.items()}


def sandbox_labels(config: base.SandboxConfig) -> dict[str, str]:
    return {
        **config.labels,
        **_annotation_labels(config.annotations),
        base.LABEL_POD_NAME: config.name,
        base.LABEL_POD_NAMESPACE: config.namespace,
        base.LABEL_POD_UID: config.uid,
        base.LABEL_MANAGED_BY: MANAGED_VALUE,
        LABEL_TYPE: TYPE_SANDBOX,
    }


def container_labels(
    sandbox_id: base.SandboxID,
    config: base.ContainerConfig,
    sandbox: base.SandboxConfig,
    *,
    log_path: str = "",
) -> dict[str, str]:
    labels = {
        **config.labels,
        **_annotation_labels(config.annotations),
        base.LABEL_POD_NAME: sandbox.name,
        base.LABEL_POD_NAMESPACE: sandbox.namespace,
        base.LABEL_POD_UID: sandbox.uid,
        base.LABEL_CONTAINER_NAME: config.name,
        base.LABEL_MANAGED_BY: MANAGED_VALUE,
        base.LABEL_SANDBOX_ID: sandbox_id,
        LABEL_TYPE: TYPE_CONTAINER,
    }
    if log_path:
        labels[LABEL_LOG_PATH] = log_path
    return labels


def visible_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    """The labels that cross the seam: without our Docker-only bookkeeping."""
    return {
        k: v
        for k, v in (labels or {}).items()
        if k not in _INTERNAL_LABELS and not k.startswith(ANNOTATION_PREFIX)
    }


def list_filters(kind: str, uid: PodUID | None) -> dict[str, list[str]]:
    """Docker list filters (all must match): ours, of one type, of one pod if uid is given."""
    labels = [f"{base.LABEL_MANAGED_BY}={MANAGED_VALUE}", f"{LABEL_TYPE}={kind}"]
    if uid is not None:
        labels.append(f"{base.LABEL_POD_UID}={uid}")
    return {"label": labels}


# --- create requests -------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateSpec:
    """Arguments for docker-py's create_container, and for create_host_config separately."""

    container: Mapping[str, Any]
    host: Mapping[str, Any]


def sandbox_spec(config: base.SandboxConfig, *, image: str, ipv6: bool = True) -> CreateSpec:
    host: dict[str, Any] = {
        "network_mode": "host" if config.host_network else "none",
        "ipc_mode": "host" if config.host_ipc else "shareable",
    }
    if config.host_pid:
        host["pid_mode"] = "host"
    sysctls = dict(config.sysctls)
    if ipv6 and not config.host_network:
        # Docker disables IPv6 in a namespace it makes (``::1`` and link-local addresses
        # missing); a namespace containerd makes keeps the kernel default, enabled.
        sysctls.update(
            {
                "net.ipv6.conf.all.disable_ipv6": "0",
                "net.ipv6.conf.default.disable_ipv6": "0",
            }
        )
    if sysctls:
        host["sysctls"] = sysctls
    if config.cgroup_parent:
        host["cgroup_parent"] = config.cgroup_parent
    if config.dns is not None:
        host.update(
            dns=list(config.dns.servers),
            dns_search=list(config.dns.searches),
            dns_opt=list(config.dns.options),
        )
    container: dict[str, Any] = {
        "image": image,
        "name": sandbox_name(config),
        "labels": sandbox_labels(config),
    }
    # A host-network pod shares the node's UTS namespace: Docker refuses a hostname there.
    if not config.host_network and config.hostname:
        container["hostname"] = config.hostname
    return CreateSpec(container=container, host=host)


def container_spec(
    sandbox_id: base.SandboxID,
    config: base.ContainerConfig,
    sandbox: base.SandboxConfig,
    *,
    log_path: str = "",
    image_user: str = "",
    log_rotation: LogRotation | None = None,
) -> CreateSpec:
    """``image_user`` (the image's USER) is needed only when runAsGroup comes without a user."""
    container: dict[str, Any] = {
        "image": config.image,
        "name": container_name(config, sandbox),
        "labels": container_labels(sandbox_id, config, sandbox, log_path=log_path),
        # Kubernetes semantics match Docker's: a given entrypoint drops the image's CMD too.
        "entrypoint": list(config.command) or None,
        "command": list(config.args) or None,
        "environment": [f"{k}={v}" for k, v in config.env],
        "working_dir": config.working_dir or None,
        "tty": config.tty,
        "stdin_open": config.stdin,
    }
    user = docker_user(config.security, image_user)
    if user:
        container["user"] = user
    host: dict[str, Any] = {
        "network_mode": "host" if sandbox.host_network else f"container:{sandbox_id}",
        "ipc_mode": "host" if sandbox.host_ipc else f"container:{sandbox_id}",
        **pid_mode(sandbox_id, sandbox, config.pid_target),
        **security_args(config.security),
        "mounts": [
            {
                "Type": "bind",
                "Source": m.host_path,
                "Target": m.container_path,
                "ReadOnly": m.readonly,
            }
            for m in config.mounts
        ],
        **resource_args(config.resources),
    }
    if sandbox.cgroup_parent:  # Docker puts each container where it is told, not by pod
        host["cgroup_parent"] = sandbox.cgroup_parent
    if log_rotation is not None:
        host["log_config"] = log_rotation.log_config()
    return CreateSpec(container=container, host=host)


@dataclass(frozen=True)
class LogRotation:
    """Docker's json-file rotation: rotate at ``max_bytes``, keep ``max_files`` files."""

    max_bytes: int
    max_files: int

    def log_config(self) -> dict[str, Any]:
        # dockerd reads a bare number as bytes.
        options = {"max-size": str(self.max_bytes), "max-file": str(self.max_files)}
        return {"Type": "json-file", "Config": options}


def pid_mode(
    sandbox_id: base.SandboxID, sandbox: base.SandboxConfig, target: str = ""
) -> dict[str, str]:
    if sandbox.host_pid:
        return {"pid_mode": "host"}
    if sandbox.share_pid:
        return {"pid_mode": f"container:{sandbox_id}"}
    if target:
        return {"pid_mode": f"container:{target}"}
    return {}


def docker_user(security: base.ContainerSecurity, image_user: str = "") -> str:
    """Docker's ``user``: "uid", "uid:gid"; a group alone keeps the image's user."""
    if security.run_as_user is not None:
        user = str(security.run_as_user)
    elif security.run_as_group is not None:
        user = image_user.split(":", 1)[0] or "0"
    else:
        return ""
    if security.run_as_group is not None:
        user += f":{security.run_as_group}"
    return user


def security_args(security: base.ContainerSecurity) -> dict[str, Any]:
    """HostConfig security fields, as dockershim set them from the CRI security context."""
    args: dict[str, Any] = {}
    if security.privileged:
        args["privileged"] = True
    if security.readonly_rootfs:
        args["read_only"] = True
    if security.supplemental_groups:
        args["group_add"] = [str(g) for g in security.supplemental_groups]
    if security.capabilities_add:
        args["cap_add"] = list(security.capabilities_add)
    if security.capabilities_drop:
        args["cap_drop"] = list(security.capabilities_drop)
    opts = []
    if security.no_new_privs:
        opts.append("no-new-privileges")
    # Docker applies its default profile unless told otherwise; Kubernetes' default is none.
    if security.seccomp == "Unconfined" and not security.privileged:
        opts.append("seccomp=unconfined")
    if opts:
        args["security_opt"] = opts
    return args


def resource_args(resources: base.Resources) -> dict[str, int]:
    """HostConfig limits; unset (0) values are left out, so Docker keeps its defaults."""
    args: dict[str, int] = {}
    if resources.cpu_period:
        args["cpu_period"] = resources.cpu_period
    if resources.cpu_quota:
        args["cpu_quota"] = resources.cpu_quota
    if resources.cpu_shares:
        args["cpu_shares"] = resources.cpu_shares
    if resources.oom_score_adj:
        args["oom_score_adj"] = resources.oom_score_adj
    if resources.memory_limit_bytes:
        # No swap beyond the limit, as the kubelet asked dockershim for.
        args["mem_limit"] = resources.memory_limit_bytes
        args["memswap_limit"] = resources.memory_limit_bytes
    return args


def cni_port_mappings(config: base.SandboxConfig) -> list[dict[str, Any]]:
    """The ``portMappings`` capability argument, in the portmap plugin's format."""
    return [
        {
            "hostPort": p.host_port,
            "containerPort": p.container_port,
            "protocol": p.protocol.lower(),
            "hostIP": p.host_ip,
        }
        for p in config.port_mappings
        if p.host_port
    ]


def cni_args(config: base.SandboxConfig, sandbox_id: str) -> list[tuple[str, str]]:
    """CNI_ARGS as containerd's CRI plugin passes them."""
    return [
        ("K8S_POD_NAMESPACE", config.namespace),
        ("K8S_POD_NAME", config.name),
        ("K8S_POD_INFRA_CONTAINER_ID", sandbox_id),
        ("K8S_POD_UID", config.uid),
    ]


# --- errors --------------------------------------------------------------------------------------


def translate_error(
    exc: BaseException, what: str, *, failure: type[base.RuntimeFailure] | None = None
) -> base.RuntimeFailure:
    """The seam's error for a failed Docker call, carrying Docker's own message.

    ``failure``, when given, replaces the mapping for every error except an unreachable
    daemon: a pull that fails for any reason is an image pull failure, but a daemon that does
    not answer is still unavailable. requests' connection errors and timeouts (raised through
    docker-py) are OSErrors.
    """
    if isinstance(exc, base.RuntimeFailure):
        return exc
    if isinstance(exc, docker.errors.APIError):
        message = f"{what}: {exc.explanation or exc}"
        status = exc.status_code or 0
        if failure is not None:
            return failure(message)
        if isinstance(exc, docker.errors.NotFound) or status == 404:
            return base.NotFound(message)
        if 400 <= status < 500:
            return base.InvalidInput(message)
        return base.RuntimeFailure(message)
    if isinstance(exc, OSError | TimeoutError):
        return base.RuntimeUnavailable(f"{what}: {exc or type(exc).__name__}")
    return (failure or base.RuntimeFailure)(f"{what}: {exc or type(exc).__name__}")
