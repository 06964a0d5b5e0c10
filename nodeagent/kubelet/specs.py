"""Pod spec -> runtime configs (sandbox and container). Pure: no runtime calls here."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from nodeagent.kubelet import envvars, security
from nodeagent.kubelet.containerhash import LABEL_CONTAINER_HASH, container_hash
from nodeagent.kubelet.dns import DNSSettings, sandbox_dns
from nodeagent.kubelet.etchosts import kernel_hostname
from nodeagent.model.pod import Container, Pod
from nodeagent.runtime.base import (
    ContainerConfig,
    Mount,
    PortMapping,
    Resources,
    SandboxConfig,
)

CPU_PERIOD_US = 100_000
MIN_SHARES = 2
HOSTS_PATH = "/etc/hosts"


@dataclass(frozen=True)
class PodFiles:
    """Files the agent writes for a container instance and mounts into it ("" for none)."""

    hosts: str = ""  # the pod's managed /etc/hosts
    termination_log: str = ""  # this instance's terminationMessagePath


def termination_log_path(pod_dir: str, container: str, attempt: int) -> str:
    """One file per container instance, so lastState keeps the previous one's message."""
    return os.path.join(pod_dir, "containers", container, f"{attempt}-termination-log")


def log_directory(pod_log_dir: str, pod: Pod) -> str:
    """/var/log/pods/<namespace>_<name>_<uid>, as the kubelet lays it out."""
    return os.path.join(pod_log_dir, f"{pod.namespace}_{pod.name}_{pod.uid}")


def sandbox_config(
    pod: Pod,
    *,
    attempt: int,
    pod_log_dir: str,
    dns: DNSSettings | None = None,
    cgroup_parent: str = "",
) -> SandboxConfig:
    ports = tuple(
        PortMapping(
            container_port=p.container_port,
            host_port=p.host_port,
            protocol=p.protocol,
            host_ip=p.host_ip,
        )
        for c in pod.spec.containers
        for p in c.ports
        if p.host_port
    )
    return SandboxConfig(
        name=pod.name,
        namespace=pod.namespace,
        uid=pod.uid,
        attempt=attempt,
        hostname=kernel_hostname(pod, cluster_domain=(dns or DNSSettings()).cluster_domain),
        log_directory=log_directory(pod_log_dir, pod),
        labels=dict(pod.labels),
        annotations=dict(pod.annotations),
        port_mappings=ports,
        host_network=pod.spec.host_network,
        dns=sandbox_dns(pod, dns) if dns is not None else None,
        host_pid=pod.spec.host_pid,
        host_ipc=pod.spec.host_ipc,
        share_pid=pod.spec.share_process_namespace,
        sysctls=dict(pod.spec.security_context.sysctls),
        security=security.sandbox_security(pod),
        cgroup_parent=cgroup_parent,
    )


def resources(container: Container, oom_score_adj: int = 0) -> Resources:
    res = container.resources
    cpu_limit = res.cpu_limit_millis
    cpu_request = res.cpu_request_millis if res.cpu_request_millis is not None else cpu_limit
    return Resources(
        cpu_period=CPU_PERIOD_US if cpu_limit else 0,
        cpu_quota=(cpu_limit * CPU_PERIOD_US) // 1000 if cpu_limit else 0,
        cpu_shares=max(MIN_SHARES, (cpu_request * 1024) // 1000) if cpu_request else MIN_SHARES,
        memory_limit_bytes=res.memory_limit_bytes or 0,
        oom_score_adj=oom_score_adj,
    )


def container_mounts(
    container: Container, volume_paths: Mapping[str, str], files: PodFiles = PodFiles()
) -> tuple[Mount, ...]:
    mounts = []
    for vm in container.volume_mounts:
        host = volume_paths[vm.name]
        if vm.sub_path:
            host = os.path.join(host, vm.sub_path)
        mounts.append(Mount(host_path=host, container_path=vm.mount_path, readonly=vm.read_only))
    taken = {m.container_path for m in mounts}
    # A volume the user mounts at /etc/hosts wins over the managed file, as in the kubelet.
    if files.hosts and HOSTS_PATH not in taken:
        mounts.append(Mount(host_path=files.hosts, container_path=HOSTS_PATH))
    if files.termination_log and container.termination_message_path not in taken:
        mounts.append(
            Mount(
                host_path=files.termination_log, container_path=container.termination_message_path
            )
        )
    return tuple(mounts)


def container_config(
    pod: Pod,
    container: Container,
    *,
    attempt: int,
    facts: envvars.PodFacts,
    volume_paths: Mapping[str, str],
    files: PodFiles = PodFiles(),
    spec_hash: str = "",
    pid_target: str = "",
    oom_score_adj: int = 0,
) -> ContainerConfig:
    """``spec_hash``: the hash of the container as the pod spec has it (before env is resolved
    afresh or sub-paths expanded), so that the next plan compares like with like."""
    spec_hash = spec_hash or container_hash(container)
    env = envvars.resolve_env(pod, container, facts)
    command, args = envvars.expand_command(container, env)
    return ContainerConfig(
        name=container.name,
        attempt=attempt,
        image=container.image,
        log_path=os.path.join(container.name, f"{attempt}.log"),
        command=command,
        args=args,
        working_dir=container.working_dir,
        env=env,
        mounts=container_mounts(container, volume_paths, files),
        # The hash is a label too: both backends report labels back, annotations not.
        labels={LABEL_CONTAINER_HASH: spec_hash},
        annotations={
            "io.kubernetes.container.restartCount": str(attempt),
            LABEL_CONTAINER_HASH: spec_hash,
        },
        resources=resources(container, oom_score_adj),
        stdin=container.stdin,
        tty=container.tty,
        security=security.container_security(pod, container),
        pid_target=pid_target,
    )
