"""The operator's view in cluster mode: the API link in ``status node``, the events the
recorder sends to the API also in ``describe``, watch restarts and heartbeat age in /metrics.

Uses the cluster rig (tests/harness/cluster.py: a test API server on a private veth link to
the node).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from lightkube import AsyncClient

from tests.apiserver.process import ApiServerProcess
from tests.harness import TestNode, wait_for
from tests.harness.agent import Agent, cli, sample, scrape
from tests.harness.cluster import SLEEP, cluster_agent, create, pod_manifest, wait_ready

PODS = "/api/v1/pods"


@pytest.fixture
def agent(node: TestNode, api: ApiServerProcess) -> Iterator[Agent]:
    """The agent in cluster mode, on containerd."""
    with cluster_agent(node, api) as a:
        yield a


async def test_cluster_link_in_status_describe_and_metrics(
    api: ApiServerProcess,
    admin: AsyncClient,
    agent: Agent,
) -> None:
    await create(admin, pod_manifest("seen", SLEEP, grace=1))
    await wait_ready(admin, agent, "seen")

    def heartbeat() -> str | None:
        text = cli(agent, "status", "node").stdout
        return text if "last heartbeat" in text else None

    node_view = wait_for(heartbeat, 30, interval=0.5, message=agent.log_tail)
    assert re.search(r"API:\s+https://\S+   watching   last heartbeat \d+s ago", node_view)

    text = cli(agent, "describe", "pod", "seen").stdout
    events = text.split("Events:", 1)[1]
    assert "Started container main" in events  # sent to the API and kept locally

    before = sample(scrape(agent.node, "/metrics"), "nodeagent_api_watch_restarts_total")
    await api.restart(down_seconds=1.0)

    def restarted() -> str | None:
        metrics = scrape(agent.node, "/metrics")
        count = sample(metrics, "nodeagent_api_watch_restarts_total", collection=PODS)
        return metrics if count > before else None

    metrics = wait_for(restarted, 60, interval=0.5, message=agent.log_tail)
    age = sample(metrics, "nodeagent_heartbeat_age_seconds")
    assert "nodeagent_heartbeat_age_seconds " in metrics and 0 <= age < 60
    doc = json.loads(cli(agent, "status", "node", "--json").stdout)
    assert doc["agent"]["mode"] == "cluster"
    assert doc["cluster"]["watchRestarts"][PODS] >= 1
    assert doc["cluster"]["lastHeartbeat"]
