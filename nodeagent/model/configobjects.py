"""The manifest directory's ConfigMaps and Secrets, and the checks of a pod's references
(pure).

``parse_config_object`` validates a ConfigMap or Secret document into what the API would
serve (a Secret's ``stringData`` merged into base64 ``data``); ``lookup_in`` makes a
``refs.Lookup`` of them for one namespace. ``check`` names what is wrong in a pod's
configMap, secret, downwardAPI and projected volumes before ``refs.rewrite`` turns them into
directories (after which the pod's own validation no longer sees them).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nodeagent.model.fields import FieldError, Node, ValidationError
from nodeagent.model.refs import (
    DOWNWARD_FIELDS,
    META_KEY,
    PROJECTED_SOURCES,
    RESOURCE_FIELDS,
    Lookup,
    Obj,
    pod_containers,
)

_DATA_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


# -- checks of the reference fields (validation of the pod itself sees them rewritten) -------


def check(obj: Obj, *, standalone: bool) -> list[FieldError]:
    """What is wrong with the pod's volume references, each naming its field. Standalone,
    a projected ServiceAccount token has no API to come from, and is rejected."""
    errors: list[FieldError] = []
    spec = obj.get("spec") or {}
    names = {c.get("name") for c in pod_containers(spec) if isinstance(c, Mapping)}
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
            if path not in DOWNWARD_FIELDS and not META_KEY.match(path):
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
    if secret:  # pull secrets are read by type (kubernetes.io/dockerconfigjson, ...)
        obj["type"] = root.string("type", default="Opaque")
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


# -- shapes: what the reference code walks must have the types it expects ------------------

_KINDS = {str: "a string", int: "an integer", bool: "a boolean", list: "a list"}


class _Shapes:
    """Type checks of the fields ``refs.py`` reads, each error naming its path, so that a
    malformed document is an error of its own and never an exception in the resolution."""

    def __init__(self) -> None:
        self.errors: list[FieldError] = []

    def ok(self, value: Any, kind: type, path: str) -> bool:
        good = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not good:
            self.errors.append(FieldError(path, f"must be {_KINDS.get(kind, 'an object')}"))
        return good

    def mapping(self, parent: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
        value = parent.get(key)
        at = f"{path}.{key}" if path else key
        return value if value is not None and self.ok(value, Mapping, at) else {}

    def items(
        self, parent: Mapping[str, Any], key: str, path: str
    ) -> list[tuple[str, Mapping[str, Any]]]:
        value = parent.get(key)
        at = f"{path}.{key}"
        if value is None or not self.ok(value, list, at):
            return []
        return [(f"{at}[{i}]", v) for i, v in enumerate(value) if self.ok(v, Mapping, f"{at}[{i}]")]

    def scalars(self, parent: Mapping[str, Any], where: str, /, **kinds: type) -> None:
        for key, kind in kinds.items():
            if parent.get(key) is not None:
                self.ok(parent[key], kind, f"{where}.{key}")


def shape_errors(obj: Mapping[str, Any]) -> list[FieldError]:
    """Wrong types among a pod's reference fields (see ``_Shapes``)."""
    shapes = _Shapes()
    shapes.mapping(obj, "metadata", "")
    spec = shapes.mapping(obj, "spec", "")
    for group in ("initContainers", "containers"):
        for path, container in shapes.items(spec, group, "spec"):
            _container_shapes(shapes, container, path)
    for path, volume in shapes.items(spec, "volumes", "spec"):
        shapes.scalars(volume, path, name=str)
        sources = [(k, shapes.mapping(volume, k, path), f"{path}.{k}") for k in PROJECTED_SOURCES]
        projected = shapes.mapping(volume, "projected", path)
        shapes.scalars(projected, f"{path}.projected", defaultMode=int)
        for at, source in shapes.items(projected, "sources", f"{path}.projected"):
            sources += [(k, shapes.mapping(source, k, at), f"{at}.{k}") for k in PROJECTED_SOURCES]
        for _, inner, at in sources:
            shapes.scalars(
                inner, at, name=str, secretName=str, optional=bool, defaultMode=int,
                audience=str, expirationSeconds=int, path=str,
            )  # fmt: skip
            for item_at, item in shapes.items(inner, "items", at):
                shapes.scalars(item, item_at, key=str, path=str, mode=int)
                field_ref = shapes.mapping(item, "fieldRef", item_at)
                shapes.scalars(field_ref, f"{item_at}.fieldRef", fieldPath=str)
                resource = shapes.mapping(item, "resourceFieldRef", item_at)
                shapes.scalars(
                    resource, f"{item_at}.resourceFieldRef", containerName=str, resource=str
                )
    return shapes.errors


def _container_shapes(shapes: _Shapes, container: Mapping[str, Any], path: str) -> None:
    shapes.scalars(container, path, name=str)
    for at, env in shapes.items(container, "env", path):
        shapes.scalars(env, at, name=str)
        source = shapes.mapping(env, "valueFrom", at)
        for key in ("configMapKeyRef", "secretKeyRef"):
            ref = shapes.mapping(source, key, f"{at}.valueFrom")
            shapes.scalars(ref, f"{at}.valueFrom.{key}", name=str, key=str, optional=bool)
    for at, env_from in shapes.items(container, "envFrom", path):
        shapes.scalars(env_from, at, prefix=str)
        for key in ("configMapRef", "secretRef"):
            ref = shapes.mapping(env_from, key, at)
            shapes.scalars(ref, f"{at}.{key}", name=str, optional=bool)
    for at, mount in shapes.items(container, "volumeMounts", path):
        shapes.scalars(mount, at, name=str)
