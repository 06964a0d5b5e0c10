"""The pure parts of cluster mode: sorting the API's pods, merging with static pods,
admission, and pod status patches."""

from __future__ import annotations

import dataclasses
from typing import Any

from nodeagent.apiserver import admission
from nodeagent.apiserver.pods import (
    MIRROR_ANNOTATION,
    ParseCache,
    merge,
    read_pods,
    static_pod,
    terminal_status,
)
from nodeagent.apiserver.statuswriter import omit_empty, status_patch
from nodeagent.model.pod import PodUID
from nodeagent.model.validate import parse_pod
from nodeagent.sources.file import DesiredState

NODE = "n1"
NODE_VIEW = admission.NodeView(
    name=NODE,
    labels={"kubernetes.io/hostname": NODE, "disk": "ssd", "rank": "5"},
    cpu_millis=2000,
    memory_bytes=4 * 2**30,
    pods=3,
)


def api_pod(
    name: str,
    *,
    uid: str | None = None,
    created: str = "2026-01-01T00:00:00Z",
    cpu: str | None = None,
    phase: str = "Pending",
    **spec: Any,
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "c", "image": "busybox:1.36"}
    if cpu is not None:
        container["resources"] = {"requests": {"cpu": cpu}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": uid or f"uid-{name}",
            "creationTimestamp": created,
            "resourceVersion": "7",
        },
        "spec": {"nodeName": NODE, "containers": [container], **spec},
        "status": {"phase": phase},
    }


def never(_: PodUID) -> bool:
    return False


# --- read_pods -----------------------------------------------------------------------------


def test_pods_are_sorted_into_run_delete_reject_and_ignored() -> None:
    deleting = api_pod("gone")
    deleting["metadata"].update(
        deletionTimestamp="2026-01-01T00:01:00Z", deletionGracePeriodSeconds=7
    )
    mirror = api_pod("static-n1")
    mirror["metadata"]["annotations"] = {MIRROR_ANNOTATION: "abc"}
    odd = api_pod("odd", volumes=[{"name": "v", "nfs": {"server": "s", "path": "/"}}])
    done = api_pod("done", phase="Succeeded")
    api = read_pods([api_pod("web"), deleting, mirror, odd, done], node_name=NODE, running=never)
    assert set(api.run) == {"default/web"}
    assert api.run["default/web"].annotations["kubernetes.io/config.source"] == "api"
    assert api.delete[PodUID("uid-gone")].grace_s == 7
    assert api.reject[PodUID("uid-odd")].reason == "UnsupportedPodSpec"
    assert "nfs" in api.reject[PodUID("uid-odd")].message
    assert set(api.objects) == {"uid-web", "uid-gone", "uid-odd", "uid-done"}  # no mirror
    assert {e.object for e in api.errors} == {"Pod default/odd"}


def test_a_finished_pod_that_still_runs_here_stays() -> None:
    done = api_pod("done", phase="Succeeded")
    api = read_pods([done], node_name=NODE, running=lambda uid: uid == "uid-done")
    assert set(api.run) == {"default/done"}


def test_an_unparsable_pod_being_deleted_is_still_stopped_and_deleted() -> None:
    odd = api_pod("odd", volumes=[{"name": "v", "nfs": {}}])
    odd["metadata"]["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    api = read_pods([odd], node_name=NODE, running=never)
    deletion = api.delete[PodUID("uid-odd")]
    assert deletion.pod.key == "default/odd" and deletion.grace_s == 30


def test_static_pods_are_renamed_and_lose_clashes_with_api_pods() -> None:
    doc = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}}
    doc["spec"] = {"containers": [{"name": "c", "image": "busybox:1.36"}]}
    web = parse_pod(doc, source="/m/web.yaml", node_name=NODE)
    db = parse_pod({**doc, "metadata": {"name": "db"}}, source="/m/db.yaml", node_name=NODE)
    api = read_pods([api_pod(f"db-{NODE}")], node_name=NODE, running=never)
    state = merge(DesiredState(pods={web.key: web, db.key: db}), api, node_name=NODE)
    assert set(state.pods) == {f"default/web-{NODE}", f"default/db-{NODE}"}
    assert state.pods[f"default/web-{NODE}"].uid == web.uid  # renamed, same incarnation
    assert state.pods[f"default/db-{NODE}"].source == "api"
    (error,) = state.errors
    assert error.source == "/m/db.yaml"
    assert static_pod(static_pod(web, NODE), NODE).name == f"web-{NODE}"


# --- admission -----------------------------------------------------------------------------


def admit_all(
    *pods: dict[str, Any],
    running: frozenset[str] = frozenset(),
    node: admission.NodeView = NODE_VIEW,
) -> dict[str, str]:
    def check(pod, obj, admitted):  # type: ignore[no-untyped-def]
        return admission.check(pod, obj, node, admitted)

    api = read_pods(pods, node_name=NODE, running=lambda uid: uid in running, admit=check)
    return {
        **{k: "run" for k in api.run},
        **{f"default/{u[4:]}": r.reason for u, r in api.reject.items()},
    }


def test_pods_that_do_not_fit_are_rejected_oldest_first() -> None:
    verdicts = admit_all(
        api_pod("a", cpu="1500m", created="2026-01-01T00:00:01Z"),
        api_pod("b", cpu="600m", created="2026-01-01T00:00:02Z"),
        api_pod("c", cpu="500m", created="2026-01-01T00:00:03Z"),
    )
    assert verdicts == {"default/a": "run", "default/b": "OutOfcpu", "default/c": "run"}


def test_running_pods_count_and_are_never_rejected() -> None:
    verdicts = admit_all(
        api_pod("new", cpu="1", created="2026-01-01T00:00:01Z"),
        api_pod("old", cpu="1500m", created="2026-01-01T00:00:09Z"),
        running=frozenset({"uid-old"}),
    )
    assert verdicts == {"default/old": "run", "default/new": "OutOfcpu"}


def test_out_of_pods_and_memory() -> None:
    many = [api_pod(f"p{i}", created=f"2026-01-01T00:00:0{i}Z") for i in range(4)]
    assert admit_all(*many)["default/p3"] == "OutOfpods"
    big = api_pod("big")
    big["spec"]["containers"][0]["resources"] = {"limits": {"memory": "5Gi"}}  # request = limit
    assert admit_all(big)["default/big"] == "OutOfmemory"


def test_node_selector_and_required_affinity() -> None:
    def term(*expressions: dict[str, Any]) -> dict[str, Any]:
        req = {"nodeSelectorTerms": [{"matchExpressions": list(expressions)}]}
        return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": req}}

    cases: dict[str, dict[str, Any]] = {
        "sel-ok": {"nodeSelector": {"disk": "ssd"}},
        "sel-no": {"nodeSelector": {"disk": "hdd"}},
        "in": {"affinity": term({"key": "disk", "operator": "In", "values": ["ssd", "nvme"]})},
        "notin": {"affinity": term({"key": "disk", "operator": "NotIn", "values": ["ssd"]})},
        "exists": {"affinity": term({"key": "rank", "operator": "Exists"})},
        "absent": {"affinity": term({"key": "gpu", "operator": "DoesNotExist"})},
        "gt": {"affinity": term({"key": "rank", "operator": "Gt", "values": ["7"]})},
        "lt": {"affinity": term({"key": "rank", "operator": "Lt", "values": ["7"]})},
    }
    pods = [api_pod(name, **spec) for name, spec in cases.items()]
    verdicts = admit_all(*pods, node=dataclasses.replace(NODE_VIEW, pods=110))
    assert verdicts == {
        "default/sel-ok": "run",
        "default/sel-no": "NodeAffinity",
        "default/in": "run",
        "default/notin": "NodeAffinity",
        "default/exists": "run",
        "default/absent": "run",
        "default/gt": "NodeAffinity",
        "default/lt": "run",
    }


def test_a_rejection_is_final() -> None:
    def refuse(pod, obj, admitted):  # type: ignore[no-untyped-def]
        return admission.check(pod, obj, NODE_VIEW, admitted)

    first = read_pods([api_pod("b", cpu="3")], node_name=NODE, running=never, admit=refuse)
    again = read_pods(
        [api_pod("b", cpu="3")],
        node_name=NODE,
        running=never,
        admit=lambda *_: None,
        rejected=first.reject,
    )
    assert again.reject == first.reject and not again.run


# --- status patches ------------------------------------------------------------------------


def test_a_status_patch_holds_only_what_changed() -> None:
    base = {
        "phase": "Pending",
        "startTime": "2026-01-01T00:00:00Z",
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "ContainersNotReady",
                "lastTransitionTime": "t0",
            },
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": "t0"},
        ],
        "containerStatuses": [{"name": "c", "ready": False, "restartCount": 0}],
    }
    new = {
        "phase": "Running",
        "startTime": "2026-01-01T00:00:05Z",
        "conditions": [
            {"type": "Ready", "status": "True", "lastProbeTime": None, "lastTransitionTime": "t1"},
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": "t9"},
        ],
        "containerStatuses": [{"name": "c", "ready": True, "restartCount": 0}],
    }
    patch = status_patch(base, new)
    assert patch["phase"] == "Running"
    assert "startTime" not in patch  # never moved once set
    (ready,) = patch["conditions"]  # PodScheduled held: the API keeps its transition time
    assert ready["type"] == "Ready" and ready["reason"] is None  # null clears the old reason
    assert patch["containerStatuses"] == new["containerStatuses"]
    assert status_patch({**base, **new, "conditions": new["conditions"]}, new) == {}


def test_empty_and_missing_fields_compare_equal() -> None:
    assert omit_empty({"a": "", "b": None, "c": {"d": []}, "e": 0}) == {"e": 0}
    assert status_patch({"phase": "Running"}, {"phase": "Running", "message": ""}) == {}


def test_each_version_of_a_pod_is_parsed_once() -> None:
    cache = ParseCache()
    first = read_pods([api_pod("web")], node_name=NODE, running=never, cache=cache)
    again = read_pods([api_pod("web")], node_name=NODE, running=never, cache=cache)
    assert again.run["default/web"] is first.run["default/web"]
    relabelled = api_pod("web")
    relabelled["metadata"].update(resourceVersion="8", labels={"tier": "front"})
    newer = read_pods([relabelled], node_name=NODE, running=never, cache=cache)
    assert newer.run["default/web"].labels == {"tier": "front"}


def _stopped(name: str, code: int | None) -> dict[str, Any]:
    state: dict[str, Any] = (
        {"waiting": {"reason": "ContainerCreating"}}
        if code is None
        else {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}}
    )
    return {"name": name, "ready": True, "started": True, "state": state}


def test_a_deleted_pod_ends_succeeded_only_when_every_container_exited_zero() -> None:
    conditions = [
        {"type": "Ready", "status": "True", "lastTransitionTime": "t0"},
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": "t0"},
    ]
    ok = {"phase": "Running", "conditions": conditions, "containerStatuses": [_stopped("a", 0)]}
    final = terminal_status(ok, now="t1")
    assert final["phase"] == "Succeeded"
    assert final["containerStatuses"][0]["ready"] is False
    assert final["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    assert final["conditions"] == [
        {"type": "Ready", "status": "False", "lastTransitionTime": "t1"},
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": "t0"},
    ]
    assert ok["phase"] == "Running"  # the input is left alone

    killed = {"phase": "Running", "containerStatuses": [_stopped("a", 0), _stopped("b", 143)]}
    assert terminal_status(killed, now="t1")["phase"] == "Failed"


def test_a_container_never_seen_stopped_ends_as_status_unknown() -> None:
    status = {"phase": "Pending", "containerStatuses": [_stopped("a", None)]}
    final = terminal_status(status, now="t1")
    assert final["phase"] == "Failed"
    terminated = final["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (137, "ContainerStatusUnknown")
