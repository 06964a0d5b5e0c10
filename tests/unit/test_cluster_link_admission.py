"""Admission, deletion and mirror pods in cluster mode, over the fake runtime and the
in-process test API server: labels and taints come fresh from our own Node, a pod found
running at an agent restart is not judged again, a later shorter grace period hurries a
termination under way, and a mirror pod deleted gracefully is made again at once.

Uses the cluster link's rig (``linkrig``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from nodeagent.kubelet import stopper
from nodeagent.model.pod import PodUID
from nodeagent.runtime.base import ContainerID, SandboxConfig
from nodeagent.runtime.fake import FakeRuntime
from tests.apiserver import ApiServer
from tests.apiserver.resources import NODES, PODS
from tests.unit import linkrig
from tests.unit.linkrig import NODE, Rig, phase, pod_body, ready, static_state
from tests.unit.rig import eventually

# The rig's fixtures, by name: api (test API server), rig (a started Rig).
api, rig = linkrig.api, linkrig.rig

MERGE = "application/merge-patch+json"


def selecting(name: str, **selector: str) -> dict[str, Any]:
    body = pod_body(name)
    body["spec"]["nodeSelector"] = selector
    return body


def node_labels(rig: Rig) -> dict[str, str]:
    return dict(rig.link.report()["nodeLabels"])


async def registered(api: ApiServer) -> None:
    await eventually(lambda: api.store.find(NODES, None, NODE), what="the Node")


async def test_a_label_added_to_our_node_admits_a_pod_that_selects_it(
    rig: Rig, api: ApiServer
) -> None:
    await registered(api)
    rig.create(selecting("early", disk="ssd"))
    await eventually(lambda: phase(rig, "early") == "Failed", what="early rejected")
    assert rig.api_status("early")["reason"] == "NodeAffinity"

    api.store.patch(NODES, None, NODE, MERGE, {"metadata": {"labels": {"disk": "ssd"}}})
    await eventually(lambda: node_labels(rig).get("disk") == "ssd", what="the label seen")
    rig.create(selecting("late", disk="ssd"))
    await eventually(lambda: ready(rig, "late"), what="late Ready")
    assert phase(rig, "early") == "Failed"  # a rejection stays final


async def test_a_pod_refused_for_affinity_waits_for_a_fresh_read_of_the_node(
    rig: Rig, api: ApiServer
) -> None:
    await registered(api)
    await eventually(lambda: rig.link.own_node.current(), what="our Node watched")
    # The watch lags (here: it stops); the label is in the API before the pod is.
    own_watch = rig.tasks[1 + list(rig.link.loops()).index("node-watch")]
    own_watch.cancel()
    api.store.patch(NODES, None, NODE, MERGE, {"metadata": {"labels": {"disk": "ssd"}}})
    rig.create(selecting("quick", disk="ssd"))
    rig.create(selecting("wrong", disk="hdd"))
    await eventually(lambda: ready(rig, "quick"), what="quick Ready after a read of the Node")
    await eventually(lambda: phase(rig, "wrong") == "Failed", what="wrong rejected")
    reads = [r for r in api.requests if r.method == "GET" and r.path == f"/api/v1/nodes/{NODE}"]
    assert reads  # the Node was read again, not guessed
    assert node_labels(rig)["disk"] == "ssd"


async def test_a_no_execute_taint_rejects_pods_that_do_not_tolerate_it(
    rig: Rig, api: ApiServer
) -> None:
    # Not not-ready: every pod tolerates that one (DefaultTolerationSeconds admission).
    await registered(api)
    taint = {"key": "dedicated", "value": "db", "effect": "NoExecute"}
    api.store.patch(NODES, None, NODE, MERGE, {"spec": {"taints": [taint]}})

    def taints_seen() -> bool:
        return bool(((rig.link.own_node.current() or {}).get("spec") or {}).get("taints"))

    await eventually(taints_seen, what="the taint seen")
    tolerant = pod_body("tolerant")
    tolerant["spec"]["tolerations"] = [{"key": "dedicated", "operator": "Exists"}]
    rig.create(tolerant)
    rig.create(pod_body("plain"))
    await eventually(lambda: ready(rig, "tolerant"), what="the tolerant pod Ready")
    await eventually(lambda: phase(rig, "plain") == "Failed", what="the plain pod rejected")
    assert rig.api_status("plain")["reason"] == "TaintToleration"


async def test_a_pod_found_running_at_a_restart_is_not_judged_again(
    tmp_path: Path, api: ApiServer
) -> None:
    # Created while no agent ran; the node lost the label since the pod was admitted.
    held = api.store.create(PODS, "default", selecting("held", disk="ssd"))
    fresh = api.store.create(PODS, "default", selecting("fresh", disk="ssd"))
    rig = Rig(tmp_path, api)
    config = SandboxConfig(
        name="held",
        namespace="default",
        uid=PodUID(held["metadata"]["uid"]),
        attempt=0,
        hostname="held",
        log_directory=str(tmp_path / "logs"),
    )
    await rig.fake.run_sandbox(config)  # what the agent before the restart left running
    await rig.start()
    try:
        await eventually(lambda: ready(rig, "held"), what="the running pod adopted")
        await eventually(lambda: phase(rig, "fresh") == "Failed", what="the new pod judged")
        assert rig.api_status("fresh")["reason"] == "NodeAffinity"
        assert fresh["metadata"]["uid"] not in rig.fake.sandbox_ids()  # never started
    finally:
        await rig.close()


async def test_a_shorter_grace_period_asked_later_hurries_the_termination(
    rig: Rig, api: ApiServer
) -> None:
    uid = rig.create(pod_body("slow", grace=30))["metadata"]["uid"]
    await eventually(lambda: ready(rig, "slow"), what="Ready")
    stops: list[tuple[ContainerID, int]] = []
    released = asyncio.Event()
    plain_stop = rig.fake.stop_container

    async def stubborn(container_id: ContainerID, timeout_s: int) -> None:
        # The first stop waits out its period (a process that ignores TERM); a later, shorter
        # one kills it, and ends the first with it.
        stops.append((container_id, timeout_s))
        if len(stops) == 1:
            await asyncio.wait_for(released.wait(), 20)
        await plain_stop(container_id, timeout_s)
        released.set()

    rig.fake.stop_container = stubborn  # type: ignore[method-assign]
    api.store.delete(PODS, "default", "slow", grace_period=30)
    await eventually(lambda: stops, what="the stop with the pod's 30 s")
    api.store.delete(PODS, "default", "slow", grace_period=3)
    await eventually(lambda: rig.api_pod("slow") is None, what="the pod gone")
    (first, second) = stops[:2]
    assert first[1] == 30 and second == (first[0], 3)
    assert not rig.running_containers(uid)


async def test_every_stop_leaves_a_container_the_kubelets_two_seconds() -> None:
    fake = FakeRuntime(images={"busybox:1.36"})
    config = SandboxConfig("p", "default", PodUID("u"), 0, "p", "/tmp")
    await fake.run_sandbox(config)
    for grace in (0, 1, 5):
        fake.calls.clear()
        await stopper.stop_container(
            fake, None, ContainerID(f"gone-{grace}"), "", grace_s=grace, log=None
        )
        (call,) = [c for c in fake.calls if c[0] == "stop_container"]
        assert call[2] == str(max(grace, stopper.MIN_KILL_GRACE_S))


async def test_a_mirror_pod_deleted_gracefully_is_made_again_at_once(
    tmp_path: Path, api: ApiServer
) -> None:
    rig = Rig(tmp_path, api, with_files=True)
    await rig.start()
    try:
        rig.link.file_changed(static_state(tmp_path / "web.yaml"))
        name = f"web-{NODE}"
        mirror = await eventually(lambda: rig.api_pod(name), what="the mirror pod")
        await eventually(lambda: ready(rig, name), what="the static pod Ready")
        static_uid = mirror["metadata"]["annotations"]["kubernetes.io/config.mirror"]
        (container,) = rig.running_containers(static_uid)
        # kubectl delete: a grace period, so the API only marks it (deletionTimestamp).
        api.store.delete(PODS, "default", name, grace_period=30)

        def remade() -> dict[str, Any] | None:
            pod = rig.api_pod(name)
            meta = (pod or {}).get("metadata") or {}
            fresh = meta.get("uid") != mirror["metadata"]["uid"]
            return pod if pod and fresh and not meta.get("deletionTimestamp") else None

        again = await eventually(remade, within=10, what="the mirror made again")
        annotations = again["metadata"]["annotations"]
        assert annotations["kubernetes.io/config.mirror"] == static_uid
        finals = [
            r for r in api.requests if r.method == "DELETE" and r.path.endswith(f"/pods/{name}")
        ]
        assert finals  # the final DELETE, then the create
        assert rig.running_containers(static_uid) == [container]  # the static pod ran on
        assert rig.fake.count("stop_container") == 0
    finally:
        await rig.close()
