"""What the agent sets up before it wires its parts, and how it keeps its loops running.

- The runtime backend ``--runtime`` names (``cri``: containerd; ``docker``: dockerd, with the
  agent running the CNI plugins itself, as Docker runs none).
- The node's IP: ``--node-ip``, else the address ``network/nodeip.py`` chooses.
- The node's DNS: the cluster's flags, and the node's own resolv.conf.
- The pod cgroups' settings (``--cgroups-per-qos``): the driver is ``--cgroup-driver``, else
  the runtime's own (CRI RuntimeConfig or its info), else cgroupfs, as the kubelet decides.
- The CSI plugin registry (``--csi-plugins-dir``) and the volumes its drivers publish, with
  the API's CSI objects in cluster mode.
- The metrics endpoint (``--metrics-bind``), whose failure to bind costs only the metrics,
  and the kubelet API (``--kubelet-api-bind``, nodeagent/kubeletapi) likewise; its reviews
  go through the API client in cluster mode.
- ``supervised``: every long-lived loop runs under it: an unexpected exit is logged and the
  loop restarted after a short delay (doubling up to 30 s), so one broken loop never
  silently stops the node.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog

from nodeagent import metrics
from nodeagent.config import Config
from nodeagent.csi.mounter import CSIVolumes
from nodeagent.csi.registry import PluginRegistry
from nodeagent.kubelet import nodestatus
from nodeagent.kubelet.cgroups import policy
from nodeagent.kubelet.cgroups.manager import CgroupSettings, read_oom_score_floor
from nodeagent.kubelet.dns import DNSSettings, parse_resolv_conf
from nodeagent.kubelet.imagegc import GcPolicy
from nodeagent.kubelet.images import ImageSettings
from nodeagent.kubeletapi.auth import Review
from nodeagent.kubeletapi.handlers import NodeView
from nodeagent.kubeletapi.server import ApiSettings, KubeletApi
from nodeagent.network import nodeip
from nodeagent.runtime.base import Runtime, RuntimeFailure

if TYPE_CHECKING:  # standalone agents never load the API client
    from nodeagent.apiserver.client import ApiClient

log = structlog.get_logger("nodeagent.daemon")  # the daemon's events, named as they were


def build_runtime(config: Config) -> Runtime:
    if config.runtime == "cri":
        from nodeagent.runtime.cri import CRIRuntime

        return CRIRuntime(config.runtime_endpoint, timeout_s=config.runtime_timeout_s)
    if config.runtime == "docker":
        from nodeagent.network.cniexec import CACHE_DIRNAME, CNIExec
        from nodeagent.runtime.docker import DockerRuntime
        from nodeagent.runtime.docker_convert import LogRotation

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
            # Docker rotates its own logs; CRI runtimes' are rotated by the agent.
            log_rotation=LogRotation(config.container_log_max_size, config.container_log_max_files),
        )
    raise SystemExit(f"runtime {config.runtime!r} is not available in this version of nodeagent")


async def cgroup_settings(config: Config, runtime: Runtime) -> CgroupSettings | None:
    if not config.cgroups_per_qos:
        return None
    driver = config.cgroup_driver
    if not driver:
        try:
            driver = await runtime.cgroup_driver()
        except RuntimeFailure as exc:
            log.warning("cgroup_driver_unknown", error=str(exc), using="cgroupfs")
        driver = driver or "cgroupfs"
    capacity = await asyncio.to_thread(nodestatus.node_capacity)
    reserved = (config.kube_reserved, config.system_reserved)
    layout = policy.CgroupLayout(
        driver=policy.CgroupDriver(driver), root=policy.parse_cgroup_root(config.cgroup_root)
    )
    settings = CgroupSettings(
        layout=layout,
        kubepods=policy.kubepods_config(
            capacity, reserved, enforce="pods" in config.enforce_node_allocatable
        ),
        memory_capacity_bytes=capacity.memory_bytes,
        pids_max=config.pod_max_pids if config.pod_max_pids > 0 else None,
        oom_score_floor=await asyncio.to_thread(read_oom_score_floor),
        slice_parent=config.runtime == "docker",
    )
    log.info("cgroups", driver=driver, kubepods=layout.path(layout.kubepods()))
    return settings


def csi_volumes(config: Config, client: ApiClient | None) -> tuple[PluginRegistry, CSIVolumes]:
    """The CSI plugin registry and the volumes it mounts; in cluster mode also the CSINode
    object, CSIDrivers, VolumeAttachments and publish Secrets, through the API."""
    cluster_csi = None
    if client is not None:
        from nodeagent.apiserver.csi import ClusterCSI

        cluster_csi = ClusterCSI(client, node_name=config.node_name)
    plugins = PluginRegistry(
        config.csi_plugins_dir,
        listener=cluster_csi.driver_changed if cluster_csi is not None else None,
    )
    hooks = cluster_csi.hooks() if cluster_csi is not None else None
    return plugins, CSIVolumes(config.state_dir, plugins, hooks=hooks)


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


def api_reviews(client: ApiClient | None) -> Review | None:
    """TokenReview and SubjectAccessReview through the API client (cluster mode)."""
    if client is None:
        return None

    async def review(path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await client.request("POST", path, body=body)

    return review


async def start_kubelet_api(
    config: Config, view: NodeView, client: ApiClient | None
) -> KubeletApi | None:
    """Serve the kubelet API unless --kubelet-api-bind is off. Unusable certificate files or
    a taken port cost the API (logged), not the node, as with the metrics."""
    if not config.kubelet_api_bind:
        return None
    review = api_reviews(client)
    webhook = config.authorization_mode == "webhook" or (
        config.authorization_mode == "" and review is not None
    )
    if webhook and review is None:
        log.error("kubelet_api_unavailable", error="Webhook authorization needs a kubeconfig")
        return None
    settings = ApiSettings(
        bind=config.kubelet_api_bind,
        state_dir=config.state_dir,
        node_ip=config.node_ip,
        tls_cert_file=config.tls_cert_file,
        tls_private_key_file=config.tls_private_key_file,
        client_ca_file=config.client_ca_file,
        anonymous_auth=config.anonymous_auth,
        token_webhook=config.authentication_token_webhook,
        webhook_authz=webhook,
    )
    api = KubeletApi(settings, view, review)
    try:
        await api.start()
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        log.error("kubelet_api_unavailable", bind=config.kubelet_api_bind, error=str(exc))
        return None
    return api
