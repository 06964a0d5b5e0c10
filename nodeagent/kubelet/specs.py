"""Pod spec -> runtime configs (sandbox and container). Pure: no runtime calls here."""

from __future__ import annotations

import os
from collections.abc import Mapping

from nodeagent.kubelet import envvars
from nodeagent.kubelet.dns import DNSSettings, sandbox_dns
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


def log_directory(pod_log_dir: str, pod: Pod) -> str:
    """/var/log/pods/<namespace>_<name>_<uid>, as the kubelet lays it out."""
    return os.path.join(pod_log_dir, f"{pod.namespace}_{pod.name}_{pod.uid}")


def sandbox_config(
    pod: Pod, *, attempt: int, pod_log_dir: str, dns: DNSSettings | None = None
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
        hostname=(pod.spec.hostname or pod.name)[:63],
        log_directory=log_directory(pod_log_dir, pod),
        labels=dict(pod.labels),
        annotations=dict(pod.annotations),
        port_mappings=ports,
        host_network=pod.spec.host_network,
        dns=sandbox_dns(pod, dns) if dns is not None else None,
    )


def resources(container: Container) -> Resources:
    res = container.resources
    cpu_limit = res.cpu_limit_millis
    cpu_request = res.cpu_request_millis if res.cpu_request_millis is not None else cpu_limit
    return Resources(
        cpu_period=CPU_PERIOD_US if cpu_limit else 0,
        cpu_quota=(cpu_limit * CPU_PERIOD_US) // 1000 if cpu_limit else 0,
        cpu_shares=max(MIN_SHARES, (cpu_request * 1024) // 1000) if cpu_request else MIN_SHARES,
        memory_limit_bytes=res.memory_limit_bytes or 0,
    )


def container_mounts(container: Container, volume_paths: Mapping[str, str]) -> tuple[Mount, ...]:
    mounts = []
    for vm in container.volume_mounts:
        host = volume_paths[vm.name]
        if vm.sub_path:
            host = os.path.join(host, vm.sub_path)
        mounts.append(Mount(host_path=host, container_path=vm.mount_path, readonly=vm.read_only))
    return tuple(mounts)


def container_config(
    pod: Pod,
    container: Container,
    *,
    attempt: int,
    facts: envvars.PodFacts,
    volume_paths: Mapping[str, str],
) -> ContainerConfig:
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
        mounts=container_mounts(container, volume_paths),
        annotations={"io.kubernetes.container.restartCount": str(attempt)},
        resources=resources(container),
        stdin=container.stdin,
        tty=container.tty,
    )
