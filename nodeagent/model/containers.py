"""Reading one container (init, sidecar or main) out of a Pod document.

A container carries most of a pod's fields (probes, lifecycle hooks, env, ports, mounts,
resources), and their rules are independent of the pod around it: only the pod's volume
names come in from outside. Keeping them here leaves ``model.validate`` with the document-
and pod-level rules, each module small enough to read whole.
"""

from __future__ import annotations

import re
from typing import Any

from nodeagent.model import quantity, security
from nodeagent.model.fields import Node
from nodeagent.model.pod import (
    DEFAULT_TERMINATION_MESSAGE_PATH,
    Container,
    ContainerPort,
    EnvVar,
    ExecAction,
    FieldRef,
    GRPCAction,
    Handler,
    HTTPGetAction,
    Lifecycle,
    Probe,
    PullPolicy,
    ResourceFieldRef,
    Resources,
    TCPSocketAction,
    TerminationMessagePolicy,
    VolumeMount,
)

# Shared with model.validate, which holds volume and namespace names to the same rule.
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")

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
_CONTAINER_IGNORED = (
    "stdinOnce",  # attach sessions end when the client leaves; nothing for the kubelet to do
    "resizePolicy",  # how to apply an in-place resize; resources are fixed here
)
# The rest of v1.Container (Kubernetes 1.32), not honoured here. envFrom is resolved into
# env before a pod reaches this module (``model.refs``); one left over is an error.
_CONTAINER_UPSTREAM = ("envFrom", "volumeDevices")
_EPHEMERAL_FORBIDDEN = (
    "ports",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "lifecycle",
    "resources",
    "restartPolicy",
)


def parse_container(
    c: Node, volume_names: set[str], *, init: bool = False, ephemeral: bool = False
) -> Container:
    """``volume_names`` are the pod's, for mounts; ``init`` allows restartPolicy (sidecars);
    ``ephemeral`` (``kubectl debug``) allows targetContainerName and forbids what upstream
    forbids an ephemeral container: ports, probes, lifecycle, resources."""
    extra = ("targetContainerName",) if ephemeral else ()
    c.reject_unknown((*_CONTAINER_KNOWN, *extra), _CONTAINER_IGNORED, upstream=_CONTAINER_UPSTREAM)
    if ephemeral:
        for forbidden in _EPHEMERAL_FORBIDDEN:
            # An empty value is unset (kubectl debug sends ``resources: {}``).
            if c.present(forbidden) and c.value.get(forbidden) not in ({}, []):
                c.error("may not be set for ephemeral containers", forbidden)
    name = c.string("name", required=True)
    if name and not DNS1123_LABEL.match(name):
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
        target_container_name=c.string("targetContainerName") if ephemeral else "",
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
    requests.reject_unknown(("cpu", "memory"), ("ephemeral-storage",))
    limits.reject_unknown(("cpu", "memory", "ephemeral-storage"))
    return Resources(
        cpu_limit_millis=read_quantity(limits, "cpu", quantity.cpu_millis),
        memory_limit_bytes=read_quantity(limits, "memory", quantity.memory_bytes),
        cpu_request_millis=read_quantity(requests, "cpu", quantity.cpu_millis),
        memory_request_bytes=read_quantity(requests, "memory", quantity.memory_bytes),
        ephemeral_storage_limit_bytes=read_quantity(
            limits, "ephemeral-storage", quantity.memory_bytes
        ),
    )


def read_quantity(node: Node, key: str, convert: Any) -> int | None:
    """An optional quantity field; a malformed one is a field error, never an exception."""
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
