"""Conversions between the runtime seam's dataclasses and CRI ``runtime.v1`` messages.

Pure functions, no I/O, so the CRI client stays a thin list of RPCs. Two policies live here
because every call path must apply them the same way:

- Labels. Every sandbox and container we create carries the pod's name, namespace and uid,
  containers also their name, plus our managed-by marker (and, on containers, the sandbox id,
  which CRI's ContainerStatus does not report). Our labels are applied last, so a pod label
  can never overwrite them and make a sandbox look like another pod's.
- Namespaces. A host-network pod gets NamespaceMode NODE for the network on the sandbox and on
  each container; PID is per container (CRI defaults to POD, Kubernetes to CONTAINER) unless
  the pod shares one (POD) or the host's (NODE); IPC is per pod, or the host's. Everything
  else is left unset, which CRI runtimes read as "runtime default".
- Security. Ids are sent only when set (Int64Value), so an unset user stays the image's.

Timestamps stay in nanoseconds, as CRI sends them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from nodeagent.model.pod import PodUID
from nodeagent.runtime import base
from nodeagent.runtime.cri import api_pb2 as pb

MANAGED_VALUE = "true"

_PROTOCOLS: Mapping[str, pb.Protocol] = {"TCP": pb.TCP, "UDP": pb.UDP, "SCTP": pb.SCTP}

_CONTAINER_STATES: Mapping[int, base.ContainerState] = {
    pb.CONTAINER_CREATED: base.ContainerState.CREATED,
    pb.CONTAINER_RUNNING: base.ContainerState.RUNNING,
    pb.CONTAINER_EXITED: base.ContainerState.EXITED,
    pb.CONTAINER_UNKNOWN: base.ContainerState.UNKNOWN,
}

_SANDBOX_STATES: Mapping[int, base.SandboxState] = {
    pb.SANDBOX_READY: base.SandboxState.READY,
    pb.SANDBOX_NOTREADY: base.SandboxState.NOTREADY,
}


# --- labels and filters ----------------------------------------------------------------------


def sandbox_labels(config: base.SandboxConfig) -> dict[str, str]:
    return {
        **config.labels,
        base.LABEL_POD_NAME: config.name,
        base.LABEL_POD_NAMESPACE: config.namespace,
        base.LABEL_POD_UID: config.uid,
        base.LABEL_MANAGED_BY: MANAGED_VALUE,
    }


def container_labels(
    sandbox_id: base.SandboxID, config: base.ContainerConfig, sandbox: base.SandboxConfig
) -> dict[str, str]:
    return {
        **config.labels,
        base.LABEL_POD_NAME: sandbox.name,
        base.LABEL_POD_NAMESPACE: sandbox.namespace,
        base.LABEL_POD_UID: sandbox.uid,
        base.LABEL_CONTAINER_NAME: config.name,
        base.LABEL_MANAGED_BY: MANAGED_VALUE,
        base.LABEL_SANDBOX_ID: sandbox_id,
    }


def managed_selector(uid: PodUID | None) -> dict[str, str]:
    """The label selector for list calls: ours only, and one pod's only when uid is given."""
    selector = {base.LABEL_MANAGED_BY: MANAGED_VALUE}
    if uid is not None:
        selector[base.LABEL_POD_UID] = uid
    return selector


# --- requests ------------------------------------------------------------------------------------


def namespace_options(config: base.SandboxConfig) -> pb.NamespaceOption:
    pid = pb.NODE if config.host_pid else pb.POD if config.share_pid else pb.CONTAINER
    return pb.NamespaceOption(
        network=pb.NODE if config.host_network else pb.POD,
        pid=pid,
        ipc=pb.NODE if config.host_ipc else pb.POD,
    )


_SECCOMP: Mapping[str, pb.SecurityProfile.ProfileType] = {
    "RuntimeDefault": pb.SecurityProfile.RuntimeDefault,
    "Unconfined": pb.SecurityProfile.Unconfined,
}


def _seccomp(profile: str) -> pb.SecurityProfile | None:
    kind = _SECCOMP.get(profile)
    return None if kind is None else pb.SecurityProfile(profile_type=kind)


def _int64(value: int | None) -> pb.Int64Value | None:
    return None if value is None else pb.Int64Value(value=value)


def sandbox_security_to_pb(config: base.SandboxConfig) -> pb.LinuxSandboxSecurityContext:
    sec = config.security
    return pb.LinuxSandboxSecurityContext(
        namespace_options=namespace_options(config),
        run_as_user=_int64(sec.run_as_user),
        supplemental_groups=sec.supplemental_groups,
        privileged=sec.privileged,
        run_as_group=_int64(sec.run_as_group),
        seccomp=_seccomp(sec.seccomp),
    )


def container_security_to_pb(
    security: base.ContainerSecurity, sandbox: base.SandboxConfig, *, pid_target: str = ""
) -> pb.LinuxContainerSecurityContext:
    namespaces = namespace_options(sandbox)
    if pid_target and namespaces.pid == pb.CONTAINER:
        namespaces = pb.NamespaceOption(
            network=namespaces.network, pid=pb.TARGET, ipc=namespaces.ipc, target_id=pid_target
        )
    return pb.LinuxContainerSecurityContext(
        capabilities=pb.Capability(
            add_capabilities=security.capabilities_add,
            drop_capabilities=security.capabilities_drop,
        ),
        privileged=security.privileged,
        namespace_options=namespaces,
        run_as_user=_int64(security.run_as_user),
        readonly_rootfs=security.readonly_rootfs,
        supplemental_groups=security.supplemental_groups,
        no_new_privs=security.no_new_privs,
        run_as_group=_int64(security.run_as_group),
        seccomp=_seccomp(security.seccomp),
    )


def sandbox_config_to_pb(config: base.SandboxConfig) -> pb.PodSandboxConfig:
    msg = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(
            name=config.name, uid=config.uid, namespace=config.namespace, attempt=config.attempt
        ),
        # A host-network pod shares the node's UTS namespace too: a hostname there makes runc
        # fail ("unable to set hostname without a private UTS namespace"). The kubelet also
        # leaves it empty for such pods.
        hostname="" if config.host_network else config.hostname,
        log_directory=config.log_directory,
        port_mappings=[port_mapping_to_pb(p) for p in config.port_mappings],
        labels=sandbox_labels(config),
        annotations=dict(config.annotations),
        linux=pb.LinuxPodSandboxConfig(
            cgroup_parent=config.cgroup_parent,
            security_context=sandbox_security_to_pb(config),
            sysctls=dict(config.sysctls),
        ),
    )
    if config.dns is not None:
        msg.dns_config.CopyFrom(
            pb.DNSConfig(
                servers=config.dns.servers,
                searches=config.dns.searches,
                options=config.dns.options,
            )
        )
    return msg


def port_mapping_to_pb(port: base.PortMapping) -> pb.PortMapping:
    protocol = _PROTOCOLS.get(port.protocol.upper())
    if protocol is None:
        raise base.InvalidInput(f"unsupported port protocol {port.protocol!r}")
    return pb.PortMapping(
        protocol=protocol,
        container_port=port.container_port,
        host_port=port.host_port,
        host_ip=port.host_ip,
    )


def container_config_to_pb(
    sandbox_id: base.SandboxID, config: base.ContainerConfig, sandbox: base.SandboxConfig
) -> pb.ContainerConfig:
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=config.name, attempt=config.attempt),
        image=pb.ImageSpec(image=config.image),
        command=config.command,
        args=config.args,
        working_dir=config.working_dir,
        envs=[pb.KeyValue(key=k, value=v) for k, v in config.env],
        mounts=[
            pb.Mount(container_path=m.container_path, host_path=m.host_path, readonly=m.readonly)
            for m in config.mounts
        ],
        labels=container_labels(sandbox_id, config, sandbox),
        annotations=dict(config.annotations),
        log_path=config.log_path,
        stdin=config.stdin,
        tty=config.tty,
        linux=pb.LinuxContainerConfig(
            resources=resources_to_pb(config.resources),
            security_context=container_security_to_pb(
                config.security, sandbox, pid_target=config.pid_target
            ),
        ),
    )


def resources_to_pb(resources: base.Resources) -> pb.LinuxContainerResources:
    # Without CAP_SYS_RESOURCE containerd (restrict_oom_score_adj) raises a lower score to its
    # own; the kubelet's side already asks no lower than that (kubelet/cgroups/manager.py).
    return pb.LinuxContainerResources(
        cpu_period=resources.cpu_period,
        cpu_quota=resources.cpu_quota,
        cpu_shares=resources.cpu_shares,
        memory_limit_in_bytes=resources.memory_limit_bytes,
        oom_score_adj=resources.oom_score_adj,
    )


# --- responses -----------------------------------------------------------------------------------


def sandbox_from_pb(msg: pb.PodSandbox | pb.PodSandboxStatus, *, ip: str = "") -> base.SandboxInfo:
    labels = dict(msg.labels)
    meta = msg.metadata
    return base.SandboxInfo(
        id=base.SandboxID(msg.id),
        uid=PodUID(meta.uid or labels.get(base.LABEL_POD_UID, "")),
        name=meta.name or labels.get(base.LABEL_POD_NAME, ""),
        namespace=meta.namespace or labels.get(base.LABEL_POD_NAMESPACE, ""),
        attempt=meta.attempt,
        state=_SANDBOX_STATES.get(msg.state, base.SandboxState.NOTREADY),
        created_at_ns=msg.created_at,
        labels=labels,
        ip=ip,
    )


def sandbox_status_from_pb(msg: pb.PodSandboxStatus) -> base.SandboxInfo:
    # Host-network sandboxes have no network status of their own; the ip stays "".
    return sandbox_from_pb(msg, ip=msg.network.ip)


def container_from_pb(msg: pb.Container) -> base.ContainerInfo:
    labels = dict(msg.labels)
    return base.ContainerInfo(
        id=base.ContainerID(msg.id),
        sandbox_id=base.SandboxID(msg.pod_sandbox_id),
        uid=PodUID(labels.get(base.LABEL_POD_UID, "")),
        name=msg.metadata.name or labels.get(base.LABEL_CONTAINER_NAME, ""),
        attempt=msg.metadata.attempt,
        image=msg.image.image,
        state=container_state(msg.state),
        created_at_ns=msg.created_at,
        labels=labels,
    )


def container_status_from_pb(
    msg: pb.ContainerStatus, sandbox_id: base.SandboxID
) -> base.ContainerInfo:
    labels = dict(msg.labels)
    return base.ContainerInfo(
        id=base.ContainerID(msg.id),
        sandbox_id=sandbox_id,
        uid=PodUID(labels.get(base.LABEL_POD_UID, "")),
        name=msg.metadata.name or labels.get(base.LABEL_CONTAINER_NAME, ""),
        attempt=msg.metadata.attempt,
        image=msg.image.image,
        state=container_state(msg.state),
        created_at_ns=msg.created_at,
        labels=labels,
        image_ref=msg.image_ref,
        started_at_ns=msg.started_at,
        finished_at_ns=msg.finished_at,
        exit_code=msg.exit_code,
        reason=msg.reason,
        message=msg.message,
        detailed=True,
    )


def container_state(state: int) -> base.ContainerState:
    return _CONTAINER_STATES.get(state, base.ContainerState.UNKNOWN)


def cgroup_driver_from_info(info: Mapping[str, str]) -> str:
    """containerd's verbose Status: its CRI config as JSON; the default runtime's runc
    ``SystemdCgroup`` option (or the old top-level ``systemdCgroup``) names the driver."""
    try:
        config = json.loads(info.get("config", ""))
        runtimes = config["containerd"]["runtimes"]
        default = runtimes[config["containerd"].get("defaultRuntimeName", "runc")]
        options = default.get("options") or {}
    except (ValueError, KeyError, TypeError, AttributeError):
        return ""
    systemd = options.get("SystemdCgroup", config.get("systemdCgroup", False))
    return "systemd" if systemd is True else "cgroupfs"


def runtime_status_from_pb(msg: pb.RuntimeStatus) -> base.RuntimeStatus:
    """RuntimeReady and NetworkReady; a condition the runtime does not report is not ready,
    as the kubelet reads it ("status check may not have completed yet")."""
    conditions = {c.type: c for c in msg.conditions}
    ready = {kind: kind in conditions and conditions[kind].status for kind in _CONDITIONS}
    for kind in _CONDITIONS:
        if not ready[kind]:
            found = conditions.get(kind)
            reason = found.reason if found is not None else "StatusNotReported"
            message = found.message if found is not None else f"no {kind} condition reported"
            return base.RuntimeStatus(
                runtime_ready=ready["RuntimeReady"],
                network_ready=ready["NetworkReady"],
                reason=reason,
                message=message,
            )
    return base.RuntimeStatus(runtime_ready=True, network_ready=True)


_CONDITIONS = ("RuntimeReady", "NetworkReady")
