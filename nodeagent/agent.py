"""The agent's life: read the kubeconfig, build the node (``daemon.Node``), open its
endpoints (status socket, metrics, kubelet API), run its loops under supervision, and on
SIGTERM/SIGINT stop them, leaving every pod running for the next start to adopt.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal

import structlog

from nodeagent import metrics, startup
from nodeagent.config import Config
from nodeagent.daemon import Node
from nodeagent.kubeletapi.handlers import NodeView
from nodeagent.network import sysctl
from nodeagent.runtime.base import Runtime, StreamingRuntime
from nodeagent.sdnotify import Notifier
from nodeagent.server.status import StatusServer, StatusServerError

log = structlog.get_logger("nodeagent.daemon")


async def run(config: Config) -> int:
    client = None
    if config.kubeconfig is not None:  # imported only here: standalone agents never load it
        from nodeagent.apiserver.client import ApiClient, KubeconfigError

        try:
            client = ApiClient.from_file(config.kubeconfig)
        except KubeconfigError as exc:
            log.error("kubeconfig_unusable", error=str(exc))
            return 2
    await asyncio.to_thread(config.state_dir.mkdir, parents=True, exist_ok=True)
    # The chosen address stands in for the flag from here on: every part reports the same one.
    config = dataclasses.replace(config, node_ip=await startup.node_ip(config))
    notifier = Notifier()
    observed = metrics.Metrics()  # this agent's own registry, never the global one
    metrics.install(observed)
    runtime: Runtime = metrics.InstrumentedRuntime(startup.build_runtime(config), observed)
    node = Node(config, runtime, client, await startup.cgroup_settings(config, runtime))
    if config.cluster_cidr is not None:
        node.sysctl_problems = sysctl.problems(await asyncio.to_thread(sysctl.prepare_node))
    server = StatusServer(str(config.status_socket), node.snapshot)
    try:
        await server.start()
    except StatusServerError as exc:
        log.error("status_socket_unavailable", path=str(config.status_socket), error=str(exc))
        await runtime.close()
        return 1
    if node.cluster is not None:
        cluster = node.cluster
        probe = metrics.ClusterProbe(
            watch_restarts=cluster.watch_restarts,
            last_heartbeat=lambda: cluster.lease.last_renewed,
        )
        observed.watch_cluster(probe)
    exporter = await startup.start_metrics(config, observed, healthy=lambda: node.cache.healthy)
    kubelet_api = await startup.start_kubelet_api(config, kubelet_view(node), client)
    log.info(
        "agent_started",
        node=config.node_name,
        runtime=config.runtime,
        endpoint=config.runtime_endpoint,
        manifests=str(config.manifests),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loops = node.loops(notifier)
    tasks = [asyncio.create_task(startup.supervised(n, f), name=n) for n, f in loops.items()]
    try:
        await stop.wait()
    finally:
        log.info("agent_stopping", pods_left_running=len(node.manager.snapshot()))
        notifier.stopping()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await node.manager.detach_all()
        await node.static_refs.close()
        if node.cluster is not None:
            await node.cluster.close()
        await server.close()
        if exporter is not None:
            await exporter.close()
        if kubelet_api is not None:
            await kubelet_api.close()
        await runtime.close()
    return 0


def kubelet_view(node: Node) -> NodeView:
    """What the kubelet API reads of the node."""
    runtime = node.runtime
    return NodeView(
        node_name=node.config.node_name,
        pods=node.manager.snapshot,
        sandboxes=runtime.list_sandboxes,
        pod_log_dir=node.config.pod_log_dir,
        streaming=runtime.streaming_url if isinstance(runtime, StreamingRuntime) else None,
    )
