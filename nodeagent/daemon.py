"""Daemon wiring: build the components, connect them, supervise their tasks. No policy here.

Data flows one way::

    FileSource --DesiredState--> PodManager --> PodWorker (one per pod) --> Runtime
                                      ^                                        |
                                      +------ RuntimeCache (relist) <----------+

Every long-lived task runs under ``_supervised``: an unexpected exit is logged and the task
restarted after a short delay, so one broken loop never silently stops the node. Shutdown
(SIGTERM/SIGINT) detaches the pod workers without touching any pod, as the kubelet does: the
next start adopts them.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from nodeagent.config import Config
from nodeagent.kubelet import nodestatus
from nodeagent.kubelet.context import KubeletContext
from nodeagent.kubelet.images import ImageManager
from nodeagent.kubelet.manager import PodManager
from nodeagent.kubelet.pleg import RuntimeCache
from nodeagent.model.pod import PodUID
from nodeagent.network import cni
from nodeagent.runtime.base import Runtime, RuntimeFailure
from nodeagent.server.status import StatusServer, StatusServerError
from nodeagent.sources.file import DesiredState, FileSource

log = structlog.get_logger("nodeagent.daemon")

NODE_STATUS_INTERVAL_S = 10.0
ORPHAN_SWEEP_INTERVAL_S = 10.0


def build_runtime(config: Config) -> Runtime:
    if config.runtime == "cri":
        from nodeagent.runtime.cri import CRIRuntime

        return CRIRuntime(config.runtime_endpoint, timeout_s=config.runtime_timeout_s)
    raise SystemExit(f"runtime {config.runtime!r} is not available in this version of nodeagent")


class Node:
    """The running agent's parts, and the status snapshot they add up to."""

    def __init__(self, config: Config, runtime: Runtime) -> None:
        self.config = config
        self.runtime = runtime
        self.runtime_version = ""
        self.runtime_name: str = "containerd" if config.runtime == "cri" else config.runtime
        self.desired = DesiredState()
        self.cache = RuntimeCache(
            runtime, on_change=self._runtime_changed, interval_s=config.relist_interval_s
        )
        self.ctx = KubeletContext(
            node_name=config.node_name,
            host_ip=nodestatus.host_ip(),
            state_dir=config.state_dir,
            pod_log_dir=str(config.pod_log_dir),
            runtime=runtime,
            runtime_name=self.runtime_name,
            cache=self.cache,
            images=ImageManager(runtime),
        )
        self.manager = PodManager(self.ctx)
        self.source = (
            FileSource(
                config.manifests,
                node_name=config.node_name,
                on_update=self._desired_changed,
                interval_s=config.file_check_interval_s,
            )
            if config.manifests is not None
            else None
        )

    def _runtime_changed(self, uid: PodUID) -> None:
        self.manager.on_runtime_change(uid)

    def _desired_changed(self, state: DesiredState) -> None:
        self.desired = state
        self.manager.update(state.pods)

    async def run_source(self) -> None:
        await self.cache.synced.wait()  # adopt what runs before deciding anything
        if self.source is None:
            self.manager.update({})
            await asyncio.Event().wait()
        else:
            await self.source.run()

    async def sweep_orphans(self) -> None:
        while True:
            await asyncio.sleep(ORPHAN_SWEEP_INTERVAL_S)
            if self.cache.healthy:
                self.manager.cleanup_orphans()

    async def learn_runtime_version(self) -> None:
        while not self.runtime_version:
            try:
                version = await self.runtime.version()
            except RuntimeFailure as exc:
                log.warning("runtime_version_failed", error=str(exc))
                await asyncio.sleep(NODE_STATUS_INTERVAL_S)
                continue
            self.runtime_name, self.runtime_version = version.name, version.version
        await asyncio.Event().wait()

    def _node_status(self) -> dict[str, Any]:
        facts = nodestatus.NodeFacts(
            name=self.config.node_name,
            max_pods=self.config.max_pods,
            runtime_name=self.runtime_name,
            runtime_version=self.runtime_version,
            runtime_healthy=self.cache.healthy,
            runtime_error=self.cache.last_error,
            state_dir=str(self.config.state_dir),
            now=time.time(),
        )
        return nodestatus.node_status(facts)

    def snapshot(self) -> dict[str, Any]:
        return {
            "node": self._node_status(),
            "pods": self.manager.snapshot(),
            "services": [
                {
                    "metadata": {"name": s.name, "namespace": s.namespace},
                    "spec": dict(s.raw.get("spec") or {}),
                }
                for s in self.desired.services.values()
            ],
            "errors": [e.to_json() for e in self.desired.errors],
        }


async def _supervised(name: str, factory: Callable[[], Awaitable[None]]) -> None:
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


def _prepare_network(config: Config) -> None:
    config.state_dir.mkdir(parents=True, exist_ok=True)
    conflist = cni.render_conflist(
        pod_cidr=str(config.pod_cidr), ipam_data_dir=str(config.state_dir / "ipam")
    )
    path = cni.write_conflist(config.cni_conf_dir, conflist)
    log.info("cni_config_written", path=str(path), pod_cidr=str(config.pod_cidr))


async def run(config: Config) -> int:
    await asyncio.to_thread(_prepare_network, config)
    runtime = build_runtime(config)
    node = Node(config, runtime)
    server = StatusServer(str(config.status_socket), node.snapshot)
    try:
        await server.start()
    except StatusServerError as exc:
        log.error("status_socket_unavailable", path=str(config.status_socket), error=str(exc))
        await runtime.close()
        return 1
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
    loops = {
        "relist": node.cache.run,
        "source": node.run_source,
        "orphans": node.sweep_orphans,
        "runtime-version": node.learn_runtime_version,
    }
    tasks = [asyncio.create_task(_supervised(n, f), name=n) for n, f in loops.items()]
    try:
        await stop.wait()
    finally:
        log.info("agent_stopping", pods_left_running=len(node.manager.snapshot()))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await node.manager.detach_all()
        await server.close()
        await runtime.close()
    return 0
