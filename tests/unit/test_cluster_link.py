"""Cluster mode end to end over the fake runtime and the in-process test API server: API pods
run, their status reaches the API (only when it changes), deleted pods terminate and go,
outages change nothing, static pods join under their cluster names."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Any

import pytest
import structlog
import structlog.testing

from nodeagent.kubelet import eviction
from nodeagent.model.pod import PodUID
from nodeagent.model.validate import parse_pod
from nodeagent.runtime.base import ContainerID
from nodeagent.sources.file import DesiredState
from tests.apiserver import ApiServer
from tests.apiserver.patch import STRATEGIC
from tests.apiserver.resources import CONFIGMAPS, ENDPOINTSLICES, PODS, SERVICES
from tests.unit import linkrig
from tests.unit.linkrig import IMAGE, NODE, Rig, events_of, phase, pod_body, ready, static_state
from tests.unit.rig import eventually

# The rig's fixtures, by name: api (test API server), rig (a started Rig).
api, rig = linkrig.api, linkrig.rig


async def test_an_api_pod_runs_and_its_status_reaches_the_api(rig: Rig) -> None:
    uid = rig.create(pod_body("web"))["metadata"]["uid"]
    await eventually(lambda: rig.running_containers(uid), what="the container")
    await eventually(lambda: ready(rig, "web"), what="Ready in the API")
    status = rig.api_status("web")
    assert status["phase"] == "Running"
    assert status["podIP"].startswith("10.88.") and status["hostIP"] == "192.168.56.11"
    (container,) = status["containerStatuses"]
    assert container["containerID"].startswith("containerd://") and "running" in container["state"]
    scheduled = [c for c in status["conditions"] if c["type"] == "PodScheduled"]
    assert len(scheduled) == 1  # merged by type, not appended
    # Only changes are written: a quiet pod is not patched again.
    patches = rig.status_patches("web")
    await asyncio.sleep(1.0)
    assert rig.status_patches("web") == patches
    patch = next(r for r in rig.api.requests if r.method == "PATCH" and r.path.endswith("/status"))
    assert patch.content_type == "application/strategic-merge-patch+json"


async def test_an_evicted_pod_ends_with_disruption_target_and_keeps_others_conditions(
    rig: Rig,
) -> None:
    uid = rig.create(pod_body("victim"))["metadata"]["uid"]
    await eventually(lambda: ready(rig, "victim"), what="Ready in the API")
    gate = {
        "type": "example.com/gate",
        "status": "True",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    body = {"status": {"conditions": [gate]}}
    rig.api.store.patch(PODS, "default", "victim", STRATEGIC, body, subresource="status")
    worker = rig.manager.worker_for(PodUID(uid))
    assert worker is not None
    message = "The node was low on resource: memory."
    rig.link.record_final(PodUID(uid), eviction.evicted_status(worker.status, message, now="t"))
    await eventually(lambda: phase(rig, "victim") == "Failed", what="Failed in the API")
    status = rig.api_status("victim")
    assert status["reason"] == "Evicted" and status["message"] == message
    kinds = [c["type"] for c in status["conditions"]]
    assert kinds.count("DisruptionTarget") == 1 and gate in status["conditions"]
    target = next(c for c in status["conditions"] if c["type"] == "DisruptionTarget")
    assert target["reason"] == "TerminationByKubelet" and target["status"] == "True"
    (container,) = status["containerStatuses"]
    assert "terminated" in container["state"] and not container["ready"]


async def test_status_follows_a_container_exit_and_survives_5xx(rig: Rig) -> None:
    body = pod_body("job")
    body["spec"]["restartPolicy"] = "Never"
    uid = rig.create(body)["metadata"]["uid"]
    await eventually(lambda: ready(rig, "job"), what="Ready")
    rig.api.faults.fail_status_writes(2, code=503)
    (cid,) = rig.running_containers(uid)
    rig.fake.exit_container(cid, 0)
    await eventually(lambda: phase(rig, "job") == "Succeeded", what="Succeeded in the API")
    assert sum(r.fired for r in rig.api.faults.rules) == 2
    # A finished pod keeps its worker (and its containers) while the API still has it.
    await asyncio.sleep(0.3)
    assert rig.manager.worker_for(PodUID(uid)) is not None


async def test_a_pod_ended_by_the_node_reports_its_final_status(rig: Rig) -> None:
    uid = rig.create(pod_body("victim"))["metadata"]["uid"]
    await eventually(lambda: ready(rig, "victim"), what="Ready")
    evicted = {"phase": "Failed", "reason": "Evicted", "message": "low on memory"}
    rig.link.record_final(PodUID(uid), evicted)
    await eventually(lambda: phase(rig, "victim") == "Failed", what="Failed in the API")
    assert rig.api_status("victim")["reason"] == "Evicted"
    await asyncio.sleep(0.6)  # a periodic pass of the writer (0.5 s) must not undo it
    assert rig.api_status("victim")["reason"] == "Evicted"


async def test_a_conflicting_status_write_re_reads_the_pod(rig: Rig) -> None:
    rig.create(pod_body("web"))
    rig.api.faults.fail_status_writes(1, code=409)
    await eventually(lambda: ready(rig, "web"), what="Ready after a conflict")


async def test_a_deleted_pod_terminates_with_its_grace_period_then_goes(rig: Rig) -> None:
    uid = rig.create(pod_body("web", grace=30))["metadata"]["uid"]
    await eventually(lambda: ready(rig, "web"), what="Ready")
    rig.api.store.delete(PODS, "default", "web", grace_period=7)
    await eventually(lambda: rig.api_pod("web") is None, what="the pod gone from the API")
    assert not rig.running_containers(uid)
    stops = [c for c in rig.fake.calls if c[0] == "stop_container"]
    assert stops and stops[0][2] == "7"  # the deletion's grace period, not the spec's 30
    (delete,) = [r for r in rig.api.requests if r.method == "DELETE"]
    assert delete.path == "/api/v1/namespaces/default/pods/web"
    final = [r for r in rig.api.requests if r.method == "DELETE" and r.code == 200]
    assert final


async def test_a_delete_after_a_namesake_replaced_the_pod_is_refused_by_uid(
    rig: Rig, api: ApiServer
) -> None:
    rig.create(pod_body("web"))
    await eventually(lambda: ready(rig, "web"), what="Ready")
    api.faults.fail_requests(1, code=500, methods={"DELETE"}, resource="pods")
    api.store.delete(PODS, "default", "web", grace_period=1)
    await eventually(lambda: rig.api_pod("web") is None, within=10, what="the pod gone")


async def test_pods_keep_running_while_the_api_is_down(rig: Rig, api: ApiServer) -> None:
    uid = rig.create(pod_body("web"))["metadata"]["uid"]
    await eventually(lambda: ready(rig, "web"), what="Ready")
    await api.stop()
    updates = rig.updates  # after the stop: an event in flight before it may still land
    await asyncio.sleep(0.5)  # an outage long enough for several reconnect attempts
    assert rig.running_containers(uid) and rig.updates == updates
    api.store.create(PODS, "default", pod_body("late"))
    await api.start()
    await eventually(lambda: ready(rig, "late"), within=10, what="the pod made while down")
    assert rig.running_containers(uid)
    assert rig.link.pods.relists == 1


async def test_a_label_change_does_not_restart_the_pod(rig: Rig) -> None:
    uid = rig.create(pod_body("web"))["metadata"]["uid"]
    await eventually(lambda: ready(rig, "web"), what="Ready")
    (before,) = rig.running_containers(uid)
    rig.api.store.patch(
        PODS,
        "default",
        "web",
        "application/merge-patch+json",
        {"metadata": {"labels": {"app": "web", "tier": "front"}}},
    )
    await eventually(
        lambda: rig.manager.worker_for(PodUID(uid)).pod.labels.get("tier") == "front",  # type: ignore[union-attr]
        what="the new labels",
    )
    assert rig.running_containers(uid) == [before]


async def test_a_readiness_gate_holds_ready_until_its_condition_is_set(rig: Rig) -> None:
    body = pod_body("gated")
    body["spec"]["readinessGates"] = [{"conditionType": "example.com/gate"}]
    uid = rig.create(body)["metadata"]["uid"]

    def ready_condition() -> dict[str, Any]:
        conditions = rig.api_status("gated").get("conditions") or []
        return next((c for c in conditions if c["type"] == "Ready"), {})

    await eventually(
        lambda: ready_condition().get("reason") == "ReadinessGatesNotReady", what="gate holds"
    )
    (before,) = rig.running_containers(uid)
    gate = {"type": "example.com/gate", "status": "True"}
    rig.api.store.patch(
        PODS,
        "default",
        "gated",
        "application/strategic-merge-patch+json",
        {"status": {"conditions": [gate]}},
        subresource="status",
    )
    await eventually(lambda: ready_condition().get("status") == "True", what="Ready")
    assert gate in rig.api_status("gated")["conditions"]  # our patches left it alone
    assert rig.running_containers(uid) == [before]  # nothing restarted


async def test_fields_newer_than_our_api_are_ignored_with_one_warning(rig: Rig) -> None:
    body = pod_body("newer")
    body["spec"]["futureKnob"] = {"on": True}
    with structlog.testing.capture_logs() as logs:
        uid = rig.create(body)["metadata"]["uid"]
        await eventually(lambda: ready(rig, "newer"), what="Ready")
        for tier in ("a", "b"):  # more events of the same pod
            patch = {"metadata": {"labels": {"tier": tier}}}
            rig.api.store.patch(PODS, "default", "newer", "application/merge-patch+json", patch)
        await eventually(
            lambda: rig.manager.worker_for(PodUID(uid)).pod.labels.get("tier") == "b",  # type: ignore[union-attr]
            what="the last labels",
        )
    warned = [e for e in logs if e["event"] == "pod_fields_ignored"]
    assert [(e["pod"], e["fields"]) for e in warned] == [("default/newer", ["spec.futureKnob"])]


async def test_a_pod_we_cannot_run_fails_with_the_reason(rig: Rig) -> None:
    body = pod_body("odd")
    body["spec"]["volumes"] = [{"name": "v", "nfs": {"server": "x", "path": "/"}}]
    rig.create(body)
    await eventually(lambda: phase(rig, "odd") == "Failed", what="Failed")
    status = rig.api_status("odd")
    assert status["reason"] == "UnsupportedPodSpec" and "nfs" in status["message"]
    # ... and says so in one Warning event, as the kubelet's rejectPod does.
    await eventually(lambda: events_of(rig.api, "odd"), what="an event")
    (event,) = events_of(rig.api, "odd")
    assert (event["type"], event["reason"]) == ("Warning", "UnsupportedPodSpec")
    assert event["message"] == status["message"]


async def test_terminal_pods_from_the_api_do_not_run(tmp_path: Path, api: ApiServer) -> None:
    obj = api.store.create(PODS, "default", pod_body("done"))
    api.store.patch(
        PODS,
        "default",
        "done",
        "application/merge-patch+json",
        {"status": {"phase": "Succeeded"}},
        subresource="status",
    )
    rig = Rig(tmp_path, api)
    await rig.start()
    try:
        await eventually(lambda: rig.desired is not None, what="the desired set")
        await asyncio.sleep(0.3)
        assert rig.manager.worker_for(PodUID(obj["metadata"]["uid"])) is None
        assert rig.status_patches("done") == 0
    finally:
        await rig.close()


async def test_static_pods_get_cluster_names_and_lose_clashes(
    tmp_path: Path, api: ApiServer
) -> None:
    rig = Rig(tmp_path, api, with_files=True)
    await rig.start()
    try:
        static = parse_pod(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "web"},
                "spec": pod_body("x")["spec"],
            },
            source="/m/web.yaml",
            node_name=NODE,
        )
        clash = parse_pod(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "db"},
                "spec": pod_body("x")["spec"],
            },
            source="/m/db.yaml",
            node_name=NODE,
        )
        rig.create(pod_body(f"db-{NODE}"))
        await asyncio.sleep(0.2)
        assert rig.desired is None  # nothing until the directory has been read
        rig.link.file_changed(DesiredState(pods={static.key: static, clash.key: clash}))
        state = await eventually(lambda: rig.desired)
        assert set(state.pods) == {f"default/web-{NODE}", f"default/db-{NODE}"}
        assert state.pods[f"default/db-{NODE}"].source == "api"
        (error,) = state.errors
        assert error.source == "/m/db.yaml" and "API pod" in error.message
    finally:
        await rig.close()


async def test_no_orphan_is_removed_before_the_first_list(tmp_path: Path, api: ApiServer) -> None:
    rig = Rig(tmp_path, api, with_files=True)
    api.faults.fail_requests(1000, code=503, methods={"GET"}, resource="pods")
    rig.spawn()
    try:
        await asyncio.wait_for(rig.cache.synced.wait(), 5)
        rig.link.file_changed(DesiredState())
        await eventually(lambda: rig.desired is not None, what="the static pods")
        assert rig.manager.sources_ready is False
        api.faults.clear()
        await asyncio.wait_for(rig.link.pods.synced.wait(), 5)
        await eventually(lambda: rig.manager.sources_ready, what="sources ready")
    finally:
        await rig.close()


@pytest.mark.parametrize("grace", [0])
async def test_a_force_deleted_pod_stops(rig: Rig, grace: int) -> None:
    uid = rig.create(pod_body("web"))["metadata"]["uid"]
    await eventually(lambda: ready(rig, "web"), what="Ready")
    rig.api.store.delete(PODS, "default", "web", grace_period=grace)
    await eventually(lambda: not rig.running_containers(uid), what="the container stopped")
    await eventually(lambda: rig.manager.worker_for(PodUID(uid)) is None, what="the worker gone")


async def test_static_pods_get_mirror_pods_that_show_their_status(
    tmp_path: Path, api: ApiServer
) -> None:
    rig = Rig(tmp_path, api, with_files=True)
    await rig.start()
    manifest = tmp_path / "web.yaml"
    try:
        rig.link.file_changed(static_state(manifest))
        name = f"web-{NODE}"
        mirror = await eventually(lambda: rig.api_pod(name), what="the mirror pod")
        meta = mirror["metadata"]
        static_uid = rig.desired.pods[f"default/{name}"].uid  # type: ignore[union-attr]
        assert meta["annotations"]["kubernetes.io/config.mirror"] == static_uid
        assert meta["annotations"]["kubernetes.io/config.source"] == "file"
        assert meta["labels"] == {"app": "web"}
        (owner,) = meta["ownerReferences"]
        assert (owner["kind"], owner["name"]) == ("Node", NODE)
        assert mirror["spec"]["nodeName"] == NODE
        await eventually(lambda: ready(rig, name), what="the static pod's status on the mirror")
        assert len(rig.manager.snapshot()) == 1  # the mirror does not run a second time

        # A mirror deleted by someone comes back.
        first = meta["uid"]
        api.store.delete(PODS, "default", name, grace_period=0)
        rig.link.mirrors.wake()
        again = await eventually(
            lambda: (p := rig.api_pod(name)) and p["metadata"]["uid"] != first and p,
            what="the mirror made again",
        )
        # An edited manifest replaces the mirror with one of the new hash.
        rig.link.file_changed(static_state(manifest, "sleep 2000"))
        new_uid = rig.desired.pods[f"default/{name}"].uid  # type: ignore[union-attr]
        assert new_uid != static_uid
        await eventually(
            lambda: (
                (p := rig.api_pod(name))
                and p["metadata"]["annotations"]["kubernetes.io/config.mirror"] == new_uid
            ),
            what="the mirror of the edited manifest",
        )
        assert again
        # A removed manifest removes its mirror.
        rig.link.file_changed(DesiredState())
        await eventually(lambda: rig.api_pod(name) is None, what="the mirror gone")
    finally:
        await rig.close()


async def test_events_tell_what_happened_to_a_pod(rig: Rig, api: ApiServer) -> None:
    body = pod_body("web")
    uid = rig.create(body)["metadata"]["uid"]
    await eventually(lambda: ready(rig, "web"), what="Ready")

    def reasons() -> list[str]:
        return sorted(e["reason"] for e in events_of(api, "web"))

    await eventually(
        lambda: reasons() == ["Created", "Pulled", "Started"], what="Pulled, Created and Started"
    )
    pulled = next(e for e in events_of(api, "web") if e["reason"] == "Pulled")
    assert pulled["message"] == f'Container image "{IMAGE}" already present on machine'
    started = next(e for e in events_of(api, "web") if e["reason"] == "Started")
    assert started["involvedObject"]["uid"] == uid
    assert started["involvedObject"]["fieldPath"] == "spec.containers{app}"
    assert started["source"] == {"component": "kubelet", "host": NODE}
    assert started["type"] == "Normal" and started["message"] == "Started container app"
    api.store.delete(PODS, "default", "web", grace_period=3)
    await eventually(lambda: "Killing" in reasons(), what="Killing")


async def test_each_pod_waiting_on_a_pull_gets_its_own_pull_events(
    rig: Rig, api: ApiServer
) -> None:
    rig.fake.registry = {"web:2"}
    for name, image in (("one", "web:2"), ("two", "web:2"), ("bad", "missing:1")):
        body = pod_body(name)
        body["spec"]["containers"][0].update(image=image, imagePullPolicy="Always")
        rig.create(body)

    def reasons(name: str) -> list[str]:
        return [e["reason"] for e in events_of(api, name)]

    def started(name: str) -> bool:
        return "Started" in reasons(name)

    for name in ("one", "two"):
        await eventually(functools.partial(started, name), what=f"{name} started")
        assert {"Pulling", "Pulled"} <= set(reasons(name))
    await eventually(lambda: "Failed" in reasons("bad"), what="the failed pull")
    messages = [e["message"] for e in events_of(api, "bad") if e["reason"] == "Failed"]
    await eventually(
        lambda: "Error: ErrImagePull" in [e["message"] for e in events_of(api, "bad")],
        what="Error: ErrImagePull",
    )
    assert any(m.startswith('Failed to pull image "missing:1": ') for m in messages)
    await eventually(lambda: "BackOff" in reasons("bad"), what="ImagePullBackOff")


async def test_a_pod_waiting_on_a_missing_config_map_is_told_why(rig: Rig, api: ApiServer) -> None:
    env = pod_body("env")
    env["spec"]["containers"][0]["env"] = [
        {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "x"}}}
    ]
    vol = pod_body("vol")
    vol["spec"]["volumes"] = [{"name": "cfg", "configMap": {"name": "settings"}}]
    vol["spec"]["containers"][0]["volumeMounts"] = [{"name": "cfg", "mountPath": "/cfg"}]
    rig.create(env)
    rig.create(vol)

    def warnings(name: str) -> list[tuple[str, str, str]]:
        return [
            (e["reason"], e["message"], e["involvedObject"].get("fieldPath", ""))
            for e in events_of(api, name)
            if e["type"] == "Warning"
        ]

    (failed,) = await eventually(lambda: warnings("env"), what="the env pod's event")
    assert failed[0] == "Failed" and failed[2] == "spec.containers{app}"
    assert failed[1].startswith("Error: ") and '"settings" not found' in failed[1]
    (mount,) = await eventually(lambda: warnings("vol"), what="the volume pod's event")
    assert mount[0] == "FailedMount" and mount[2] == ""
    assert '"settings" not found' in mount[1]
    # Told once per problem, not at every retry; the pods start once the ConfigMap exists.
    api.store.create(CONFIGMAPS, "default", {"metadata": {"name": "settings"}, "data": {"x": "1"}})
    for name in ("env", "vol"):
        await eventually(functools.partial(ready, rig, name), within=10, what=f"{name} Ready")
    assert len(warnings("env")) == 1 and len(warnings("vol")) == 1
    assert all(e.get("count") == 1 for e in events_of(api, "env") + events_of(api, "vol"))


async def test_a_restarted_container_reads_its_config_map_env_again(
    rig: Rig, api: ApiServer
) -> None:
    api.store.create(CONFIGMAPS, "default", {"metadata": {"name": "cfg"}, "data": {"x": "one"}})
    body = pod_body("env")
    body["spec"]["containers"][0]["env"] = [
        {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "x"}}}
    ]
    uid = rig.create(body)["metadata"]["uid"]
    await eventually(lambda: ready(rig, "env"), what="Ready")

    def env_of_running() -> dict[str, str]:
        ids = rig.running_containers(uid)
        return dict(rig.fake.containers[ids[0]].config.env) if ids else {}

    assert env_of_running()["X"] == "one"
    sandboxes = rig.fake.count("run_sandbox")
    patch = {"data": {"x": "two"}}
    api.store.patch(CONFIGMAPS, "default", "cfg", "application/merge-patch+json", patch)
    (first,) = rig.running_containers(uid)
    rig.fake.exit_container(first, 1)
    # Resolved again at creation, as upstream: the new instance sees the new value, and
    # the pod was not replaced (same sandbox, same uid).
    await eventually(lambda: env_of_running().get("X") == "two", what="the new value")
    assert rig.fake.count("run_sandbox") == sandboxes

    # The ConfigMap gone: the next instance waits with the kubelet's reason.
    api.store.delete(CONFIGMAPS, "default", "cfg")
    (second,) = rig.running_containers(uid)
    rig.fake.exit_container(second, 1)

    def waiting() -> dict[str, Any]:
        statuses = rig.api_status("env").get("containerStatuses") or [{}]
        return dict((statuses[0].get("state") or {}).get("waiting") or {})

    reason = await eventually(
        lambda: waiting().get("reason") == "CreateContainerConfigError", within=30, what="wait"
    )
    assert reason and '"cfg" not found' in waiting().get("message", "")


async def test_a_crash_loop_backs_off_in_one_counted_event(rig: Rig, api: ApiServer) -> None:
    uid = rig.create(pod_body("crashy"))["metadata"]["uid"]

    def exited(cid: ContainerID) -> bool:
        return cid not in rig.running_containers(uid)

    await eventually(lambda: ready(rig, "crashy"), what="Ready")
    for _ in range(2):  # the first restart is at once, the second waits: CrashLoopBackOff
        (cid,) = await eventually(lambda: rig.running_containers(uid), what="running")
        rig.fake.exit_container(cid, 1)
        await eventually(functools.partial(exited, cid), what="exited")
    await eventually(
        lambda: any(e["reason"] == "BackOff" for e in events_of(api, "crashy")), what="BackOff"
    )
    (backoff,) = [e for e in events_of(api, "crashy") if e["reason"] == "BackOff"]
    assert backoff["type"] == "Warning" and "crashy_default" in backoff["message"]


async def test_services_and_endpoint_slices_feed_the_proxy(rig: Rig, api: ApiServer) -> None:
    api.store.create(
        SERVICES,
        "default",
        {
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )
    api.store.create(
        ENDPOINTSLICES,
        "default",
        {
            "metadata": {"name": "web-remote", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {
                    "addresses": ["10.244.9.9"],
                    "conditions": {"ready": False, "serving": True, "terminating": True},
                    "nodeName": "node-9",
                }
            ],
        },
    )
    rig.create(pod_body("web"))
    await eventually(lambda: ready(rig, "web"), what="Ready")
    ip = rig.api_status("web")["podIP"]
    await eventually(lambda: rig.link.services_ready, what="services listed")

    def endpoints() -> dict[str, Any]:
        eps = rig.link.endpoints.get("default/web", {})
        return {e.ip: e for backends in eps.values() for e in backends}

    found = await eventually(lambda: len(endpoints()) == 2 and endpoints(), what="both endpoints")
    assert found[ip].local and found[ip].ready and found[ip].port == 8080
    remote = found["10.244.9.9"]
    assert not remote.local and not remote.ready and remote.serving and remote.terminating
    assert rig.desired is not None
    assert {"default/web", "default/kubernetes"} <= set(rig.desired.services)
    assert rig.desired.services["default/web"].spec.cluster_ip.startswith("10.96.")


async def test_forbidden_endpoint_slices_are_reported_and_do_not_hold_the_services(
    tmp_path: Path, api: ApiServer
) -> None:
    """Without system:node-proxier (the Node authorizer alone), Services still list but
    EndpointSlices are refused: the proxy must not wait for them, and the refusal shows."""
    rig = Rig(tmp_path, api, node_proxier=False)
    await rig.start()
    try:
        await eventually(lambda: rig.link.services_ready, what="services ready despite the 403")
        assert rig.link.service_objects.synced.is_set()
        assert not rig.link.slice_objects.synced.is_set()
        assert "kubernetes" in {s.name for s in rig.link.services.values()}
        [refusal] = rig.link.report()["forbidden"]
        assert refusal["resource"] == "/apis/discovery.k8s.io/v1/endpointslices"
        assert refusal["clusterRole"] == "system:node-proxier"
        assert 'cannot list resource "endpointslices"' in refusal["message"]
    finally:
        await rig.close()
