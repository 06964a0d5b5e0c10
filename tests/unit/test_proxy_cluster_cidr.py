"""Without ``--cluster-cidr`` the proxy's cluster is the node's pod CIDR, and it follows the
one the controller-manager assigns (``spec.podCIDR``) with a full resync of every rule."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nodeagent.proxy.proxier import ProxyInputs
from tests.harness import async_wait_for
from tests.unit.test_proxy_status import Recorder, World, pod_entry, proxy_for, svc


async def test_a_new_pod_cidr_rewrites_the_masquerade_rules(tmp_path: Path) -> None:
    world, writer = World(), Recorder()
    proxy = proxy_for(tmp_path, world, writer, period=0.05)
    world.inputs = ProxyInputs({"default/web": svc("web")}, [pod_entry("w1", "10.244.0.5", "web")])
    task = asyncio.create_task(proxy.run())
    try:
        await async_wait_for(lambda: writer.restores, 5, message="first sync")
        assert "! -s 10.244.0.0/16 -j NA-MARK-MASQ" in writer.restores[-1]["nat"]
        proxy.set_cluster_cidr("10.244.7.0/24")

        def rewritten() -> bool:
            nat = writer.restores[-1].get("nat", "")
            return "! -s 10.244.7.0/24 -j NA-MARK-MASQ" in nat

        await async_wait_for(rewritten, 5, message="the rules of the new CIDR")
        nat = writer.restores[-1]["nat"]
        assert "10.244.0.0/16" not in nat
        assert ":NA-PROXY-CANARY" in nat  # a full sync: the canary is rewritten too
        count = len(writer.restores)
        proxy.set_cluster_cidr("10.244.7.0/24")  # the same again: nothing to do
        await asyncio.sleep(0.2)
        assert len(writer.restores) == count
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
