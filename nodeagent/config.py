"""The agent's configuration: one typed, frozen object, validated once at startup.

Every setting can come from four places. Later ones win, key by key:

    built-in defaults  <  YAML file (--config)  <  environment NODEAGENT_<KEY>  <  flags

The layers are merged as raw values that remember where they came from, and each winning
value is parsed and checked exactly once. An error therefore names both the key and the place
to fix it ("pod_cidr: ... (from environment variable NODEAGENT_POD_CIDR)"), which is what an
operator staring at a systemd unit, an EnvironmentFile and a YAML file needs to know.

The defaults live on the dataclass itself, so ``Config(node_name="n1")`` is a complete
configuration for code and tests that do not parse a command line (direct construction skips
validation: it is for trusted callers). Three defaults are computed: ``node_name`` from the
host name, ``cni_bin_dir`` from what this machine has installed, and ``runtime_endpoint``
from the chosen runtime (filled in ``__post_init__`` when left empty).

Types are strict where the source has types (YAML: ``max_pods: "110"`` is an error, not a
guess) and parsed where the source is text (environment and flags are strings by nature).
Relative paths in the file are relative to the file's directory, as kubeconfig does, so a
config file and the manifests next to it can move together; elsewhere they are relative to
the working directory. Unknown keys in the file are errors: a typo must not silently fall
back to a default. Unknown ``NODEAGENT_*`` variables are ignored, because the environment is
shared with things we do not own.
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import math
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeAlias, cast

import yaml

RuntimeName: TypeAlias = Literal["cri", "docker"]
LogFormat: TypeAlias = Literal["console", "json"]
ProxyMode: TypeAlias = Literal["iptables", "nftables"]
PodCIDR: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

RUNTIMES: tuple[RuntimeName, ...] = ("cri", "docker")
LOG_FORMATS: tuple[LogFormat, ...] = ("console", "json")
PROXY_MODES: tuple[ProxyMode, ...] = ("iptables", "nftables")
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
ENV_PREFIX = "NODEAGENT_"

# Upstream's CNI default first, then Debian's containernetworking-plugins location.
CNI_BIN_CANDIDATES: tuple[Path, ...] = (Path("/opt/cni/bin"), Path("/usr/lib/cni"))

# sun_path is 108 bytes on Linux including the terminating NUL. A longer path fails at bind
# time with an unhelpful "AF_UNIX path too long", so it is caught here instead.
MAX_SOCKET_PATH_BYTES = 107

# RFC 1123 subdomain, as Kubernetes requires of node names.
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")


class ConfigError(ValueError):
    """A setting is missing, malformed or contradictory; the message says where it came from.

    ``key`` is None for problems with the file as a whole (unreadable, not a mapping).
    """

    def __init__(self, message: str, *, key: str | None, source: str) -> None:
        self.key = key
        self.source = source
        text = f"{key}: {message} (from {source})" if key else f"{source}: {message}"
        super().__init__(text)


@dataclass(frozen=True)
class EvictionThreshold:
    """``--eviction-hard memory.available<X``: an absolute quantity or a share of memory.

    Exactly one of ``quantity_bytes`` and ``percent`` is set. Upstream's default is 100Mi.
    """

    quantity_bytes: int | None = 100 * 1024 * 1024
    percent: float | None = None

    def __str__(self) -> str:
        if self.percent is not None:
            return f"{EVICTION_SIGNAL}<{self.percent:g}%"
        return f"{EVICTION_SIGNAL}<{self.quantity_bytes}"


EVICTION_SIGNAL = "memory.available"


def default_node_name() -> str:
    return socket.gethostname().lower()


def default_cni_bin_dir() -> Path:
    return next((p for p in CNI_BIN_CANDIDATES if p.is_dir()), CNI_BIN_CANDIDATES[0])


@dataclass(frozen=True, kw_only=True)
class Config:
    node_name: str = field(default_factory=default_node_name)
    runtime: RuntimeName = "cri"
    # Empty means "the chosen runtime's default socket"; never empty after construction.
    runtime_endpoint: str = ""
    manifests: Path | None = None  # static pod and service manifests; None: no file source
    state_dir: Path = Path("/var/lib/nodeagent")
    status_socket: Path = DEFAULT_STATUS_SOCKET
    # None: standalone serves DEFAULT_POD_CIDR; cluster mode waits for the Node's spec.podCIDR.
    pod_cidr: PodCIDR | None = None
    cni_conf_dir: Path = Path("/etc/cni/net.d")
    cni_bin_dir: Path = field(default_factory=default_cni_bin_dir)
    pod_log_dir: Path = Path("/var/log/pods")
    pause_image: str = "registry.k8s.io/pause:3.6"
    log_format: LogFormat = "console"
    log_level: str = "info"
    file_check_interval_s: float = 1.0  # how often the manifest directory is rescanned
    relist_interval_s: float = 1.0  # how often runtime state is relisted
    runtime_timeout_s: float = 10.0  # upper bound on any one runtime call
    max_pods: int = 110
    service_cidr: ipaddress.IPv4Network = DEFAULT_SERVICE_CIDR  # standalone clusterIPs
    node_port_range: tuple[int, int] = DEFAULT_NODE_PORT_RANGE  # inclusive
    proxy_min_sync_period: float = 1.0  # seconds between two proxy rule syncs, at least
    proxy_mode: ProxyMode = "iptables"  # as kube-proxy's --proxy-mode
    kubeconfig: Path | None = None  # join the control plane it names; None: standalone
    cluster_dns: tuple[str, ...] = ()  # DNS servers of dnsPolicy ClusterFirst pods
    cluster_domain: str = "cluster.local"
    # The whole cluster's pod network (every node's pod CIDR lies in it). Set: host-gw routes
    # to the other nodes' pod CIDRs, and pod traffic leaving it is masqueraded.
    cluster_cidr: ipaddress.IPv4Network | None = None
    # The address other nodes reach this one at (the Node's InternalIP, the host-gw gateway).
    # "": the address of the interface holding the default route (network/nodeip.py), which
    # on a VM whose default route is a NAT interface is the wrong one: set it there.
    node_ip: str = ""
    # Node-pressure eviction: below this much available memory, pods are evicted.
    eviction_hard: EvictionThreshold = field(default_factory=EvictionThreshold)
    eviction_interval_s: float = 10.0  # how often memory is checked (the kubelet's 10 s)
    max_manifest_bytes: int = 1024 * 1024  # a larger manifest file is an error, not read
    metrics_bind: str = DEFAULT_METRICS_BIND  # host:port of /metrics and /healthz; "": off
    # Privileged containers, hostNetwork/PID/IPC and hostPath volumes; refused when false.
    allow_privileged: bool = False

    def __post_init__(self) -> None:
        if not self.runtime_endpoint:
            # Frozen: the one sanctioned write, before anyone else can see the object.
            object.__setattr__(self, "runtime_endpoint", DEFAULT_ENDPOINTS[self.runtime])


KEYS: tuple[str, ...] = tuple(f.name for f in fields(Config))


def env_var(key: str) -> str:
    """The environment variable that sets ``key``: node_name -> NODEAGENT_NODE_NAME."""
    return ENV_PREFIX + key.upper()


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


# --- Sources -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Raw:
    """One unparsed value and where it came from."""

    value: object
    source: str  # human-readable, ends up in error messages
    base_dir: Path  # what a relative path in this value is relative to
    typed: bool  # True for YAML (has types), False for text sources (env, flags)


def _file_layer(path: Path) -> dict[str, _Raw]:
    source = f"config file {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror or e}", key=None, source=source) from e
    except UnicodeDecodeError as e:
        raise ConfigError("not UTF-8 text", key=None, source=source) from e
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML: {e}", key=None, source=source) from e
    if doc is None:  # an empty file (or only comments) configures nothing
        return {}
    if not isinstance(doc, dict):
        got = type(doc).__name__
        raise ConfigError(f"must be a mapping of settings, got {got}", key=None, source=source)
    base_dir = path.absolute().parent
    layer: dict[str, _Raw] = {}
    for key, value in doc.items():
        if not isinstance(key, str) or key not in KEYS:
            raise ConfigError(_unknown_key_message(key), key=str(key), source=source)
        layer[key] = _Raw(value, source, base_dir, typed=True)
    return layer


def _unknown_key_message(key: object) -> str:
    message = "unknown setting"
    if isinstance(key, str):
        # The most likely typo is the flag spelling (node-name) in a file that wants node_name.
        guesses = difflib.get_close_matches(key.replace("-", "_"), KEYS, n=1)
        if guesses:
            message += f"; did you mean {guesses[0]}?"
    return message


def _env_layer(environ: Mapping[str, str]) -> dict[str, _Raw]:
    cwd = Path.cwd()
    layer: dict[str, _Raw] = {}
    for key in KEYS:
        name = env_var(key)
        if name in environ:
            layer[key] = _Raw(environ[name], f"environment variable {name}", cwd, typed=False)
    return layer


def _flag_layer(args: argparse.Namespace) -> dict[str, _Raw]:
    cwd = Path.cwd()
    layer: dict[str, _Raw] = {}
    for key in KEYS:
        # Flags default to None in the parser, so an absent flag never masks the file or env.
        value = getattr(args, key, None)
        if value is not None:
            layer[key] = _Raw(value, f"flag {flag_name(key)}", cwd, typed=False)
    return layer


# --- Parsing: one function per kind of value ---------------------------------------------
# Each takes the raw value and returns the typed one, or raises ValueError with a message
# that _parse wraps into a ConfigError naming the key and the source.


def _string(raw: _Raw) -> str:
    if not isinstance(raw.value, str):
        raise ValueError(f"must be a string, got {_type_name(raw.value)}")
    value = raw.value.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def _path(raw: _Raw) -> Path:
    path = Path(_string(raw)).expanduser()
    return path if path.is_absolute() else raw.base_dir / path


def _optional_path(raw: _Raw) -> Path | None:
    # null in YAML, or an empty string anywhere, switches an optional path off explicitly.
    if raw.value is None or raw.value == "":
        return None
    return _path(raw)


def _optional_file(raw: _Raw) -> Path | None:
    path = _optional_path(raw)
    if path is not None and not path.is_file():
        raise ValueError(f"{str(path)!r} is not a readable file")
    return path


def _ip_list(raw: _Raw) -> tuple[str, ...]:
    value = raw.value
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, list) and raw.typed:
        items = [v for v in value if isinstance(v, str)]
        if len(items) != len(value):
            raise ValueError("must be a list of IP addresses")
    else:
        raise ValueError(f"must be IP addresses, got {_type_name(value)}")
    for item in items:
        try:
            ipaddress.ip_address(item)
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address") from None
    return tuple(items)


def _domain(raw: _Raw) -> str:
    value = _string(raw).lower().rstrip(".")
    if len(value) > 253 or not _DNS_SUBDOMAIN.fullmatch(value):
        raise ValueError(f"{value!r} is not a DNS domain")
    return value


def _choice(options: tuple[str, ...]) -> Callable[[_Raw], str]:
    def parse(raw: _Raw) -> str:
        value = _string(raw).lower()
        if value not in options:
            raise ValueError(f"{raw.value!r} is not one of {', '.join(options)}")
        return value

    return parse


def _positive_float(raw: _Raw) -> float:
    value: float
    if isinstance(raw.value, bool):  # bool is an int subclass; yes/no is never a duration
        raise ValueError(f"must be a number of seconds, got {_type_name(raw.value)}")
    if isinstance(raw.value, int | float):
        value = float(raw.value)
    elif isinstance(raw.value, str) and not raw.typed:
        try:
            value = float(raw.value)
        except ValueError:
            raise ValueError(f"{raw.value!r} is not a number of seconds") from None
    else:
        raise ValueError(f"must be a number of seconds, got {_type_name(raw.value)}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be a positive number of seconds, got {value}")
    return value


def _positive_int(raw: _Raw) -> int:
    value: int
    if isinstance(raw.value, int) and not isinstance(raw.value, bool):
        value = raw.value
    elif isinstance(raw.value, str) and not raw.typed:
        try:
            value = int(raw.value)
        except ValueError:
            raise ValueError(f"{raw.value!r} is not an integer") from None
    else:
        raise ValueError(f"must be an integer, got {_type_name(raw.value)}")
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


def _cidr(raw: _Raw) -> PodCIDR:
    text = _string(raw)
    try:
        # strict: 10.88.0.1/16 is almost certainly a mistake for 10.88.0.0/16, so say so.
        return ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        raise ValueError(f"{text!r} is not a valid CIDR: {e}") from None


def _optional_cidr(raw: _Raw) -> PodCIDR | None:
    return None if raw.value is None or raw.value == "" else _cidr(raw)


def _service_cidr(raw: _Raw) -> ipaddress.IPv4Network:
    network = _cidr(raw)
    if not isinstance(network, ipaddress.IPv4Network):
        raise ValueError(f"{raw.value!r}: only an IPv4 service CIDR is supported")
    if network.num_addresses < 4:
        raise ValueError(f"{raw.value!r} is too small for services (at least a /30)")
    return network


def _optional_v4_cidr(raw: _Raw) -> ipaddress.IPv4Network | None:
    if raw.value is None or raw.value == "":
        return None
    network = _cidr(raw)
    if not isinstance(network, ipaddress.IPv4Network):
        raise ValueError(f"{raw.value!r}: only an IPv4 cluster CIDR is supported")
    return network


def _optional_ipv4(raw: _Raw) -> str:
    if raw.value is None or raw.value == "":
        return ""
    text = _string(raw)
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 address") from None


def _port_range(raw: _Raw) -> tuple[int, int]:
    text = _string(raw) if isinstance(raw.value, str) else raw.value
    if not isinstance(text, str):
        raise ValueError(f"must be a range like 30000-32767, got {_type_name(raw.value)}")
    low, sep, high = text.partition("-")
    try:
        first, last = int(low), int(high if sep else low)
    except ValueError:
        raise ValueError(f"{text!r} is not a port range like 30000-32767") from None
    if not 1 <= first <= last <= 65535:
        raise ValueError(f"{text!r} is not a port range within 1-65535, low to high")
    return first, last


def _node_name(raw: _Raw) -> str:
    value = _string(raw)
    if len(value) > 253 or not _DNS_SUBDOMAIN.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid node name (lowercase RFC 1123 subdomain: "
            "letters, digits, '-' and '.', at most 253 characters)"
        )
    return value


def _endpoint(raw: _Raw) -> str:
    value = _string(raw)
    if value.startswith("/"):  # a bare socket path is what people type; grpc wants a URL
        return "unix://" + value
    if "://" not in value:
        raise ValueError(f"{value!r} is not an endpoint URL (e.g. unix:///path/to.sock)")
    return value


def _socket_path(raw: _Raw) -> Path:
    path = _path(raw)
    if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
        raise ValueError(
            f"{str(path)!r} is longer than the {MAX_SOCKET_PATH_BYTES} bytes a unix socket "
            "path may have"
        )
    return path


def _bind(raw: _Raw) -> str:
    """``host:port`` (``[v6]:port`` too), or empty to switch the listener off."""
    if not isinstance(raw.value, str):
        raise ValueError(f"must be host:port or empty, got {_type_name(raw.value)}")
    value = raw.value.strip()
    if not value:
        return ""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"{value!r} is not host:port (e.g. 127.0.0.1:10255), nor empty")
    return value


def _boolean(raw: _Raw) -> bool:
    if isinstance(raw.value, bool):
        return raw.value
    if isinstance(raw.value, str) and not raw.typed and raw.value.lower() in ("true", "false"):
        return raw.value.lower() == "true"
    raise ValueError(f"must be true or false, got {raw.value!r}")


def _image(raw: _Raw) -> str:
    value = _string(raw)
    if any(c.isspace() for c in value):
        raise ValueError(f"{value!r} is not an image reference (contains whitespace)")
    return value


def _eviction_hard(raw: _Raw) -> EvictionThreshold:
    text = _string(raw).replace(" ", "")
    signal, sep, value = text.partition("<")
    if not sep or not value:
        raise ValueError(f"{text!r} is not a threshold like {EVICTION_SIGNAL}<100Mi")
    if signal != EVICTION_SIGNAL:
        raise ValueError(f"{signal!r}: only {EVICTION_SIGNAL} is supported")
    if value.endswith("%"):
        try:
            percent = float(value[:-1])
        except ValueError:
            raise ValueError(f"{value!r} is not a percentage") from None
        if not (math.isfinite(percent) and 0 < percent < 100):
            raise ValueError(f"{value!r} must be a percentage between 0 and 100")
        return EvictionThreshold(quantity_bytes=None, percent=percent)
    match = _MEMORY_QUANTITY.fullmatch(value)
    if match is None:
        raise ValueError(f"{value!r} is not a memory quantity like 100Mi or a percentage")
    number, suffix = match.groups()
    quantity = int(float(number) * _MEMORY_UNITS[suffix or ""])
    return EvictionThreshold(quantity_bytes=quantity, percent=None)


# The Kubernetes quantity suffixes a memory threshold uses (the model's parser is a layer up).
_MEMORY_UNITS: Mapping[str, int] = {
    "": 1,
    **{s: 1000 ** (i + 1) for i, s in enumerate(("k", "M", "G", "T", "P", "E"))},
    **{s: 1024 ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
}
_MEMORY_QUANTITY = re.compile(r"(\d+(?:\.\d+)?)(" + "|".join(k for k in _MEMORY_UNITS if k) + ")?")


_PARSERS: Mapping[str, Callable[[_Raw], object]] = {
    "node_name": _node_name,
    "runtime": _choice(RUNTIMES),
    "runtime_endpoint": _endpoint,
    "manifests": _optional_path,
    "state_dir": _path,
    "status_socket": _socket_path,
    "pod_cidr": _optional_cidr,
    "cni_conf_dir": _path,
    "cni_bin_dir": _path,
    "pod_log_dir": _path,
    "pause_image": _image,
    "log_format": _choice(LOG_FORMATS),
    "log_level": _choice(LOG_LEVELS),
    "file_check_interval_s": _positive_float,
    "relist_interval_s": _positive_float,
    "runtime_timeout_s": _positive_float,
    "max_pods": _positive_int,
    "service_cidr": _service_cidr,
    "node_port_range": _port_range,
    "proxy_min_sync_period": _positive_float,
    "proxy_mode": _choice(PROXY_MODES),
    "kubeconfig": _optional_file,
    "cluster_dns": _ip_list,
    "cluster_domain": _domain,
    "cluster_cidr": _optional_v4_cidr,
    "node_ip": _optional_ipv4,
    "eviction_hard": _eviction_hard,
    "eviction_interval_s": _positive_float,
    "max_manifest_bytes": _positive_int,
    "metrics_bind": _bind,
    "allow_privileged": _boolean,
}


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _parse(key: str, raw: _Raw) -> object:
    try:
        return _PARSERS[key](raw)
    except ValueError as e:
        raise ConfigError(str(e), key=key, source=raw.source) from None


# --- Entry point -------------------------------------------------------------------------


def load_config(args: argparse.Namespace) -> Config:
    """Merge defaults, ``args.config`` (YAML), ``NODEAGENT_*`` and flags; validate once.

    ``args`` is the parsed command line; attributes named like Config keys are flags, and
    None means "not given". Raises ConfigError naming the key and where it came from.
    """
    merged: dict[str, _Raw] = {}
    config_file = getattr(args, "config", None)
    if config_file is not None:
        merged.update(_file_layer(Path(config_file).expanduser()))
    merged.update(_env_layer(os.environ))
    merged.update(_flag_layer(args))

    values = {key: _parse(key, raw) for key, raw in merged.items()}
    if "node_name" not in values:
        # The default comes from the machine, so it can be invalid too (an underscore in a
        # hostname); say so now, pointing at the flag that fixes it.
        source = f"the host name; set {flag_name('node_name')} or {env_var('node_name')}"
        fallback = _Raw(default_node_name(), source, Path.cwd(), typed=False)
        values["node_name"] = _parse("node_name", fallback)
    # The parsers produced exactly the types the fields declare; mypy cannot see through the
    # table, hence the cast.
    return Config(**cast(dict[str, Any], values))
