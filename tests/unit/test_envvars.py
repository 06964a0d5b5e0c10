"""Container environment and $(VAR) expansion (nodeagent.kubelet.envvars)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from nodeagent.kubelet.envvars import PodFacts, expand, expand_command, resolve_env
from nodeagent.model.pod import (
    Container,
    EnvVar,
    FieldRef,
    Pod,
    PodSpec,
    PodUID,
    ResourceFieldRef,
    Resources,
)

FACTS = PodFacts(node_name="node-1", pod_ip="10.88.0.5", host_ip="192.168.56.11")
RESOURCES = Resources(
    cpu_limit_millis=500,
    memory_limit_bytes=128 * 2**20,
    cpu_request_millis=250,
    memory_request_bytes=100 * 10**6,
)


def make_pod(*env: EnvVar, command: tuple[str, ...] = (), args: tuple[str, ...] = ()) -> Pod:
    app = Container("app", "busybox", command=command, args=args, env=env, resources=RESOURCES)
    side = Container("side", "busybox", resources=Resources(memory_limit_bytes=2**30))
    return Pod(
        uid=PodUID("uid-1"),
        name="web",
        namespace="shop",
        spec=PodSpec(containers=(app, side), service_account_name="robot"),
        labels={"app": "web", "tier": "front"},
        annotations={"note": "hi"},
    )


def env_of(*env: EnvVar) -> dict[str, str]:
    pod = make_pod(*env)
    return dict(resolve_env(pod, pod.spec.containers[0], FACTS))


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("$(A)", "1"),
        ("x$(A)y$(B)z", "x1y2z"),
        ("$$", "$"),
        ("$$(A)", "$(A)"),
        ("$$$(A)", "$1"),
        ("$(MISSING)", "$(MISSING)"),
        ("$(A", "$(A"),
        ("$A", "$A"),
        ("$()", "$()"),
        ("100$", "100$"),
        ("", ""),
    ],
)
def test_expand(text: str, want: str) -> None:
    assert expand(text, {"A": "1", "B": "2"}) == want


def test_later_variables_reference_earlier_ones_only() -> None:
    env = env_of(
        EnvVar("BEFORE", "[$(BASE)]"),
        EnvVar("BASE", "/srv"),
        EnvVar("DATA", "$(BASE)/data"),
        EnvVar("DEEP", "$(DATA)/x and $$(BASE)"),
    )
    assert env == {
        "BEFORE": "[$(BASE)]",
        "BASE": "/srv",
        "DATA": "/srv/data",
        "DEEP": "/srv/data/x and $(BASE)",
    }


def test_order_is_kept() -> None:
    pod = make_pod(EnvVar("Z", "1"), EnvVar("A", "2"))
    assert resolve_env(pod, pod.spec.containers[0], FACTS) == (("Z", "1"), ("A", "2"))


@pytest.mark.parametrize(
    ("path", "want"),
    [
        ("metadata.name", "web"),
        ("metadata.namespace", "shop"),
        ("metadata.uid", "uid-1"),
        ("spec.nodeName", "node-1"),
        ("spec.serviceAccountName", "robot"),
        ("status.podIP", "10.88.0.5"),
        ("status.hostIP", "192.168.56.11"),
        ("metadata.labels['app']", "web"),
        ("metadata.labels['nope']", ""),
        ("metadata.annotations['note']", "hi"),
        ("metadata.labels", 'app="web"\ntier="front"'),
    ],
)
def test_field_ref(path: str, want: str) -> None:
    assert env_of(EnvVar("X", value_from=FieldRef(path))) == {"X": want}


def test_field_ref_values_are_not_expanded_but_can_be_referenced() -> None:
    env = env_of(
        EnvVar("NAME", value_from=FieldRef("metadata.name")),
        EnvVar("URL", "http://$(NAME).$(NS)"),
    )
    assert env["URL"] == "http://web.$(NS)"


@pytest.mark.parametrize(
    ("resource", "divisor", "want"),
    [
        ("limits.memory", "1Mi", "128"),
        ("limits.memory", "1", str(128 * 2**20)),
        ("limits.memory", "1Gi", "1"),  # rounded up, as the kubelet does
        ("requests.memory", "1Mi", "96"),  # 100M is 95.4Mi
        ("limits.cpu", "1m", "500"),
        ("limits.cpu", "1", "1"),  # 0.5 cores rounds up to 1
        ("requests.cpu", "1m", "250"),
    ],
)
def test_resource_field_ref(resource: str, divisor: str, want: str) -> None:
    ref = ResourceFieldRef(resource=resource, divisor=divisor)
    assert env_of(EnvVar("R", value_from=ref)) == {"R": want}


def test_resource_field_ref_of_another_container() -> None:
    ref = ResourceFieldRef(resource="limits.memory", container_name="side", divisor="1Mi")
    assert env_of(EnvVar("R", value_from=ref)) == {"R": "1024"}


def test_unset_limit_without_node_facts_reads_as_zero() -> None:
    ref = ResourceFieldRef(resource="limits.cpu", container_name="side")
    assert env_of(EnvVar("R", value_from=ref)) == {"R": "0"}


def test_unset_limits_read_as_node_allocatable_and_requests_as_limits() -> None:
    pod = Pod(
        uid=PodUID("u"),
        name="p",
        namespace="d",
        spec=PodSpec(containers=(Container(name="c", image="busybox"),)),
    )
    facts = PodFacts("node-1", node_cpu_millis=2000, node_memory_bytes=4 << 30)
    limited = Container(name="l", image="busybox", resources=Resources(cpu_limit_millis=500))
    cases = [
        (pod.spec.containers[0], "limits.cpu", "1", "2"),
        (pod.spec.containers[0], "limits.memory", "1Mi", "4096"),
        (pod.spec.containers[0], "requests.memory", "1", "0"),
        (limited, "requests.cpu", "1m", "500"),  # the API defaults requests to limits
    ]
    for container, resource, divisor, want in cases:
        var = EnvVar("R", value_from=ResourceFieldRef(resource=resource, divisor=divisor))
        assert resolve_env(pod, replace(container, env=(var,)), facts) == (("R", want),)


def test_command_and_args_are_expanded_from_the_environment() -> None:
    pod = make_pod(
        EnvVar("PORT", "8080"),
        EnvVar("POD", value_from=FieldRef("metadata.name")),
        command=("httpd", "-p", "$(PORT)"),
        args=("--name=$(POD)", "$$(PORT)", "$(UNSET)"),
    )
    container = pod.spec.containers[0]
    env = resolve_env(pod, container, FACTS)
    assert expand_command(container, env) == (
        ("httpd", "-p", "8080"),
        ("--name=web", "$(PORT)", "$(UNSET)"),
    )
