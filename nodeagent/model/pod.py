"""Typed views of the Pod fields nodeagent honours.

These are frozen dataclasses built once by ``model.validate`` from a Pod document; nothing
downstream looks at the raw dict again. Only the fields we act on are here: a field we cannot
honour is rejected during validation (with its path) rather than silently dropped.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NewType

from nodeagent.model.csi import CSIInlineSource

PodUID = NewType("PodUID", str)


class RestartPolicy(enum.Enum):
    ALWAYS = "Always"  # restart on any exit
    ON_FAILURE = "OnFailure"  # restart on non-zero exit only
    NEVER = "Never"  # never restart


class PullPolicy(enum.Enum):
    ALWAYS = "Always"  # pull on every container start
    IF_NOT_PRESENT = "IfNotPresent"  # pull only when the image is missing
    NEVER = "Never"  # never pull; a missing image is ErrImageNeverPull


@dataclass(frozen=True)
class ExecAction:
    command: tuple[str, ...]


@dataclass(frozen=True)
class HTTPGetAction:
    port: int | str  # a number, or the name of a container port
    path: str = "/"
    host: str = ""  # empty means the pod IP
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TCPSocketAction:
    port: int | str
    host: str = ""


@dataclass(frozen=True)
class GRPCAction:
    port: int
    service: str = ""


Handler = ExecAction | HTTPGetAction | TCPSocketAction | GRPCAction


@dataclass(frozen=True)
class Probe:
    handler: Handler
    initial_delay_seconds: int = 0
    period_seconds: int = 10
    timeout_seconds: int = 1
    success_threshold: int = 1
    failure_threshold: int = 3
    termination_grace_period_seconds: int | None = None


@dataclass(frozen=True)
class Lifecycle:
    post_start: Handler | None = None
    pre_stop: Handler | None = None


@dataclass(frozen=True)
class FieldRef:
    field_path: str  # e.g. "metadata.name", "status.podIP"


@dataclass(frozen=True)
class ResourceFieldRef:
    resource: str  # e.g. "limits.memory"
    container_name: str = ""
    divisor: str = "1"


@dataclass(frozen=True)
class EnvVar:
    name: str
    value: str = ""
    value_from: FieldRef | ResourceFieldRef | None = None


@dataclass(frozen=True)
class ContainerPort:
    container_port: int
    name: str = ""
    protocol: str = "TCP"
    host_port: int = 0
    host_ip: str = ""


@dataclass(frozen=True)
class VolumeMount:
    name: str
    mount_path: str
    read_only: bool = False
    sub_path: str = ""
    sub_path_expr: str = ""  # a subPath with $(VAR) references to the container's env


@dataclass(frozen=True)
class Resources:
    cpu_limit_millis: int | None = None
    memory_limit_bytes: int | None = None
    cpu_request_millis: int | None = None
    memory_request_bytes: int | None = None
    ephemeral_storage_limit_bytes: int | None = None  # evicts the pod when exceeded


class SeccompProfile(enum.Enum):
    UNSET = ""  # the runtime's choice (the kubelet's default is Unconfined)
    RUNTIME_DEFAULT = "RuntimeDefault"  # the runtime's default profile
    UNCONFINED = "Unconfined"  # no seccomp filter


@dataclass(frozen=True)
class Capabilities:
    add: tuple[str, ...] = ()  # without the CAP_ prefix, as the API spells them
    drop: tuple[str, ...] = ()


@dataclass(frozen=True)
class SecurityContext:
    """A container's ``securityContext``; None means unset (the pod's value or the image's)."""

    run_as_user: int | None = None
    run_as_group: int | None = None
    run_as_non_root: bool | None = None
    privileged: bool = False
    allow_privilege_escalation: bool | None = None
    read_only_root_filesystem: bool = False
    capabilities: Capabilities = Capabilities()
    seccomp: SeccompProfile = SeccompProfile.UNSET


@dataclass(frozen=True)
class PodSecurityContext:
    """``spec.securityContext``: defaults for every container, plus pod-wide settings."""

    run_as_user: int | None = None
    run_as_group: int | None = None
    run_as_non_root: bool | None = None
    fs_group: int | None = None  # a supplemental group of every container; volumes use it too
    # "Always" (every volume walked at each mount) or "OnRootMismatch" (only if its root differs).
    fs_group_change_policy: str = "Always"
    supplemental_groups: tuple[int, ...] = ()
    sysctls: tuple[tuple[str, str], ...] = ()
    seccomp: SeccompProfile = SeccompProfile.UNSET


class TerminationMessagePolicy(enum.Enum):
    FILE = "File"  # the file at terminationMessagePath only
    FALLBACK_TO_LOGS_ON_ERROR = "FallbackToLogsOnError"  # the log tail if the file is empty


DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"


@dataclass(frozen=True)
class Container:
    name: str
    image: str
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    working_dir: str = ""
    env: tuple[EnvVar, ...] = ()
    ports: tuple[ContainerPort, ...] = ()
    volume_mounts: tuple[VolumeMount, ...] = ()
    resources: Resources = Resources()
    image_pull_policy: PullPolicy = PullPolicy.IF_NOT_PRESENT
    liveness_probe: Probe | None = None
    readiness_probe: Probe | None = None
    startup_probe: Probe | None = None
    lifecycle: Lifecycle = Lifecycle()
    stdin: bool = False
    tty: bool = False
    # An init container with restartPolicy Always: a native sidecar, running beside the app.
    sidecar: bool = False
    security_context: SecurityContext = SecurityContext()
    termination_message_path: str = DEFAULT_TERMINATION_MESSAGE_PATH
    termination_message_policy: TerminationMessagePolicy = TerminationMessagePolicy.FILE
    # An ephemeral container's target (``kubectl debug --target``): whose processes it sees.
    target_container_name: str = ""


@dataclass(frozen=True)
class EmptyDirSource:
    medium: str = ""  # "" (node disk) or "Memory" (tmpfs)
    size_limit_bytes: int | None = None


@dataclass(frozen=True)
class HostPathSource:
    path: str
    type: str = ""  # "", DirectoryOrCreate, Directory, FileOrCreate, File, Socket, ...


@dataclass(frozen=True)
class Volume:
    name: str
    source: EmptyDirSource | HostPathSource | CSIInlineSource


class DNSPolicy(enum.Enum):
    CLUSTER_FIRST = "ClusterFirst"  # the cluster's DNS, unless the pod uses the host network
    CLUSTER_FIRST_WITH_HOST_NET = "ClusterFirstWithHostNet"  # the cluster's DNS, always
    DEFAULT = "Default"  # the node's resolv.conf
    NONE = "None"  # only the pod's dnsConfig


@dataclass(frozen=True)
class PodDNSConfig:
    """``spec.dnsConfig``: merged over what the policy gives."""

    nameservers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[tuple[str, str | None], ...] = ()  # (name, value or None)


@dataclass(frozen=True)
class HostAlias:
    """One ``spec.hostAliases`` entry: a line of the pod's /etc/hosts."""

    ip: str
    hostnames: tuple[str, ...]


@dataclass(frozen=True)
class PodSpec:
    containers: tuple[Container, ...]
    init_containers: tuple[Container, ...] = ()
    restart_policy: RestartPolicy = RestartPolicy.ALWAYS
    termination_grace_period_seconds: int = 30
    volumes: tuple[Volume, ...] = ()
    hostname: str = ""
    subdomain: str = ""
    node_name: str = ""
    host_network: bool = False
    service_account_name: str = "default"
    dns_policy: DNSPolicy = DNSPolicy.CLUSTER_FIRST
    dns_config: PodDNSConfig | None = None
    active_deadline_seconds: int | None = None  # since startTime; then killed, Failed
    priority: int | None = None  # recorded only: a single node does not preempt
    host_pid: bool = False
    host_ipc: bool = False
    share_process_namespace: bool = False
    host_aliases: tuple[HostAlias, ...] = ()
    security_context: PodSecurityContext = PodSecurityContext()
    # The docker-links variables of the namespace's Services (KUBERNETES_* come regardless).
    enable_service_links: bool = True
    # Condition types that must also be True for the pod to be Ready (others set them).
    readiness_gates: tuple[str, ...] = ()
    set_hostname_as_fqdn: bool = False  # the kernel hostname is the pod's FQDN (if it has one)
    runtime_class_name: str = ""  # API pods only; the cluster link checks its handler
    # Added later through the pods/ephemeralcontainers subresource; each runs once, never
    # restarted, and counts for nothing in the pod's phase or readiness.
    ephemeral_containers: tuple[Container, ...] = ()
    # Secrets (of the pod's namespace) holding registry credentials, in the pod's order.
    image_pull_secrets: tuple[str, ...] = ()


@dataclass(frozen=True)
class Pod:
    """A desired pod. ``uid`` identifies one incarnation. An API pod keeps its uid through
    the spec updates the API allows (images, activeDeadlineSeconds, ephemeral containers); a
    static pod's uid hashes its content, so an edited manifest is a new pod."""

    uid: PodUID
    name: str
    namespace: str
    spec: PodSpec
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    source: str = ""  # file path (standalone) or "api"
    creation_timestamp: str = ""
    # The readiness gates' conditions in the API's copy of the pod: type -> status.
    gate_conditions: Mapping[str, str] = field(default_factory=dict)
    # Paths of fields newer than the API we track, ignored (API pods only; warned once).
    future_fields: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def all_containers(self) -> tuple[Container, ...]:
        return self.spec.init_containers + self.spec.containers

    def sidecars(self) -> tuple[Container, ...]:
        """Init containers with restartPolicy Always, in spec order."""
        return tuple(c for c in self.spec.init_containers if c.sidecar)
