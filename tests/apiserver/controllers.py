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
- The ``kubernetes`` Service in ``default`` (the service CIDR's first IP, 10.96.0.1; port 443
  named ``https``, targetPort the server's own port; labels component=apiserver,
  provider=kubernetes) and its EndpointSlice ``kubernetes`` (label
  ``kubernetes.io/service-name``, IPv4, the server's advertised address, ready, port
  ``https``), as the apiserver's reconciler and endpoints adapter keep them.

Simplified: IPv4 only; no 100-endpoint limit per slice; no Endpoints (core/v1) objects; no
garbage collector beyond slices of deleted Services.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import ipaddress
import json
import time
from collections.abc import Callable
from typing import Any

from tests.apiserver import errors
from tests.apiserver.allocators import KUBERNETES_SERVICE_IP
from tests.apiserver.resources import (
    ALL,
    CONFIGMAPS,
    ENDPOINTSLICES,
    LEASES,
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
    if svc is not None and (svc["spec"].get("ports") or [{}])[0].get("targetPort") != port:
        # Served on another port now (a restart from saved state): the apiserver's
        # reconciler rewrites the ports, as it does the EndpointSlice below.
        fixed = copy.deepcopy(svc)
        fixed["spec"]["ports"] = [
            {"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}
        ]
        store.replace(SERVICES, fixed)
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


# --- Node lifecycle ------------------------------------------------------------------------

UNREACHABLE_TAINT = "node.kubernetes.io/unreachable"
NODE_STATUS_UNKNOWN = "NodeStatusUnknown"
NODE_STATUS_UNKNOWN_MESSAGE = "Kubelet stopped posting node status."
NODE_CONDITIONS = ("Ready", "MemoryPressure", "DiskPressure", "PIDPressure")
DEFAULT_NODE_MONITOR_GRACE_S = 40.0  # kube-controller-manager's --node-monitor-grace-period


class NodeLifecycleController:
    """Notices nodes whose agent went silent (upstream node lifecycle controller, in part).

    The controller's own clock decides, never timestamps written by the node (clock skew):
    a node is heard from when it is first seen, when its Lease in ``kube-node-lease`` is
    renewed and when its status changes. Silent for longer than ``grace_s`` (the
    controller-manager's ``--node-monitor-grace-period``), its Ready, MemoryPressure,
    DiskPressure and PIDPressure conditions turn ``Unknown`` with reason
    ``NodeStatusUnknown``, and it gets the ``node.kubernetes.io/unreachable`` taints
    (NoSchedule, and NoExecute with timeAdded). Once its agent reports Ready again, the taints
    go. Its pods are left as they are: no taint-based eviction, and the pods' own Ready
    conditions are not touched (upstream marks them NotReady); the node agent is the subject
    under test, not the control plane.
    """

    def __init__(
        self,
        store: Store,
        *,
        grace_s: float = DEFAULT_NODE_MONITOR_GRACE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.grace_s = grace_s
        self.clock = clock
        self.heard: dict[str, float] = {}  # node name -> when it was last heard from
        self.marked: set[str] = set()  # nodes this controller turned Unknown
        self._writing: set[str] = set()  # nodes being written by us: not "heard from"

    def on_change(self, change: Change) -> None:
        meta = change.obj["metadata"]
        if change.rt is LEASES and meta.get("namespace") == "kube-node-lease":
            renew = (change.obj.get("spec") or {}).get("renewTime")
            before = ((change.prev or {}).get("spec") or {}).get("renewTime")
            if change.type != DELETED and renew != before:
                self.heard[meta["name"]] = self.clock()
        elif change.rt is NODES:
            name = meta["name"]
            if change.type == DELETED:
                self.heard.pop(name, None)
                self.marked.discard(name)
                return
            status, before = change.obj.get("status"), (change.prev or {}).get("status")
            if change.prev is None or (status != before and name not in self._writing):
                self.heard[name] = self.clock()
            if _condition(change.obj, "Ready") == "True" and _has_unreachable_taint(change.obj):
                self._untaint(change.obj)

    def check(self) -> list[str]:
        """Mark the nodes silent past the grace period; return their names."""
        now = self.clock()
        marked = []
        for node in list(self.store.items(NODES)):
            name = node["metadata"]["name"]
            heard = self.heard.setdefault(name, now)
            if now - heard <= self.grace_s or _condition(node, "Ready") == "Unknown":
                continue
            self._mark_unknown(node)
            marked.append(name)
        return marked

    async def run(self, interval_s: float = 0.5) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.check()

    def _mark_unknown(self, node: Obj) -> None:
        name = node["metadata"]["name"]
        stamp = _now()
        new = copy.deepcopy(node)
        status = new.setdefault("status", {})
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        for kind in NODE_CONDITIONS:
            cond = conditions.setdefault(kind, {"type": kind})
            if cond.get("status") != "Unknown":
                cond["lastTransitionTime"] = stamp
            cond.update(
                status="Unknown",
                reason=NODE_STATUS_UNKNOWN,
                message=NODE_STATUS_UNKNOWN_MESSAGE,
            )
            cond.setdefault("lastHeartbeatTime", stamp)
        status["conditions"] = list(conditions.values())
        spec = new.setdefault("spec", {})
        taints = [t for t in spec.get("taints") or [] if t.get("key") != UNREACHABLE_TAINT]
        taints.append({"key": UNREACHABLE_TAINT, "effect": "NoSchedule"})
        taints.append({"key": UNREACHABLE_TAINT, "effect": "NoExecute", "timeAdded": stamp})
        spec["taints"] = taints
        self._write(new)
        self.marked.add(name)

    def _untaint(self, node: Obj) -> None:
        new = copy.deepcopy(node)
        spec = new.setdefault("spec", {})
        spec["taints"] = [t for t in spec.get("taints") or [] if t.get("key") != UNREACHABLE_TAINT]
        if not spec["taints"]:
            del spec["taints"]
        self._write(new)
        self.marked.discard(node["metadata"]["name"])

    def _write(self, node: Obj) -> None:
        name = node["metadata"]["name"]
        self._writing.add(name)
        try:
            self.store.replace(NODES, node)
        finally:
            self._writing.discard(name)


def _condition(node: Obj, kind: str) -> str:
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return str(cond.get("status"))
    return ""


def _has_unreachable_taint(node: Obj) -> bool:
    return any(
        t.get("key") == UNREACHABLE_TAINT for t in (node.get("spec") or {}).get("taints") or []
    )


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
