"""What a pod takes besides itself, and the pod rewritten to run without it (pure).

A pod may name ConfigMaps, Secrets (from the API, or from the manifest directory in
standalone mode) and its ServiceAccount's token (cluster mode only):
- env ``valueFrom.configMapKeyRef`` / ``secretKeyRef``, and ``envFrom`` (``configMapRef``,
  ``secretRef``, with ``prefix``);
- volumes ``configMap``, ``secret``, ``downwardAPI`` and ``projected`` (sources
  ``configMap``, ``secret``, ``downwardAPI``, ``serviceAccountToken``): what every pod gets
  from ServiceAccount admission (``kube-api-access-*``) is one of these.

The pod manager knows none of that. ``rewrite`` turns such a pod into one it knows, by
resolving references the way a kubelet does when it starts a container:
- each referenced env value becomes a literal ``value`` (``$`` doubled, so that ``$(VAR)``
  expansion, which upstream applies only to literal values, leaves it as it came);
  ``envFrom`` becomes env entries before the container's own ``env``, which win a clash; keys
  that are not valid variable names are skipped, as upstream does;
- each such volume becomes a read-only ``hostPath`` directory under the pod's own directory,
  where ``kubelet/projection.py`` writes the files (``files_for``) and keeps them current
  (``apiserver/podrefs.py`` and ``kubelet/staticrefs.py`` drive it, one per pod source).

Missing objects follow upstream: a missing ConfigMap or Secret, or key, is an error unless
the reference is ``optional``; env errors are ``CreateContainerConfigError``, volume errors
keep the pod ``ContainerCreating``. Env values are resolved once, when the pod is first
prepared on this node (upstream re-reads them at each container start); volume contents
follow the objects (upstream: "Mounted ConfigMaps are updated automatically").
"""

from __future__ import annotations

import base64
import binascii
import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from nodeagent.model import quantity
from nodeagent.model.fields import FieldError, Node, ValidationError

Obj = dict[str, Any]

CONFIG_ERROR = "CreateContainerConfigError"
MOUNT_ERROR = "ContainerCreating"
DEFAULT_MODE = 0o644
VOLUME_KINDS = {
    "configMap": "kubernetes.io~configmap",
    "secret": "kubernetes.io~secret",
    "downwardAPI": "kubernetes.io~downward-api",
    "projected": "kubernetes.io~projected",
}
PROJECTED_SOURCES = ("configMap", "secret", "downwardAPI", "serviceAccountToken")
DOWNWARD_FIELDS = (
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "metadata.labels",
    "metadata.annotations",
)
RESOURCE_FIELDS = ("limits.cpu", "limits.memory", "requests.cpu", "requests.memory")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_DATA_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_META_KEY = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")


class RefError(Exception):
    """A reference cannot be resolved; ``reason`` is the container waiting reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class TokenSpec:
    """A projected serviceAccountToken: what to ask the TokenRequest API for."""

    audience: str
    expiration_seconds: int


@dataclass
class Refs:
    """The objects a pod names (namespace is the pod's)."""

    config_maps: set[str] = field(default_factory=set)
    secrets: set[str] = field(default_factory=set)
    tokens: set[TokenSpec] = field(default_factory=set)

    @property
    def empty(self) -> bool:
        return not (self.config_maps or self.secrets or self.tokens)


@dataclass(frozen=True)
class Lookup:
    """What was fetched: objects by name (absent: not found), tokens by spec."""

    config_maps: Mapping[str, Obj]
    secrets: Mapping[str, Obj]
    tokens: Mapping[TokenSpec, str] = field(default_factory=dict)


def _containers(spec: Obj) -> list[Obj]:
    return [c for group in ("initContainers", "containers") for c in spec.get(group) or []]


def needs_rewrite(obj: Obj) -> bool:
    spec = obj.get("spec") or {}
    for c in _containers(spec):
        if c.get("envFrom"):
            return True
        for env in c.get("env") or []:
            source = env.get("valueFrom") or {}
            if "configMapKeyRef" in source or "secretKeyRef" in source:
                return True
    return any(k in v for v in spec.get("volumes") or [] for k in VOLUME_KINDS)


def references(obj: Obj) -> Refs:
    spec = obj.get("spec") or {}
    refs = Refs()
    for c in _containers(spec):
        for env in c.get("env") or []:
            source = env.get("valueFrom") or {}
            if "configMapKeyRef" in source:
                refs.config_maps.add(str(source["configMapKeyRef"].get("name", "")))
            if "secretKeyRef" in source:
                refs.secrets.add(str(source["secretKeyRef"].get("name", "")))
        for env_from in c.get("envFrom") or []:
            if "configMapRef" in env_from:
                refs.config_maps.add(str(env_from["configMapRef"].get("name", "")))
            if "secretRef" in env_from:
                refs.secrets.add(str(env_from["secretRef"].get("name", "")))
    for volume in spec.get("volumes") or []:
        sources = [volume] + [s for s in (volume.get("projected") or {}).get("sources") or []]
        for source in sources:
            if "configMap" in source:
                refs.config_maps.add(str(source["configMap"].get("name", "")))
            if "secret" in source:
                secret = source["secret"]
                refs.secrets.add(str(secret.get("secretName") or secret.get("name") or ""))
            if "serviceAccountToken" in source:
                token = source["serviceAccountToken"]
                refs.tokens.add(
                    TokenSpec(
                        str(token.get("audience") or ""),
                        int(token.get("expirationSeconds") or 3600),
                    )
                )
    return refs


def _data(obj: Obj | None, *, secret: bool) -> dict[str, bytes]:
    if obj is None:
        return {}
    out: dict[str, bytes] = {}
    if secret:
        for key, value in (obj.get("data") or {}).items():
            out[key] = base64.b64decode(str(value))
        return out
    for key, value in (obj.get("data") or {}).items():
        out[key] = str(value).encode()
    for key, value in (obj.get("binaryData") or {}).items():
        out[key] = base64.b64decode(str(value))
    return out


def _kind_name(secret: bool) -> str:
    return "secret" if secret else "configmap"


def _source(lookup: Lookup, name: str, *, secret: bool) -> Obj | None:
    return (lookup.secrets if secret else lookup.config_maps).get(name)


# -- env ------------------------------------------------------------------------------------


def _env(container: Obj, namespace: str, lookup: Lookup) -> list[Obj]:
    out: list[Obj] = []
    own = {str(e.get("name")) for e in container.get("env") or []}
    for env_from in container.get("envFrom") or []:
        secret = "secretRef" in env_from
        ref = env_from.get("secretRef" if secret else "configMapRef") or {}
        name = str(ref.get("name", ""))
        obj = _source(lookup, name, secret=secret)
        if obj is None:
            if ref.get("optional"):
                continue
            raise RefError(CONFIG_ERROR, f'{_kind_name(secret)} "{name}" not found')
        prefix = str(env_from.get("prefix") or "")
        for key, value in sorted(_data(obj, secret=secret).items()):
            var = prefix + key
            if _ENV_NAME.match(var) and var not in own:
                out.append({"name": var, "value": _literal(value)})
    for env in container.get("env") or []:
        source = env.get("valueFrom") or {}
        secret = "secretKeyRef" in source
        if not secret and "configMapKeyRef" not in source:
            out.append(env)
            continue
        ref = source["secretKeyRef" if secret else "configMapKeyRef"]
        name, key = str(ref.get("name", "")), str(ref.get("key", ""))
        obj = _source(lookup, name, secret=secret)
        data = _data(obj, secret=secret)
        if key not in data:
            if ref.get("optional"):
                continue
            if obj is None:
                raise RefError(CONFIG_ERROR, f'{_kind_name(secret)} "{name}" not found')
            kind = "Secret" if secret else "ConfigMap"
            raise RefError(CONFIG_ERROR, f"couldn't find key {key} in {kind} {namespace}/{name}")
        out.append({"name": env.get("name"), "value": _literal(data[key])})
    return out


def _placeholder_env(container: Obj) -> list[Obj]:
    out = []
    for env in container.get("env") or []:
        source = env.get("valueFrom") or {}
        if "secretKeyRef" in source or "configMapKeyRef" in source:
            env = {"name": env.get("name"), "value": ""}
        out.append(env)
    return out


def _literal(value: bytes) -> str:
    return value.decode(errors="replace").replace("$", "$$")


# -- the rewrite ----------------------------------------------------------------------------


def volume_dir(pod_dir: str, volume: Obj) -> str | None:
    """Where a volume of ours lives (None: not one of ours)."""
    for key, kind in VOLUME_KINDS.items():
        if key in volume:
            return f"{pod_dir}/volumes/{kind}/{volume.get('name')}"
    return None


def supported(volume: Obj) -> bool:
    """Whether ``files_for`` can fill this volume (else it stays, and validation names it)."""
    if "projected" in volume:
        sources = (volume.get("projected") or {}).get("sources") or []
        return all(len(s) == 1 and next(iter(s)) in PROJECTED_SOURCES for s in sources) and all(
            _downward_ok(s["downwardAPI"]) for s in sources if "downwardAPI" in s
        )
    if "downwardAPI" in volume:
        return _downward_ok(volume["downwardAPI"])
    return True


def _downward_ok(source: Obj) -> bool:
    for item in source.get("items") or []:
        if "resourceFieldRef" in item and "fieldRef" not in item:
            ref = item.get("resourceFieldRef") or {}
            if ref.get("resource") not in RESOURCE_FIELDS or not ref.get("containerName"):
                return False
            continue
        path = (item.get("fieldRef") or {}).get("fieldPath")
        if path is None or not (path in DOWNWARD_FIELDS or _META_KEY.match(str(path))):
            return False
    return True


def rewrite(obj: Obj, *, pod_dir: str, lookup: Lookup | None) -> Obj:
    """The pod with env references resolved and our volumes as hostPath directories.
    Raises RefError for a reference that cannot be resolved. Without a ``lookup`` every
    referenced env value is a placeholder "": the pod's shape, for validation only."""
    doc = copy.deepcopy(obj)
    spec = doc.setdefault("spec", {})
    namespace = str((doc.get("metadata") or {}).get("namespace") or "default")
    ours: set[str] = set()
    volumes = []
    for volume in spec.get("volumes") or []:
        path = volume_dir(pod_dir, volume)
        if path is None or not supported(volume):
            volumes.append(volume)
            continue
        ours.add(str(volume.get("name")))
        volumes.append(
            {"name": volume.get("name"), "hostPath": {"path": path, "type": "Directory"}}
        )
    if volumes:
        spec["volumes"] = volumes
    for container in _containers(spec):
        if container.get("env") or container.get("envFrom"):
            container["env"] = (
                _env(container, namespace, lookup)
                if lookup is not None
                else _placeholder_env(container)
            )
            container.pop("envFrom", None)
            if not container["env"]:
                del container["env"]
        for mount in container.get("volumeMounts") or []:
            if mount.get("name") in ours:
                mount["readOnly"] = True
    return doc


# -- volume contents ------------------------------------------------------------------------

Files = dict[str, tuple[bytes, int]]  # relative path -> (content, mode)


def files_for(volume: Obj, obj: Obj, lookup: Lookup) -> Files:
    """The files of one of our volumes. Raises RefError (MOUNT_ERROR) for what is missing."""
    if "projected" in volume:
        projected = volume["projected"] or {}
        mode = int(projected.get("defaultMode", DEFAULT_MODE))
        files: Files = {}
        for source in projected.get("sources") or []:
            kind, inner = next(iter(source.items()))
            files.update(_source_files(kind, inner or {}, obj, lookup, mode))
        return files
    kind = next(k for k in VOLUME_KINDS if k in volume)
    inner = volume[kind] or {}
    return _source_files(kind, inner, obj, lookup, int(inner.get("defaultMode", DEFAULT_MODE)))


def _source_files(kind: str, source: Obj, obj: Obj, lookup: Lookup, mode: int) -> Files:
    if kind == "serviceAccountToken":
        spec = TokenSpec(
            str(source.get("audience") or ""), int(source.get("expirationSeconds") or 3600)
        )
        token = lookup.tokens.get(spec)
        if token is None:
            raise RefError(MOUNT_ERROR, "the service account token is not available yet")
        return {str(source.get("path") or "token"): (token.encode(), mode)}
    if kind == "downwardAPI":
        return {
            str(item.get("path")): (_downward_item(obj, item).encode(), int(item.get("mode", mode)))
            for item in source.get("items") or []
        }
    secret = kind == "secret"
    name = str(source.get("secretName") or source.get("name") or "")
    found = _source(lookup, name, secret=secret)
    if found is None:
        if source.get("optional"):
            return {}
        raise RefError(
            MOUNT_ERROR, f'MountVolume.SetUp failed: {_kind_name(secret)} "{name}" not found'
        )
    data = _data(found, secret=secret)
    items = source.get("items")
    if not items:
        return {key: (value, mode) for key, value in data.items()}
    files: Files = {}
    for item in items:
        key = str(item.get("key"))
        if key not in data:
            if source.get("optional"):
                continue
            raise RefError(MOUNT_ERROR, f"MountVolume.SetUp failed: key {key} not found in {name}")
        files[str(item.get("path") or key)] = (data[key], int(item.get("mode", mode)))
    return files


def _downward_item(obj: Obj, item: Obj) -> str:
    if "fieldRef" in item:
        return _downward(obj, str(item["fieldRef"]["fieldPath"]))
    return resource_value(obj, item.get("resourceFieldRef") or {})


def resource_value(obj: Obj, ref: Obj) -> str:
    """A container's limit or request in units of ``divisor`` (rounded up), as upstream.
    An unset value reads as 0 (upstream: the node's allocatable; we do not guess it)."""
    name = ref.get("containerName")
    container = next((c for c in _containers(obj.get("spec") or {}) if c.get("name") == name), {})
    group, kind = str(ref.get("resource", "")).split(".", 1)
    raw = ((container.get("resources") or {}).get(group) or {}).get(kind)
    if raw is None and group == "requests":
        raw = ((container.get("resources") or {}).get("limits") or {}).get(kind)
    if raw is None:
        return "0"
    try:
        value = quantity.parse_quantity(raw)
        divisor = quantity.parse_quantity(ref.get("divisor", "1")) or Decimal(1)
    except quantity.QuantityError:
        return "0"
    return str(int((value / divisor).to_integral_value(rounding="ROUND_CEILING")))


def _downward(obj: Obj, path: str) -> str:
    meta = obj.get("metadata") or {}
    match = _META_KEY.match(path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{_quote(str(v))}"' for k, v in sorted(items.items()))
    return str(meta.get(path.split(".")[1], ""))


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# -- checks of the reference fields (validation of the pod itself sees them rewritten) -------


def check(obj: Obj, *, standalone: bool) -> list[FieldError]:
    """What is wrong with the pod's volume references, each naming its field. Standalone,
    a projected ServiceAccount token has no API to come from, and is rejected."""
    errors: list[FieldError] = []
    spec = obj.get("spec") or {}
    names = {c.get("name") for c in _containers(spec) if isinstance(c, Mapping)}
    for i, volume in enumerate(spec.get("volumes") or []):
        if not isinstance(volume, Mapping):
            continue
        base = f"spec.volumes[{i}]"
        if "projected" in volume:
            projected = volume.get("projected") or {}
            _check_mode(projected, "defaultMode", f"{base}.projected", errors)
            for j, source in enumerate(projected.get("sources") or []):
                where = f"{base}.projected.sources[{j}]"
                kinds = list(source) if isinstance(source, Mapping) else []
                if len(kinds) != 1 or kinds[0] not in PROJECTED_SOURCES:
                    errors.append(
                        FieldError(
                            where,
                            f"exactly one of {', '.join(PROJECTED_SOURCES)} is required "
                            f"(found {', '.join(map(str, kinds)) or 'none'})",
                        )
                    )
                    continue
                if "downwardAPI" in source:
                    _check_downward(
                        source.get("downwardAPI") or {}, f"{where}.downwardAPI", names, errors
                    )
                if standalone and "serviceAccountToken" in source:
                    errors.append(
                        FieldError(
                            f"{where}.serviceAccountToken",
                            "a service account token needs a control plane; not available in "
                            "standalone mode",
                        )
                    )
                for kind in ("configMap", "secret", "downwardAPI"):
                    if kind in source:
                        _check_items(source.get(kind) or {}, f"{where}.{kind}", errors)
            continue
        for kind in ("configMap", "secret", "downwardAPI"):
            if kind in volume:
                inner = volume.get(kind) or {}
                _check_mode(inner, "defaultMode", f"{base}.{kind}", errors)
                _check_items(inner, f"{base}.{kind}", errors)
                if kind == "downwardAPI":
                    _check_downward(inner, f"{base}.{kind}", names, errors)
    return errors


def _check_downward(
    source: Mapping[str, Any], where: str, containers: set[Any], errors: list[FieldError]
) -> None:
    """What a downwardAPI volume may show: metadata fields, and a container's resources."""
    for k, item in enumerate(source.get("items") or []):
        if not isinstance(item, Mapping):
            continue
        at = f"{where}.items[{k}]"
        if ("fieldRef" in item) == ("resourceFieldRef" in item):
            errors.append(FieldError(at, "exactly one of fieldRef or resourceFieldRef is required"))
        elif "fieldRef" in item:
            path = str((item.get("fieldRef") or {}).get("fieldPath"))
            if path not in DOWNWARD_FIELDS and not _META_KEY.match(path):
                errors.append(
                    FieldError(
                        f"{at}.fieldRef.fieldPath",
                        f"unsupported fieldPath {path!r} in a volume (metadata.name, namespace, "
                        "uid, labels, annotations, or one label or annotation)",
                    )
                )
        else:
            ref = item.get("resourceFieldRef") or {}
            if ref.get("resource") not in RESOURCE_FIELDS:
                errors.append(
                    FieldError(
                        f"{at}.resourceFieldRef.resource",
                        f"must be one of {', '.join(RESOURCE_FIELDS)}",
                    )
                )
            if ref.get("containerName") not in containers:
                errors.append(
                    FieldError(
                        f"{at}.resourceFieldRef.containerName",
                        "must name a container of the pod (required in a volume)",
                    )
                )


def _check_items(source: Mapping[str, Any], where: str, errors: list[FieldError]) -> None:
    for k, item in enumerate(source.get("items") or []):
        if not isinstance(item, Mapping):
            continue
        path = str(item.get("path") or "")
        if not path or path.startswith("/") or ".." in path.split("/"):
            errors.append(
                FieldError(f"{where}.items[{k}].path", "must be a relative path without '..'")
            )
        _check_mode(item, "mode", f"{where}.items[{k}]", errors)


def _check_mode(obj: Mapping[str, Any], key: str, where: str, errors: list[FieldError]) -> None:
    if key not in obj:
        return
    mode = obj[key]
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
        errors.append(FieldError(f"{where}.{key}", "must be a file mode between 0 and 0777"))


# -- ConfigMap and Secret documents (the manifest directory's) -----------------------------


@dataclass(frozen=True)
class ConfigObject:
    """A ConfigMap or Secret: ``obj`` as the API would serve it (a Secret's ``stringData``
    merged into base64 ``data``, as the API server stores it)."""

    kind: str  # "ConfigMap" or "Secret"
    namespace: str
    name: str
    obj: Obj
    source: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def parse_config_object(doc: Mapping[str, Any], *, source: str, obj_name: str) -> ConfigObject:
    """Validate a v1 ConfigMap or Secret; errors name the key, never a value."""
    errors: list[FieldError] = []
    root = Node(doc, "", errors)
    kind = str(doc.get("kind"))
    secret = kind == "Secret"
    known = ("apiVersion", "kind", "metadata", "data", "immutable")
    root.reject_unknown(known + (("stringData", "type") if secret else ("binaryData",)))
    if doc.get("apiVersion") != "v1":
        root.error(f"must be v1, got {doc.get('apiVersion')!r}", "apiVersion")
    meta = root.child("metadata")
    meta.reject_unknown(
        ("name", "namespace", "labels", "annotations"),
        ("uid", "resourceVersion", "creationTimestamp", "managedFields", "generation"),
    )
    name = meta.string("name", required=True)
    namespace = meta.string("namespace", default="default")
    data: dict[str, str] = {}
    binary: dict[str, str] = {}
    for key, value in _string_entries(root, "data", errors):
        if secret and not _is_base64(value):
            root.error("is not valid base64", f"data.{key}")
        data[key] = value
    plain_key = "stringData" if secret else "binaryData"
    for key, value in _string_entries(root, plain_key, errors):
        if secret:
            data[key] = base64.b64encode(value.encode()).decode()  # stringData wins, as upstream
        elif not _is_base64(value):
            root.error("is not valid base64", f"binaryData.{key}")
        elif key in data:
            root.error("is also a key of data", f"binaryData.{key}")
        else:
            binary[key] = value
    if errors:
        raise ValidationError(obj_name, errors)
    obj: Obj = {"metadata": {"name": name, "namespace": namespace}, "data": data}
    if binary:
        obj["binaryData"] = binary
    return ConfigObject(kind, namespace, name, obj, source)


def _string_entries(root: Node, key: str, errors: list[FieldError]) -> list[tuple[str, str]]:
    value = root.value.get(key) if isinstance(root.value, Mapping) else None
    if value is None:
        return []
    if not isinstance(value, Mapping):
        errors.append(FieldError(key, "must be a map of strings"))
        return []
    out = []
    for k, v in value.items():
        if not isinstance(k, str) or not _DATA_KEY.match(k) or k in (".", ".."):
            errors.append(FieldError(f"{key}.{k}", "is not a valid key ([-._a-zA-Z0-9]+)"))
        elif not isinstance(v, str):
            errors.append(FieldError(f"{key}.{k}", "must be a string"))
        else:
            out.append((k, v))
    return out


def _is_base64(value: str) -> bool:
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def lookup_in(
    namespace: str,
    config_maps: Mapping[str, ConfigObject],
    secrets: Mapping[str, ConfigObject],
) -> Lookup:
    """A Lookup over the manifest directory's objects (keyed ``namespace/name``)."""
    prefix = f"{namespace}/"
    return Lookup(
        {c.name: c.obj for k, c in config_maps.items() if k.startswith(prefix)},
        {s.name: s.obj for k, s in secrets.items() if k.startswith(prefix)},
    )
