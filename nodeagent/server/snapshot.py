"""The status snapshot the status socket serves, assembled from the agent's parts.

The daemon hands over one reader per part (the node, the pods, the proxy, the events, the
cluster link); this puts them together in the shape ``nodeagent`` views read, and adds what
describe shows beside a pod's status: the containers in back-off (with the time their next
try is due) and a summary of its spec (``podspec``). The node part (conditions, usage: it
reads every process of the machine and every interface) is sampled at most once every
``NODE_STATUS_TTL_S``, so that a client polling the socket does not cost the agent a core.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nodeagent.model.pod import Pod, PodUID
from nodeagent.server import podspec

Obj = dict[str, Any]

NODE_STATUS_TTL_S = 1.0


@dataclass(frozen=True)
class Agent:
    """Where this agent keeps what a client (``nodeagent logs``) reads directly."""

    pod_log_dir: str
    mode: str  # "standalone" or "cluster"
    metrics_bind: str

    def to_json(self) -> Obj:
        return {"podLogDir": self.pod_log_dir, "mode": self.mode, "metricsBind": self.metrics_bind}


@dataclass(frozen=True)
class PodExtras:
    """What describe shows beside a pod's status."""

    pod: Pod
    backoff_until: Mapping[str, float]  # container -> wall time of its next try


@dataclass(frozen=True)
class Parts:
    """One reader per part of the snapshot; ``None``: the part is not shown (mode)."""

    agent: Agent
    node: Callable[[], Obj]
    pods: Callable[[], list[Obj]]
    extras: Callable[[PodUID], PodExtras | None]
    services: Callable[[], Any]
    proxy: Callable[[], Any]
    errors: Callable[[], list[Any]]
    events: Callable[[], Any]
    cluster: Callable[[], Obj] | None = None
    network: Callable[[], Obj] | None = None


class Snapshot:
    def __init__(self, parts: Parts) -> None:
        self._parts = parts
        self._node_sample: tuple[float, Obj] | None = None  # (monotonic, status)

    def __call__(self) -> Obj:
        parts = self._parts
        return {
            **({"cluster": parts.cluster()} if parts.cluster is not None else {}),
            "agent": parts.agent.to_json(),
            "node": self._node(),
            "pods": with_extras(parts.pods(), parts.extras, now=time.time()),
            "services": parts.services(),
            "proxy": parts.proxy(),
            "errors": parts.errors(),
            "events": parts.events(),
            **({"network": parts.network()} if parts.network is not None else {}),
        }

    def _node(self) -> Obj:
        now = time.monotonic()
        if self._node_sample is not None and now - self._node_sample[0] < NODE_STATUS_TTL_S:
            return self._node_sample[1]
        status = self._parts.node()
        self._node_sample = (now, status)
        return status


def with_extras(
    pods: list[Obj], extras: Callable[[PodUID], PodExtras | None], *, now: float
) -> list[Obj]:
    """Add the containers in back-off (those still due) and the spec summary to each pod."""
    for pod in pods:
        found = extras(PodUID(pod["metadata"]["uid"]))
        if found is None:
            continue
        due = {name: _rfc3339(t) for name, t in sorted(found.backoff_until.items()) if t > now}
        if due:
            pod["backoffUntil"] = due
        pod["spec"] = podspec.spec_summary(found.pod)
    return pods


def sorted_pods(running: list[Obj], evicted: list[Obj], held: list[Obj]) -> list[Obj]:
    """The running pods (without those evicted), the evicted and the held, by namespace/name."""
    gone = {e["metadata"]["uid"] for e in evicted}
    pods = [p for p in running if p["metadata"]["uid"] not in gone] + evicted + held
    return sorted(pods, key=lambda p: (p["metadata"]["namespace"], p["metadata"]["name"]))


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
