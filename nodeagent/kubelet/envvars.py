"""Container environment: values, the downward API, Service variables, ``$(VAR)`` expansion.

Expansion follows Kubernetes: ``$(NAME)`` is replaced by an earlier variable's value (or a
Service variable's), ``$$`` escapes a dollar, and a reference to an undefined variable is
left as written.

Service variables follow the kubelet's ``getServiceEnvVarMap`` and ``envvars.FromServices``:
the Services with a cluster IP (not headless, not ExternalName) that a pod sees are the
``kubernetes`` Service of namespace ``default`` (always, so in-cluster clients find the API)
and, when the pod's ``enableServiceLinks`` holds (the default), every Service of the pod's
own namespace, which wins a name clash with ``default/kubernetes``. Each gives
``NAME_SERVICE_HOST``, ``NAME_SERVICE_PORT`` (its first port), ``NAME_SERVICE_PORT_<PORT
NAME>`` per named port, and the Docker-links set (``NAME_PORT``, ``NAME_PORT_<port>_<PROTO>``
with ``_PROTO``, ``_PORT``, ``_ADDR``). The container's own variables (``envFrom`` first,
then ``env``) come first and win a clash; the Service variables not shadowed follow. They
are read from the ``ServiceView`` when the container is created: a Service created later
shows up in containers created later, as upstream.
"""

from __future__ import annotations

import re
from collections import ChainMap
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from nodeagent.model import quantity
from nodeagent.model.pod import Container, EnvVar, FieldRef, Pod, ResourceFieldRef
from nodeagent.model.service import Service, ServiceType

# Services every pod sees, whatever its namespace and enableServiceLinks (masterServices).
MASTER_NAMESPACE = "default"
MASTER_SERVICES = frozenset({"kubernetes"})

_REF = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")


@dataclass(frozen=True)
class PodFacts:
    """What the downward API may expose that the spec alone does not know."""

    node_name: str
    pod_ip: str = ""
    host_ip: str = ""
    # The node's allocatable cpu and memory: what an unset limit reads as (0: unknown).
    node_cpu_millis: int = 0
    node_memory_bytes: int = 0
    # The pod's Service variables (``service_env``): expandable, and after the container's own.
    service_env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ServiceView:
    """The Services the node knows, as the proxy gets them (``namespace/name`` -> Service),
    and the cluster IPs allocated here to those that name none (standalone mode)."""

    services: Mapping[str, Service] = field(default_factory=dict)
    allocated: Mapping[str, str] = field(default_factory=dict)

    def cluster_ip(self, key: str, service: Service) -> str:
        """The Service's virtual IP, "" if it has none (headless, ExternalName, not yet)."""
        spec = service.spec
        if spec.headless or spec.type is ServiceType.EXTERNAL_NAME:
            return ""
        return spec.cluster_ip or self.allocated.get(key, "")


def service_env(view: ServiceView, namespace: str, *, links: bool) -> dict[str, str]:
    """The Service variables of a pod in ``namespace`` (see the module docstring)."""
    chosen: dict[str, tuple[Service, str]] = {}
    for key, service in view.services.items():
        ip = view.cluster_ip(key, service)
        if not ip:
            continue
        if service.namespace == MASTER_NAMESPACE and service.name in MASTER_SERVICES:
            chosen.setdefault(service.name, (service, ip))
        elif service.namespace == namespace and links:
            chosen[service.name] = (service, ip)
    env: dict[str, str] = {}
    for name in sorted(chosen):
        env.update(_service_vars(*chosen[name]))
    return env


def _service_vars(service: Service, ip: str) -> dict[str, str]:
    prefix = service.name.upper().replace("-", "_")
    env = {f"{prefix}_SERVICE_HOST": ip}
    ports = service.spec.ports
    if not ports:
        return env
    env[f"{prefix}_SERVICE_PORT"] = str(ports[0].port)
    for port in ports:
        if port.name:
            env[f"{prefix}_SERVICE_PORT_{port.name.upper().replace('-', '_')}"] = str(port.port)
    host = f"[{ip}]" if ":" in ip else ip
    for i, port in enumerate(ports):
        proto = port.protocol.value
        url = f"{proto.lower()}://{host}:{port.port}"
        if i == 0:  # Docker's links special-case the first port
            env[f"{prefix}_PORT"] = url
        link = f"{prefix}_PORT_{port.port}_{proto.upper()}"
        env[link] = url
        env[f"{link}_PROTO"] = proto.lower()
        env[f"{link}_PORT"] = str(port.port)
        env[f"{link}_ADDR"] = ip
    return env


def expand(text: str, env: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _REF.sub(replace, text)


def resolve_env(pod: Pod, container: Container, facts: PodFacts) -> tuple[tuple[str, str], ...]:
    """The container's environment in order; later values may reference earlier ones and the
    Service variables, which follow the container's own unless it sets them itself."""
    resolved: dict[str, str] = {}
    visible = ChainMap(resolved, dict(facts.service_env))
    for var in container.env:
        resolved[var.name] = _value(pod, container, var, facts, visible)
    services = tuple((k, v) for k, v in facts.service_env.items() if k not in resolved)
    return tuple(resolved.items()) + services


def expand_command(
    container: Container, env: tuple[tuple[str, str], ...]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    lookup = dict(env)
    return (
        tuple(expand(part, lookup) for part in container.command),
        tuple(expand(part, lookup) for part in container.args),
    )


def _value(
    pod: Pod, container: Container, var: EnvVar, facts: PodFacts, earlier: Mapping[str, str]
) -> str:
    source = var.value_from
    if source is None:
        return expand(var.value, earlier)
    if isinstance(source, FieldRef):
        return field_value(pod, source.field_path, facts)
    return _resource_value(pod, container, source, facts)


def field_value(pod: Pod, path: str, facts: PodFacts) -> str:
    simple = {
        "metadata.name": pod.name,
        "metadata.namespace": pod.namespace,
        "metadata.uid": pod.uid,
        "spec.nodeName": facts.node_name,
        "spec.serviceAccountName": pod.spec.service_account_name,
        "status.podIP": facts.pod_ip,
        "status.podIPs": facts.pod_ip,
        "status.hostIP": facts.host_ip,
        "status.hostIPs": facts.host_ip,
    }
    if path in simple:
        return simple[path]
    match = re.match(r"^metadata\.(labels|annotations)(?:\['([^']+)'\])?$", path)
    if match is None:
        return ""
    values = pod.labels if match.group(1) == "labels" else pod.annotations
    if match.group(2) is not None:
        return values.get(match.group(2), "")
    return "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))


def _resource_value(pod: Pod, container: Container, ref: ResourceFieldRef, facts: PodFacts) -> str:
    target = container
    if ref.container_name:
        target = next((c for c in pod.all_containers() if c.name == ref.container_name), container)
    res = target.resources
    # As upstream: an unset limit is the node's allocatable; an unset request is the limit
    # (the API's defaulting), else 0.
    cpu_limit = res.cpu_limit_millis
    memory_limit = res.memory_limit_bytes
    raw: int | None = {
        "limits.cpu": cpu_limit if cpu_limit is not None else facts.node_cpu_millis,
        "limits.memory": memory_limit if memory_limit is not None else facts.node_memory_bytes,
        "requests.cpu": res.cpu_request_millis if res.cpu_request_millis is not None else cpu_limit,
        "requests.memory": (
            res.memory_request_bytes if res.memory_request_bytes is not None else memory_limit
        ),
    }[ref.resource]
    is_cpu = ref.resource.endswith("cpu")
    if raw is None:
        return "0"
    value = Decimal(raw) / 1000 if is_cpu else Decimal(raw)
    try:
        divisor = quantity.parse_quantity(ref.divisor) or Decimal(1)
    except quantity.QuantityError:
        divisor = Decimal(1)
    result = (value / divisor).to_integral_value(rounding="ROUND_CEILING")
    return str(int(result))
