"""The controllers a node agent relies on: namespaces, EndpointSlices, the kubernetes Service.

Each runs as a store hook, synchronously after the write that concerns it, so a test that
creates a Pod and a Service can read the EndpointSlice right away.

- Namespaces (upstream "Namespaces" and the ServiceAccount/root-CA publisher controllers): the
  namespaces ``default``, ``kube-system``, ``kube-public`` and ``kube-node-lease`` exist; every
  new namespace gets a ``default`` ServiceAccount and a ``kube-root-ca.crt`` ConfigMap holding
  the cluster CA; a deleted namespace turns Terminating, its objects are deleted (pods
  gracefully, so a node agent still finalizes its pods) and it disappears once empty.
- EndpointSlices (upstream "EndpointSlices" and the endpointslice controller's reconciler): for
  each Service with a selector, slices labelled ``kubernetes.io/service-name`` and
  ``endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io``, owned by the
  Service. Every pod that matches the selector, has an IPv4 address and is not terminal is an
  endpoint: ``ready`` (Ready condition and not terminating, or publishNotReadyAddresses),
  ``serving`` (Ready condition, whether terminating or not), ``terminating``
  (deletionTimestamp set), ``nodeName``, ``zone`` (the node's topology.kubernetes.io/zone),
  ``hostname`` (with a matching subdomain) and ``targetRef``. Ports are the Service's, with
  ``targetPort`` resolved per pod (named ports from the pod's containerPorts); pods with
  different resolved ports land in different slices, as upstream. A Service with no endpoints
  keeps one empty placeholder slice. Slices are rewritten only when they change.
- The ``kubernetes`` Service in ``default`` (ClusterIP 10.96.0.1, port 443) and its
  EndpointSlice pointing at the API server's own address, as the apiserver reconciles them.

Simplified: IPv4 only; no 100-endpoint limit per slice; no Endpoints (core/v1) objects; no
garbage collector beyond slices of deleted Services.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
from typing import Any

from tests.apiserver import errors
from tests.apiserver.allocators import KUBERNETES_SERVICE_IP
from tests.apiserver.resources import (
    ALL,
    CONFIGMAPS,
    ENDPOINTSLICES,
    NAMESPACES,
    NODES,
    PODS,
    SERVICEACCOUNTS,
    SERVICES,
)
from tests.apiserver.selectors import match_labels, selector_from_map
from tests.apiserver.store import Store
from tests.apiserver.watch import ADDED, DELETED, Change

Obj = dict[str, Any]

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
CONTROLLER_NAME = "endpointslice-controller.k8s.io"
HEADLESS_LABEL = "service.kubernetes.io/headless"
ZONE_LABEL = "topology.kubernetes.io/zone"
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


class NamespaceController:
    def __init__(self, store: Store, *, root_ca_pem: str) -> None:
        self.store = store
        self.root_ca_pem = root_ca_pem

    def bootstrap(self) -> None:
        for name in SYSTEM_NAMESPACES:
            if self.store.find(NAMESPACES, None, name) is None:
                self.store.create(NAMESPACES, None, {"metadata": {"name": name}})

    def on_change(self, change: Change) -> None:
        meta = change.obj["metadata"]
        if change.rt is NAMESPACES:
            if change.type == ADDED and not meta.get("deletionTimestamp"):
                self._populate(meta["name"])
            if change.type != DELETED and meta.get("deletionTimestamp"):
                self._terminate(meta["name"])
        elif change.rt.namespaced and change.type == DELETED:
            ns = self.store.find(NAMESPACES, None, meta.get("namespace", ""))
            if ns is not None and ns["metadata"].get("deletionTimestamp"):
                self._terminate(ns["metadata"]["name"])

    def _populate(self, ns: str) -> None:
        if self.store.find(SERVICEACCOUNTS, ns, "default") is None:
            self.store.create(SERVICEACCOUNTS, ns, {"metadata": {"name": "default"}})
        if self.store.find(CONFIGMAPS, ns, "kube-root-ca.crt") is None:
            self.store.create(
                CONFIGMAPS,
                ns,
                {
                    "metadata": {
                        "name": "kube-root-ca.crt",
                        "annotations": {
                            "kubernetes.io/description": "Contains a CA bundle that can be used "
                            "to verify the kube-apiserver when using internal endpoints such as "
                            "the internal service IP or kubernetes.default.svc. No other usage "
                            "is guaranteed across distributions of Kubernetes clusters."
                        },
                    },
                    "data": {"ca.crt": self.root_ca_pem},
                },
            )

    def _terminate(self, ns: str) -> None:
        namespaced = [rt for rt in ALL if rt.namespaced]
        for rt in namespaced:
            for obj in list(self.store.items(rt, ns)):
                if not obj["metadata"].get("deletionTimestamp"):
                    with contextlib.suppress(errors.ApiError):
                        self.store.delete(rt, ns, obj["metadata"]["name"])
        if not any(next(self.store.items(rt, ns), None) for rt in namespaced):
            self.store.remove(NAMESPACES, None, ns)


def _pod_ipv4(pod: Obj) -> str | None:
    status = pod.get("status", {})
    candidates = [p.get("ip") for p in status.get("podIPs") or []] + [status.get("podIP")]
    for ip in candidates:
        if ip:
            try:
                if ipaddress.ip_address(ip).version == 4:
                    return str(ip)
            except ValueError:
                continue
    return None


def _is_ready(pod: Obj) -> bool:
    for cond in pod.get("status", {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def _resolve_port(pod: Obj, svc_port: Obj) -> int | None:
    target = svc_port.get("targetPort", svc_port.get("port"))
    if isinstance(target, int):
        return target
    protocol = svc_port.get("protocol", "TCP")
    for container in pod.get("spec", {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == target and port.get("protocol", "TCP") == protocol:
                return int(port["containerPort"])
    return None


class EndpointSliceController:
    def __init__(self, store: Store) -> None:
        self.store = store

    def on_change(self, change: Change) -> None:
        rt, meta = change.rt, change.obj["metadata"]
        if rt is SERVICES:
            self.sync(meta["namespace"], meta["name"])
        elif rt is PODS:
            ns = meta["namespace"]
            label_sets = [meta.get("labels") or {}]
            if change.prev is not None:
                label_sets.append(change.prev["metadata"].get("labels") or {})
            for svc in list(self.store.items(SERVICES, ns)):
                selector = svc.get("spec", {}).get("selector")
                if selector and any(
                    match_labels(selector_from_map(selector), labels) for labels in label_sets
                ):
                    self.sync(ns, svc["metadata"]["name"])
        elif rt is ENDPOINTSLICES and change.type == DELETED:
            labels = meta.get("labels") or {}
            if labels.get(MANAGED_BY_LABEL) == CONTROLLER_NAME and SERVICE_NAME_LABEL in labels:
                self.sync(meta["namespace"], labels[SERVICE_NAME_LABEL])

    def _owned(self, ns: str, name: str) -> list[Obj]:
        out = []
        for eps in self.store.items(ENDPOINTSLICES, ns):
            labels = eps["metadata"].get("labels") or {}
            if (
                labels.get(SERVICE_NAME_LABEL) == name
                and labels.get(MANAGED_BY_LABEL) == CONTROLLER_NAME
            ):
                out.append(eps)
        return out

    def sync(self, ns: str, name: str) -> None:
        svc = self.store.find(SERVICES, ns, name)
        existing = {_ports_key(e.get("ports") or []): e for e in self._owned(ns, name)}
        spec = (svc or {}).get("spec", {})
        if svc is None or not spec.get("selector") or spec.get("type") == "ExternalName":
            for eps in existing.values():
                self.store.remove(ENDPOINTSLICES, ns, eps["metadata"]["name"])
            return
        desired: dict[str, tuple[list[Obj], list[Obj]]] = {}
        selector = selector_from_map(spec["selector"])
        for pod in self.store.items(PODS, ns):
            ip = _pod_ipv4(pod)
            terminal = pod.get("status", {}).get("phase") in ("Succeeded", "Failed")
            if ip is None or terminal:
                continue
            if not match_labels(selector, pod["metadata"].get("labels")):
                continue
            ports = self._ports(svc, pod)
            desired.setdefault(_ports_key(ports), (ports, []))[1].append(
                self._endpoint(svc, pod, ip)
            )
        if not desired:
            desired[_ports_key([])] = ([], [])  # the placeholder slice
        labels = {
            **(svc["metadata"].get("labels") or {}),
            SERVICE_NAME_LABEL: name,
            MANAGED_BY_LABEL: CONTROLLER_NAME,
        }
        if spec.get("clusterIP") == "None":
            labels[HEADLESS_LABEL] = ""
        owner = {
            "apiVersion": "v1",
            "kind": "Service",
            "name": name,
            "uid": svc["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
        # Slices whose port set still exists are updated in place; the rest are reused for
        # new port sets before anything is created or deleted (upstream reuses the
        # placeholder the same way), so watchers see MODIFIED rather than churn.
        unmatched = [(key, value) for key, value in desired.items() if key not in existing]
        matched = [
            (key, value, existing.pop(key)) for key, value in desired.items() if key in existing
        ]
        spare = list(existing.values())
        for (ports, endpoints), current in [(value, cur) for _key, value, cur in matched] + [
            (value, spare.pop(0) if spare else None) for _key, value in unmatched
        ]:
            endpoints.sort(key=lambda e: (e["targetRef"]["name"], e["addresses"][0]))
            body: Obj = {"addressType": "IPv4", "endpoints": endpoints}
            if ports:
                body["ports"] = ports
            if current is None:
                meta = {"generateName": f"{name}-", "labels": labels, "ownerReferences": [owner]}
                self.store.create(ENDPOINTSLICES, ns, {"metadata": meta, **body})
                continue
            new = {k: v for k, v in current.items() if k not in ("endpoints", "ports")}
            new.update(body)
            new["metadata"] = {**current["metadata"], "labels": labels, "ownerReferences": [owner]}
            self.store.replace(ENDPOINTSLICES, new)
        for stale in spare:
            self.store.remove(ENDPOINTSLICES, ns, stale["metadata"]["name"])

    @staticmethod
    def _ports(svc: Obj, pod: Obj) -> list[Obj]:
        ports = []
        for svc_port in svc["spec"].get("ports") or []:
            number = _resolve_port(pod, svc_port)
            if number is None:
                continue  # upstream skips a port the pod does not expose
            port: Obj = {
                "name": svc_port.get("name", ""),
                "protocol": svc_port.get("protocol", "TCP"),
                "port": number,
            }
            if svc_port.get("appProtocol"):
                port["appProtocol"] = svc_port["appProtocol"]
            ports.append(port)
        return ports

    def _endpoint(self, svc: Obj, pod: Obj, ip: str) -> Obj:
        publish = bool(svc["spec"].get("publishNotReadyAddresses"))
        serving = publish or _is_ready(pod)
        terminating = bool(pod["metadata"].get("deletionTimestamp"))
        meta, pod_spec = pod["metadata"], pod.get("spec", {})
        endpoint: Obj = {
            "addresses": [ip],
            "conditions": {
                "ready": publish or (serving and not terminating),
                "serving": serving,
                "terminating": terminating,
            },
            "targetRef": {
                "kind": "Pod",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
        }
        node_name = pod_spec.get("nodeName")
        if node_name:
            endpoint["nodeName"] = node_name
            node = self.store.find(NODES, None, node_name)
            zone = ((node or {}).get("metadata", {}).get("labels") or {}).get(ZONE_LABEL)
            if zone:
                endpoint["zone"] = zone
        if pod_spec.get("hostname") and pod_spec.get("subdomain") == svc["metadata"]["name"]:
            endpoint["hostname"] = pod_spec["hostname"]
        return endpoint


def _ports_key(ports: list[Obj]) -> str:
    return json.dumps(
        sorted(ports, key=lambda p: (p.get("name", ""), p.get("protocol", ""))), sort_keys=True
    )


def ensure_kubernetes_service(store: Store, address: str, port: int) -> None:
    """The ``default/kubernetes`` Service and its EndpointSlice at ``address:port``."""
    svc = store.find(SERVICES, "default", "kubernetes")
    if svc is None:
        store.create(
            SERVICES,
            "default",
            {
                "metadata": {
                    "name": "kubernetes",
                    "labels": {"component": "apiserver", "provider": "kubernetes"},
                },
                "spec": {
                    "clusterIP": KUBERNETES_SERVICE_IP,
                    "ports": [
                        {"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}
                    ],
                },
            },
        )
    try:
        if (
            ipaddress.ip_address(address).version != 4
            or ipaddress.ip_address(address).is_unspecified
        ):
            return
    except ValueError:
        return
    body: Obj = {
        "metadata": {"name": "kubernetes", "labels": {SERVICE_NAME_LABEL: "kubernetes"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
    }
    current = store.find(ENDPOINTSLICES, "default", "kubernetes")
    if current is None:
        store.create(ENDPOINTSLICES, "default", body)
    else:
        store.replace(
            ENDPOINTSLICES, {**current, **{k: v for k, v in body.items() if k != "metadata"}}
        )
