"""Pod status patches as the kubelet computes them (two-way strategic merge), applied the way
kube-apiserver applies them and checked against its pod status validation."""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

import pytest

from nodeagent.apiserver.statuspatch import (
    MERGE_KEYS,
    ORDER_PREFIX,
    merge_status,
    omit_empty,
    status_patch,
)
from tests.apiserver.patch import strategic_merge_patch

Obj = dict[str, Any]
OLD, NEW, NEWER = "10.88.0.4", "10.88.0.5", "10.88.0.6"


# --- kube-apiserver's side, as upstream does it ----------------------------------------------


def upstream_apply(live: Obj, patch: Obj) -> Obj:
    """strategicpatch's merge of a status patch: maps merge, null deletes, merge lists keep
    ``$patch: delete`` out, and order items as mergeSlice does (the patch's items, sorted by
    ``$setElementOrder`` when given, merged with the live-only items by their live order:
    items new to the list come first)."""
    result = copy.deepcopy(live)
    orders = {k.removeprefix(ORDER_PREFIX): v for k, v in patch.items() if k.startswith("$")}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif key in MERGE_KEYS and isinstance(value, list):
            live_items = result.get(key) or []
            result[key] = _merge_list(live_items, value, MERGE_KEYS[key], orders.get(key))
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _merge_map(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    for key, order in orders.items():
        if key not in patch and key in result:  # an order alone still reorders
            result[key] = _merge_list(result[key], [], MERGE_KEYS[key], order)
    return result


def _merge_map(live: Obj, patch: Obj) -> Obj:
    out = dict(live)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge_map(out[key], value)
        else:
            out[key] = value
    return out


def _merge_list(live: list[Obj], items: list[Obj], key: str, order: list[Obj] | None) -> list[Obj]:
    deleted = {i[key] for i in items if i.get("$patch") == "delete"}
    merged = [dict(i) for i in live if i[key] not in deleted]
    patched = [i for i in items if i.get("$patch") != "delete"]
    for item in patched:
        at = next((n for n, m in enumerate(merged) if m[key] == item[key]), None)
        if at is None:
            merged.append(dict(item))
        else:
            merged[at] = _merge_map(merged[at], item)
    wanted = [o[key] for o in order] if order is not None else [i[key] for i in patched]
    in_patch = sorted((m for m in merged if m[key] in wanted), key=lambda m: wanted.index(m[key]))
    server_only = [m for m in merged if m[key] not in wanted]
    return _merge_sorted(server_only, in_patch, [i[key] for i in live], key)


def _merge_sorted(left: list[Obj], right: list[Obj], live: list[Any], key: str) -> list[Obj]:
    """mergeSortedSlice: a server-only item goes first only if both are live and it is older."""
    out: list[Obj] = []
    i = j = 0
    while i < len(left) or j < len(right):
        take_left = j >= len(right) or (
            i < len(left)
            and left[i][key] in live
            and right[j][key] in live
            and live.index(left[i][key]) < live.index(right[j][key])
        )
        if take_left:
            out.append(left[i])
            i += 1
        else:
            out.append(right[j])
            j += 1
    return out


def validation_errors(status: Obj) -> list[str]:
    """kube-apiserver's pod status IP rules: one IP per family, podIPs[0] == podIP."""
    errors = []
    for single, plural in (("podIP", "podIPs"), ("hostIP", "hostIPs")):
        ips = [i["ip"] for i in status.get(plural) or []]
        families = [ipaddress.ip_address(ip).version for ip in ips]
        if len(families) != len(set(families)):
            errors.append(f"{plural}: may contain at most one IP per family: {ips}")
        if ips and status.get(single) != ips[0]:
            errors.append(f"{plural}[0] must match {single}")
    return errors


def both_appliers(live: Obj, patch: Obj) -> Obj:
    """The patch applied upstream's way, and by the test API server, which must agree."""
    ours = upstream_apply(live, patch)
    server = strategic_merge_patch({"status": copy.deepcopy(live)}, {"status": patch}, "Pod")
    assert omit_empty(server["status"]) == omit_empty(ours)
    return ours


def cond(kind: str, status: str = "True", at: str = "t0", **extra: str | None) -> Obj:
    return {"type": kind, "status": status, "lastTransitionTime": at, **extra}


def running(ip: str, **extra: Any) -> Obj:
    return {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "hostIP": "192.168.1.10",
        "hostIPs": [{"ip": "192.168.1.10"}],
        "qosClass": "BestEffort",
        "startTime": "2026-01-01T00:00:00Z",
        "conditions": [cond("PodReadyToStartContainers"), cond("Ready"), cond("PodScheduled")],
        "containerStatuses": [{"name": "c", "ready": True, "restartCount": 0}],
        **extra,
    }


# --- pod IPs ---------------------------------------------------------------------------------


def test_a_new_sandbox_ip_replaces_the_old_one() -> None:
    live = running(OLD)
    patch = status_patch(live, running(NEW))
    assert patch["podIP"] == NEW
    assert patch["podIPs"] == [{"ip": NEW}, {"ip": OLD, "$patch": "delete"}]
    assert patch["$setElementOrder/podIPs"] == [{"ip": NEW}]
    assert "hostIPs" not in patch and "conditions" not in patch
    result = both_appliers(live, patch)
    assert result["podIPs"] == [{"ip": NEW}] and result["podIP"] == NEW
    assert validation_errors(result) == []


def test_the_old_patch_without_directives_is_refused_upstream() -> None:
    """What the agent used to send: the new item lands before the live one, two IPv4s."""
    result = upstream_apply(running(OLD), {"podIP": NEW, "podIPs": [{"ip": NEW}]})
    assert result["podIPs"] == [{"ip": NEW}, {"ip": OLD}]
    assert validation_errors(result)


def test_two_sandboxes_in_a_row_each_replace_the_ip() -> None:
    live = running(OLD)
    for ip in (NEW, NEWER):
        live = both_appliers(live, status_patch(live, running(ip)))
        assert live["podIPs"] == [{"ip": ip}] and live["podIP"] == ip
        assert validation_errors(live) == []


def test_an_ip_gone_with_its_sandbox_is_cleared() -> None:
    ours = {k: v for k, v in running(OLD).items() if k not in ("podIP", "podIPs")}
    patch = status_patch(running(OLD), ours)
    assert patch == {"podIP": None, "podIPs": None}
    result = both_appliers(running(OLD), patch)
    assert "podIP" not in result and "podIPs" not in result


def test_a_first_ip_is_sent_whole_without_directives() -> None:
    live = {k: v for k, v in running(OLD).items() if k not in ("podIP", "podIPs")}
    patch = status_patch(live, running(OLD))
    assert patch == {"podIP": OLD, "podIPs": [{"ip": OLD}]}


# --- conditions ------------------------------------------------------------------------------


def test_conditions_added_removed_and_changed() -> None:
    live = running(OLD, conditions=[cond("PodScheduled"), cond("Ready", "False", reason="X")])
    ours = running(
        OLD,
        conditions=[cond("Initialized", at="t5"), cond("Ready", at="t5"), cond("PodScheduled")],
    )
    live["conditions"].append(cond("ContainersReady", "False"))  # ours has none any more
    patch = status_patch(live, ours)
    assert patch["conditions"] == [
        cond("Initialized", at="t5"),
        {"status": "True", "lastTransitionTime": "t5", "reason": None, "type": "Ready"},
        {"type": "ContainersReady", "$patch": "delete"},
    ]
    assert patch["$setElementOrder/conditions"] == [
        {"type": "Initialized"},
        {"type": "Ready"},
        {"type": "PodScheduled"},
    ]
    result = both_appliers(live, patch)
    assert [c["type"] for c in result["conditions"]] == ["Initialized", "Ready", "PodScheduled"]
    assert result["conditions"][1] == cond("Ready", at="t5")


def test_a_condition_whose_status_holds_keeps_the_api_transition_time() -> None:
    live = running(OLD)
    ours = running(OLD, conditions=[dict(c, lastTransitionTime="t9") for c in live["conditions"]])
    assert status_patch(live, ours) == {}
    ours["conditions"][1] = cond("Ready", "True", at="t9", reason="Now")
    patch = status_patch(live, ours)
    assert patch["conditions"] == [{"reason": "Now", "type": "Ready"}]


def test_conditions_other_writers_own_are_kept() -> None:
    gate = cond("example.com/gate", "True", at="t3")
    live = running(OLD)
    live["conditions"] = [gate, *live["conditions"]]
    ours = running(OLD, conditions=[cond("Ready", "False", at="t4")])
    patch = status_patch(live, ours)
    result = both_appliers(live, patch)
    assert gate in result["conditions"]
    assert [c["type"] for c in result["conditions"]] == ["example.com/gate", "Ready"]


def test_an_order_change_alone_sends_only_the_order() -> None:
    live = running(OLD)
    ours = running(OLD, conditions=list(reversed(live["conditions"])))
    patch = status_patch(live, ours)
    order = [{"type": c["type"]} for c in ours["conditions"]]
    assert patch == {"$setElementOrder/conditions": order}
    assert both_appliers(live, patch)["conditions"] == ours["conditions"]


def test_disruption_target_is_sent_as_the_pod_turns_terminal() -> None:
    target = cond("DisruptionTarget", reason="TerminationByKubelet", at="t7")
    ours = running(OLD, phase="Failed", reason="Evicted")
    ours["conditions"] = [*ours["conditions"], target]
    patch = status_patch(running(OLD), ours)
    assert target in patch["conditions"]
    assert patch["phase"] == "Failed" and patch["reason"] == "Evicted"
    # Once terminal, another writer's DisruptionTarget is theirs: never replaced.
    theirs = cond("DisruptionTarget", reason="DeletionByTaintManager")
    failed = running(OLD, phase="Failed", reason="Evicted")
    failed["conditions"] = [*failed["conditions"], theirs]
    result = both_appliers(failed, status_patch(failed, ours))
    assert theirs in result["conditions"] and target not in result["conditions"]


# --- the other fields ------------------------------------------------------------------------


def test_unchanged_status_gives_an_empty_patch() -> None:
    assert status_patch(running(OLD), running(OLD)) == {}
    assert status_patch(running(OLD), running(OLD, message="", nominatedNodeName=None)) == {}


def test_container_statuses_are_atomic_and_sent_whole() -> None:
    ours = running(OLD)
    ours["containerStatuses"] = [
        {"name": "c", "ready": False, "restartCount": 1, "lastState": {"terminated": {}}},
        {"name": "d", "imageID": "", "ready": True, "restartCount": 0, "lastState": {}},
    ]
    patch = status_patch(running(OLD), ours)
    # Sent as they are: Go encodes an empty imageID, and the server's decoders require it.
    assert patch == {"containerStatuses": ours["containerStatuses"]}


def test_values_are_sent_without_nulls_but_with_their_empty_fields() -> None:
    ours = running(OLD)
    ours["conditions"] = [*ours["conditions"], cond("Initialized", lastProbeTime=None)]
    ours["containerStatuses"] = [{"name": "c", "imageID": "", "ready": False, "restartCount": 0}]
    patch = status_patch(running(OLD), ours)
    assert patch["conditions"] == [cond("Initialized")]
    assert patch["containerStatuses"][0]["imageID"] == ""


def test_qos_class_and_start_time_are_the_apis_once_set() -> None:
    ours = running(OLD, qosClass="Guaranteed", startTime="2026-01-01T00:09:00Z")
    assert status_patch(running(OLD), ours) == {}
    live = {k: v for k, v in running(OLD).items() if k not in ("qosClass", "startTime")}
    patch = status_patch(live, ours)
    assert patch == {"qosClass": "Guaranteed", "startTime": "2026-01-01T00:09:00Z"}


def test_fields_other_writers_set_are_kept_and_ours_removed_become_null() -> None:
    live = running(OLD, nominatedNodeName="n2", reason="Forbidden", message="no")
    patch = status_patch(live, running(OLD))
    assert patch == {"reason": None, "message": None}
    assert both_appliers(live, patch)["nominatedNodeName"] == "n2"


@pytest.mark.parametrize(
    "live,ours",
    [
        (running(OLD), running(NEW, phase="Succeeded")),
        ({}, running(NEW)),
        (running(OLD, conditions=[cond("x/gate")]), running(OLD)),
        (running(OLD), {"phase": "Failed", "reason": "OutOfcpu", "message": "no room"}),
    ],
)
def test_the_patch_applied_gives_the_merged_status(live: Obj, ours: Obj) -> None:
    result = both_appliers(live, status_patch(live, ours))
    assert omit_empty(result) == omit_empty(merge_status(omit_empty(live), ours))
    assert validation_errors(result) == []
