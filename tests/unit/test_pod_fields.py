"""Pod fields the API accepts (issue 17): accepted, honoured, or refused by name, never a
pod failed for a field it merely carries; API pods read leniently, manifests strictly."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from nodeagent.apiserver.pods import UNSUPPORTED_REASON, Hold, RuntimeClasses, read_pods
from nodeagent.kubelet.etchosts import kernel_hostname
from nodeagent.kubelet.podstatus import StatusInput, compute_status, gate_problems
from nodeagent.kubelet.runtimepod import RuntimePod
from nodeagent.model.fields import ValidationError
from nodeagent.model.pod import Pod, PodUID
from nodeagent.model.validate import parse_pod
from nodeagent.runtime.base import (
    ContainerID,
    ContainerInfo,
    ContainerState,
    SandboxID,
    SandboxInfo,
    SandboxState,
)

Doc = dict[str, Any]


def api_doc(**spec: Any) -> Doc:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop", "uid": "u-1", "resourceVersion": "7"},
        "spec": {"nodeName": "n1", "containers": [{"name": "app", "image": "busybox"}], **spec},
    }


def parse(doc: Doc, *, lenient: bool = True) -> Pod:
    return parse_pod(doc, source="api", node_name="n1", lenient=lenient)


def errors(doc: Doc, *, lenient: bool = True) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        parse(doc, lenient=lenient)
    return {e.path: e.message for e in info.value.errors}


@pytest.mark.parametrize("lenient", [True, False])
def test_fields_the_api_fills_in_are_accepted_in_both_modes(lenient: bool) -> None:
    pod = parse(
        api_doc(
            os={"name": "linux"},
            readinessGates=[{"conditionType": "example.com/lb"}],
            imagePullSecrets=[{"name": "regcred"}],
            setHostnameAsFQDN=True,
            subdomain="web",
            hostUsers=True,
            enableServiceLinks=False,
            ephemeralContainers=[{"name": "debug", "image": "busybox"}],
            schedulingGates=[],
        ),
        lenient=lenient,
    )
    assert pod.spec.readiness_gates == ("example.com/lb",)
    assert pod.spec.set_hostname_as_fqdn
    assert not pod.spec.enable_service_links
    assert pod.future_fields == ()


def test_defaults() -> None:
    spec = parse(api_doc()).spec
    assert spec.enable_service_links
    assert (spec.readiness_gates, spec.set_hostname_as_fqdn) == ((), False)


@pytest.mark.parametrize(
    ("spec", "path", "words"),
    [
        ({"os": {"name": "windows"}}, "spec.os.name", "cannot run on this linux node"),
        ({"os": {}}, "spec.os.name", "is required"),
        ({"hostUsers": False}, "spec.hostUsers", "user namespaces"),
        ({"resourceClaims": [{"name": "gpu"}]}, "spec.resourceClaims", "dynamic resource"),
        ({"readinessGates": [{}]}, "spec.readinessGates[0].conditionType", "is required"),
        ({"readinessGates": [{"conditionType": "a"}] * 2}, "spec.readinessGates", "duplicate"),
        ({"resources": {"limits": {"cpu": "1"}}}, "spec.resources", "not supported"),
    ],
)
def test_what_this_node_cannot_do_is_an_error_naming_the_field(
    spec: Doc, path: str, words: str
) -> None:
    found = errors(api_doc(**spec))
    assert path in found, found
    assert words in found[path]


def test_api_pods_ignore_fields_newer_than_the_api_we_track() -> None:
    doc = api_doc(futureKnob=True)
    doc["metadata"]["futureMeta"] = "x"
    doc["spec"]["containers"][0]["restartPolicyRules"] = []
    pod = parse(doc)
    assert pod.future_fields == (
        "metadata.futureMeta",
        "spec.futureKnob",
        "spec.containers[0].restartPolicyRules",
    )


def test_manifests_stay_strict_about_unknown_fields() -> None:
    doc = api_doc(futureKnob=True)
    doc["spec"]["containers"][0]["imagePulPolicy"] = "Never"
    found = errors(doc, lenient=False)
    assert set(found) == {"spec.futureKnob", "spec.containers[0].imagePulPolicy"}


def test_known_but_unsupported_fields_fail_even_leniently() -> None:
    doc = api_doc()
    doc["spec"]["containers"][0]["volumeDevices"] = [{"name": "d", "devicePath": "/dev/x"}]
    doc["spec"]["containers"][0]["securityContext"] = {"seLinuxOptions": {"level": "s0"}}
    found = errors(doc)
    assert "spec.containers[0].volumeDevices" in found
    assert "spec.containers[0].securityContext.seLinuxOptions" in found


def test_read_pods_runs_accepted_pods_and_rejects_the_rest_with_the_field() -> None:
    good = api_doc(os={"name": "linux"}, imagePullSecrets=[{"name": "r"}], newField=1)
    bad = copy.deepcopy(api_doc(os={"name": "windows"}))
    bad["metadata"].update(name="win", uid="u-2")
    api = read_pods([good, bad], node_name="n1", running=lambda uid: False)
    assert set(api.run) == {"shop/web"}
    assert api.run["shop/web"].future_fields == ("spec.newField",)
    rejection = api.reject[PodUID("u-2")]
    assert rejection.reason == UNSUPPORTED_REASON
    assert "spec.os.name" in rejection.message and "windows" in rejection.message


# --- readiness gates ------------------------------------------------------------------------

GATE = "example.com/lb"


def gated(conditions: list[Doc] | None = None) -> Pod:
    doc = api_doc(readinessGates=[{"conditionType": GATE}])
    if conditions is not None:
        doc["status"] = {"conditions": conditions}
    return parse(doc)


def ready_condition(pod: Pod) -> Doc:
    sandbox = SandboxInfo(
        id=SandboxID("sb"),
        uid=pod.uid,
        name=pod.name,
        namespace=pod.namespace,
        attempt=0,
        state=SandboxState.READY,
        created_at_ns=1,
        ip="10.88.0.9",
    )
    app = ContainerInfo(
        id=ContainerID("c1"),
        sandbox_id=sandbox.id,
        uid=pod.uid,
        name="app",
        attempt=0,
        image="busybox",
        state=ContainerState.RUNNING,
        created_at_ns=1,
        started_at_ns=2,
    )
    status = compute_status(
        StatusInput(pod=pod, runtime=RuntimePod(pod.uid, (sandbox,), (app,)), now=100.0)
    )
    by_type = {c["type"]: c for c in status["conditions"]}
    assert by_type["ContainersReady"]["status"] == "True"
    return dict(by_type["Ready"])


def test_ready_waits_for_a_gate_condition_that_does_not_exist() -> None:
    ready = ready_condition(gated())
    assert (ready["status"], ready["reason"]) == ("False", "ReadinessGatesNotReady")
    assert (
        ready["message"]
        == f'corresponding condition of pod readiness gate "{GATE}" does not exist.'
    )


def test_ready_waits_for_a_gate_condition_that_is_false() -> None:
    ready = ready_condition(gated([{"type": GATE, "status": "False"}]))
    assert ready["status"] == "False"
    assert ready["message"] == f'the status of pod readiness gate "{GATE}" is not "True", but False'


def test_ready_once_every_gate_condition_is_true() -> None:
    ready = ready_condition(gated([{"type": GATE, "status": "True"}, {"type": "Other"}]))
    assert ready["status"] == "True"
    assert "reason" not in ready and "message" not in ready


def test_gate_conditions_keep_only_the_gates_and_skip_malformed_entries() -> None:
    junk: Any = "junk"
    pod = gated([{"type": GATE, "status": "True"}, {"type": "Ready", "status": "True"}, junk])
    assert dict(pod.gate_conditions) == {GATE: "True"}
    assert gate_problems(pod) == ""


# --- setHostnameAsFQDN ----------------------------------------------------------------------


def test_hostname_is_the_fqdn_only_when_asked_and_with_a_subdomain() -> None:
    plain = parse(api_doc(subdomain="sub"))
    assert kernel_hostname(plain, cluster_domain="cluster.local") == "web"
    fqdn = parse(api_doc(subdomain="sub", setHostnameAsFQDN=True))
    assert kernel_hostname(fqdn, cluster_domain="cluster.local") == "web.sub.shop.svc.cluster.local"
    no_subdomain = parse(api_doc(setHostnameAsFQDN=True))
    assert kernel_hostname(no_subdomain, cluster_domain="cluster.local") == "web"


def test_an_fqdn_too_long_for_the_kernel_is_an_error() -> None:
    pod = parse(api_doc(hostname="h" * 40, subdomain="sub", setHostnameAsFQDN=True))
    with pytest.raises(ValueError, match="too long"):
        kernel_hostname(pod, cluster_domain="cluster.local")


# --- runtimeClassName -----------------------------------------------------------------------


def test_a_manifest_pod_may_not_name_a_runtime_class() -> None:
    found = errors(api_doc(runtimeClassName="runc"), lenient=False)
    assert "RuntimeClasses come from an API server" in found["spec.runtimeClassName"]


def classed(name: str, uid: str, runtime_class: str) -> Doc:
    doc = api_doc(runtimeClassName=runtime_class)
    doc["metadata"].update(name=name, uid=uid)
    return doc


def test_runtime_classes_of_the_default_handler_run_others_are_refused_by_field() -> None:
    docs = [
        classed("plain", "u-1", "runc-class"),
        classed("empty", "u-2", "default-class"),
        classed("kata", "u-3", "kata-class"),
        classed("missing", "u-4", "nowhere"),
    ]
    classes = RuntimeClasses({"runc-class": "runc", "default-class": "", "kata-class": "kata"})
    api = read_pods(docs, node_name="n1", running=lambda uid: False, runtime_classes=classes)
    assert set(api.run) == {"shop/plain", "shop/empty"}
    assert api.run["shop/plain"].spec.runtime_class_name == "runc-class"
    refusal = api.reject[PodUID("u-3")]
    assert refusal.reason == UNSUPPORTED_REASON
    assert 'spec.runtimeClassName: RuntimeClass "kata-class" has handler "kata"' in refusal.message
    # Not found: held (it may be created next), and said (an error), not failed.
    held = api.hold[PodUID("u-4")]
    assert held.error and 'RuntimeClass "nowhere" not found' in held.message


def test_before_the_first_list_a_runtime_class_pod_waits_quietly() -> None:
    doc = classed("plain", "u-1", "runc-class")
    classes = RuntimeClasses(listed=False)
    api = read_pods([doc], node_name="n1", running=lambda uid: False, runtime_classes=classes)
    assert api.hold[PodUID("u-1")] == Hold(
        "CreateContainerConfigError", 'RuntimeClass "runc-class" not listed yet', error=False
    )


def test_a_running_pod_is_not_judged_again_when_its_runtime_class_goes() -> None:
    doc = classed("plain", "u-1", "runc-class")
    api = read_pods(
        [doc], node_name="n1", running=lambda uid: True, runtime_classes=RuntimeClasses()
    )
    assert set(api.run) == {"shop/plain"}


def test_runtime_classes_read_from_api_objects() -> None:
    objects: list[dict[str, Any]] = [
        {"metadata": {"name": "plain"}, "handler": "runc"},
        {"metadata": {"name": "odd"}},
    ]
    classes = RuntimeClasses.read(objects, listed=True)
    assert classes == RuntimeClasses({"plain": "runc", "odd": ""}, listed=True)
