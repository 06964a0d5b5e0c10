"""Pod and Service documents -> typed model objects, or a ValidationError naming each field.

Defaults are the Kubernetes API defaults (restartPolicy Always, grace period 30 s, probe
periods ...). Fields fall in three groups per object: those we honour, those that are safe
to ignore on a single node (scheduling hints, for example), and the rest, which are rejected
by name: a pod must never run with a field silently dropped. This module is the entry
point and holds the document- and pod-level rules; ``model.containers`` reads each container.

Two strictness levels (``parse_pod(lenient=)``, see ``model.fields``):
- manifest files are strict: any field we do not know is an error naming it. The kubelet
  decodes static pods leniently, but there a typo ("imagePulPolicy") is silently dropped;
  in a cluster the API server's strict field validation (kubectl's default since 1.27)
  catches it first, while a manifest directory has nothing in front of it, so we do that
  check here;
- the API's pods are lenient: kube-apiserver has validated them, so a field of the pod,
  its metadata or a container that Kubernetes itself does not define is a newer API's,
  and is ignored (``Pod.future_fields``; the caller warns once per pod), as the kubelet
  does. Fields Kubernetes defines that we cannot honour stay errors either way.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from nodeagent.model import quantity, security
from nodeagent.model.containers import DNS1123_LABEL, parse_container, read_quantity
from nodeagent.model.csi import CSI_DRIVER_NAME, CSIInlineSource
from nodeagent.model.fields import FieldError, Node, ValidationError
from nodeagent.model.pod import (
    Container,
    DNSPolicy,
    EmptyDirSource,
    HostPathSource,
    Pod,
    PodDNSConfig,
    PodSpec,
    PodUID,
    RestartPolicy,
    Volume,
)
from nodeagent.model.service import Service, read_service

_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")

_HOSTPATH_TYPES = (
    "",
    "DirectoryOrCreate",
    "Directory",
    "FileOrCreate",
    "File",
    "Socket",
    "CharDevice",
    "BlockDevice",
)

_METADATA_KNOWN = ("name", "namespace", "uid", "labels", "annotations", "creationTimestamp")
_METADATA_IGNORED = (
    "generateName",
    "resourceVersion",
    "generation",
    "ownerReferences",
    "finalizers",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
)
_SPEC_KNOWN = (
    "containers",
    "imagePullSecrets",
    "initContainers",
    "restartPolicy",
    "terminationGracePeriodSeconds",
    "volumes",
    "hostname",
    "subdomain",
    "nodeName",
    "hostNetwork",
    "serviceAccountName",
    "dnsPolicy",
    "dnsConfig",
    "activeDeadlineSeconds",
    "priority",
    "hostPID",
    "hostIPC",
    "shareProcessNamespace",
    "hostAliases",
    "securityContext",
    "enableServiceLinks",
    "readinessGates",
    "setHostnameAsFQDN",
    "os",
    "hostUsers",
    "runtimeClassName",
    "resourceClaims",
    "ephemeralContainers",
)
# Scheduling and admission hints that have no effect on a pod already bound to this node.
_SPEC_IGNORED = (
    "schedulerName",
    "priorityClassName",
    "tolerations",
    "nodeSelector",
    "affinity",
    "preemptionPolicy",
    "serviceAccount",
    "automountServiceAccountToken",
    "topologySpreadConstraints",
    "schedulingGates",  # a pod that has them is never bound to a node
    "overhead",  # RuntimeClass admission's figure; only the default handler runs here
)
# The rest of v1.PodSpec (Kubernetes 1.32): defined upstream, not honoured here.
_SPEC_UPSTREAM = (
    "resources",
    "hostnameOverride",  # 1.34 alpha: named here, so a hostname is never silently other
)
_ROOT_KNOWN = ("apiVersion", "kind", "metadata", "spec")
OS_LINUX = "linux"


# The name the sources use for a validated Service (nodeagent.model.service has the model).
ServiceDoc = Service


def object_name(doc: object) -> str:
    """`Kind namespace/name` for error messages, as far as the document allows."""
    if not isinstance(doc, Mapping):
        return "document"
    meta = doc.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    kind = doc.get("kind") if isinstance(doc.get("kind"), str) else "object"
    name = meta.get("name") if isinstance(meta.get("name"), str) else "<unnamed>"
    namespace = meta.get("namespace") if isinstance(meta.get("namespace"), str) else "default"
    return f"{kind} {namespace}/{name}"


def parse_document(doc: object, *, source: str, node_name: str) -> Pod | ServiceDoc:
    """Dispatch on ``kind``; anything but a v1 Pod or Service is rejected by name."""
    obj = object_name(doc)
    if not isinstance(doc, Mapping):
        raise ValidationError(obj, [FieldError("", "document must be an object")])
    kind, api = doc.get("kind"), doc.get("apiVersion")
    if kind not in ("Pod", "Service"):
        raise ValidationError(obj, [FieldError("kind", f"must be Pod or Service, got {kind!r}")])
    if api != "v1":
        raise ValidationError(obj, [FieldError("apiVersion", f"must be v1, got {api!r}")])
    if kind == "Service":
        return parse_service(doc, source=source)
    return parse_pod(doc, source=source, node_name=node_name)


def parse_service(doc: Mapping[str, Any], *, source: str) -> ServiceDoc:
    errors: list[FieldError] = []
    root = Node(doc, "", errors)
    root.reject_unknown(("apiVersion", "kind", "metadata", "spec", "status"))
    meta = root.child("metadata")
    meta.reject_unknown(_METADATA_KNOWN, _METADATA_IGNORED)
    name, namespace = _identity(meta)
    service = read_service(root, name=name, namespace=namespace, raw=doc, source=source)
    if errors:
        raise ValidationError(object_name(doc), errors)
    return service


def parse_pod(doc: Mapping[str, Any], *, source: str, node_name: str, lenient: bool = False) -> Pod:
    """``lenient``: the API's pods (see the module docstring); manifest files are strict."""
    errors: list[FieldError] = []
    future: list[str] | None = [] if lenient else None
    root = Node(doc, "", errors, future)
    root.reject_unknown(_ROOT_KNOWN, ("status",), upstream=())
    meta = root.child("metadata")
    meta.reject_unknown(_METADATA_KNOWN, _METADATA_IGNORED, upstream=())
    name, namespace = _identity(meta)
    labels = meta.string_map("labels")
    annotations = meta.string_map("annotations")
    spec = _pod_spec(root.child("spec"), lenient=lenient)
    if errors:
        raise ValidationError(object_name(doc), errors)
    uid = meta.string("uid") or _content_uid(doc, node_name)
    return Pod(
        uid=PodUID(uid),
        name=name,
        namespace=namespace,
        spec=spec,
        labels=labels,
        annotations=annotations,
        source=source,
        creation_timestamp=meta.string("creationTimestamp"),
        gate_conditions=_gate_conditions(doc, spec.readiness_gates),
        future_fields=tuple(future or ()),
    )


def _gate_conditions(doc: Mapping[str, Any], gates: tuple[str, ...]) -> dict[str, str]:
    """The status of each readiness gate's condition the document shows. Others
    (controllers, load balancers) write those conditions through the API; the status is
    theirs, so a malformed entry is skipped, not an error of the pod."""
    status = doc.get("status")
    conditions = status.get("conditions") if isinstance(status, Mapping) else None
    if not gates or not isinstance(conditions, list):
        return {}
    return {
        c["type"]: str(c.get("status"))
        for c in conditions
        if isinstance(c, Mapping) and c.get("type") in gates
    }


def _content_uid(doc: Mapping[str, Any], node_name: str) -> str:
    """A static pod's uid: a hash of its content, so an edited manifest is a new pod."""
    digest = hashlib.sha256(json.dumps(_json_keys(doc), sort_keys=True, default=str).encode())
    digest.update(node_name.encode())
    h = digest.hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def _json_keys(value: Any) -> Any:
    """``value`` with every map key a string, so that sorting keys cannot fail.

    YAML allows keys like ``1`` or ``true``; fields we ignore may carry them. String keys
    are kept as they are, so the uid of an ordinary document does not change.
    """
    if isinstance(value, Mapping):
        return {
            k if isinstance(k, str) else f"{type(k).__name__}:{k}": _json_keys(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_json_keys(v) for v in value]
    return value


def _identity(meta: Node) -> tuple[str, str]:
    name = meta.string("name", required=True)
    if name and not _DNS1123_SUBDOMAIN.match(name):
        meta.error(f"{name!r} is not a valid DNS-1123 subdomain", "name")
    namespace = meta.string("namespace", default="default")
    if not DNS1123_LABEL.match(namespace):
        meta.error(f"{namespace!r} is not a valid DNS-1123 label", "namespace")
    return name, namespace


def _pod_spec(spec: Node, *, lenient: bool) -> PodSpec:
    spec.reject_unknown(_SPEC_KNOWN, _SPEC_IGNORED, upstream=_SPEC_UPSTREAM)
    _check_platform(spec, api=lenient)
    volumes = tuple(_volume(v) for v in spec.items("volumes"))
    volume_names = {v.name for v in volumes}
    containers = tuple(parse_container(c, volume_names) for c in spec.items("containers"))
    if not containers:
        spec.error("at least one container is required", "containers")
    inits = tuple(parse_container(c, volume_names, init=True) for c in spec.items("initContainers"))
    ephemeral = tuple(
        parse_container(c, volume_names, ephemeral=True) for c in spec.items("ephemeralContainers")
    )
    _check_unique(spec, "containers", [c.name for c in inits + containers + ephemeral])
    _check_targets(spec, ephemeral, {c.name for c in inits + containers})
    _check_unique(spec, "volumes", [v.name for v in volumes])
    policy = spec.enum_value(
        "restartPolicy", [p.value for p in RestartPolicy], default=RestartPolicy.ALWAYS.value
    )
    return PodSpec(
        containers=containers,
        init_containers=inits,
        restart_policy=RestartPolicy(policy),
        termination_grace_period_seconds=spec.integer(
            "terminationGracePeriodSeconds", default=30, minimum=0
        ),
        volumes=volumes,
        hostname=spec.string("hostname"),
        subdomain=spec.string("subdomain"),
        node_name=spec.string("nodeName"),
        host_network=spec.boolean("hostNetwork"),
        service_account_name=spec.string("serviceAccountName", default="default"),
        dns_policy=DNSPolicy(
            spec.enum_value(
                "dnsPolicy", [p.value for p in DNSPolicy], default=DNSPolicy.CLUSTER_FIRST.value
            )
        ),
        dns_config=_dns_config(spec),
        active_deadline_seconds=_active_deadline(spec),
        priority=_priority(spec),
        host_pid=spec.boolean("hostPID"),
        host_ipc=spec.boolean("hostIPC"),
        share_process_namespace=_share_process_namespace(spec),
        host_aliases=security.host_aliases(spec),
        security_context=security.pod_security_context(spec),
        enable_service_links=spec.boolean("enableServiceLinks", default=True),
        readiness_gates=_readiness_gates(spec),
        set_hostname_as_fqdn=spec.boolean("setHostnameAsFQDN"),
        runtime_class_name=spec.string("runtimeClassName"),
        ephemeral_containers=ephemeral,
        image_pull_secrets=_image_pull_secrets(spec),
    )


def _check_platform(spec: Node, *, api: bool) -> None:
    """Fields the API accepts that ask for something this node does not offer: each a
    clear error naming the field (the pod fails with it), never a silent run without it."""
    if spec.present("os"):
        os_node = spec.child("os")
        os_node.reject_unknown(("name",))
        os_name = os_node.string("name", required=True)
        if os_name and os_name != OS_LINUX:
            os_node.error(f"{os_name!r} pods cannot run on this linux node", "name")
    if not spec.boolean("hostUsers", default=True):
        spec.error("user namespaces (false) are not supported by nodeagent", "hostUsers")
    if spec.string("runtimeClassName") and not api:
        # A manifest has no RuntimeClass objects to name (in a cluster the link looks the
        # handler up: see apiserver.pods).
        spec.error(
            "RuntimeClasses come from an API server; a manifest's pod runs the default "
            "handler (runc): leave runtimeClassName unset",
            "runtimeClassName",
        )
    if spec.present("resourceClaims"):
        spec.error("dynamic resource allocation is not supported by nodeagent", "resourceClaims")


def _readiness_gates(spec: Node) -> tuple[str, ...]:
    gates = []
    for gate in spec.items("readinessGates"):
        gate.reject_unknown(("conditionType",))
        kind = gate.string("conditionType", required=True)
        if kind:
            gates.append(kind)
    _check_unique(spec, "readinessGates", gates)
    return tuple(gates)


def _image_pull_secrets(spec: Node) -> tuple[str, ...]:
    """Names of the Secrets to pull with. The API drops entries without a name (the
    ServiceAccount admission may copy such); a name is otherwise a DNS-1123 subdomain."""
    names: list[str] = []
    for ref in spec.items("imagePullSecrets"):
        ref.reject_unknown(("name",))
        name = ref.string("name")
        if name and not _DNS1123_SUBDOMAIN.match(name):
            ref.error(f"{name!r} is not a valid DNS-1123 subdomain", "name")
        elif name and name not in names:
            names.append(name)
    return tuple(names)


def _share_process_namespace(spec: Node) -> bool:
    share = spec.boolean("shareProcessNamespace")
    if share and spec.boolean("hostPID"):
        spec.error("may not be set together with hostPID", "shareProcessNamespace")
    return share


def _active_deadline(spec: Node) -> int | None:
    if not spec.present("activeDeadlineSeconds"):
        return None
    return spec.integer("activeDeadlineSeconds", default=1, minimum=1)


def _priority(spec: Node) -> int | None:
    if not spec.present("priority"):
        return None
    return spec.integer("priority", default=0)


def _dns_config(spec: Node) -> PodDNSConfig | None:
    none_policy = spec.string("dnsPolicy") == DNSPolicy.NONE.value
    if not spec.present("dnsConfig"):
        if none_policy:
            spec.error("is required with dnsPolicy None", "dnsConfig")
        return None
    node = spec.child("dnsConfig")
    node.reject_unknown(("nameservers", "searches", "options"))
    options = []
    for option in node.items("options"):
        option.reject_unknown(("name", "value"))
        value = option.string("value") if option.present("value") else None
        options.append((option.string("name", required=True), value))
    config = PodDNSConfig(
        nameservers=node.strings("nameservers"),
        searches=node.strings("searches"),
        options=tuple(options),
    )
    if none_policy and not config.nameservers:
        spec.error("at least one nameserver is required with dnsPolicy None", "dnsConfig")
    return config


def _check_targets(spec: Node, ephemeral: tuple[Container, ...], names: set[str]) -> None:
    for container in ephemeral:
        target = container.target_container_name
        if target and target not in names:
            spec.error(
                f"{container.name}: targetContainerName {target!r} is not a container of the pod",
                "ephemeralContainers",
            )


def _check_unique(spec: Node, what: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            spec.error(f"duplicate name {name!r}", what)
        seen.add(name)


_CLAIM_SOURCES = ("persistentVolumeClaim", "ephemeral")


def _volume(v: Node) -> Volume:
    for key in _CLAIM_SOURCES:
        if v.present(key):
            # API pods reach here with their claims resolved (apiserver/claims.py).
            v.error(
                "a PersistentVolumeClaim needs the Kubernetes API to be read: only an agent "
                "in cluster mode mounts one",
                key,
            )
    v.reject_unknown(("name", "emptyDir", "hostPath", "csi", *_CLAIM_SOURCES))
    name = v.string("name", required=True)
    if name and not DNS1123_LABEL.match(name):
        v.error(f"{name!r} is not a valid DNS-1123 label", "name")
    if any(v.present(key) for key in _CLAIM_SOURCES):
        return Volume(name=name, source=EmptyDirSource())
    sources = [k for k in ("emptyDir", "hostPath", "csi") if v.present(k)]
    if len(sources) > 1:
        v.error(f"exactly one volume source is allowed (found {', '.join(sources)})")
    if v.present("csi"):
        return Volume(name=name, source=_csi_inline(v.child("csi")))
    if v.present("hostPath"):
        hp = v.child("hostPath")
        hp.reject_unknown(("path", "type"))
        path = hp.string("path", required=True)
        if path and not path.startswith("/"):
            hp.error("must be an absolute path", "path")
        kind = hp.enum_value("type", _HOSTPATH_TYPES, default="")
        return Volume(name=name, source=HostPathSource(path=path, type=kind))
    ed = v.child("emptyDir")
    ed.reject_unknown(("medium", "sizeLimit"))
    size = read_quantity(ed, "sizeLimit", quantity.memory_bytes)
    medium = ed.enum_value("medium", ("", "Memory"), default="")
    if not v.present("emptyDir"):
        v.error(
            "a volume source is required (nodeagent supports emptyDir, hostPath, configMap, "
            "secret, downwardAPI, projected and csi)"
        )
    return Volume(name=name, source=EmptyDirSource(medium=medium, size_limit_bytes=size))


def _csi_inline(csi: Node) -> CSIInlineSource:
    """``volumes[].csi``: a CSI ephemeral volume (the driver is asked at mount time)."""
    csi.reject_unknown(("driver", "readOnly", "fsType", "volumeAttributes", "nodePublishSecretRef"))
    driver = csi.string("driver", required=True)
    if driver and not CSI_DRIVER_NAME.match(driver):
        csi.error(
            f"{driver!r} is not a valid CSI driver name (at most 63 alphanumerics, '-' and '.')",
            "driver",
        )
    secret = csi.child("nodePublishSecretRef")
    secret.reject_unknown(("name",))
    return CSIInlineSource(
        driver=driver,
        read_only=csi.boolean("readOnly"),
        fs_type=csi.string("fsType"),
        volume_attributes=tuple(sorted(csi.string_map("volumeAttributes").items())),
        node_publish_secret_ref=secret.string("name", required=csi.present("nodePublishSecretRef")),
    )
