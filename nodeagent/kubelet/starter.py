"""Creating and starting one container in its pod's sandbox, once its image is present.

A module of its own because the way from a spec container to a running instance is long
and is one concern: env read afresh, subPathExpr expanded, sub-paths prepared, runAsNonRoot
checked against the image's user, the pod's /etc/hosts and this instance's empty
termination-log file written, then create and start in the runtime. Each step that fails
names the waiting reason the kubelet shows for it (``StartError.reason``); what the worker
does about a failure (backoff, a sooner sync) stays in the worker.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path

from nodeagent.kubelet import envvars, etchosts, nodestatus, security, specs, termination, volumes
from nodeagent.kubelet.containerhash import container_hash
from nodeagent.kubelet.context import KubeletContext
from nodeagent.kubelet.envvars import PodFacts
from nodeagent.model.pod import Container, EnvVar, Pod
from nodeagent.runtime.base import ContainerID, ContainerState, RuntimeFailure, SandboxInfo

NODE_HOSTS = Path("/etc/hosts")  # what a host-network pod's /etc/hosts starts from
EnvSource = Callable[[Pod, str], Awaitable[tuple[EnvVar, ...] | None]]
VolumePaths = Callable[[], Awaitable[dict[str, str]]]  # volume name -> host path, on demand


class StartError(Exception):
    """A container could not be created or started; ``reason`` is its waiting reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


async def create_and_start(
    ctx: KubeletContext,
    pod: Pod,
    container: Container,
    *,
    attempt: int,
    sandbox: SandboxInfo,
    env_source: EnvSource | None,
    volume_paths: VolumePaths,
) -> tuple[Container, ContainerID]:
    """Create and start the container; return it as started (env, sub-paths) and its id."""
    reason = "CreateContainerConfigError"
    spec_hash = container_hash(container)  # of the spec, before env and sub-paths resolve
    try:
        if env_source is not None:  # env is resolved at each container creation
            fresh = await env_source(pod, container.name)
            if fresh is not None:
                container = dataclasses.replace(container, env=fresh)
        paths = await volume_paths()
        container = volumes.read_only_volumes(pod, container)
        pod_facts = facts(ctx, sandbox.ip, pod)
        if any(m.sub_path_expr for m in container.volume_mounts):
            env = envvars.resolve_env(pod, container, pod_facts)
            container = volumes.expand_sub_path_exprs(container, dict(env))
        await volumes.prepare_sub_paths(paths, container)
        await check_non_root(ctx, pod, container)
        config = specs.container_config(
            pod,
            container,
            attempt=attempt,
            facts=pod_facts,
            volume_paths=paths,
            files=await pod_files(ctx, pod, container, attempt, sandbox.ip),
            spec_hash=spec_hash,
            pid_target=pid_target(ctx, pod, container),
            oom_score_adj=ctx.cgroups.oom_score_adj(pod, container) if ctx.cgroups else 0,
        )
        sandbox_config = specs.sandbox_config(
            pod,
            attempt=sandbox.attempt,
            pod_log_dir=ctx.pod_log_dir,
            dns=ctx.dns,
            cgroup_parent=ctx.cgroups.parent(pod) if ctx.cgroups else "",
        )
        reason = "CreateContainerError"
        container_id = await ctx.runtime.create_container(sandbox.id, config, sandbox_config)
        reason = "RunContainerError"
        await ctx.runtime.start_container(container_id)
    except (RuntimeFailure, KeyError, ValueError, volumes.VolumeError, OSError) as exc:
        raise StartError(reason, str(exc)) from exc
    return container, container_id


def pid_target(ctx: KubeletContext, pod: Pod, container: Container) -> str:
    """The running instance of an ephemeral container's target, whose processes it sees
    (``kubectl debug --target``); "" when there is none (it then gets a PID namespace of
    its own, as the runtime gives one)."""
    if not container.target_container_name:
        return ""
    target = ctx.cache.get(pod.uid).latest(container.target_container_name)
    return target.id if target is not None and target.state is ContainerState.RUNNING else ""


async def check_non_root(ctx: KubeletContext, pod: Pod, container: Container) -> None:
    """runAsNonRoot against the image's user; a ValueError is CreateContainerConfigError."""
    if not security.wants_non_root(pod, container):
        return
    user = await ctx.runtime.image_user(container.image)
    problem = security.run_as_non_root_error(pod, container, user)
    if problem:
        raise ValueError(problem)


async def pod_files(
    ctx: KubeletContext, pod: Pod, container: Container, attempt: int, pod_ip: str
) -> specs.PodFiles:
    """Write the pod's /etc/hosts and this instance's empty termination-log file."""
    pod_dir = volumes.pod_dir(ctx.state_dir, pod)
    hosts = await etchosts.write(
        pod_dir,
        pod,
        pod_ip,
        cluster_domain=ctx.dns.cluster_domain,
        node_hosts=NODE_HOSTS,
    )
    log = specs.termination_log_path(str(pod_dir), container.name, attempt)
    await asyncio.to_thread(termination.prepare_file, log)
    return specs.PodFiles(hosts=hosts, termination_log=log)


def facts(ctx: KubeletContext, pod_ip: str, pod: Pod) -> PodFacts:
    """What the downward API reads beyond the spec (allocatable stands in for unset limits),
    and the Service variables as the Services are now."""
    allocatable = nodestatus.allocatable(0)
    links = pod.spec.enable_service_links
    return PodFacts(
        ctx.node_name,
        pod_ip,
        ctx.host_ip,
        node_cpu_millis=int(allocatable["cpu"]) * 1000,
        node_memory_bytes=int(allocatable["memory"].removesuffix("Ki")) * 1024,
        service_env=envvars.service_env(ctx.services(), pod.namespace, links=links),
    )
