"""Service variables (nodeagent.kubelet.envvars.service_env), golden against upstream's
envvars.FromServices test and the kubelet's getServiceEnvVarMap rules."""

from __future__ import annotations

from nodeagent.kubelet.envvars import PodFacts, ServiceView, resolve_env, service_env
from nodeagent.model.pod import Container, EnvVar, Pod, PodSpec, PodUID
from nodeagent.model.service import (
    HEADLESS,
    Protocol,
    Service,
    ServicePort,
    ServiceSpec,
    ServiceType,
)

TCP, UDP = Protocol.TCP, Protocol.UDP


def svc(
    name: str,
    ip: str,
    *ports: tuple[str, int, Protocol],
    namespace: str = "default",
    kind: ServiceType = ServiceType.CLUSTER_IP,
) -> Service:
    spec = ServiceSpec(
        type=kind,
        cluster_ip=ip,
        ports=tuple(ServicePort(n, proto, port, port) for n, port, proto in ports),
    )
    return Service(name=name, namespace=namespace, spec=spec)


def view(*services: Service, allocated: dict[str, str] | None = None) -> ServiceView:
    return ServiceView({s.key: s for s in services}, allocated or {})


KUBERNETES = svc("kubernetes", "10.96.0.1", ("https", 443, TCP))
KUBERNETES_VARS = {
    "KUBERNETES_SERVICE_HOST": "10.96.0.1",
    "KUBERNETES_SERVICE_PORT": "443",
    "KUBERNETES_SERVICE_PORT_HTTPS": "443",
    "KUBERNETES_PORT": "tcp://10.96.0.1:443",
    "KUBERNETES_PORT_443_TCP": "tcp://10.96.0.1:443",
    "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
    "KUBERNETES_PORT_443_TCP_PORT": "443",
    "KUBERNETES_PORT_443_TCP_ADDR": "10.96.0.1",
}


def test_golden_upstream_from_services() -> None:
    """Upstream's TestFromServices, service by service (its order within a service)."""
    services = [
        svc("foo-bar", "1.2.3.4", ("", 8080, TCP)),
        svc("abc-123", "5.6.7.8", ("u-d-p", 8081, UDP), ("t-c-p", 8081, TCP)),
        svc("q-u-u-x", "9.8.7.6", ("", 8082, TCP), ("8083", 8083, TCP)),
        svc("svrc-clusterip-none", HEADLESS, ("", 8082, TCP)),
        svc("svrc-clusterip-empty", "", ("", 8082, TCP)),
    ]
    got = list(service_env(view(*services), "default", links=True).items())
    foo = [
        ("FOO_BAR_SERVICE_HOST", "1.2.3.4"),
        ("FOO_BAR_SERVICE_PORT", "8080"),
        ("FOO_BAR_PORT", "tcp://1.2.3.4:8080"),
        ("FOO_BAR_PORT_8080_TCP", "tcp://1.2.3.4:8080"),
        ("FOO_BAR_PORT_8080_TCP_PROTO", "tcp"),
        ("FOO_BAR_PORT_8080_TCP_PORT", "8080"),
        ("FOO_BAR_PORT_8080_TCP_ADDR", "1.2.3.4"),
    ]
    abc = [
        ("ABC_123_SERVICE_HOST", "5.6.7.8"),
        ("ABC_123_SERVICE_PORT", "8081"),
        ("ABC_123_SERVICE_PORT_U_D_P", "8081"),
        ("ABC_123_SERVICE_PORT_T_C_P", "8081"),
        ("ABC_123_PORT", "udp://5.6.7.8:8081"),
        ("ABC_123_PORT_8081_UDP", "udp://5.6.7.8:8081"),
        ("ABC_123_PORT_8081_UDP_PROTO", "udp"),
        ("ABC_123_PORT_8081_UDP_PORT", "8081"),
        ("ABC_123_PORT_8081_UDP_ADDR", "5.6.7.8"),
        ("ABC_123_PORT_8081_TCP", "tcp://5.6.7.8:8081"),
        ("ABC_123_PORT_8081_TCP_PROTO", "tcp"),
        ("ABC_123_PORT_8081_TCP_PORT", "8081"),
        ("ABC_123_PORT_8081_TCP_ADDR", "5.6.7.8"),
    ]
    quux = [
        ("Q_U_U_X_SERVICE_HOST", "9.8.7.6"),
        ("Q_U_U_X_SERVICE_PORT", "8082"),
        ("Q_U_U_X_SERVICE_PORT_8083", "8083"),
        ("Q_U_U_X_PORT", "tcp://9.8.7.6:8082"),
        ("Q_U_U_X_PORT_8082_TCP", "tcp://9.8.7.6:8082"),
        ("Q_U_U_X_PORT_8082_TCP_PROTO", "tcp"),
        ("Q_U_U_X_PORT_8082_TCP_PORT", "8082"),
        ("Q_U_U_X_PORT_8082_TCP_ADDR", "9.8.7.6"),
        ("Q_U_U_X_PORT_8083_TCP", "tcp://9.8.7.6:8083"),
        ("Q_U_U_X_PORT_8083_TCP_PROTO", "tcp"),
        ("Q_U_U_X_PORT_8083_TCP_PORT", "8083"),
        ("Q_U_U_X_PORT_8083_TCP_ADDR", "9.8.7.6"),
    ]
    assert got == abc + foo + quux  # services in name order


def test_the_issue_example_svc_a() -> None:
    env = service_env(view(svc("svc-a", "10.96.5.5", ("http", 8080, TCP))), "default", links=True)
    assert env == {
        "SVC_A_SERVICE_HOST": "10.96.5.5",
        "SVC_A_SERVICE_PORT": "8080",
        "SVC_A_SERVICE_PORT_HTTP": "8080",
        "SVC_A_PORT": "tcp://10.96.5.5:8080",
        "SVC_A_PORT_8080_TCP": "tcp://10.96.5.5:8080",
        "SVC_A_PORT_8080_TCP_PROTO": "tcp",
        "SVC_A_PORT_8080_TCP_PORT": "8080",
        "SVC_A_PORT_8080_TCP_ADDR": "10.96.5.5",
    }


def test_a_pod_sees_default_kubernetes_and_its_own_namespace_only() -> None:
    services = view(
        KUBERNETES,
        svc("web", "10.96.0.20", ("", 80, TCP), namespace="shop"),
        svc("db", "10.96.0.21", ("", 5432, TCP), namespace="other"),
        svc("dflt", "10.96.0.22", ("", 81, TCP), namespace="default"),
    )
    env = service_env(services, "shop", links=True)
    assert {k for k in env if k.endswith("_SERVICE_HOST")} == {
        "KUBERNETES_SERVICE_HOST",
        "WEB_SERVICE_HOST",
    }
    assert env["WEB_PORT"] == "tcp://10.96.0.20:80"


def test_without_service_links_only_the_kubernetes_service() -> None:
    services = view(KUBERNETES, svc("web", "10.96.0.20", ("", 80, TCP), namespace="shop"))
    assert service_env(services, "shop", links=False) == KUBERNETES_VARS
    # In namespace default too: the masterServices are the exception, not the namespace.
    same_ns = view(KUBERNETES, svc("web", "10.96.0.20", ("", 80, TCP)))
    assert service_env(same_ns, "default", links=False) == KUBERNETES_VARS


def test_no_kubernetes_service_no_kubernetes_vars() -> None:
    """Standalone without a default/kubernetes manifest: nothing is made up."""
    env = service_env(view(svc("web", "10.96.0.20", ("", 80, TCP))), "default", links=True)
    assert not any(k.startswith("KUBERNETES_") for k in env)


def test_a_namespace_service_named_kubernetes_wins_over_the_default_one() -> None:
    own = svc("kubernetes", "10.96.0.99", ("", 8443, TCP), namespace="shop")
    for order in ((KUBERNETES, own), (own, KUBERNETES)):
        env = service_env(view(*order), "shop", links=True)
        assert env["KUBERNETES_SERVICE_HOST"] == "10.96.0.99"
    # ... but only with service links; without them the default one stays.
    assert service_env(view(own, KUBERNETES), "shop", links=False) == KUBERNETES_VARS


def test_headless_external_name_and_unallocated_services_give_nothing() -> None:
    services = view(
        svc("headless", HEADLESS, ("", 80, TCP)),
        svc("alias", "", kind=ServiceType.EXTERNAL_NAME),
        svc("pending", "", ("", 80, TCP)),
        svc("allocated", "", ("", 80, TCP)),
        allocated={"default/allocated": "10.96.0.30", "default/alias": "10.96.0.31"},
    )
    env = service_env(services, "default", links=True)
    assert {k for k in env if k.endswith("_SERVICE_HOST")} == {"ALLOCATED_SERVICE_HOST"}
    assert env["ALLOCATED_SERVICE_HOST"] == "10.96.0.30"


def make_pod(*env: EnvVar) -> Pod:
    container = Container("app", "busybox", env=env)
    return Pod(uid=PodUID("u1"), name="p", namespace="default", spec=PodSpec((container,)))


def test_explicit_env_wins_comes_first_and_may_expand_service_vars() -> None:
    facts = PodFacts(
        node_name="n1",
        service_env=service_env(view(KUBERNETES), "default", links=True),
    )
    pod = make_pod(
        EnvVar("KUBERNETES_SERVICE_HOST", "api.example"),
        EnvVar("API", "https://$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)"),
        EnvVar("FIRST", "1"),
    )
    env = resolve_env(pod, pod.spec.containers[0], facts)
    names = [k for k, _ in env]
    assert names[:3] == ["KUBERNETES_SERVICE_HOST", "API", "FIRST"]
    assert len(names) == len(set(names))  # a shadowed Service variable is not repeated
    values = dict(env)
    assert values["KUBERNETES_SERVICE_HOST"] == "api.example"
    # Upstream expands against the container's variables first, then the Services'.
    assert values["API"] == "https://api.example:443"
    assert values["KUBERNETES_PORT_443_TCP_ADDR"] == "10.96.0.1"


def test_no_services_no_extra_env() -> None:
    pod = make_pod(EnvVar("A", "1"))
    assert resolve_env(pod, pod.spec.containers[0], PodFacts(node_name="n1")) == (("A", "1"),)
