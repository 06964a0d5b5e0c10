"""server/snapshot: the pods the status socket lists, and what describe adds to them."""

from __future__ import annotations

from typing import Any, cast

import pytest

from nodeagent.model.pod import Pod, PodUID
from nodeagent.server import podspec, snapshot

Obj = dict[str, Any]


def entry(name: str, uid: str, namespace: str = "default", phase: str = "Running") -> Obj:
    meta = {"name": name, "namespace": namespace, "uid": uid}
    return {"metadata": meta, "status": {"phase": phase}}


def test_an_evicted_pod_is_listed_once_with_its_final_entry_and_all_are_sorted() -> None:
    running = [entry("web", "u1"), entry("db", "u2"), entry("a", "u3", namespace="z")]
    evicted = [entry("web", "u1", phase="Failed")]
    held = [entry("cfg", "u4", phase="Pending")]

    pods = snapshot.sorted_pods(running, evicted, held)

    assert [(p["metadata"]["name"], p["status"]["phase"]) for p in pods] == [
        ("cfg", "Pending"),
        ("db", "Running"),
        ("web", "Failed"),
        ("a", "Running"),
    ]


def test_extras_show_only_the_back_offs_still_due_and_only_for_pods_with_a_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(podspec, "spec_summary", lambda pod: {"of": pod})
    pod = cast(Pod, "the-pod")
    extras = {PodUID("u1"): snapshot.PodExtras(pod, {"late": 200.0, "done": 50.0})}
    pods = [entry("web", "u1"), entry("gone", "u2")]

    found = snapshot.with_extras(pods, extras.get, now=100.0)

    assert found[0]["backoffUntil"] == {"late": "1970-01-01T00:03:20Z"}
    assert found[0]["spec"] == {"of": "the-pod"}
    assert "spec" not in found[1] and "backoffUntil" not in found[1]
