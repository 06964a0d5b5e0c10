"""The resource types the test API server serves, and the discovery documents built from them.

Discovery follows the upstream "API discovery" shapes (unaggregated, the form every client
falls back to): ``/api`` is an APIVersions, ``/apis`` an APIGroupList, ``/apis/<group>`` an
APIGroup and ``/api/v1`` or ``/apis/<group>/<version>`` an APIResourceList that also names the
subresources (``pods/status``, ``serviceaccounts/token``...).

Field selectors: upstream lets each resource name the fields it supports (always
``metadata.name`` and, for namespaced ones, ``metadata.namespace``); any other label is a 400
"field label not supported". ``selectable_fields`` lists them per type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@dataclass(frozen=True)
class ResourceType:
    """One served resource: where it lives in the URL space and what it supports."""

    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    # Resources whose writes on the main endpoint leave status alone (status subresource).
    status_subresource: bool = False
    # POST-only subresources: "token" (TokenRequest), "binding" (pods).
    actions: tuple[str, ...] = ()
    # Other subresources, each answering GET/PUT/PATCH: "ephemeralcontainers" (pods).
    subresources: tuple[str, ...] = ()
    # Upstream lets PUT create a missing object for some types (events, leases...).
    allow_create_on_update: bool = False
    selectable_fields: tuple[str, ...] = ()
    # Namespace and Service names must be DNS-1035/1123 labels; the rest DNS subdomains.
    name_is_label: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def api_version(self) -> str:
        return self.version if not self.group else f"{self.group}/{self.version}"

    @property
    def key(self) -> str:
        """Identity inside the store: ``pods``, ``leases.coordination.k8s.io``..."""
        return self.plural if not self.group else f"{self.plural}.{self.group}"

    @property
    def singular(self) -> str:
        return self.kind.lower()

    def fields(self) -> tuple[str, ...]:
        base = ("metadata.name", "metadata.namespace") if self.namespaced else ("metadata.name",)
        return base + self.selectable_fields


POD_FIELDS = (
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
)
EVENT_FIELDS = (
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
)

PODS = ResourceType(
    "",
    "v1",
    "pods",
    "Pod",
    True,
    ("po",),
    status_subresource=True,
    actions=("binding",),
    subresources=("ephemeralcontainers",),
    selectable_fields=POD_FIELDS,
)
NODES = ResourceType(
    "",
    "v1",
    "nodes",
    "Node",
    False,
    ("no",),
    status_subresource=True,
    selectable_fields=("spec.unschedulable",),
)
SERVICES = ResourceType(
    "",
    "v1",
    "services",
    "Service",
    True,
    ("svc",),
    status_subresource=True,
    selectable_fields=("spec.clusterIP", "spec.type"),
    name_is_label=True,
)
CONFIGMAPS = ResourceType("", "v1", "configmaps", "ConfigMap", True, ("cm",))
PERSISTENTVOLUMES = ResourceType(
    "", "v1", "persistentvolumes", "PersistentVolume", False, ("pv",), status_subresource=True
)
PERSISTENTVOLUMECLAIMS = ResourceType(
    "",
    "v1",
    "persistentvolumeclaims",
    "PersistentVolumeClaim",
    True,
    ("pvc",),
    status_subresource=True,
)
SECRETS = ResourceType("", "v1", "secrets", "Secret", True, selectable_fields=("type",))
EVENTS = ResourceType(
    "",
    "v1",
    "events",
    "Event",
    True,
    ("ev",),
    allow_create_on_update=True,
    selectable_fields=EVENT_FIELDS,
)
NAMESPACES = ResourceType(
    "",
    "v1",
    "namespaces",
    "Namespace",
    False,
    ("ns",),
    status_subresource=True,
    selectable_fields=("status.phase",),
    name_is_label=True,
)
SERVICEACCOUNTS = ResourceType(
    "", "v1", "serviceaccounts", "ServiceAccount", True, ("sa",), actions=("token",)
)
LEASES = ResourceType(
    "coordination.k8s.io", "v1", "leases", "Lease", True, allow_create_on_update=True
)
ENDPOINTSLICES = ResourceType(
    "discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True, allow_create_on_update=True
)
CLUSTERROLES = ResourceType("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False)
CLUSTERROLEBINDINGS = ResourceType(
    "rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False
)
# Which runtime handler a pod's runtimeClassName names (the kubelet watches them).
RUNTIMECLASSES = ResourceType("node.k8s.io", "v1", "runtimeclasses", "RuntimeClass", False)

# CSI (storage.k8s.io): a node's registered drivers, the drivers' policies, and the
# attach/detach controller's record of a volume attached to a node.
CSINODES = ResourceType("storage.k8s.io", "v1", "csinodes", "CSINode", False)
CSIDRIVERS = ResourceType("storage.k8s.io", "v1", "csidrivers", "CSIDriver", False)
VOLUMEATTACHMENTS = ResourceType(
    "storage.k8s.io",
    "v1",
    "volumeattachments",
    "VolumeAttachment",
    False,
    status_subresource=True,
)

ALL: tuple[ResourceType, ...] = (
    PODS,
    NODES,
    SERVICES,
    CONFIGMAPS,
    SECRETS,
    PERSISTENTVOLUMES,
    PERSISTENTVOLUMECLAIMS,
    EVENTS,
    NAMESPACES,
    SERVICEACCOUNTS,
    LEASES,
    ENDPOINTSLICES,
    CLUSTERROLES,
    CLUSTERROLEBINDINGS,
    RUNTIMECLASSES,
    CSINODES,
    CSIDRIVERS,
    VOLUMEATTACHMENTS,
)
BY_KIND: dict[str, ResourceType] = {rt.kind: rt for rt in ALL}


def lookup(group: str, version: str, plural: str) -> ResourceType | None:
    for rt in ALL:
        if (rt.group, rt.version, rt.plural) == (group, version, plural):
            return rt
    return None


def group_versions() -> dict[str, list[str]]:
    """Every group (core group as "") and its versions, in registry order."""
    out: dict[str, list[str]] = {}
    for rt in ALL:
        versions = out.setdefault(rt.group, [])
        if rt.version not in versions:
            versions.append(rt.version)
    return out


def api_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    }


def _api_group(group: str, versions: list[str]) -> dict[str, Any]:
    gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": gvs, "preferredVersion": gvs[0]}


def api_group_list() -> dict[str, Any]:
    groups = [_api_group(g, vs) for g, vs in group_versions().items() if g]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(group: str) -> dict[str, Any] | None:
    versions = group_versions().get(group)
    if not group or versions is None:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_api_group(group, versions)}


def api_resource_list(group: str, version: str) -> dict[str, Any] | None:
    members = [rt for rt in ALL if rt.group == group and rt.version == version]
    if not members:
        return None
    resources: list[dict[str, Any]] = []
    for rt in members:
        resources.append(
            {
                "name": rt.plural,
                "singularName": rt.singular,
                "namespaced": rt.namespaced,
                "kind": rt.kind,
                "verbs": VERBS,
                **({"shortNames": list(rt.short_names)} if rt.short_names else {}),
            }
        )
        if rt.status_subresource:
            resources.append(
                {
                    "name": f"{rt.plural}/status",
                    "singularName": "",
                    "namespaced": rt.namespaced,
                    "kind": rt.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
        for sub in rt.subresources:
            resources.append(
                {
                    "name": f"{rt.plural}/{sub}",
                    "singularName": "",
                    "namespaced": rt.namespaced,
                    "kind": rt.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
        for action in rt.actions:
            kind, group_of = (
                ("TokenRequest", "authentication.k8s.io") if action == "token" else ("Binding", "")
            )
            resources.append(
                {
                    "name": f"{rt.plural}/{action}",
                    "singularName": "",
                    "namespaced": rt.namespaced,
                    "kind": kind,
                    "verbs": ["create"],
                    **({"group": group_of, "version": "v1"} if group_of else {}),
                }
            )
    gv = version if not group else f"{group}/{version}"
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }
