"""The agent's configuration: one typed, frozen object, validated once at startup.

Every setting can come from four places. Later ones win, key by key:

    built-in defaults  <  YAML file (--config)  <  environment NODEAGENT_<KEY>  <  flags

The layers are merged as raw values that remember where they came from, and each winning
value is parsed and checked exactly once. An error therefore names both the key and the place
to fix it ("pod_cidr: ... (from environment variable NODEAGENT_POD_CIDR)"), which is what an
operator staring at a systemd unit, an EnvironmentFile and a YAML file needs to know.

Each setting is declared once, as a field of ``Config``: its type, its default, and (through
``setting``) its parser, and its flag's help when it has a flag. The environment variable,
the file key, the flag and its "(default: ...)" text all derive from that one declaration;
``add_flags`` builds ``nodeagent run``'s options from it. Adding a setting is adding a field.
The layers (file, environment, flags) and the error are ``nodeagent.configsources``.

The defaults live on the dataclass itself, so ``Config(node_name="n1")`` is a complete
configuration for code and tests that do not parse a command line (direct construction skips
validation: it is for trusted callers). Three defaults are computed: ``node_name`` from the
host name, ``cni_bin_dir`` from what this machine has installed, and ``runtime_endpoint``
from the chosen runtime (filled in ``__post_init__`` when left empty).

The parsers (``nodeagent.configparse``) are strict about types where the source has types
(YAML: ``max_pods: "110"`` is an error, not a guess) and parse where the source is text
(environment and flags are strings by nature). Relative paths in the file are relative to the
file's directory, as kubeconfig does, so a config file and the manifests next to it can move
together; elsewhere they are relative to the working directory. Unknown keys in the file are
errors: a typo must not silently fall back to a default. Unknown ``NODEAGENT_*`` variables are
ignored, because the environment is shared with things we do not own.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeAlias, cast

from nodeagent import configparse as parse
from nodeagent.configparse import EVICTION_SIGNAL, EvictionThreshold, PodCIDR, Raw, Reserved
from nodeagent.configsources import (
    ConfigError,
    add_setting_flags,
    env_layer,
    env_var,
    file_layer,
    flag_layer,
    flag_name,
)

__all__ = [
    "EVICTION_SIGNAL",
    "Config",
    "ConfigError",
    "EvictionThreshold",
    "env_var",
    "flag_name",
    "load_config",
]

RuntimeName: TypeAlias = Literal["cri", "docker"]
LogFormat: TypeAlias = Literal["console", "json"]
ProxyMode: TypeAlias = Literal["iptables", "nftables"]

RUNTIMES: tuple[RuntimeName, ...] = ("cri", "docker")
LOG_FORMATS: tuple[LogFormat, ...] = ("console", "json")
PROXY_MODES: tuple[ProxyMode, ...] = ("iptables", "nftables")
# "": Webhook in cluster mode, AlwaysAllow standalone (which has no API to ask).
AUTHORIZATION_MODES = ("", "webhook", "alwaysallow")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

DEFAULT_ENDPOINTS: Mapping[RuntimeName, str] = {
    "cri": "unix:///run/containerd/containerd.sock",
    "docker": "unix:///var/run/docker.sock",
}
DEFAULT_STATUS_SOCKET = Path("/run/nodeagent/status.sock")
DEFAULT_METRICS_BIND = "127.0.0.1:10255"  # the kubelet's old read-only port
DEFAULT_POD_CIDR = ipaddress.IPv4Network("10.88.0.0/16")
DEFAULT_SERVICE_CIDR = ipaddress.IPv4Network("10.96.0.0/16")
DEFAULT_NODE_PORT_RANGE = (30000, 32767)

# Upstream's CNI default first, then Debian's containernetworking-plugins location.
CNI_BIN_CANDIDATES: tuple[Path, ...] = (Path("/opt/cni/bin"), Path("/usr/lib/cni"))


def default_node_name() -> str:
    return socket.gethostname().lower()


def default_cni_bin_dir() -> Path:
    return next((p for p in CNI_BIN_CANDIDATES if p.is_dir()), CNI_BIN_CANDIDATES[0])


@dataclass(frozen=True)
class Setting:
    """How one Config field is read: its parser, and its flag (none when ``help`` is "")."""

    parse: Callable[[Raw], object]
    help: str = ""  # the flag's help; "": settable in the file and environment only
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    shown_default: str | None = None  # the help's "(default: ...)" when str(default) won't do
    bare: str | None = None  # the value of the flag given without one (--allow-privileged)


def setting(
    parser: Callable[[Raw], object],
    help: str = "",
    default: Any = MISSING,
    *,
    factory: Callable[[], Any] | None = None,
    metavar: str | None = None,
    choices: tuple[str, ...] | None = None,
    shown: str | None = None,
    bare: str | None = None,
) -> Any:
    """A Config field with its default and how it is read; see Setting."""
    meta = {"setting": Setting(parser, help, metavar, choices, shown, bare)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True, kw_only=True)
class Config:
    node_name: str = setting(
        parse.node_name, "this node's name", factory=default_node_name, shown="the host name"
    )
    runtime: RuntimeName = setting(
        parse.choice(RUNTIMES), "container runtime", "cri", choices=RUNTIMES
    )
    # Empty means "the chosen runtime's default socket"; never empty after construction.
    runtime_endpoint: str = setting(
        parse.endpoint, "runtime socket", "", metavar="URL", shown="the runtime's own socket"
    )
    # Static pod and service manifests; None: no file source.
    manifests: Path | None = setting(
        parse.optional_path, "directory of pod/service manifests", None, metavar="DIR"
    )
    state_dir: Path = setting(
        parse.path, "the agent's own state", Path("/var/lib/nodeagent"), metavar="DIR"
    )
    status_socket: Path = setting(
        parse.socket_path, "status endpoint", DEFAULT_STATUS_SOCKET, metavar="PATH"
    )
    # None: standalone serves DEFAULT_POD_CIDR; cluster mode waits for the Node's spec.podCIDR.
    pod_cidr: PodCIDR | None = setting(
        parse.optional_cidr,
        "pod address range",
        None,
        metavar="CIDR",
        shown=f"the Node's spec.podCIDR; standalone {DEFAULT_POD_CIDR}",
    )
    cni_conf_dir: Path = setting(
        parse.path, "where the CNI conflist goes", Path("/etc/cni/net.d"), metavar="DIR"
    )
    cni_bin_dir: Path = setting(
        parse.path,
        "CNI plugins",
        factory=default_cni_bin_dir,
        metavar="DIR",
        shown=" or ".join(map(str, CNI_BIN_CANDIDATES)),
    )
    pod_log_dir: Path = setting(parse.path, "container logs", Path("/var/log/pods"), metavar="DIR")
    # Where CSI plugins put their registration sockets: the kubelet's plugins registry.
    csi_plugins_dir: Path = setting(
        parse.path,
        "CSI plugin registration sockets",
        Path("/var/lib/kubelet/plugins_registry"),
        metavar="DIR",
    )
    pause_image: str = setting(
        parse.image, "sandbox image", "registry.k8s.io/pause:3.6", metavar="IMAGE"
    )
    log_format: LogFormat = setting(
        parse.choice(LOG_FORMATS), "log lines", "console", choices=LOG_FORMATS
    )
    log_level: str = setting(
        parse.choice(LOG_LEVELS), "least level logged", "info", choices=LOG_LEVELS
    )
    # How often the manifest directory is rescanned.
    file_check_interval_s: float = setting(parse.positive_float, default=1.0)
    relist_interval_s: float = setting(parse.positive_float, default=1.0)  # runtime relists
    runtime_timeout_s: float = setting(parse.positive_float, default=10.0)  # any runtime call
    max_pods: int = setting(parse.positive_int, default=110)
    # Standalone clusterIPs; cluster mode takes the clusterIPs the API server assigned.
    service_cidr: ipaddress.IPv4Network = setting(
        parse.service_cidr, "service clusterIP range", DEFAULT_SERVICE_CIDR, metavar="CIDR"
    )
    node_port_range: tuple[int, int] = setting(  # inclusive
        parse.port_range,
        "NodePort range",
        DEFAULT_NODE_PORT_RANGE,
        metavar="LOW-HIGH",
        shown="{}-{}".format(*DEFAULT_NODE_PORT_RANGE),
    )
    proxy_min_sync_period: float = setting(
        parse.positive_float,
        "least time between two proxy rule syncs",
        1.0,
        metavar="SECONDS",
        shown="1",
    )
    proxy_mode: ProxyMode = setting(  # as kube-proxy's --proxy-mode
        parse.choice(PROXY_MODES),
        "service rules through iptables or nftables",
        "iptables",
        choices=PROXY_MODES,
    )
    # host:port of the proxy's /healthz and /livez (kube-proxy's healthzBindAddress); "": off.
    proxy_healthz_bind: str = setting(
        parse.bind,
        "serve the proxy's /healthz and /livez here; empty: off",
        "0.0.0.0:10256",
        metavar="HOST:PORT",
    )
    # kube-proxy's --nodeport-addresses: NodePorts answer only on matching local addresses.
    nodeport_addresses: tuple[str, ...] = setting(
        parse.nodeport_addresses,
        "NodePorts answer only on local addresses in these CIDRs ('primary': the node IP)",
        (),
        metavar="CIDR[,CIDR]",
        shown="every local address",
    )
    # Join the control plane it names; None: standalone.
    kubeconfig: Path | None = setting(
        parse.optional_file, "join the control plane this kubeconfig names", None, metavar="FILE"
    )
    cluster_dns: tuple[str, ...] = setting(
        parse.ip_list, "DNS servers of ClusterFirst pods", (), metavar="IP[,IP]", shown="none"
    )
    cluster_domain: str = setting(
        parse.domain, "the cluster's DNS domain", "cluster.local", metavar="DOMAIN"
    )
    # The whole cluster's pod network (every node's pod CIDR lies in it). Set: host-gw routes
    # to the other nodes' pod CIDRs, and pod traffic leaving it is masqueraded.
    cluster_cidr: ipaddress.IPv4Network | None = setting(
        parse.optional_v4_cidr,
        "the cluster's pod network: routes to other nodes' pods, masquerade beyond it",
        None,
        metavar="CIDR",
    )
    # The address other nodes reach this one at (the Node's InternalIP, the host-gw gateway).
    # "": the address of the interface holding the default route (network/nodeip.py), which
    # on a VM whose default route is a NAT interface is the wrong one: set it there.
    node_ip: str = setting(
        parse.optional_ipv4,
        "this node's InternalIP",
        "",
        metavar="IP",
        shown="the address of the default route's interface",
    )
    # Node-pressure eviction: below these, pods are evicted (memory and disk signals).
    eviction_hard: EvictionThreshold = setting(
        parse.eviction_hard,
        "evict pods below these thresholds, each a quantity or a %",
        factory=EvictionThreshold,
        metavar=f"{EVICTION_SIGNAL}<X[,nodefs.available<Y,...]",
        shown="memory.available<100Mi,nodefs.available<10%,nodefs.inodesFree<5%,"
        "imagefs.available<15%",
    )
    # Container log rotation, the kubelet's --container-log-max-size/-max-files.
    container_log_max_size: int = setting(
        parse.byte_quantity,
        "rotate a container's log file when it reaches this size",
        10 * 1024 * 1024,
        metavar="SIZE",
        shown="10Mi",
    )
    container_log_max_files: int = setting(
        parse.log_max_files, "log files kept per container, the live one included", 5, metavar="N"
    )
    # How often logs are checked for rotation (the kubelet's --container-log-monitor-interval).
    container_log_monitor_interval_s: float = setting(parse.positive_float, default=10.0)
    # Dead containers, sandboxes and orphaned directories are collected this often (the
    # kubelet's ContainerGCPeriod), and at once when the disk is short.
    gc_interval_s: float = setting(parse.positive_float, default=60.0)
    eviction_interval_s: float = setting(parse.positive_float, default=10.0)  # the kubelet's
    # Node resources as the kubelet manages them (kubelet/cgroups/): the QoS cgroup tree.
    cgroups_per_qos: bool = setting(
        parse.boolean,
        "pods in kubepods/, kubepods/burstable/, kubepods/besteffort/ pod cgroups",
        True,
        metavar="BOOL",
        shown="true",
        bare="true",
    )
    cgroup_driver: str = setting(
        parse.choice(("", "cgroupfs", "systemd")),
        "cgroupfs or systemd",
        "",
        metavar="DRIVER",
        shown="the runtime's",
    )
    cgroup_root: str = setting(
        parse.cgroup_root, "the cgroup kubepods goes under", "/", metavar="PATH"
    )
    pod_max_pids: int = setting(
        parse.pids_limit, "pids.max of every pod cgroup; -1: unlimited", -1, metavar="N"
    )
    kube_reserved: Reserved = setting(
        parse.reserved,
        "kept from pods for the agent and the runtime",
        factory=Reserved,
        metavar="cpu=X,memory=Y",
        shown="none",
    )
    system_reserved: Reserved = setting(
        parse.reserved,
        "kept from pods for the system",
        factory=Reserved,
        metavar="cpu=X,memory=Y",
        shown="none",
    )
    enforce_node_allocatable: tuple[str, ...] = setting(
        parse.enforce_node_allocatable,
        "'pods': kubepods capped at capacity less the reservations; 'none'",
        ("pods",),
        metavar="pods|none",
        shown="pods",
    )
    # A larger manifest file is an error, not read.
    max_manifest_bytes: int = setting(parse.positive_int, default=1024 * 1024)
    # host:port of /metrics and /healthz; "": off.
    metrics_bind: str = setting(
        parse.bind,
        "serve /metrics and /healthz here; empty: off",
        DEFAULT_METRICS_BIND,
        metavar="HOST:PORT",
    )
    # The kubelet's HTTPS API (logs, stats, pods; nodeagent/kubeletapi); "": off.
    kubelet_api_bind: str = setting(
        parse.kubelet_api_bind,
        "serve the kubelet API (HTTPS) here; off: no kubelet API",
        "0.0.0.0:10250",
        metavar="HOST:PORT",
    )
    # Its serving certificate; None: a self-signed one made in the state dir.
    tls_cert_file: Path | None = setting(
        parse.optional_file,
        "the kubelet API's serving certificate",
        None,
        metavar="FILE",
        shown="self-signed, in the state dir",
    )
    tls_private_key_file: Path | None = setting(
        parse.optional_file, "the key of --tls-cert-file", None, metavar="FILE"
    )
    # Client certificates signed by these CAs authenticate (user = CN, groups = O).
    client_ca_file: Path | None = setting(
        parse.optional_file,
        "CA bundle of the kubelet API's client certificates",
        None,
        metavar="FILE",
        shown="no client certificates",
    )
    anonymous_auth: bool = setting(
        parse.boolean,
        "let unauthenticated kubelet API requests through as system:anonymous",
        False,
        metavar="BOOL",
        shown="false",
        bare="true",
    )
    # Bearer tokens checked with TokenReview (cluster mode).
    authentication_token_webhook: bool = setting(
        parse.boolean,
        "check kubelet API bearer tokens with a TokenReview",
        False,
        metavar="BOOL",
        shown="false",
        bare="true",
    )
    authorization_mode: str = setting(
        parse.choice(AUTHORIZATION_MODES),
        "kubelet API authorization: Webhook (SubjectAccessReview) or AlwaysAllow",
        "",
        metavar="MODE",
        shown="Webhook in cluster mode, AlwaysAllow standalone",
    )
    # Privileged containers, hostNetwork/PID/IPC and hostPath volumes; refused when false.
    allow_privileged: bool = setting(
        parse.boolean,
        "allow privileged containers, hostNetwork/PID/IPC, hostPath in manifest-directory pods "
        "(API pods: the API server admits them)",
        False,
        metavar="BOOL",
        shown="false",
        bare="true",
    )
    # The node's registry credentials (docker config.json); None: the kubelet's default paths.
    image_credentials: Path | None = setting(
        parse.optional_file,
        "the node's registry credentials, a docker config.json",
        None,
        metavar="FILE",
        shown="/var/lib/kubelet/config.json, else ~/.docker/config.json",
    )
    serialize_image_pulls: bool = setting(  # as the kubelet's flag
        parse.boolean, "pull one image at a time", True, metavar="BOOL", shown="true", bare="true"
    )
    max_parallel_image_pulls: int = setting(  # as the kubelet's flag; 0: no limit
        parse.non_negative_int,
        "most image pulls at once when not serialized; 0: no limit",
        0,
        metavar="N",
    )
    # Image GC (the kubelet's flags): collect unused images, least recently used first, when
    # the image filesystem is this full, down to the low threshold.
    image_gc_high_threshold: int = setting(
        parse.percent, "percent of the image filesystem used that starts image GC", 85, metavar="N"
    )
    image_gc_low_threshold: int = setting(
        parse.percent, "percent of the image filesystem image GC frees down to", 80, metavar="N"
    )
    image_minimum_gc_age: float = setting(
        parse.duration,
        "least age of an unused image before GC removes it",
        120.0,
        metavar="DURATION",
        shown="2m",
    )
    image_gc_interval_s: float = setting(parse.positive_float, default=300.0)  # ImageGCPeriod

    def __post_init__(self) -> None:
        if not self.runtime_endpoint:
            # Frozen: the one sanctioned write, before anyone else can see the object.
            object.__setattr__(self, "runtime_endpoint", DEFAULT_ENDPOINTS[self.runtime])


SETTINGS: Mapping[str, Setting] = {f.name: f.metadata["setting"] for f in fields(Config)}
KEYS: tuple[str, ...] = tuple(SETTINGS)


def add_flags(parser: argparse.ArgumentParser) -> None:
    """``nodeagent run``'s options: one per setting that has a flag, in declaration order."""
    add_setting_flags(parser, fields(Config))


# --- Entry point -------------------------------------------------------------------------


def _parse(key: str, raw: Raw) -> object:
    try:
        return SETTINGS[key].parse(raw)
    except ValueError as e:
        raise ConfigError(str(e), key=key, source=raw.source) from None


def load_config(args: argparse.Namespace) -> Config:
    """Merge defaults, ``args.config`` (YAML), ``NODEAGENT_*`` and flags; validate once.

    ``args`` is the parsed command line; attributes named like Config keys are flags, and
    None means "not given". Raises ConfigError naming the key and where it came from.
    """
    merged: dict[str, Raw] = {}
    config_file = getattr(args, "config", None)
    if config_file is not None:
        merged.update(file_layer(Path(config_file).expanduser(), KEYS))
    merged.update(env_layer(os.environ, KEYS))
    merged.update(flag_layer(args, KEYS))

    values = {key: _parse(key, raw) for key, raw in merged.items()}
    if "node_name" not in values:
        # The default comes from the machine, so it can be invalid too (an underscore in a
        # hostname); say so now, pointing at the flag that fixes it.
        source = f"the host name; set {flag_name('node_name')} or {env_var('node_name')}"
        fallback = Raw(default_node_name(), source, Path.cwd(), typed=False)
        values["node_name"] = _parse("node_name", fallback)
    # The parsers produced exactly the types the fields declare; mypy cannot see through the
    # table, hence the cast.
    config = Config(**cast(dict[str, Any], values))
    if config.serialize_image_pulls and config.max_parallel_image_pulls > 1:
        given = merged["max_parallel_image_pulls"]  # only a given value can exceed 1
        raise ConfigError(
            "more than 1 needs serialize_image_pulls false (as the kubelet)",
            key="max_parallel_image_pulls",
            source=given.source,
        )
    if config.image_gc_low_threshold >= config.image_gc_high_threshold:
        key = "image_gc_low_threshold"
        raw = merged.get(key) or merged.get("image_gc_high_threshold")
        raise ConfigError(
            f"must be below image_gc_high_threshold ({config.image_gc_high_threshold})",
            key=key,
            source=raw.source if raw else "defaults",
        )
    return config
