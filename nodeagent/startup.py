"""What the agent sets up before it wires its parts, and how it keeps its loops running.

- The runtime backend ``--runtime`` names (``cri``: containerd; ``docker``: dockerd, with the
  agent running the CNI plugins itself, as Docker runs none).
- The node's IP: ``--node-ip``, else the address ``network/nodeip.py`` chooses.
- The node's DNS: the cluster's flags, and the node's own resolv.conf.
- The metrics endpoint (``--metrics-bind``), whose failure to bind costs only the metrics.
- ``supervised``: every long-lived loop runs under it: an unexpected exit is logged and the
  loop restarted after a short delay (doubling up to 30 s), so one broken loop never
  silently stops the node.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from nodeagent import metrics
from nodeagent.config import Config
from nodeagent.kubelet.dns import DNSSettings, parse_resolv_conf
from nodeagent.kubelet.imagegc import GcPolicy
from nodeagent.kubelet.images import ImageSettings
from nodeagent.network import nodeip
from nodeagent.runtime.base import Runtime

log = structlog.get_logger("nodeagent.daemon")  # the daemon's events, named as they were


def build_runtime(config: Config) -> Runtime:
    if config.runtime == "cri":
        from nodeagent.runtime.cri import CRIRuntime

        return CRIRuntime(config.runtime_endpoint, timeout_s=config.runtime_timeout_s)
    if config.runtime == "docker":
        from nodeagent.network.cniexec import CACHE_DIRNAME, CNIExec
        from nodeagent.runtime.docker import DockerRuntime

        # Docker runs no CNI: the agent attaches each sandbox to the same conflist itself.
        network = CNIExec(
            conf_dir=config.cni_conf_dir,
            bin_dirs=(config.cni_bin_dir,),
            cache_dir=config.state_dir / CACHE_DIRNAME,
        )
        return DockerRuntime(
            config.runtime_endpoint,
            network=network,
            pause_image=config.pause_image,
            timeout_s=config.runtime_timeout_s,
        )
    raise SystemExit(f"runtime {config.runtime!r} is not available in this version of nodeagent")


async def supervised(name: str, factory: Callable[[], Awaitable[None]]) -> None:
    """Run a long-lived loop forever: log and restart it if it ever ends or fails."""
    delay = 1.0
    while True:
        try:
            await factory()
            log.error("task_exited", task=name)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("task_crashed", task=name)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 30.0)


def image_settings(config: Config) -> ImageSettings:
    """Pulls and image GC, from the kubelet's flags of the same names."""
    return ImageSettings(
        serialize=config.serialize_image_pulls,
        max_parallel=config.max_parallel_image_pulls,
        node_credentials=config.image_credentials,
        gc=GcPolicy(
            high_percent=config.image_gc_high_threshold,
            low_percent=config.image_gc_low_threshold,
            min_age_s=config.image_minimum_gc_age,
        ),
        gc_interval_s=config.image_gc_interval_s,
        sandbox_image=config.pause_image,
    )


def dns_settings(config: Config, resolv_conf: str = "/etc/resolv.conf") -> DNSSettings:
    """The node's DNS: the cluster's flags, and the node's own resolv.conf."""
    try:
        with open(resolv_conf, encoding="utf-8") as f:
            servers, searches, options = parse_resolv_conf(f.read())
    except OSError:
        servers, searches, options = (), (), ()
    return DNSSettings(
        cluster_dns=config.cluster_dns,
        cluster_domain=config.cluster_domain,
        host_searches=searches,
        host_servers=servers,
        host_options=options,
    )


async def node_ip(config: Config) -> str:
    """``--node-ip``, else the address network/nodeip.py chooses (never a pod network's)."""
    if config.node_ip:
        return config.node_ip
    excluded = [str(c) for c in (config.cluster_cidr, config.pod_cidr) if c is not None]
    return await nodeip.find(excluded=excluded, hostname=config.node_name)


async def start_metrics(
    config: Config, observed: metrics.Metrics, *, healthy: Callable[[], bool]
) -> metrics.MetricsServer | None:
    """Serve /metrics and /healthz unless --metrics-bind is empty. A taken port costs the
    metrics (logged), not the node: pods matter more than their numbers."""
    if not config.metrics_bind:
        return None
    exporter = metrics.MetricsServer(config.metrics_bind, observed, healthy=healthy)
    try:
        await exporter.start()
    except metrics.MetricsError as exc:
        log.error("metrics_unavailable", error=str(exc))
        return None
    return exporter
