"""PATCH bodies: JSON merge patch, strategic merge patch and JSON patch.

- ``application/merge-patch+json``: RFC 7386. Objects merge recursively, ``null`` deletes a
  key, every list is replaced whole.
- ``application/strategic-merge-patch+json``: the upstream doc "Update API Objects in Place
  Using kubectl patch" and the strategic-merge-patch design doc
  (community/contributors/devel/sig-api-machinery/strategic-merge-patch.md). Like a merge
  patch, except lists the Go types tag ``patchStrategy:"merge"`` merge by their
  ``patchMergeKey`` (pod ``status.conditions`` by ``type``, ``spec.containers`` by ``name``...)
  and the directives ``$patch: replace|delete``, ``$deleteFromPrimitiveList/<field>``,
  ``$setElementOrder/<field>`` and ``$retainKeys`` apply. The tags come from ``MERGE_KEYS``, a
  hand copy of k8s.io/api for the kinds served here. Every other list is atomic and replaced,
  as upstream: ``status.containerStatuses`` carries no patch strategy (``+listType=atomic``),
  so a status patch must send the whole list, as the kubelet does.
- ``application/json-patch+json``: RFC 6902 (add, remove, replace, move, copy, test).
- ``application/apply-patch+yaml`` (server-side apply) is not supported: 415.
"""

from __future__ import annotations

import copy
import json
from typing import Any

MERGE = "merge"  # a list of primitives merged as a set (metadata.finalizers...)

_CONTAINER_KEYS = {
    "ports": "containerPort",
    "env": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
}
_COMMON: dict[str, str] = {"metadata.finalizers": MERGE, "metadata.ownerReferences": "uid"}


def _pod_spec(prefix: str) -> dict[str, str]:
    out = {
        f"{prefix}.volumes": "name",
        f"{prefix}.imagePullSecrets": "name",
        f"{prefix}.hostAliases": "ip",
        f"{prefix}.resourceClaims": "name",
        f"{prefix}.schedulingGates": "name",
        f"{prefix}.topologySpreadConstraints": "topologyKey",
    }
    for group in ("containers", "initContainers", "ephemeralContainers"):
        out[f"{prefix}.{group}"] = "name"
        for field, key in _CONTAINER_KEYS.items():
            out[f"{prefix}.{group}.{field}"] = key
    return out


MERGE_KEYS: dict[str, dict[str, str]] = {
    "Pod": {
        **_pod_spec("spec"),
        "status.conditions": "type",
        "status.podIPs": "ip",
        "status.hostIPs": "ip",
        "status.resourceClaimStatuses": "name",
    },
    "Node": {
        "spec.podCIDRs": MERGE,
        "status.conditions": "type",
        "status.addresses": "type",
    },
    "Service": {"spec.ports": "port", "status.conditions": "type"},
    "Namespace": {"status.conditions": "type"},
    "ServiceAccount": {"secrets": "name"},
}


class PatchError(ValueError):
    """The patch does not apply (bad document, failed test op, bad path)."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: dict[str, Any], patch: Any, kind: str) -> dict[str, Any]:
    if not isinstance(patch, dict):
        raise PatchError("a strategic merge patch must be a JSON object")
    keys = {**_COMMON, **MERGE_KEYS.get(kind, {})}
    merged = _smp_map(target, patch, (), keys)
    return merged if merged is not None else {}


def _strip(value: Any) -> Any:
    """A patch value with no original to merge into: drop the directives it carries."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not k.startswith("$") and v is not None}
    if isinstance(value, list):
        return [_strip(v) for v in value if not (isinstance(v, dict) and "$patch" in v)]
    return value


def _smp_map(
    orig: dict[str, Any], patch: dict[str, Any], path: tuple[str, ...], keys: dict[str, str]
) -> dict[str, Any] | None:
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    if directive == "replace":
        return _strip(patch)  # type: ignore[no-any-return]
    if directive is not None:
        raise PatchError(f"unknown patch directive {directive!r}")
    result = copy.deepcopy(orig)
    orders: dict[str, list[Any]] = {}
    retain: list[str] | None = None
    for key, value in patch.items():
        if key == "$patch":
            continue
        if key == "$retainKeys":
            retain = list(value)
            continue
        if key.startswith("$setElementOrder/"):
            orders[key.split("/", 1)[1]] = list(value)
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list):
                result[field] = [v for v in result[field] if v not in value]
            continue
        if value is None:
            result.pop(key, None)
            continue
        sub = (*path, key)
        cur = result.get(key)
        if isinstance(value, dict):
            merged = _smp_map(cur if isinstance(cur, dict) else {}, value, sub, keys)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            result[key] = _smp_list(cur if isinstance(cur, list) else [], value, sub, keys)
        else:
            result[key] = value
    for field, order in orders.items():
        if isinstance(result.get(field), list):
            result[field] = _reorder(result[field], order, keys.get(".".join((*path, field))))
    if retain is not None:
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _smp_list(
    orig: list[Any], patch: list[Any], path: tuple[str, ...], keys: dict[str, str]
) -> list[Any]:
    strategy = keys.get(".".join(path))
    if strategy is None:
        return _strip(patch)  # type: ignore[no-any-return]
    if any(isinstance(i, dict) and i.get("$patch") == "replace" for i in patch):
        return [_strip(i) for i in patch if not (isinstance(i, dict) and "$patch" in i)]
    if strategy == MERGE:
        return list(orig) + [v for v in patch if v not in orig]
    result = copy.deepcopy(orig)
    for item in patch:
        if not isinstance(item, dict) or strategy not in item:
            raise PatchError(f"{'.'.join(path)}: every item needs the merge key {strategy!r}")
        idx = next(
            (
                i
                for i, o in enumerate(result)
                if isinstance(o, dict) and o.get(strategy) == item[strategy]
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if idx is not None:
                del result[idx]
            continue
        if idx is None:
            result.append(_strip(item))
        else:
            merged = _smp_map(result[idx], item, path, keys)
            if merged is not None:
                result[idx] = merged
    return result


def _reorder(items: list[Any], order: list[Any], strategy: str | None) -> list[Any]:
    def ident(v: Any) -> Any:
        if strategy not in (None, MERGE) and isinstance(v, dict):
            return v.get(strategy)
        return json.dumps(v, sort_keys=True)

    rank = {ident(v): i for i, v in enumerate(order)}
    return sorted(items, key=lambda v: rank.get(ident(v), len(rank)))


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"bad JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str]) -> tuple[Any, str]:
    if not parts:
        raise PatchError("the operation cannot target the whole document")
    cur = doc
    for part in parts[:-1]:
        cur = _child(cur, part)
    return cur, parts[-1]


def _child(cur: Any, part: str) -> Any:
    try:
        if isinstance(cur, list):
            return cur[int(part)]
        if isinstance(cur, dict):
            return cur[part]
    except (KeyError, IndexError, ValueError):
        pass
    raise PatchError(f"path component {part!r} not found")


def _add(doc: Any, parts: list[str], value: Any) -> None:
    parent, last = _parent(doc, parts)
    if isinstance(parent, list):
        idx = len(parent) if last == "-" else int(last)
        if not 0 <= idx <= len(parent):
            raise PatchError(f"index {last} out of range")
        parent.insert(idx, value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise PatchError("cannot add into a scalar")


def _remove(doc: Any, parts: list[str]) -> Any:
    parent, last = _parent(doc, parts)
    value = _child(parent, last)
    if isinstance(parent, list):
        del parent[int(last)]
    else:
        del parent[last]
    return value


def json_patch(target: Any, ops: Any) -> Any:
    """RFC 6902, applied to a copy."""
    if not isinstance(ops, list):
        raise PatchError("a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for op in ops:
        kind = op.get("op")
        parts = _pointer(op.get("path", ""))
        if kind == "add":
            _add(doc, parts, copy.deepcopy(op["value"]))
        elif kind == "remove":
            _remove(doc, parts)
        elif kind == "replace":
            _remove(doc, parts)
            _add(doc, parts, copy.deepcopy(op["value"]))
        elif kind in ("move", "copy"):
            src = _pointer(op["from"])
            value = _remove(doc, src) if kind == "move" else copy.deepcopy(_resolve(doc, src))
            _add(doc, parts, value)
        elif kind == "test":
            if _resolve(doc, parts) != op.get("value"):
                raise PatchError(f"test operation failed at {op.get('path')!r}")
        else:
            raise PatchError(f"unknown JSON patch op {kind!r}")
    return doc


def _resolve(doc: Any, parts: list[str]) -> Any:
    cur = doc
    for part in parts:
        cur = _child(cur, part)
    return cur


MERGE_PATCH = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, STRATEGIC)


def apply(content_type: str, target: dict[str, Any], body: Any, kind: str) -> dict[str, Any]:
    """Apply a decoded PATCH body of the given media type; PatchError if it cannot apply."""
    if content_type == MERGE_PATCH:
        result = merge_patch(target, body)
    elif content_type == STRATEGIC:
        result = strategic_merge_patch(target, body, kind)
    elif content_type == JSON_PATCH:
        result = json_patch(target, body)
    else:
        raise ValueError(content_type)
    if not isinstance(result, dict):
        raise PatchError("the patched document is not an object")
    return result
