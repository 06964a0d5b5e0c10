"""podstatuses: what the pod status writer is told for each API pod and mirror pod."""

from __future__ import annotations

from typing import Any

from nodeagent.apiserver.pods import MIRROR_ANNOTATION, ApiPods, Hold, Rejection
from nodeagent.apiserver.podstatuses import wanted_statuses
from nodeagent.model.pod import PodUID

Obj = dict[str, Any]


def api_pod(uid: str, *, phase: str = "Pending", annotations: Obj | None = None) -> Obj:
    return {
        "metadata": {
            "name": f"p-{uid}",
            "namespace": "ns",
            "uid": uid,
            **({"annotations": annotations} if annotations else {}),
        },
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        "status": {"phase": phase},
    }


def statuses(api: ApiPods, **kwargs: Any) -> dict[str, Obj]:
    found: dict[str, Obj] = kwargs.pop("workers", {})
    args: dict[str, Any] = {"final": {}, "static": {}, "mirrors": {}, **kwargs}
    wanted = wanted_statuses(api, status_of=lambda uid: found.get(uid), **args)
    return {uid: w.status for uid, w in wanted.items()}


def pods(objects: dict[str, Obj], **kwargs: Any) -> ApiPods:
    uids = {PodUID(u): o for u, o in objects.items()}
    return ApiPods(**{"run": {}, "delete": {}, "reject": {}, "objects": uids, **kwargs})


def test_a_refused_pod_is_failed_with_the_refusal() -> None:
    api = pods({"a": api_pod("a")}, reject={PodUID("a"): Rejection("NodeAffinity", "no")})

    assert statuses(api, workers={"a": {"phase": "Running"}}) == {
        "a": {"phase": "Failed", "reason": "NodeAffinity", "message": "no"}
    }


def test_a_held_pod_waits_with_its_reason_only_while_pending_and_with_an_error() -> None:
    hold = Hold("CreateContainerConfigError", 'configmap "x" not found')
    api = pods(
        {"a": api_pod("a"), "b": api_pod("b", phase="Running"), "c": api_pod("c")},
        hold={
            PodUID("a"): hold,
            PodUID("b"): hold,
            PodUID("c"): Hold("ContainerCreating", "", error=False),
        },
    )

    found = statuses(api)

    assert list(found) == ["a"]  # b ran before a restart; c has nothing to say yet
    waiting = found["a"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting == {"reason": hold.reason, "message": hold.message}


def test_a_final_status_wins_over_the_workers_older_one() -> None:
    api = pods({"a": api_pod("a"), "b": api_pod("b"), "c": api_pod("c")})

    found = statuses(
        api,
        final={"a": {"phase": "Failed", "reason": "Evicted"}},
        workers={"a": {"phase": "Running"}, "b": {"phase": "Running"}},
    )

    assert found == {"a": {"phase": "Failed", "reason": "Evicted"}, "b": {"phase": "Running"}}


def test_a_mirror_pod_gets_its_static_pods_status_only_if_it_is_that_pods_own() -> None:
    from nodeagent.model.pod import Pod

    class Static:
        uid = PodUID("static-uid")

    static: dict[str, tuple[Pod, str]] = {
        "ns/p-m": (Static(), "web"),  # type: ignore[dict-item]
        "ns/p-n": (Static(), "db"),  # type: ignore[dict-item]
    }
    mirrors = {
        "ns/p-m": api_pod("m", annotations={MIRROR_ANNOTATION: "static-uid"}),
        "ns/p-n": api_pod("n", annotations={MIRROR_ANNOTATION: "another-uid"}),
    }

    found = statuses(
        pods({}), static=static, mirrors=mirrors, workers={"static-uid": {"phase": "Running"}}
    )

    assert found == {"m": {"phase": "Running"}}
