"""Pod and Service documents -> model objects (nodeagent.model.validate, fields, quantity)."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodeagent.model import quantity
from nodeagent.model.fields import FieldError, ValidationError
from nodeagent.model.pod import (
    EmptyDirSource,
    ExecAction,
    FieldRef,
    HostPathSource,
    HTTPGetAction,
    Pod,
    PullPolicy,
    ResourceFieldRef,
    RestartPolicy,
    TCPSocketAction,
)
from nodeagent.model.validate import ServiceDoc, parse_document
from tests.harness.manifests import full_pod

Doc = dict[str, Any]


def parse(doc: Any, *, node_name: str = "node-1") -> Pod | ServiceDoc:
    return parse_document(doc, source="manifests/web.yaml", node_name=node_name)


def parse_pod(doc: Any, *, node_name: str = "node-1") -> Pod:
    pod = parse(doc, node_name=node_name)
    assert isinstance(pod, Pod)
    return pod


def errors_of(doc: Any) -> tuple[FieldError, ...]:
    with pytest.raises(ValidationError) as info:
        parse(doc)
    assert info.value.errors, "a ValidationError must name at least one field"
    return info.value.errors


def paths(doc: Any) -> set[str]:
    return {e.path for e in errors_of(doc)}


# --- a valid pod --------------------------------------------------------------------------------


def test_full_pod_parses_with_identity_and_defaults() -> None:
    pod = parse_pod(full_pod())
    assert (pod.name, pod.namespace, pod.key) == ("web", "shop", "shop/web")
    assert pod.labels == {"app": "web"}
    assert pod.annotations == {"note": "x"}
    assert pod.source == "manifests/web.yaml"
    assert pod.uid  # derived from the content: static pods have none of their own
    spec = pod.spec
    assert spec.restart_policy is RestartPolicy.ALWAYS
    assert spec.termination_grace_period_seconds == 30
    assert spec.service_account_name == "default"
    assert spec.host_network is False
    assert [c.name for c in pod.all_containers()] == ["setup", "web", "sidecar", "pinned"]


def test_full_pod_volumes_and_mounts() -> None:
    spec = parse_pod(full_pod()).spec
    sources = {v.name: v.source for v in spec.volumes}
    assert sources["html"] == EmptyDirSource()
    assert sources["cache"] == EmptyDirSource(medium="Memory", size_limit_bytes=64 * 2**20)
    assert sources["host"] == HostPathSource(path="/srv", type="DirectoryOrCreate")
    web = spec.containers[0]
    assert [(m.name, m.mount_path, m.read_only, m.sub_path) for m in web.volume_mounts] == [
        ("html", "/html", True, ""),
        ("cache", "/cache", False, "web"),
    ]


def test_full_pod_env_and_resources() -> None:
    spec = parse_pod(full_pod()).spec
    init, web = spec.init_containers[0], spec.containers[0]
    assert init.env[0].value_from == FieldRef("metadata.name")
    assert [e.name for e in web.env] == ["MODE", "NODE", "MEM"]
    assert web.env[0].value == "prod"
    assert web.env[1].value_from == FieldRef("spec.nodeName")
    assert web.env[2].value_from == ResourceFieldRef(resource="limits.memory", divisor="1Mi")
    res = web.resources
    assert (res.cpu_limit_millis, res.memory_limit_bytes) == (500, 128 * 2**20)
    assert (res.cpu_request_millis, res.memory_request_bytes) == (250, 64 * 2**20)
    assert spec.containers[1].resources.cpu_limit_millis is None


def test_full_pod_probes_with_defaults() -> None:
    web = parse_pod(full_pod()).spec.containers[0]
    liveness = web.liveness_probe
    assert liveness is not None
    assert liveness.handler == HTTPGetAction(port="http", path="/healthz")
    assert (
        liveness.initial_delay_seconds,
        liveness.period_seconds,
        liveness.timeout_seconds,
        liveness.success_threshold,
        liveness.failure_threshold,
    ) == (0, 10, 1, 1, 3)
    assert liveness.termination_grace_period_seconds is None
    readiness = web.readiness_probe
    assert readiness is not None
    assert readiness.handler == TCPSocketAction(port=8080)
    assert (readiness.period_seconds, readiness.success_threshold) == (2, 2)
    startup = web.startup_probe
    assert startup is not None
    assert startup.handler == ExecAction(("true",))
    assert (startup.failure_threshold, startup.termination_grace_period_seconds) == (30, 5)
    assert web.lifecycle.post_start == ExecAction(("touch", "/tmp/up"))
    assert web.lifecycle.pre_stop == HTTPGetAction(port=8080, path="/quit")


@pytest.mark.parametrize(
    ("image", "policy"),
    [
        ("busybox", PullPolicy.ALWAYS),
        ("busybox:latest", PullPolicy.ALWAYS),
        ("registry.local:5000/tools:latest", PullPolicy.ALWAYS),
        ("registry.local:5000/tools", PullPolicy.ALWAYS),  # the port is not a tag
        ("busybox:1.36", PullPolicy.IF_NOT_PRESENT),
        ("busybox@sha256:" + "ab" * 32, PullPolicy.IF_NOT_PRESENT),
    ],
)
def test_pull_policy_defaults_by_tag(image: str, policy: PullPolicy) -> None:
    doc = full_pod()
    doc["spec"]["containers"][1]["image"] = image
    assert parse_pod(doc).spec.containers[1].image_pull_policy is policy


def test_explicit_pull_policy_wins() -> None:
    doc = full_pod()
    doc["spec"]["containers"][1]["imagePullPolicy"] = "Never"
    assert parse_pod(doc).spec.containers[1].image_pull_policy is PullPolicy.NEVER


def test_minimal_pod_defaults() -> None:
    pod = parse_pod(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        }
    )
    assert pod.namespace == "default"
    assert pod.spec.init_containers == ()
    assert pod.spec.volumes == ()
    assert pod.spec.restart_policy is RestartPolicy.ALWAYS


def test_service_document() -> None:
    doc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"ports": [{"port": 80}]},
    }
    svc = parse(doc)
    assert isinstance(svc, ServiceDoc)
    assert (svc.key, svc.raw) == ("default/web", doc)


# --- invalid pods: each error names its field ---------------------------------------------------


def mutated(change: Any) -> Doc:
    doc = full_pod()
    change(doc)
    return doc


def _containers(doc: Doc) -> list[Doc]:
    containers: list[Doc] = doc["spec"]["containers"]
    return containers


@pytest.mark.parametrize(
    ("change", "path"),
    [
        (lambda d: _containers(d)[0].pop("name"), "spec.containers[0].name"),
        (lambda d: _containers(d)[1].pop("image"), "spec.containers[1].image"),
        (
            lambda d: d["spec"]["initContainers"][0].pop("image"),
            "spec.initContainers[0].image",
        ),
        (lambda d: d["spec"].update(restartPolicy="Sometimes"), "spec.restartPolicy"),
        (
            lambda d: d["spec"].update(terminationGracePeriodSeconds=-1),
            "spec.terminationGracePeriodSeconds",
        ),
        (
            lambda d: _containers(d)[0].update(livenessProbe={"periodSeconds": 5}),
            "spec.containers[0].livenessProbe",
        ),
        (
            lambda d: _containers(d)[0].update(
                livenessProbe={"exec": {"command": ["true"]}, "tcpSocket": {"port": 80}}
            ),
            "spec.containers[0].livenessProbe",
        ),
        (
            lambda d: _containers(d)[0]["livenessProbe"]["httpGet"].update(port="admin"),
            "spec.containers[0].livenessProbe.httpGet.port",
        ),
        (
            lambda d: _containers(d)[0]["livenessProbe"].update(successThreshold=2),
            "spec.containers[0].livenessProbe.successThreshold",
        ),
        (
            lambda d: _containers(d)[0]["startupProbe"].update(successThreshold=2),
            "spec.containers[0].startupProbe.successThreshold",
        ),
        (
            lambda d: _containers(d)[0]["readinessProbe"].update(terminationGracePeriodSeconds=3),
            "spec.containers[0].readinessProbe.terminationGracePeriodSeconds",
        ),
        (
            lambda d: d["spec"]["initContainers"][0].update(
                readinessProbe={"exec": {"command": ["true"]}}
            ),
            "spec.initContainers[0].readinessProbe",
        ),
        (
            lambda d: _containers(d)[0].update(securityContextX={}),
            "spec.containers[0].securityContextX",
        ),
        (lambda d: d["spec"].update(resources={}), "spec.resources"),
        (
            lambda d: d["spec"].update(
                ephemeralContainers=[
                    {"name": "dbg", "image": "busybox", "ports": [{"containerPort": 80}]}
                ]
            ),
            "spec.ephemeralContainers[0].ports",
        ),
        (
            lambda d: d["spec"].update(
                ephemeralContainers=[
                    {"name": "dbg", "image": "busybox", "targetContainerName": "nope"}
                ]
            ),
            "spec.ephemeralContainers",
        ),
        (lambda d: d.update(extra=1), "extra"),
        (lambda d: d["metadata"].update(labels=["app", "web"]), "metadata.labels"),
        (lambda d: d["metadata"].update(labels={"app": 1}), "metadata.labels"),
        (
            lambda d: d["spec"].update(terminationGracePeriodSeconds="30"),
            "spec.terminationGracePeriodSeconds",
        ),
        (lambda d: d["spec"].update(hostNetwork="yes"), "spec.hostNetwork"),
        (lambda d: d["spec"].update(containers={"name": "c"}), "spec.containers"),
        (lambda d: d["spec"].update(containers=[]), "spec.containers"),
        (lambda d: _containers(d)[0].update(command="httpd"), "spec.containers[0].command"),
        (lambda d: _containers(d)[0].update(resources=[]), "spec.containers[0].resources"),
        (
            lambda d: _containers(d)[0]["ports"][0].update(containerPort="8080"),
            "spec.containers[0].ports[0].containerPort",
        ),
        (
            lambda d: _containers(d)[0]["ports"][0].update(containerPort=70000),
            "spec.containers[0].ports[0].containerPort",
        ),
        (lambda d: _containers(d)[1].update(name="web"), "spec.containers"),
        (lambda d: _containers(d)[1].update(name="setup"), "spec.containers"),
        (lambda d: _containers(d)[1].update(name="Not_A_Label"), "spec.containers[1].name"),
        (
            lambda d: _containers(d)[0]["volumeMounts"][0].update(name="nope"),
            "spec.containers[0].volumeMounts[0].name",
        ),
        (
            lambda d: _containers(d)[0]["volumeMounts"][0].update(mountPath="html"),
            "spec.containers[0].volumeMounts[0].mountPath",
        ),
        (
            lambda d: _containers(d)[0]["volumeMounts"][1].update(subPath="../etc"),
            "spec.containers[0].volumeMounts[1].subPath",
        ),
        (lambda d: d["spec"]["volumes"].append({"name": "html", "emptyDir": {}}), "spec.volumes"),
        (lambda d: d["spec"]["volumes"].append({"name": "nothing"}), "spec.volumes[3]"),
        (
            lambda d: d["spec"]["volumes"].append(
                {"name": "claim", "persistentVolumeClaim": {"claimName": "data"}}
            ),
            "spec.volumes[3].persistentVolumeClaim",
        ),
        (
            lambda d: d["spec"]["volumes"].append({"name": "eph", "ephemeral": {}}),
            "spec.volumes[3].ephemeral",
        ),
        (
            lambda d: d["spec"]["volumes"][2]["hostPath"].update(path="srv"),
            "spec.volumes[2].hostPath.path",
        ),
        (
            lambda d: _containers(d)[0]["resources"]["limits"].update(cpu="lots"),
            "spec.containers[0].resources.limits.cpu",
        ),
        (
            lambda d: _containers(d)[0]["resources"]["limits"].update(memory="-1Gi"),
            "spec.containers[0].resources.limits.memory",
        ),
        (
            lambda d: _containers(d)[0]["resources"]["limits"].update(gpu="1"),
            "spec.containers[0].resources.limits.gpu",
        ),
        (
            lambda d: _containers(d)[0]["env"][1]["valueFrom"]["fieldRef"].update(
                fieldPath="spec.secret"
            ),
            "spec.containers[0].env[1].valueFrom.fieldRef.fieldPath",
        ),
        (
            lambda d: _containers(d)[0]["env"].append({"name": "1BAD", "value": "x"}),
            "spec.containers[0].env[3].name",
        ),
        (
            lambda d: _containers(d)[0]["env"].append({"name": "E", "valueFrom": {}}),
            "spec.containers[0].env[3].valueFrom",
        ),
        (
            lambda d: _containers(d)[0]["lifecycle"].update(preStop={"grpc": {"port": 1}}),
            "spec.containers[0].lifecycle.preStop.grpc",
        ),
        (lambda d: d["metadata"].pop("name"), "metadata.name"),
        (lambda d: d["metadata"].update(name="Web_1"), "metadata.name"),
        (lambda d: d["metadata"].update(namespace="a.b"), "metadata.namespace"),
    ],
)
def test_invalid_pod_names_the_field(change: Any, path: str) -> None:
    found = paths(mutated(change))
    assert path in found, found


def test_every_error_is_reported_in_one_pass() -> None:
    doc = full_pod()
    doc["spec"]["restartPolicy"] = "Sometimes"
    _containers(doc)[0].pop("name")
    _containers(doc)[1].pop("image")
    assert {
        "spec.restartPolicy",
        "spec.containers[0].name",
        "spec.containers[1].image",
    } <= paths(doc)


def test_errors_carry_a_message_and_the_object() -> None:
    doc = mutated(lambda d: d["spec"].update(restartPolicy="Sometimes"))
    with pytest.raises(ValidationError) as info:
        parse(doc)
    assert info.value.obj == "Pod shop/web"
    (error,) = info.value.errors
    assert "Sometimes" in error.message
    assert "spec.restartPolicy" in str(info.value)


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        ({"apiVersion": "v1", "kind": "Deployment", "metadata": {"name": "x"}}, "kind"),
        ({"apiVersion": "v1", "metadata": {"name": "x"}}, "kind"),
        ({"apiVersion": "apps/v1", "kind": "Pod", "metadata": {"name": "x"}}, "apiVersion"),
        ({"kind": "Service", "metadata": {"name": "x"}}, "apiVersion"),
        (
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {},
                "spec": {"ports": [{"port": 1}]},
            },
            "metadata.name",
        ),
        (["not", "a", "map"], ""),
        ("text", ""),
    ],
)
def test_not_a_v1_pod_or_service(doc: Any, path: str) -> None:
    errors = errors_of(doc)
    assert [e.path for e in errors] == [path]
    assert all(e.message for e in errors)


# --- quantities ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", Decimal("0.5")),
        ("1", Decimal(1)),
        (1, Decimal(1)),
        ("0.5", Decimal("0.5")),
        (0.5, Decimal("0.5")),
        ("128Mi", Decimal(128 * 2**20)),
        ("1Gi", Decimal(2**30)),
        ("1G", Decimal(10**9)),
        ("1k", Decimal(1000)),
        ("1e3", Decimal(1000)),
        ("2E3", Decimal(2000)),
        ("100n", Decimal("1e-7")),
    ],
)
def test_quantity_parsing(text: object, value: Decimal) -> None:
    assert quantity.parse_quantity(text) == value


@pytest.mark.parametrize(
    "text", ["", "abc", "1.2.3", "12Q", "1 Mi", "Mi", "-1", "1e", True, None, [1], "1e999999999"]
)
def test_bad_quantities(text: object) -> None:
    with pytest.raises(quantity.QuantityError):
        quantity.parse_quantity(text)


def test_cpu_and_memory_conversions_round_up() -> None:
    assert quantity.cpu_millis("500m") == 500
    assert quantity.cpu_millis("0.1") == 100
    assert quantity.cpu_millis("1.0001") == 1001
    assert quantity.cpu_millis(2) == 2000
    assert quantity.memory_bytes("128Mi") == 134217728
    assert quantity.memory_bytes("1G") == 10**9
    assert quantity.memory_bytes("0.5") == 1


def test_absurd_quantity_is_a_validation_error() -> None:
    doc = full_pod()
    _containers(doc)[0]["resources"]["limits"]["memory"] = "1e999999999"
    assert "spec.containers[0].resources.limits.memory" in paths(doc)


# --- uid ----------------------------------------------------------------------------------------


def test_uid_is_stable_and_follows_the_content() -> None:
    first = parse_pod(full_pod()).uid
    assert parse_pod(full_pod()).uid == first
    changed = full_pod()
    _containers(changed)[0]["args"] = ["-p", "9090"]
    assert parse_pod(changed).uid != first
    assert parse_pod(full_pod(), node_name="node-2").uid != first


def test_uid_from_metadata_is_kept() -> None:
    doc = full_pod()
    doc["metadata"]["uid"] = "1234-abcd"
    assert parse_pod(doc).uid == "1234-abcd"


def test_uid_of_a_document_with_non_string_keys_in_ignored_fields() -> None:
    # YAML allows `1: x` keys; an ignored field may carry them and must not break the hash.
    doc = full_pod()
    doc["status"] = {1: "a", "b": 2}
    first = parse_pod(doc).uid
    assert parse_pod(copy.deepcopy(doc)).uid == first


# --- never anything but ValidationError ---------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["", "v1", "Pod", "Always", "500m", "1Mi", "http", "busybox", "-1", "1e999"]),
)
_keys = st.one_of(
    st.text(max_size=10),
    st.sampled_from(["name", "image", "port", "exec", "httpGet", "valueFrom", "emptyDir"]),
    st.integers(min_value=-3, max_value=3),
)


def _nested(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=4))


_values = st.recursive(_scalars, _nested, max_leaves=12)


def _locations(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            found.extend(_locations(value, (*path, key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.extend(_locations(value, (*path, index)))
    return found


@st.composite
def mutated_documents(draw: st.DrawFn) -> Any:
    doc: Any = full_pod()
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        spots = _locations(doc)
        where = draw(st.sampled_from(spots))
        value = draw(_values)
        if not where:
            doc = value
            continue
        parent = doc
        for step in where[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "delete" and isinstance(parent, dict):
            del parent[where[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(_keys)] = value
        else:
            parent[where[-1]] = value
    return doc


def _check_only_validation_errors(doc: Any) -> None:
    try:
        parse(doc)
    except ValidationError as exc:
        assert exc.errors
        for error in exc.errors:
            assert isinstance(error, FieldError)
            assert error.path or error.message


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_documents())
def test_mutated_documents_raise_only_validation_errors(doc: Any) -> None:
    _check_only_validation_errors(doc)


@settings(max_examples=100, deadline=None)
@given(_values)
def test_random_documents_raise_only_validation_errors(doc: Any) -> None:
    _check_only_validation_errors(doc)


def test_ephemeral_containers_are_parsed_apart_from_the_others() -> None:
    doc = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web"},
        "spec": {
            "containers": [{"name": "app", "image": "busybox"}],
            "ephemeralContainers": [
                {"name": "debugger", "image": "busybox", "targetContainerName": "app"}
            ],
        },
    }
    pod = parse_pod(doc)
    assert [c.name for c in pod.all_containers()] == ["app"]
    (debugger,) = pod.spec.ephemeral_containers
    assert (debugger.name, debugger.target_container_name) == ("debugger", "app")
