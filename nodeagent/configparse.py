"""Setting values: one raw value (with where it came from) in, one typed value out.

The parsers of ``nodeagent.config``, one per kind of value. Each takes a ``Raw`` and returns
the typed value, or raises ValueError with a message that the config wraps into a
ConfigError naming the key and the source. Types are strict where the source has types (a
YAML ``max_pods: "110"`` is an error, not a guess) and parsed where the source is text
(environment and flags are strings by nature). Relative paths are relative to the raw
value's ``base_dir``.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

PodCIDR = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Raw:
    """One unparsed value and where it came from."""

    value: object
    source: str  # human-readable, ends up in error messages
    base_dir: Path  # what a relative path in this value is relative to
    typed: bool  # True for YAML (has types), False for text sources (env, flags)


@dataclass(frozen=True)
class DiskThreshold:
    """One disk signal of ``--eviction-hard``: below this, the node is under DiskPressure.

    Exactly one of ``quantity`` (bytes; inodes for ``nodefs.inodesFree``) and ``percent``
    (of the filesystem's size or inode count) is set.
    """

    signal: str  # one of DISK_SIGNALS
    quantity: int | None = None
    percent: float | None = None

    def __str__(self) -> str:
        value = f"{self.percent:g}%" if self.percent is not None else str(self.quantity)
        return f"{self.signal}<{value}"


NODEFS_AVAILABLE = "nodefs.available"
NODEFS_INODES_FREE = "nodefs.inodesFree"
IMAGEFS_AVAILABLE = "imagefs.available"
DISK_SIGNALS = (NODEFS_AVAILABLE, NODEFS_INODES_FREE, IMAGEFS_AVAILABLE)
# The kubelet's defaults (pkg/kubelet/eviction/defaults_linux.go).
DEFAULT_DISK_THRESHOLDS = (
    DiskThreshold(NODEFS_AVAILABLE, percent=10.0),
    DiskThreshold(NODEFS_INODES_FREE, percent=5.0),
    DiskThreshold(IMAGEFS_AVAILABLE, percent=15.0),
)


@dataclass(frozen=True)
class EvictionThreshold:
    """``--eviction-hard memory.available<X,nodefs.available<Y,...``.

    For memory exactly one of ``quantity_bytes`` and ``percent`` is set; upstream's default is
    100Mi. ``disk`` holds one threshold per disk signal; a signal the flag leaves out keeps
    the kubelet's default (as upstream's MergeDefaultEvictionSettings does).
    """

    quantity_bytes: int | None = 100 * 1024 * 1024
    percent: float | None = None
    disk: tuple[DiskThreshold, ...] = DEFAULT_DISK_THRESHOLDS

    def __str__(self) -> str:
        if self.percent is not None:
            memory = f"{EVICTION_SIGNAL}<{self.percent:g}%"
        else:
            memory = f"{EVICTION_SIGNAL}<{self.quantity_bytes}"
        return ",".join([memory, *map(str, self.disk)])


EVICTION_SIGNAL = "memory.available"


@dataclass(frozen=True)
class Reserved:
    """``--kube-reserved`` / ``--system-reserved``: cpu and memory kept from pods."""

    cpu_millis: int = 0
    memory_bytes: int = 0


# sun_path is 108 bytes on Linux including the terminating NUL. A longer path fails at bind
# time with an unhelpful "AF_UNIX path too long", so it is caught here instead.
MAX_SOCKET_PATH_BYTES = 107

# RFC 1123 subdomain, as Kubernetes requires of node names.
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")


def string(raw: Raw) -> str:
    if not isinstance(raw.value, str):
        raise ValueError(f"must be a string, got {_type_name(raw.value)}")
    value = raw.value.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def path(raw: Raw) -> Path:
    path = Path(string(raw)).expanduser()
    return path if path.is_absolute() else raw.base_dir / path


def optional_path(raw: Raw) -> Path | None:
    # null in YAML, or an empty string anywhere, switches an optional path off explicitly.
    if raw.value is None or raw.value == "":
        return None
    return path(raw)


def optional_file(raw: Raw) -> Path | None:
    path = optional_path(raw)
    if path is not None and not path.is_file():
        raise ValueError(f"{str(path)!r} is not a readable file")
    return path


def ip_list(raw: Raw) -> tuple[str, ...]:
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


def nodeport_addresses(raw: Raw) -> tuple[str, ...]:
    """CIDRs, or ``primary`` (the node's IP), as kube-proxy's --nodeport-addresses."""
    value = raw.value
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, list) and raw.typed and all(isinstance(v, str) for v in value):
        items = list(value)
    else:
        raise ValueError(f"must be CIDRs or 'primary', got {_type_name(value)}")
    for item in items:
        if item == "primary":
            continue
        try:
            ipaddress.ip_network(item, strict=True)
        except ValueError:
            raise ValueError(f"{item!r} is not a CIDR (e.g. 192.168.0.0/24) nor primary") from None
    return tuple(items)


def domain(raw: Raw) -> str:
    value = string(raw).lower().rstrip(".")
    if len(value) > 253 or not _DNS_SUBDOMAIN.fullmatch(value):
        raise ValueError(f"{value!r} is not a DNS domain")
    return value


def choice(options: tuple[str, ...]) -> Callable[[Raw], str]:
    def parse(raw: Raw) -> str:
        value = string(raw).lower()
        if value not in options:
            raise ValueError(f"{raw.value!r} is not one of {', '.join(options)}")
        return value

    return parse


def positive_float(raw: Raw) -> float:
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


def percent(raw: Raw) -> int:
    value = 0 if raw.value in (0, "0") else positive_int(raw)
    if value > 100:
        raise ValueError(f"must be a percentage from 0 to 100, got {value}")
    return value


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def duration(raw: Raw) -> float:
    """Seconds, from a number of seconds or a Go duration ("2m", "1h30m", "0s")."""
    if isinstance(raw.value, int | float) and not isinstance(raw.value, bool):
        seconds = float(raw.value)
    elif isinstance(raw.value, str) and re.fullmatch(rf"(?:{_DURATION_PART.pattern})+", raw.value):
        parts = _DURATION_PART.findall(raw.value)
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    elif isinstance(raw.value, str) and not raw.typed:
        try:
            seconds = float(raw.value)
        except ValueError:
            raise ValueError(f"{raw.value!r} is not a duration (like 2m, 90s)") from None
    else:
        raise ValueError(f"must be a duration (like 2m, 90s), got {_type_name(raw.value)}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"must be a duration of 0 or more, got {raw.value!r}")
    return seconds


def non_negative_int(raw: Raw) -> int:
    if raw.value in (0, "0"):
        return 0
    return positive_int(raw)


def positive_int(raw: Raw) -> int:
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


def cidr(raw: Raw) -> PodCIDR:
    text = string(raw)
    try:
        # strict: 10.88.0.1/16 is almost certainly a mistake for 10.88.0.0/16, so say so.
        return ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        raise ValueError(f"{text!r} is not a valid CIDR: {e}") from None


def service_cidr(raw: Raw) -> ipaddress.IPv4Network:
    network = cidr(raw)
    if not isinstance(network, ipaddress.IPv4Network):
        raise ValueError(f"{raw.value!r}: only an IPv4 service CIDR is supported")
    if network.num_addresses < 4:
        raise ValueError(f"{raw.value!r} is too small for services (at least a /30)")
    return network


def optional_v4_cidr(raw: Raw) -> ipaddress.IPv4Network | None:
    if raw.value is None or raw.value == "":
        return None
    network = cidr(raw)
    if not isinstance(network, ipaddress.IPv4Network):
        raise ValueError(f"{raw.value!r}: only an IPv4 cluster CIDR is supported")
    return network


def optional_cidr(raw: Raw) -> PodCIDR | None:
    return None if raw.value is None or raw.value == "" else cidr(raw)


def optional_ipv4(raw: Raw) -> str:
    if raw.value is None or raw.value == "":
        return ""
    text = string(raw)
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 address") from None


def port_range(raw: Raw) -> tuple[int, int]:
    text = string(raw) if isinstance(raw.value, str) else raw.value
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


def node_name(raw: Raw) -> str:
    value = string(raw)
    if len(value) > 253 or not _DNS_SUBDOMAIN.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid node name (lowercase RFC 1123 subdomain: "
            "letters, digits, '-' and '.', at most 253 characters)"
        )
    return value


def endpoint(raw: Raw) -> str:
    value = string(raw)
    if value.startswith("/"):  # a bare socket path is what people type; grpc wants a URL
        return "unix://" + value
    if "://" not in value:
        raise ValueError(f"{value!r} is not an endpoint URL (e.g. unix:///path/to.sock)")
    return value


def socket_path(raw: Raw) -> Path:
    value = path(raw)
    if len(os.fsencode(value)) > MAX_SOCKET_PATH_BYTES:
        raise ValueError(
            f"{str(value)!r} is longer than the {MAX_SOCKET_PATH_BYTES} bytes a unix socket "
            "path may have"
        )
    return value


def bind(raw: Raw) -> str:
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


def kubelet_api_bind(raw: Raw) -> str:
    """``host:port`` of the kubelet API, or ``off`` (empty too) to switch it off."""
    if isinstance(raw.value, str) and raw.value.strip().lower() == "off":
        return ""
    return bind(raw)


def boolean(raw: Raw) -> bool:
    if isinstance(raw.value, bool):
        return raw.value
    if isinstance(raw.value, str) and not raw.typed and raw.value.lower() in ("true", "false"):
        return raw.value.lower() == "true"
    raise ValueError(f"must be true or false, got {raw.value!r}")


def image(raw: Raw) -> str:
    value = string(raw)
    if any(c.isspace() for c in value):
        raise ValueError(f"{value!r} is not an image reference (contains whitespace)")
    return value


def eviction_hard(raw: Raw) -> EvictionThreshold:
    memory: tuple[int | None, float | None] = (100 * 1024 * 1024, None)
    disk = {t.signal: t for t in DEFAULT_DISK_THRESHOLDS}
    for item in string(raw).replace(" ", "").split(","):
        signal, sep, value = item.partition("<")
        if not sep or not value:
            raise ValueError(f"{item!r} is not a threshold like {EVICTION_SIGNAL}<100Mi")
        if signal == EVICTION_SIGNAL:
            memory = _threshold_value(value)
        elif signal in DISK_SIGNALS:
            quantity, percent = _threshold_value(value, inodes=signal == NODEFS_INODES_FREE)
            disk[signal] = DiskThreshold(signal, quantity, percent)
        else:
            known = ", ".join((EVICTION_SIGNAL, *DISK_SIGNALS))
            raise ValueError(f"{signal!r}: the signals known are {known}")
    return EvictionThreshold(*memory, disk=tuple(disk[s] for s in DISK_SIGNALS))


def _threshold_value(value: str, *, inodes: bool = False) -> tuple[int | None, float | None]:
    """(quantity, percent) of one threshold's value, exactly one of them set."""
    if value.endswith("%"):
        try:
            percent = float(value[:-1])
        except ValueError:
            raise ValueError(f"{value!r} is not a percentage") from None
        if not (math.isfinite(percent) and 0 < percent < 100):
            raise ValueError(f"{value!r} must be a percentage between 0 and 100")
        return None, percent
    match = _MEMORY_QUANTITY.fullmatch(value)
    if match is None:
        what = "an inode count like 100k" if inodes else "a memory quantity like 100Mi"
        raise ValueError(f"{value!r} is not {what} or a percentage")
    return _quantity(match), None


def byte_quantity(raw: Raw) -> int:
    """A positive size like 10Mi (a bare integer is bytes)."""
    value = raw.value
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    text = string(raw)
    match = _MEMORY_QUANTITY.fullmatch(text)
    if match is None or _quantity(match) <= 0:
        raise ValueError(f"{text!r} is not a positive size like 10Mi")
    return _quantity(match)


def log_max_files(raw: Raw) -> int:
    """``--container-log-max-files``: the kubelet refuses fewer than 2 (current + rotated)."""
    value = positive_int(raw)
    if value < 2:
        raise ValueError(f"{value} is too few: at least 2 (the live file and one rotated)")
    return value


def _quantity(match: re.Match[str]) -> int:
    number, suffix = match.groups()
    return int(float(number) * _MEMORY_UNITS[suffix or ""])


def reserved(raw: Raw) -> Reserved:
    """``cpu=100m,memory=256Mi`` (the kubelet's mapStringString); a YAML mapping too."""
    if isinstance(raw.value, Mapping):
        pairs = [(str(k), str(v)) for k, v in raw.value.items()]
    else:
        text = string(raw).replace(" ", "")
        pairs = [tuple(p.split("=", 1)) for p in text.split(",") if p]  # type: ignore[misc]
        if any(len(p) != 2 for p in pairs):
            raise ValueError(f"{text!r} is not a list like cpu=100m,memory=256Mi")
    found = dict(pairs)
    unknown = sorted(set(found) - {"cpu", "memory"})
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: only cpu and memory can be reserved")
    return Reserved(
        cpu_millis=_cpu_millis(found.get("cpu", "0")),
        memory_bytes=_memory_bytes(found.get("memory", "0")),
    )


def _cpu_millis(text: str) -> int:
    try:
        value = int(text[:-1]) if text.endswith("m") else math.ceil(float(text) * 1000)
    except (ValueError, OverflowError):
        raise ValueError(f"cpu {text!r} is not a quantity like 500m or 1") from None
    if value < 0:
        raise ValueError(f"cpu {text!r} must not be negative")
    return value


def _memory_bytes(text: str) -> int:
    match = _MEMORY_QUANTITY.fullmatch(text)
    if match is None:
        raise ValueError(f"memory {text!r} is not a quantity like 256Mi")
    number, suffix = match.groups()
    return int(float(number) * _MEMORY_UNITS[suffix or ""])


def pids_limit(raw: Raw) -> int:
    """``--pod-max-pids``: a positive count, or -1 (the kubelet's default) for no limit."""
    value = int_value(raw)
    if value == 0 or value < -1:
        raise ValueError(f"must be a positive number of processes or -1, got {value}")
    return value


def int_value(raw: Raw) -> int:
    if isinstance(raw.value, int) and not isinstance(raw.value, bool):
        return raw.value
    if isinstance(raw.value, str) and not raw.typed:
        try:
            return int(raw.value)
        except ValueError:
            raise ValueError(f"{raw.value!r} is not an integer") from None
    raise ValueError(f"must be an integer, got {_type_name(raw.value)}")


def cgroup_root(raw: Raw) -> str:
    value = string(raw).strip()
    if not value.startswith("/") and not value.endswith(".slice"):
        raise ValueError(f"{value!r} is not an absolute cgroup path (/, /a/b) or a slice")
    if ".." in value.split("/") or any(c.isspace() for c in value):
        raise ValueError(f"{value!r} is not a cgroup path")
    return value


def enforce_node_allocatable(raw: Raw) -> tuple[str, ...]:
    """``pods`` or ``none`` (an empty list too); other kubelet keys are not supported."""
    value = raw.value
    items = [str(v) for v in value] if isinstance(value, list) else string(raw).split(",")
    names = tuple(sorted({i.strip() for i in items if i.strip() and i.strip() != "none"}))
    if any(n != "pods" for n in names):
        raise ValueError(f"{','.join(names)!r}: only 'pods' or 'none' is supported")
    return names


# The Kubernetes quantity suffixes a memory threshold uses (the model's parser is a layer up).
_MEMORY_UNITS: Mapping[str, int] = {
    "": 1,
    **{s: 1000 ** (i + 1) for i, s in enumerate(("k", "M", "G", "T", "P", "E"))},
    **{s: 1024 ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
}
_MEMORY_QUANTITY = re.compile(r"(\d+(?:\.\d+)?)(" + "|".join(k for k in _MEMORY_UNITS if k) + ")?")


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__
