"""What the proxy is given, read from this node's parts: the adapter between them and it.

The proxy must never sync an empty world it has not been told about: until the desired
state has been read, the runtime listed (the pods' IPs known), and in cluster mode the
API's Services and EndpointSlices listed (or refused), there are no inputs (``None``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nodeagent.model.pod import Pod
from nodeagent.model.service import Service
from nodeagent.proxy.proxier import ProxyInputs
from nodeagent.proxy.state import Endpoint, ServicePortName

Endpoints = Mapping[str, Mapping[ServicePortName, tuple[Endpoint, ...]]]


@dataclass(frozen=True)
class NodeInputs:
    ready: Callable[[], bool]  # every input above known
    services: Callable[[], Mapping[str, Service]]
    pods: Callable[[], Sequence[Mapping[str, Any]]]  # the kubelet's pod list
    specs: Callable[[], Mapping[str, Pod]]  # the desired pods by namespace/name
    endpoints: Callable[[], Endpoints]  # cluster mode: per Service, from its EndpointSlices

    def __call__(self) -> ProxyInputs | None:
        if not self.ready():
            return None
        return ProxyInputs(
            services=self.services(),
            pods=self.pods(),
            specs=self.specs(),
            endpoints=self.endpoints(),
        )
