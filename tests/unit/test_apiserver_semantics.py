"""The test API server's semantics, on its store directly (no HTTP): selectors, patches,
versions and conflicts, graceful deletion, allocation and the controllers."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.apiserver import errors
from tests.apiserver.controllers import (
    CONTROLLER_NAME,
    MANAGED_BY_LABEL,
    SERVICE_NAME_LABEL,
    EndpointSliceController,
    NamespaceController,
)
from tests.apiserver.patch import MERGE_PATCH, STRATEGIC, json_patch, merge_patch
from tests.apiserver.patch import strategic_merge_patch as smp
from tests.apiserver.resources import (
    CONFIGMAPS,
    ENDPOINTSLICES,
    NAMESPACES,
    PODS,
    SECRETS,
    SERVICEACCOUNTS,
    SERVICES,
)
from tests.apiserver.selectors import (
    match_fields,
    match_labels,
    object_fields,
    parse_fields,
    parse_labels,
)
from tests.apiserver.store import Store
from tests.apiserver.subresources import Tokens, bind, token_request
from tests.apiserver.watch import Filter

Obj = dict[str, Any]


@pytest.fixture
def store() -> Store:
    s = Store(history_size=100)
    namespaces = NamespaceController(s, root_ca_pem="CA")
    s.add_hook(namespaces.on_change)
    s.add_hook(EndpointSliceController(s).on_change)
    namespaces.bootstrap()
    return s


def pod(name: str, *, node: str | None = "n1", labels: dict[str, str] | None = None) -> Obj:
    spec: Obj = {"containers": [{"name": "c", "image": "busybox", "ports": []}]}
    if node:
        spec["nodeName"] = node
    return {"metadata": {"name": name, "labels": labels or {}}, "spec": spec}


# -- selectors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("app=web", {"app": "web"}, True),
        ("app==web", {"app": "db"}, False),
        ("app!=web", {}, True),  # a missing key satisfies !=
        ("app in (web, db),tier", {"app": "db", "tier": "x"}, True),
        ("app notin (web,db)", {"app": "web"}, False),
        ("!canary", {"canary": ""}, False),
        ("tier", {"app": "web"}, False),
        ("example.com/role=edge,app", {"example.com/role": "edge", "app": "x"}, True),
        ("replicas>2", {"replicas": "3"}, True),
        ("", {"anything": "x"}, True),
    ],
)
def test_label_selectors(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert match_labels(parse_labels(selector), labels) is expected


@pytest.mark.parametrize("bad", ["app=", "app in web", "=web", "a b", "app in (x,y"])
def test_bad_label_selectors_are_rejected(bad: str) -> None:
    if bad == "app=":  # an empty value is valid
        assert parse_labels(bad)[0].values == frozenset([""])
        return
    with pytest.raises(ValueError):
        parse_labels(bad)


def test_field_selectors() -> None:
    fields = PODS.fields()
    reqs = parse_fields("spec.nodeName=n1,metadata.name!=b", fields)
    obj = pod("a")
    assert match_fields(reqs, object_fields(obj, fields))
    unscheduled = parse_fields("spec.nodeName=", fields)
    assert match_fields(unscheduled, object_fields(pod("a", node=None), fields))
    assert parse_fields(r"metadata.name=a\,b", fields)[0].value == "a,b"
    with pytest.raises(ValueError, match="field label not supported"):
        parse_fields("spec.containers=x", fields)


# -- patches -----------------------------------------------------------------------------


def test_strategic_merge_patch_merges_conditions_by_type_and_replaces_container_statuses() -> None:
    target = {
        "status": {
            "conditions": [
                {"type": "Ready", "status": "False"},
                {"type": "PodScheduled", "status": "True"},
            ],
            "containerStatuses": [{"name": "a", "ready": False}, {"name": "b", "ready": False}],
        }
    }
    patch = {
        "status": {
            "conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "Initialized", "status": "True"},
            ],
            "containerStatuses": [{"name": "a", "ready": True}],
        }
    }
    out = smp(target, patch, "Pod")["status"]
    # Upstream's order: Ready (named, live before PodScheduled), Initialized (new to the
    # list: before the live-only PodScheduled), then PodScheduled.
    assert out["conditions"] == [
        {"type": "Ready", "status": "True"},
        {"type": "Initialized", "status": "True"},
        {"type": "PodScheduled", "status": "True"},
    ]
    # containerStatuses is atomic upstream (no patchStrategy): replaced, not merged.
    assert out["containerStatuses"] == [{"name": "a", "ready": True}]


def test_strategic_merge_patch_directives() -> None:
    target = {
        "metadata": {"finalizers": ["a", "b"], "labels": {"x": "1", "y": "2"}},
        "status": {"conditions": [{"type": "Ready"}, {"type": "Extra"}]},
        "spec": {"containers": [{"name": "c", "env": [{"name": "A", "value": "1"}]}]},
    }
    patch = {
        "metadata": {"finalizers": ["c"], "labels": {"x": None}},
        "$deleteFromPrimitiveList/x": [],
        "status": {"conditions": [{"type": "Extra", "$patch": "delete"}]},
        "spec": {"containers": [{"name": "c", "env": [{"name": "B", "value": "2"}]}]},
    }
    out = smp(copy.deepcopy(target), patch, "Pod")
    assert out["metadata"] == {"finalizers": ["a", "b", "c"], "labels": {"y": "2"}}
    assert out["status"]["conditions"] == [{"type": "Ready"}]
    assert out["spec"]["containers"][0]["env"] == [  # new items first, as upstream
        {"name": "B", "value": "2"},
        {"name": "A", "value": "1"},
    ]
    replaced = smp(
        target, {"status": {"conditions": [{"$patch": "replace"}, {"type": "New"}]}}, "Pod"
    )
    assert replaced["status"]["conditions"] == [{"type": "New"}]
    removed = smp(target, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}, "Pod")
    assert removed["metadata"]["finalizers"] == ["b"]


def test_kubelet_style_status_patch_with_element_order() -> None:
    target = {
        "metadata": {"uid": "u1"},
        "status": {
            "conditions": [
                {"type": "Initialized", "status": "True"},
                {"type": "Ready", "status": "False"},
            ],
            "podIPs": [{"ip": "10.0.0.1"}],
        },
    }
    patch = {
        "metadata": {"uid": "u1"},
        "status": {
            "$setElementOrder/conditions": [{"type": "Ready"}, {"type": "Initialized"}],
            "conditions": [{"type": "Ready", "status": "True"}],
            "$setElementOrder/podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}],
            "podIPs": [{"ip": "fd00::1"}],
            "phase": "Running",
        },
    }
    out = smp(target, patch, "Pod")["status"]
    assert out["conditions"] == [
        {"type": "Ready", "status": "True"},
        {"type": "Initialized", "status": "True"},
    ]
    assert out["podIPs"] == [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}] and out["phase"] == "Running"
    assert not any(k.startswith("$") for k in out)


def test_merge_patch_and_json_patch() -> None:
    target = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    assert merge_patch(target, {"a": {"b": None, "c": [3]}, "e": 2}) == {
        "a": {"c": [3]},
        "d": 1,
        "e": 2,
    }
    ops = [
        {"op": "add", "path": "/a/c/-", "value": 9},
        {"op": "replace", "path": "/d", "value": 5},
        {"op": "test", "path": "/d", "value": 5},
        {"op": "move", "from": "/a/b", "path": "/b"},
    ]
    assert json_patch(target, ops) == {"a": {"c": [1, 2, 9]}, "d": 5, "b": 1}


# -- versions, conflicts, subresources -----------------------------------------------------


def test_every_write_bumps_the_global_version_and_no_op_writes_do_not(store: Store) -> None:
    before = store.rv
    created = store.create(PODS, "default", pod("a"))
    assert int(created["metadata"]["resourceVersion"]) > before
    assert created["metadata"]["uid"] and created["metadata"]["creationTimestamp"]
    assert created["status"] == {"phase": "Pending", "qosClass": "BestEffort"}
    rv = store.rv
    again = store.update(PODS, "default", "a", created)
    assert again["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert store.rv == rv


def test_update_conflicts_and_uid_preconditions(store: Store) -> None:
    cm = store.create(CONFIGMAPS, "default", {"metadata": {"name": "c"}, "data": {"k": "1"}})
    cm["data"]["k"] = "2"
    updated = store.update(CONFIGMAPS, "default", "c", cm)
    stale = copy.deepcopy(cm)  # still carries the old resourceVersion
    stale["data"]["k"] = "3"
    with pytest.raises(errors.ApiError) as exc:
        store.update(CONFIGMAPS, "default", "c", stale)
    assert (exc.value.code, exc.value.reason) == (409, "Conflict")
    with pytest.raises(errors.ApiError) as exc:
        store.patch(CONFIGMAPS, "default", "c", MERGE_PATCH, {"metadata": {"uid": "other"}})
    assert exc.value.code == 409 and "Precondition failed" in exc.value.message
    assert store.get(CONFIGMAPS, "default", "c") == updated


def test_status_subresource_writes_only_status(store: Store) -> None:
    store.create(PODS, "default", pod("a"))
    patch = {"metadata": {"labels": {"x": "y"}}, "status": {"phase": "Running"}}
    out = store.patch(PODS, "default", "a", STRATEGIC, patch, subresource="status")
    assert out["status"]["phase"] == "Running" and "x" not in out["metadata"]["labels"]
    out = store.patch(PODS, "default", "a", MERGE_PATCH, {"status": {"phase": "Failed"}})
    assert out["status"]["phase"] == "Running"  # the main resource ignores status


def test_pod_spec_is_immutable_but_images(store: Store) -> None:
    store.create(PODS, "default", pod("a"))
    out = store.patch(
        PODS, "default", "a", STRATEGIC, {"spec": {"containers": [{"name": "c", "image": "x:1"}]}}
    )
    assert out["spec"]["containers"][0]["image"] == "x:1"
    with pytest.raises(errors.ApiError) as exc:
        store.patch(PODS, "default", "a", MERGE_PATCH, {"spec": {"nodeName": "n2"}})
    assert exc.value.code == 422


def test_generate_name_and_name_validation(store: Store) -> None:
    out = store.create(CONFIGMAPS, "default", {"metadata": {"generateName": "cfg-"}})
    assert out["metadata"]["name"].startswith("cfg-") and len(out["metadata"]["name"]) == 9
    with pytest.raises(errors.ApiError) as exc:
        store.create(CONFIGMAPS, "default", {"metadata": {"name": "Bad_Name"}})
    assert exc.value.code == 422
    with pytest.raises(errors.ApiError) as exc:
        store.create(CONFIGMAPS, "nope", {"metadata": {"name": "x"}})
    assert exc.value.code == 404


# -- graceful deletion -------------------------------------------------------------------


def test_graceful_pod_deletion(store: Store) -> None:
    p = pod("a")
    p["spec"]["terminationGracePeriodSeconds"] = 20
    uid = store.create(PODS, "default", p)["metadata"]["uid"]
    obj, gone = store.delete(PODS, "default", "a")
    assert not gone
    assert (
        obj["metadata"]["deletionGracePeriodSeconds"] == 20 and obj["metadata"]["deletionTimestamp"]
    )
    obj, gone = store.delete(PODS, "default", "a", grace_period=5)  # shorter: taken
    assert not gone and obj["metadata"]["deletionGracePeriodSeconds"] == 5
    obj, gone = store.delete(PODS, "default", "a", grace_period=50)  # longer: ignored
    assert obj["metadata"]["deletionGracePeriodSeconds"] == 5
    with pytest.raises(errors.ApiError) as exc:
        store.delete(PODS, "default", "a", grace_period=0, preconditions={"uid": "wrong"})
    assert exc.value.code == 409
    _, gone = store.delete(PODS, "default", "a", grace_period=0, preconditions={"uid": uid})
    assert gone and store.find(PODS, "default", "a") is None


def test_unscheduled_and_terminal_pods_go_at_once(store: Store) -> None:
    store.create(PODS, "default", pod("u", node=None))
    assert store.delete(PODS, "default", "u")[1]
    store.create(PODS, "default", pod("t"))
    store.patch(
        PODS, "default", "t", MERGE_PATCH, {"status": {"phase": "Succeeded"}}, subresource="status"
    )
    assert store.delete(PODS, "default", "t")[1]


def test_finalizers_hold_deletion_until_removed(store: Store) -> None:
    store.create(CONFIGMAPS, "default", {"metadata": {"name": "c", "finalizers": ["x/y"]}})
    obj, gone = store.delete(CONFIGMAPS, "default", "c")
    assert not gone and obj["metadata"]["deletionTimestamp"]
    store.patch(CONFIGMAPS, "default", "c", MERGE_PATCH, {"metadata": {"finalizers": None}})
    assert store.find(CONFIGMAPS, "default", "c") is None


# -- watch history -------------------------------------------------------------------------


def test_watch_replays_translates_selectors_and_expires(store: Store) -> None:
    start = store.rv
    store.create(PODS, "default", pod("a", labels={"app": "web"}))
    store.patch(PODS, "default", "a", MERGE_PATCH, {"metadata": {"labels": {"app": "db"}}})
    flt = Filter(PODS, "default", parse_labels("app=web"), [])
    events = store.hub.replay(start, flt)
    assert [e[0] for e in events] == ["ADDED", "DELETED"]  # stopped matching: DELETED
    assert events[1][1]["metadata"]["labels"] == {"app": "web"}  # previous content...
    assert events[1][1]["metadata"]["resourceVersion"] == str(store.rv)  # ...at the new version
    store.compact()
    with pytest.raises(Exception, match="too old resource version"):
        store.hub.replay(start, flt)
    assert store.hub.replay(store.rv, flt) == []


def test_small_history_expires_old_versions(store: Store) -> None:
    store.hub.set_capacity(2)
    start = store.rv
    for i in range(3):
        store.create(CONFIGMAPS, "default", {"metadata": {"name": f"c{i}"}})
    with pytest.raises(Exception, match="too old"):
        store.hub.replay(start, Filter(CONFIGMAPS, None, [], []))


# -- admission, allocation, controllers -----------------------------------------------------


def test_service_account_admission_mounts_the_api_access_volume(store: Store) -> None:
    created = store.create(PODS, "default", pod("a"))
    volume = created["spec"]["volumes"][0]
    assert volume["name"].startswith("kube-api-access-")
    sources = volume["projected"]["sources"]
    assert sources[0]["serviceAccountToken"]["path"] == "token"
    assert sources[1]["configMap"]["name"] == "kube-root-ca.crt"
    mount = created["spec"]["containers"][0]["volumeMounts"][0]
    assert mount["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount"
    assert store.get(CONFIGMAPS, "default", "kube-root-ca.crt")["data"] == {"ca.crt": "CA"}
    mirror = pod("m")
    mirror["metadata"]["annotations"] = {"kubernetes.io/config.mirror": "hash"}
    assert "volumes" not in store.create(PODS, "default", mirror)["spec"]


def test_services_get_cluster_ips_and_node_ports(store: Store) -> None:
    spec = {
        "type": "NodePort",
        "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81, "nodePort": 30080}],
    }
    svc = store.create(SERVICES, "default", {"metadata": {"name": "s"}, "spec": spec})
    assert svc["spec"]["clusterIP"].startswith("10.96.")
    ports = svc["spec"]["ports"]
    assert ports[0]["nodePort"] == 30000 and ports[1]["nodePort"] == 30080
    assert ports[0]["targetPort"] == 80
    dup = {"type": "NodePort", "ports": [{"port": 1, "nodePort": 30080}]}
    with pytest.raises(errors.ApiError, match="already allocated"):
        store.create(SERVICES, "default", {"metadata": {"name": "t"}, "spec": dup})
    with pytest.raises(errors.ApiError, match="immutable"):
        store.patch(SERVICES, "default", "s", MERGE_PATCH, {"spec": {"clusterIP": "10.96.9.9"}})
    headless = store.create(
        SERVICES,
        "default",
        {"metadata": {"name": "h"}, "spec": {"clusterIP": "None", "ports": [{"port": 1}]}},
    )
    assert headless["spec"]["clusterIPs"] == ["None"]


def _slices(store: Store, name: str) -> list[Obj]:
    out = []
    for s in store.list(ENDPOINTSLICES, "default"):
        labels = s["metadata"].get("labels", {})
        if (
            labels.get(SERVICE_NAME_LABEL) == name
            and labels.get(MANAGED_BY_LABEL) == CONTROLLER_NAME
        ):
            out.append(s)
    return out


def _ready(store: Store, name: str, ip: str) -> None:
    status = {
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True"}],
    }
    store.patch(PODS, "default", name, STRATEGIC, {"status": status}, subresource="status")


def test_endpointslice_controller(store: Store) -> None:
    web = pod("web-1", labels={"app": "web"})
    web["spec"]["containers"][0]["ports"] = [{"name": "http", "containerPort": 8080}]
    store.create(PODS, "default", web)
    svc_spec = {
        "selector": {"app": "web"},
        "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
    }
    store.create(SERVICES, "default", {"metadata": {"name": "web"}, "spec": svc_spec})
    [placeholder] = _slices(store, "web")
    assert placeholder["endpoints"] == [] and "ports" not in placeholder  # no IP yet
    _ready(store, "web-1", "10.244.1.5")
    [eps] = _slices(store, "web")
    assert eps["ports"] == [{"name": "http", "protocol": "TCP", "port": 8080}]
    [ep] = eps["endpoints"]
    assert ep["addresses"] == ["10.244.1.5"] and ep["nodeName"] == "n1"
    assert ep["conditions"] == {"ready": True, "serving": True, "terminating": False}
    assert (
        ep["targetRef"]["name"] == "web-1"
        and eps["metadata"]["ownerReferences"][0]["name"] == "web"
    )
    rv = store.rv
    store.patch(
        PODS, "default", "web-1", MERGE_PATCH, {"status": {"startTime": "x"}}, subresource="status"
    )
    assert (
        _slices(store, "web")[0]["metadata"]["resourceVersion"]
        == eps["metadata"]["resourceVersion"]
    )
    assert store.rv == rv + 1  # the pod changed, the slice did not
    store.delete(PODS, "default", "web-1")
    [ep] = _slices(store, "web")[0]["endpoints"]
    assert ep["conditions"] == {"ready": False, "serving": True, "terminating": True}
    store.delete(PODS, "default", "web-1", grace_period=0)
    assert _slices(store, "web")[0]["endpoints"] == []
    store.delete(SERVICES, "default", "web")
    assert _slices(store, "web") == []


def test_endpointslices_split_by_resolved_ports(store: Store) -> None:
    for name, port in (("a", 8080), ("b", 9090)):
        p = pod(name, labels={"app": "x"})
        p["spec"]["containers"][0]["ports"] = [{"name": "http", "containerPort": port}]
        store.create(PODS, "default", p)
        _ready(store, name, f"10.0.0.{port % 100}")
    spec = {"selector": {"app": "x"}, "ports": [{"port": 80, "targetPort": "http"}]}
    store.create(SERVICES, "default", {"metadata": {"name": "x"}, "spec": spec})
    ports = sorted(s["ports"][0]["port"] for s in _slices(store, "x"))
    assert ports == [8080, 9090]


def test_namespace_deletion_deletes_contents_gracefully(store: Store) -> None:
    store.create(NAMESPACES, None, {"metadata": {"name": "team"}})
    assert store.find(SERVICEACCOUNTS, "team", "default") is not None
    store.create(PODS, "team", pod("a"))
    store.create(SECRETS, "team", {"metadata": {"name": "s"}, "stringData": {"k": "v"}})
    assert store.get(SECRETS, "team", "s")["data"] == {"k": "dg=="}
    ns, gone = store.delete(NAMESPACES, None, "team")
    assert not gone and ns["status"]["phase"] == "Terminating"
    assert store.find(SECRETS, "team", "s") is None
    assert store.get(PODS, "team", "a")["metadata"]["deletionTimestamp"]  # the node's job
    store.delete(PODS, "team", "a", grace_period=0)
    assert store.find(NAMESPACES, None, "team") is None
    with pytest.raises(errors.ApiError) as exc:
        store.delete(NAMESPACES, None, "default")
    assert exc.value.code == 403


def test_token_request_and_binding(store: Store) -> None:
    tokens = Tokens()
    created = store.create(PODS, "default", pod("a", node=None))
    body = {
        "spec": {
            "expirationSeconds": 600,
            "boundObjectRef": {"kind": "Pod", "name": "a", "uid": created["metadata"]["uid"]},
        }
    }
    out = token_request(store, tokens, "default", "default", body)
    token = out["status"]["token"]
    assert token.count(".") == 2 and out["status"]["expirationTimestamp"].endswith("Z")
    assert tokens.authenticate(token) == "system:serviceaccount:default:default"
    with pytest.raises(errors.ApiError) as exc:
        token_request(store, tokens, "default", "default", {"spec": {"expirationSeconds": 60}})
    assert exc.value.code == 422
    bind(store, "default", "a", {"target": {"kind": "Node", "name": "n7"}})
    bound = store.get(PODS, "default", "a")
    assert (
        bound["spec"]["nodeName"] == "n7"
        and bound["status"]["conditions"][0]["type"] == "PodScheduled"
    )
    with pytest.raises(errors.ApiError) as exc:
        bind(store, "default", "a", {"target": {"name": "n8"}})
    assert exc.value.code == 409


def test_active_deadline_may_be_set_or_lowered_never_raised_or_removed(store: Store) -> None:
    store.create(PODS, "default", pod("a"))

    def deadline(value: int | None) -> Obj:
        return store.patch(
            PODS, "default", "a", MERGE_PATCH, {"spec": {"activeDeadlineSeconds": value}}
        )

    assert deadline(60)["spec"]["activeDeadlineSeconds"] == 60
    assert deadline(30)["spec"]["activeDeadlineSeconds"] == 30
    for refused in (31, None, 0):
        with pytest.raises(errors.ApiError) as exc:
            deadline(refused)
        assert exc.value.code == 422 and "activeDeadlineSeconds" in exc.value.message
    assert store.get(PODS, "default", "a")["spec"]["activeDeadlineSeconds"] == 30
