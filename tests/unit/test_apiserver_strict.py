"""The test API server as strict as kube-apiserver: strategic merge list order, pod status
conversion and validation, the kubernetes Service (no HTTP: the store and pure functions)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.apiserver import errors
from tests.apiserver.controllers import NamespaceController, ensure_kubernetes_service
from tests.apiserver.patch import STRATEGIC
from tests.apiserver.patch import strategic_merge_patch as smp
from tests.apiserver.podstatus import convert, validate_update
from tests.apiserver.resources import ENDPOINTSLICES, PODS, SERVICES
from tests.apiserver.store import Store

Obj = dict[str, Any]

# -- strategic merge: upstream's list order ---------------------------------------------------


def _ips(*ips: str) -> list[Obj]:
    return [{"ip": ip} for ip in ips]


def test_an_ip_new_to_podips_goes_before_the_live_one() -> None:
    target = {"status": {"podIP": "10.0.0.1", "podIPs": _ips("10.0.0.1")}}
    out = smp(target, {"status": {"podIPs": _ips("10.0.0.2")}}, "Pod")
    assert out["status"]["podIPs"] == _ips("10.0.0.2", "10.0.0.1")


def test_the_kubelets_two_way_diff_replaces_the_pod_ip() -> None:
    target = {"status": {"podIPs": _ips("10.0.0.1")}}
    patch = {
        "status": {
            "$setElementOrder/podIPs": _ips("10.0.0.2"),
            "podIPs": [{"ip": "10.0.0.2"}, {"ip": "10.0.0.1", "$patch": "delete"}],
        }
    }
    assert smp(target, patch, "Pod")["status"]["podIPs"] == _ips("10.0.0.2")


def test_set_element_order_alone_reorders_the_live_list() -> None:
    target = {"status": {"conditions": [{"type": "A"}, {"type": "B"}, {"type": "C"}]}}
    patch = {"status": {"$setElementOrder/conditions": [{"type": "C"}, {"type": "A"}]}}
    out = smp(target, patch, "Pod")["status"]["conditions"]
    # C then A as ordered; B (not named) goes first, since it stands before C live
    # (mergeSortedSlice compares the live positions of the two heads).
    assert [c["type"] for c in out] == ["B", "C", "A"]


def test_named_live_items_and_new_items_interleave_as_merge_sorted_slice() -> None:
    live = [{"name": n} for n in ("a", "b", "c")]
    target = {"spec": {"containers": live}}
    patch = {"spec": {"containers": [{"name": "c", "image": "x"}, {"name": "new"}]}}
    out = smp(copy.deepcopy(target), patch, "Pod")["spec"]["containers"]
    # Live-only a and b stand before c in the live list, so they come first; "new" follows
    # c in the patch, and a new item goes before any live item still waiting (none here).
    assert [c["name"] for c in out] == ["a", "b", "c", "new"]
    patch = {"spec": {"containers": [{"name": "new"}, {"name": "b", "image": "y"}]}}
    out = smp(copy.deepcopy(target), patch, "Pod")["spec"]["containers"]
    assert [c["name"] for c in out] == ["new", "a", "b", "c"]


def test_finalizers_keep_live_items_first() -> None:
    out = smp({"metadata": {"finalizers": ["a"]}}, {"metadata": {"finalizers": ["b"]}}, "Pod")
    assert out["metadata"]["finalizers"] == ["a", "b"]


# -- pod status: conversion -------------------------------------------------------------------


def test_pod_ip_alone_fills_pod_ips_and_pod_ips_alone_fills_pod_ip() -> None:
    status: Obj = {"podIP": "10.0.0.1", "hostIPs": _ips("192.168.0.1")}
    convert(status)
    assert status == {
        "podIP": "10.0.0.1",
        "podIPs": _ips("10.0.0.1"),
        "hostIP": "192.168.0.1",
        "hostIPs": _ips("192.168.0.1"),
    }


def test_a_pod_ip_that_differs_from_pod_ips_0_is_authoritative() -> None:
    status: Obj = {"podIP": "10.0.0.9", "podIPs": _ips("10.0.0.1", "fd00::1")}
    convert(status)
    assert status == {"podIP": "10.0.0.9", "podIPs": _ips("10.0.0.9")}
    same: Obj = {"podIP": "10.0.0.1", "podIPs": _ips("10.0.0.1", "fd00::1")}
    convert(same)
    assert same["podIPs"] == _ips("10.0.0.1", "fd00::1")


# -- pod status: validation -------------------------------------------------------------------


def _pod(policy: str = "Always", **status: Any) -> Obj:
    return {
        "metadata": {"name": "p"},
        "spec": {"restartPolicy": policy, "containers": [{"name": "c"}]},
        "status": {"qosClass": "BestEffort", **status},
    }


def _fields(old: Obj, new: Obj) -> list[str]:
    return [str(e) for e in validate_update(old, new)]


def test_at_most_one_ip_per_family() -> None:
    old = _pod()
    assert _fields(old, _pod(podIPs=_ips("10.0.0.1", "fd00::1"))) == []
    errs = _fields(old, _pod(podIPs=_ips("10.0.0.2", "10.0.0.1")))
    assert len(errs) == 1
    assert errs[0].startswith("status.podIPs: Invalid value: ")
    assert errs[0].endswith("may specify no more than one IP for each IP family")
    errs = _fields(old, _pod(hostIPs=_ips("10.0.0.1", "10.0.0.1")))
    assert "status.hostIPs[1]: Duplicate value: " in errs[0]
    assert errs[-1].endswith("may specify no more than one IP for each IP family")


def test_pod_ips_must_be_ip_addresses() -> None:
    errs = _fields(_pod(), _pod(podIPs=_ips("10.0.0.300")))
    assert errs == [
        'status.podIPs[0]: Invalid value: "10.0.0.300": must be a valid IP address, '
        "(e.g. 10.9.8.7 or 2001:db8::ffff)"
    ]


def test_qos_class_is_immutable() -> None:
    new = _pod()
    new["status"]["qosClass"] = "Burstable"
    assert _fields(_pod(), new) == [
        'status.qosClass: Invalid value: "Burstable": field is immutable'
    ]


def _state(kind: str, exit_code: int = 0) -> Obj:
    return {"terminated": {"exitCode": exit_code}} if kind == "terminated" else {kind: {}}


def _statuses(kind: str, exit_code: int = 0) -> list[Obj]:
    return [{"name": "c", "state": _state(kind, exit_code)}]


@pytest.mark.parametrize(
    ("policy", "exit_code", "allowed"),
    [
        ("Always", 0, True),
        ("Never", 1, False),
        ("Never", 0, False),
        ("OnFailure", 0, False),
        ("OnFailure", 1, True),
    ],
)
def test_a_terminated_container_leaves_that_state_only_if_it_would_restart(
    policy: str, exit_code: int, allowed: bool
) -> None:
    old = _pod(policy, containerStatuses=_statuses("terminated", exit_code))
    new = _pod(policy, containerStatuses=_statuses("running"))
    errs = _fields(old, new)
    if allowed:
        assert errs == []
    else:
        assert errs == [
            "status.containerStatuses[0].state: Forbidden: may not be transitioned to "
            "non-terminated state"
        ]
    still = _pod(policy, containerStatuses=_statuses("terminated", exit_code))
    assert _fields(old, still) == []


def test_a_restartable_init_container_may_restart_under_restart_policy_never() -> None:
    old = _pod("Never", initContainerStatuses=_statuses("terminated", 1))
    old["spec"]["initContainers"] = [{"name": "c", "restartPolicy": "Always"}]
    new = copy.deepcopy(old)
    new["status"]["initContainerStatuses"] = _statuses("running")
    assert _fields(old, new) == []
    del old["spec"]["initContainers"][0]["restartPolicy"]
    assert _fields(old, new) == [
        "status.initContainerStatuses[0].state: Forbidden: may not be transitioned to "
        "non-terminated state"
    ]


def _store() -> Store:
    store = Store(service_account_admission=False)
    NamespaceController(store, root_ca_pem="").bootstrap()
    return store


def _stored_pod(store: Store) -> Obj:
    return store.create(
        PODS,
        "default",
        {
            "metadata": {"name": "p"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]},
        },
    )


def test_a_rejected_status_patch_is_a_422_with_causes_and_keeps_the_old_status() -> None:
    store = _store()
    _stored_pod(store)
    store.patch(
        PODS,
        "default",
        "p",
        STRATEGIC,
        {"status": {"podIP": "10.0.0.1", "podIPs": _ips("10.0.0.1")}},
        subresource="status",
    )
    # What a merge-naive agent sends when the pod gets a new sandbox: the new IP lands
    # before the old one, two IPv4 addresses.
    with pytest.raises(errors.ApiError) as caught:
        store.patch(
            PODS,
            "default",
            "p",
            STRATEGIC,
            {"status": {"podIP": "10.0.0.2", "podIPs": _ips("10.0.0.2")}},
            subresource="status",
        )
    exc = caught.value
    assert exc.code == 422 and exc.reason == "Invalid"
    assert exc.message.startswith('Pod "p" is invalid: status.podIPs: Invalid value: ')
    assert exc.details is not None
    assert [c["field"] for c in exc.details["causes"]] == ["status.podIPs"]
    assert store.get(PODS, "default", "p")["status"]["podIPs"] == _ips("10.0.0.1")
    # The kubelet's two-way diff is accepted, and podIP follows podIPs[0].
    out = store.patch(
        PODS,
        "default",
        "p",
        STRATEGIC,
        {
            "status": {
                "podIP": "10.0.0.2",
                "$setElementOrder/podIPs": _ips("10.0.0.2"),
                "podIPs": [{"ip": "10.0.0.2"}, {"ip": "10.0.0.1", "$patch": "delete"}],
            }
        },
        subresource="status",
    )
    assert (out["status"]["podIP"], out["status"]["podIPs"]) == ("10.0.0.2", _ips("10.0.0.2"))


# -- the kubernetes Service ---------------------------------------------------------------------


def test_the_kubernetes_service_and_its_slice_are_as_the_apiserver_keeps_them() -> None:
    store = _store()
    ensure_kubernetes_service(store, "192.0.2.10", 6443)
    svc = store.get(SERVICES, "default", "kubernetes")
    assert svc["metadata"]["labels"] == {"component": "apiserver", "provider": "kubernetes"}
    spec = svc["spec"]
    assert (spec["type"], spec["clusterIP"], spec["clusterIPs"]) == (
        "ClusterIP",
        "10.96.0.1",
        ["10.96.0.1"],
    )
    assert spec["ports"] == [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]
    eps = store.get(ENDPOINTSLICES, "default", "kubernetes")
    assert eps["metadata"]["labels"] == {"kubernetes.io/service-name": "kubernetes"}
    assert eps["addressType"] == "IPv4"
    assert eps["endpoints"] == [{"addresses": ["192.0.2.10"], "conditions": {"ready": True}}]
    assert eps["ports"] == [{"name": "https", "port": 6443, "protocol": "TCP"}]
    # Served on another port later (restarted from saved state): both follow.
    ensure_kubernetes_service(store, "192.0.2.10", 7443)
    assert store.get(SERVICES, "default", "kubernetes")["spec"]["ports"][0]["targetPort"] == 7443
    assert store.get(ENDPOINTSLICES, "default", "kubernetes")["ports"][0]["port"] == 7443
