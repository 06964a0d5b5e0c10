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
keep the pod ``ContainerCreating``. The rewritten spec is the pod's for good (a changed spec
would replace the pod), but env is resolved again at each container creation, as upstream
(the worker's env source: ``container_env`` of podrefs.py and staticrefs.py); volume
contents follow the objects (upstream: "Mounted ConfigMaps are updated automatically").
"""

from __future__ import annotations

import base64
import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from nodeagent.model import quantity

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
META_KEY = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")


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


def pod_containers(spec: Obj) -> list[Obj]:
    groups = ("initContainers", "containers", "ephemeralContainers")
    return [c for group in groups for c in spec.get(group) or []]


def _env_uses_objects(container: Obj) -> bool:
    """Whether a container's env (envFrom, valueFrom) takes anything from a ConfigMap or Secret."""
    if container.get("envFrom"):
        return True
    for env in container.get("env") or []:
        source = env.get("valueFrom") or {}
        if "configMapKeyRef" in source or "secretKeyRef" in source:
            return True
    return False


def needs_rewrite(obj: Obj) -> bool:
    spec = obj.get("spec") or {}
    if any(_env_uses_objects(c) for c in pod_containers(spec)):
        return True
    return any(k in v for v in spec.get("volumes") or [] for k in VOLUME_KINDS)


def env_refers(obj: Obj, container: str) -> bool:
    """Whether ``container``'s env takes anything from a ConfigMap or Secret."""
    return any(
        _env_uses_objects(c)
        for c in pod_containers(obj.get("spec") or {})
        if c.get("name") == container
    )


def references(obj: Obj) -> Refs:
    spec = obj.get("spec") or {}
    refs = Refs()
    for c in pod_containers(spec):
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
            _downward_ok(s["downwardAPI"] or {}) for s in sources if "downwardAPI" in s
        )
    if "downwardAPI" in volume:
        return _downward_ok(volume["downwardAPI"] or {})
    return True


def _downward_ok(source: Obj) -> bool:
    for item in source.get("items") or []:
        if "resourceFieldRef" in item and "fieldRef" not in item:
            ref = item.get("resourceFieldRef") or {}
            if ref.get("resource") not in RESOURCE_FIELDS or not ref.get("containerName"):
                return False
            continue
        path = (item.get("fieldRef") or {}).get("fieldPath")
        if path is None or not (path in DOWNWARD_FIELDS or META_KEY.match(str(path))):
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
    for container in pod_containers(spec):
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
    container = next(
        (c for c in pod_containers(obj.get("spec") or {}) if c.get("name") == name), {}
    )
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
    match = META_KEY.match(path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{_quote(str(v))}"' for k, v in sorted(items.items()))
    return str(meta.get(path.split(".")[1], ""))


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
