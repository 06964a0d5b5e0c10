"""Container environment: values, the downward API, and ``$(VAR)`` expansion.

Expansion follows Kubernetes: ``$(NAME)`` is replaced by an earlier variable's value,
``$$`` escapes a dollar, and a reference to an undefined variable is left as written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from nodeagent.model import quantity
from nodeagent.model.pod import Container, EnvVar, FieldRef, Pod, ResourceFieldRef

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


def expand(text: str, env: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _REF.sub(replace, text)


def resolve_env(pod: Pod, container: Container, facts: PodFacts) -> tuple[tuple[str, str], ...]:
    """The container's environment in order; later values may reference earlier ones."""
    resolved: dict[str, str] = {}
    for var in container.env:
        resolved[var.name] = _value(pod, container, var, facts, resolved)
    return tuple(resolved.items())


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
