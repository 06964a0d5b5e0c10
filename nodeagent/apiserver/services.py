"""Services and EndpointSlices from the API, in the proxy's terms (pure).

In cluster mode the endpoint-slice controller, not the agent, decides which pods back a
Service, on every node. ``slice_endpoints`` reads ``discovery.k8s.io/v1`` EndpointSlices
(upstream "EndpointSlices"), as kube-proxy does:

- a slice belongs to the Service named by its ``kubernetes.io/service-name`` label; only
  ``addressType: IPv4`` slices count (the proxy programs IPv4);
- each port of the slice (name, protocol, number) and each endpoint's first address make one
  backend; duplicates across slices (a pod moving between slices) count once;
- conditions as the API defines them: ``ready`` unset means ready; ``serving`` unset means
  "same as ready"; ``terminating`` unset means false;
- ``local`` is ``nodeName`` == this node, for ``internalTrafficPolicy``/
  ``externalTrafficPolicy: Local``.

Every API Service gets an entry (maybe empty), so the proxy never falls back to deriving a
cluster Service's endpoints from this node's pods alone. ``read_services`` validates the
Services with the same model the manifest directory uses; one it cannot read is an error
entry and gets no rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from nodeagent.model.fields import ValidationError
from nodeagent.model.service import Service
from nodeagent.model.validate import parse_service
from nodeagent.proxy.state import Endpoint, ServicePortName
from nodeagent.sources.file import SourceError

Obj = dict[str, Any]
Endpoints = dict[ServicePortName, tuple[Endpoint, ...]]

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
SOURCE = "api"


def read_services(objects: Iterable[Obj]) -> tuple[dict[str, Service], list[SourceError]]:
    services: dict[str, Service] = {}
    errors: list[SourceError] = []
    for obj in objects:
        doc = {"apiVersion": "v1", "kind": "Service", **obj}
        try:
            service = parse_service(doc, source=SOURCE)
        except ValidationError as exc:
            errors.extend(SourceError(SOURCE, exc.obj, e.path, e.message) for e in exc.errors)
            continue
        services[service.key] = service
    return services, errors


def slice_endpoints(
    slices: Iterable[Obj], services: Mapping[str, Service], *, node_name: str
) -> dict[str, Endpoints]:
    """Endpoints per service port, for every Service in ``services``, from the slices."""
    found: dict[str, dict[ServicePortName, set[Endpoint]]] = {key: {} for key in services}
    for s in slices:
        meta = s.get("metadata") or {}
        service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        key = f"{meta.get('namespace') or 'default'}/{service}"
        if not service or key not in found or s.get("addressType") != "IPv4":
            continue
        namespace = key.split("/", 1)[0]
        for port in s.get("ports") or []:
            number = port.get("port")
            if not isinstance(number, int):
                continue
            name = ServicePortName(
                namespace,
                str(service),
                str(port.get("name") or ""),
                str(port.get("protocol") or "TCP"),
            )
            bucket = found[key].setdefault(name, set())
            for ep in s.get("endpoints") or []:
                addresses = ep.get("addresses") or []
                if not addresses:
                    continue
                cond = ep.get("conditions") or {}
                ready = cond.get("ready") is not False
                serving = ready if cond.get("serving") is None else bool(cond["serving"])
                bucket.add(
                    Endpoint(
                        ip=str(addresses[0]),
                        port=number,
                        ready=ready,
                        serving=serving,
                        terminating=bool(cond.get("terminating")),
                        local=ep.get("nodeName") == node_name,
                    )
                )
    return {
        key: {n: tuple(sorted(eps)) for n, eps in ports.items()} for key, ports in found.items()
    }
