"""Pod and Service documents -> typed model objects, or a ValidationError naming each field.

Defaults are the Kubernetes API defaults (restartPolicy Always, grace period 30 s, probe
periods ...). Fields fall in three groups per object: those we honour, those that are safe
to ignore on a single node (scheduling hints, for example), and the rest, which are rejected
by name: a pod must never run with a field silently dropped.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from nodeagent.model import quantity, security
from nodeagent.model.fields import FieldError, Node, ValidationError
from nodeagent.model.pod import (
    DEFAULT_TERMINATION_MESSAGE_PATH,
    Container,
    ContainerPort,
    DNSPolicy,
    EmptyDirSource,
    EnvVar,
    ExecAction,
    FieldRef,
    GRPCAction,
    Handler,
    HostPathSource,
    HTTPGetAction,
    Lifecycle,
    Pod,
    PodDNSConfig,
    PodSpec,
    PodUID,
    Probe,
    PullPolicy,
    ResourceFieldRef,
    Resources,
    RestartPolicy,
    TCPSocketAction,
    TerminationMessagePolicy,
    Volume,
    VolumeMount,
)
from nodeagent.model.service import Service, read_service

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")

_FIELD_PATHS = (
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.podIP",
    "status.podIPs",
    "status.hostIP",
    "status.hostIPs",
)
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
)
# Scheduling and admission hints that have no effect on a pod already bound to this node.
_SPEC_IGNORED = (
    "schedulerName",
    "priorityClassName",
    "tolerations",
    "nodeSelector",
    "affinity",
    "preemptionPolicy",
    "enableServiceLinks",
    "serviceAccount",
    "automountServiceAccountToken",
    "topologySpreadConstraints",
)
_CONTAINER_KNOWN = (
    "name",
    "image",
    "command",
    "args",
    "workingDir",
    "env",
    "ports",
    "volumeMounts",
    "resources",
    "imagePullPolicy",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "lifecycle",
    "stdin",
    "tty",
    "restartPolicy",
    "securityContext",
    "terminationMessagePath",
    "terminationMessagePolicy",
)
_CONTAINER_IGNORED: tuple[str, ...] = ()


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


def parse_pod(doc: Mapping[str, Any], *, source: str, node_name: str) -> Pod:
    errors: list[FieldError] = []
    root = Node(doc, "", errors)
    root.reject_unknown(("apiVersion", "kind", "metadata", "spec"), ("status",))
    meta = root.child("metadata")
    meta.reject_unknown(_METADATA_KNOWN, _METADATA_IGNORED)
    name, namespace = _identity(meta)
    labels = meta.string_map("labels")
    annotations = meta.string_map("annotations")
    spec = _pod_spec(root.child("spec"))
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
    )


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
    if not _DNS1123_LABEL.match(namespace):
        meta.error(f"{namespace!r} is not a valid DNS-1123 label", "namespace")
    return name, namespace


def _pod_spec(spec: Node) -> PodSpec:
    spec.reject_unknown(_SPEC_KNOWN, _SPEC_IGNORED)
    volumes = tuple(_volume(v) for v in spec.items("volumes"))
    volume_names = {v.name for v in volumes}
    containers = tuple(_container(c, volume_names) for c in spec.items("containers"))
    if not containers:
        spec.error("at least one container is required", "containers")
    inits = tuple(_container(c, volume_names, init=True) for c in spec.items("initContainers"))
    _check_unique(spec, "containers", [c.name for c in inits + containers])
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
    )


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


def _check_unique(spec: Node, what: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            spec.error(f"duplicate name {name!r}", what)
        seen.add(name)


def _container(c: Node, volume_names: set[str], *, init: bool = False) -> Container:
    c.reject_unknown(_CONTAINER_KNOWN, _CONTAINER_IGNORED)
    name = c.string("name", required=True)
    if name and not _DNS1123_LABEL.match(name):
        c.error(f"{name!r} is not a valid DNS-1123 label", "name")
    image = c.string("image", required=True)
    if image and (image != image.strip() or " " in image):
        c.error(f"{image!r} is not a valid image reference", "image")
    sidecar = _sidecar(c, init=init)
    if init and not sidecar:
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            if c.present(probe):
                c.error("init containers may not have probes (unless restartPolicy Always)", probe)
    ports = tuple(_port(p) for p in c.items("ports"))
    port_names = {p.name for p in ports if p.name}
    mounts = tuple(_mount(m, volume_names) for m in c.items("volumeMounts"))
    return Container(
        name=name,
        image=image,
        command=c.strings("command"),
        args=c.strings("args"),
        working_dir=c.string("workingDir"),
        env=tuple(_env(e) for e in c.items("env")),
        ports=ports,
        volume_mounts=mounts,
        resources=_resources(c.child("resources")),
        image_pull_policy=PullPolicy(
            c.enum_value(
                "imagePullPolicy", [p.value for p in PullPolicy], default=_pull_default(image)
            )
        ),
        liveness_probe=_probe(c, "livenessProbe", port_names, single_success=True),
        readiness_probe=_probe(c, "readinessProbe", port_names, single_success=False),
        startup_probe=_probe(c, "startupProbe", port_names, single_success=True),
        lifecycle=_lifecycle(c.child("lifecycle"), port_names),
        stdin=c.boolean("stdin"),
        tty=c.boolean("tty"),
        sidecar=sidecar,
        security_context=security.container_security_context(c),
        termination_message_path=_termination_message_path(c),
        termination_message_policy=TerminationMessagePolicy(
            c.enum_value(
                "terminationMessagePolicy",
                [p.value for p in TerminationMessagePolicy],
                default=TerminationMessagePolicy.FILE.value,
            )
        ),
    )


def _termination_message_path(c: Node) -> str:
    path = c.string("terminationMessagePath", default=DEFAULT_TERMINATION_MESSAGE_PATH)
    if not path.startswith("/") or ".." in path.split("/"):
        c.error("must be an absolute path without '..'", "terminationMessagePath")
        return DEFAULT_TERMINATION_MESSAGE_PATH
    return path


def _sidecar(c: Node, *, init: bool) -> bool:
    """restartPolicy Always on an init container makes it a native sidecar (the only value
    a container may set, and only an init container)."""
    if not c.present("restartPolicy"):
        return False
    if not init:
        c.error("may only be set on init containers", "restartPolicy")
        return False
    return c.enum_value("restartPolicy", ("Always",), default="Always") == "Always"


def _pull_default(image: str) -> str:
    """`:latest` or no tag means Always; a tag or digest means IfNotPresent."""
    if "@" in image:
        return PullPolicy.IF_NOT_PRESENT.value
    last = image.rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else "latest"
    return PullPolicy.ALWAYS.value if tag == "latest" else PullPolicy.IF_NOT_PRESENT.value


def _port(p: Node) -> ContainerPort:
    p.reject_unknown(("containerPort", "name", "protocol", "hostPort", "hostIP"))
    number = p.integer("containerPort", default=0, minimum=1)
    if number == 0 or number > 65535:
        p.error("must be a port number 1-65535", "containerPort")
    return ContainerPort(
        container_port=number,
        name=p.string("name"),
        protocol=p.enum_value("protocol", ("TCP", "UDP", "SCTP"), default="TCP"),
        host_port=p.integer("hostPort", default=0, minimum=0),
        host_ip=p.string("hostIP"),
    )


def _mount(m: Node, volume_names: set[str]) -> VolumeMount:
    m.reject_unknown(
        ("name", "mountPath", "readOnly", "subPath", "subPathExpr"), ("mountPropagation",)
    )
    name = m.string("name", required=True)
    if name and name not in volume_names:
        m.error(f"no volume named {name!r} in spec.volumes", "name")
    path = m.string("mountPath", required=True)
    if path and not path.startswith("/"):
        m.error("must be an absolute path", "mountPath")
    sub_path = m.string("subPath")
    if sub_path.startswith("/") or ".." in sub_path.split("/"):
        m.error("must be a relative path without '..'", "subPath")
    expr = m.string("subPathExpr")
    if expr and sub_path:
        m.error("may not be set together with subPath", "subPathExpr")
    if expr.startswith("/"):  # '..' is checked once expanded, at the container's start
        m.error("must be a relative path", "subPathExpr")
    return VolumeMount(
        name=name,
        mount_path=path,
        read_only=m.boolean("readOnly"),
        sub_path=sub_path,
        sub_path_expr=expr,
    )


def _env(e: Node) -> EnvVar:
    e.reject_unknown(("name", "value", "valueFrom"))
    name = e.string("name", required=True)
    if name and not _ENV_NAME.match(name):
        e.error(f"{name!r} is not a valid environment variable name", "name")
    value_from: FieldRef | ResourceFieldRef | None = None
    if e.present("valueFrom") and e.present("value"):
        e.error("may not be set together with value", "valueFrom")
    if e.present("valueFrom"):
        source = e.child("valueFrom")
        source.reject_unknown(("fieldRef", "resourceFieldRef"))
        if source.present("fieldRef"):
            ref = source.child("fieldRef")
            ref.reject_unknown(("fieldPath", "apiVersion"))
            path = ref.string("fieldPath", required=True)
            if path and path not in _FIELD_PATHS and not _is_meta_key_ref(path):
                ref.error(f"unsupported fieldPath {path!r}", "fieldPath")
            value_from = FieldRef(path)
        elif source.present("resourceFieldRef"):
            ref = source.child("resourceFieldRef")
            ref.reject_unknown(("resource", "containerName", "divisor"))
            value_from = ResourceFieldRef(
                resource=ref.enum_value(
                    "resource",
                    ("limits.cpu", "limits.memory", "requests.cpu", "requests.memory"),
                    default="limits.memory",
                ),
                container_name=ref.string("containerName"),
                divisor=str(ref.value.get("divisor", "1")),
            )
        else:
            source.error("one of fieldRef or resourceFieldRef is required")
    return EnvVar(name=name, value=e.string("value"), value_from=value_from)


def _is_meta_key_ref(path: str) -> bool:
    return bool(re.match(r"^metadata\.(labels|annotations)\['[^']+'\]$", path)) or path in (
        "metadata.labels",
        "metadata.annotations",
    )


def _resources(r: Node) -> Resources:
    r.reject_unknown(("limits", "requests"), ("claims",))
    limits, requests = r.child("limits"), r.child("requests")
    for node in (limits, requests):
        node.reject_unknown(("cpu", "memory"), ("ephemeral-storage",))
    return Resources(
        cpu_limit_millis=_quantity(limits, "cpu", quantity.cpu_millis),
        memory_limit_bytes=_quantity(limits, "memory", quantity.memory_bytes),
        cpu_request_millis=_quantity(requests, "cpu", quantity.cpu_millis),
        memory_request_bytes=_quantity(requests, "memory", quantity.memory_bytes),
    )


def _quantity(node: Node, key: str, convert: Any) -> int | None:
    if not node.present(key):
        return None
    try:
        value: int = convert(node.value[key])
    except quantity.QuantityError as exc:
        node.error(str(exc), key)
        return None
    return value


def _handler(h: Node, port_names: set[str], *, allow_grpc: bool) -> Handler | None:
    kinds = [k for k in ("exec", "httpGet", "tcpSocket", "grpc") if h.present(k)]
    if not allow_grpc and "grpc" in kinds:
        h.error("grpc is only valid in probes", "grpc")
        return None
    if len(kinds) != 1:
        found = ", ".join(kinds) or "none"
        h.error(f"exactly one of exec, httpGet, tcpSocket, grpc is required (found {found})")
        return None
    kind = kinds[0]
    node = h.child(kind)
    if kind == "exec":
        node.reject_unknown(("command",))
        command = node.strings("command")
        if not command:
            node.error("is required", "command")
        return ExecAction(command)
    if kind == "grpc":
        node.reject_unknown(("port", "service"))
        if not node.present("port"):
            node.error("is required", "port")
        grpc_port = node.integer("port", default=0, minimum=1)
        if grpc_port > 65535:
            node.error("must be a port number 1-65535", "port")
        return GRPCAction(port=grpc_port, service=node.string("service"))
    port = _handler_port(node, port_names)
    if kind == "tcpSocket":
        node.reject_unknown(("port", "host"))
        return TCPSocketAction(port=port, host=node.string("host"))
    node.reject_unknown(("port", "path", "host", "scheme", "httpHeaders"))
    headers = []
    for item in node.items("httpHeaders"):
        headers.append((item.string("name", required=True), item.string("value")))
    return HTTPGetAction(
        port=port,
        path=node.string("path", default="/"),
        host=node.string("host"),
        scheme=node.enum_value("scheme", ("HTTP", "HTTPS"), default="HTTP"),
        headers=tuple(headers),
    )


def _handler_port(node: Node, port_names: set[str]) -> int | str:
    port = node.int_or_string("port", required=True)
    if isinstance(port, int) and not 1 <= port <= 65535:
        node.error("must be a port number 1-65535", "port")
    if isinstance(port, str) and port not in port_names:
        node.error(f"no container port named {port!r}", "port")
    return port if port is not None else 0


def _probe(c: Node, key: str, port_names: set[str], *, single_success: bool) -> Probe | None:
    if not c.present(key):
        return None
    p = c.child(key)
    p.reject_unknown(
        (
            "exec",
            "httpGet",
            "tcpSocket",
            "grpc",
            "initialDelaySeconds",
            "periodSeconds",
            "timeoutSeconds",
            "successThreshold",
            "failureThreshold",
            "terminationGracePeriodSeconds",
        )
    )
    handler = _handler(p, port_names, allow_grpc=True)
    success = _probe_field(p, "successThreshold", 1)
    if single_success and success != 1:
        p.error("must be 1 for liveness and startup probes", "successThreshold")
    grace: int | None = None
    if p.present("terminationGracePeriodSeconds"):
        if not single_success:
            p.error("is only valid on liveness and startup probes", "terminationGracePeriodSeconds")
        grace = p.integer("terminationGracePeriodSeconds", default=0, minimum=1)
    if handler is None:
        return None
    return Probe(
        handler=handler,
        initial_delay_seconds=p.integer("initialDelaySeconds", default=0, minimum=0),
        period_seconds=_probe_field(p, "periodSeconds", 10),
        timeout_seconds=_probe_field(p, "timeoutSeconds", 1),
        success_threshold=success,
        failure_threshold=_probe_field(p, "failureThreshold", 3),
        termination_grace_period_seconds=grace,
    )


def _probe_field(p: Node, key: str, default: int) -> int:
    """A probe's period, timeout or threshold: 0 means the default, as the API defaults it."""
    return p.integer(key, default=default, minimum=0) or default


def _lifecycle(node: Node, port_names: set[str]) -> Lifecycle:
    node.reject_unknown(("postStart", "preStop"))
    hooks = {}
    for key in ("postStart", "preStop"):
        if node.present(key):
            hooks[key] = _handler(node.child(key), port_names, allow_grpc=False)
    return Lifecycle(post_start=hooks.get("postStart"), pre_stop=hooks.get("preStop"))


def _volume(v: Node) -> Volume:
    v.reject_unknown(("name", "emptyDir", "hostPath"))
    name = v.string("name", required=True)
    if name and not _DNS1123_LABEL.match(name):
        v.error(f"{name!r} is not a valid DNS-1123 label", "name")
    sources = [k for k in ("emptyDir", "hostPath") if v.present(k)]
    if len(sources) > 1:
        v.error(f"exactly one volume source is allowed (found {', '.join(sources)})")
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
    size = _quantity(ed, "sizeLimit", quantity.memory_bytes)
    medium = ed.enum_value("medium", ("", "Memory"), default="")
    if not v.present("emptyDir"):
        v.error(
            "a volume source is required (nodeagent supports emptyDir, hostPath, configMap, "
            "secret, downwardAPI and projected)"
        )
    return Volume(name=name, source=EmptyDirSource(medium=medium, size_limit_bytes=size))
