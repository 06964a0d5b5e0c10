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
  The order of a merged list is upstream's (strategicpatch ``mergeSlice``, "enforce the
  order", then ``mergeSortedSlice``): the items the patch names (or ``$setElementOrder``
  lists) in the patch's order, the live-only items in their live order, the two interleaved
  by live position where both are live, and an item new to the list placed BEFORE the live
  ones it meets. So ``podIPs: [{ip: NEW}]`` onto ``[{ip: OLD}]`` gives ``[NEW, OLD]``, and only
  a ``$patch: delete`` of OLD (the kubelet's two-way diff) replaces it. Lists of primitives
  (finalizers) keep the live items first, as upstream's scalar merge does.
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
        if key.startswith("$setElementOrder/"):
            if not isinstance(value, list):
                raise PatchError(f"{key}: the element order must be a list")
            orders[key.split("/", 1)[1]] = value
        elif key == "$retainKeys":
            retain = list(value)
    for key, value in patch.items():
        if key == "$patch" or key == "$retainKeys" or key.startswith("$setElementOrder/"):
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
            live = cur if isinstance(cur, list) else []
            result[key] = _smp_list(live, value, sub, keys, orders.pop(key, None))
        else:
            result[key] = value
    for field, order in orders.items():  # an order with no list patch: reorder only
        if isinstance(result.get(field), list):
            result[field] = _smp_list(result[field], [], (*path, field), keys, order)
    if retain is not None:
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _smp_list(
    orig: list[Any],
    patch: list[Any],
    path: tuple[str, ...],
    keys: dict[str, str],
    order: list[Any] | None = None,
) -> list[Any]:
    strategy = keys.get(".".join(path))
    if strategy is None:
        return _strip(patch)  # type: ignore[no-any-return]
    if any(isinstance(i, dict) and i.get("$patch") == "replace" for i in patch):
        return [_strip(i) for i in patch if not (isinstance(i, dict) and "$patch" in i)]
    if strategy == MERGE:
        merged = list(orig) + [v for v in patch if v not in orig]
        if order is None:
            return merged
        return _enforce_order(merged, order, orig, _scalar_ident)
    result = copy.deepcopy(orig)
    named: list[Any] = []
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
        named.append(item)
        if idx is None:
            result.append(_strip(item))
        else:
            merged_item = _smp_map(result[idx], item, path, keys)
            if merged_item is not None:
                result[idx] = merged_item

    def ident(v: Any) -> Any:
        return v.get(strategy) if isinstance(v, dict) else json.dumps(v, sort_keys=True)

    return _enforce_order(result, named if order is None else order, orig, ident)


def _scalar_ident(v: Any) -> Any:
    return json.dumps(v, sort_keys=True)


def _enforce_order(merged: list[Any], order: list[Any], live: list[Any], ident: Any) -> list[Any]:
    """strategicpatch's normalizeElementOrder + mergeSortedSlice: the items ``order`` names,
    sorted by it; the live-only items, in live order; then merged, taking the live-only item
    first only when both items are live and it stands before the other there (so an item new
    to the list goes before the live ones)."""
    rank = {ident(v): i for i, v in enumerate(order)}
    live_rank = {ident(v): i for i, v in enumerate(live)}
    named = sorted((v for v in merged if ident(v) in rank), key=lambda v: rank[ident(v)])
    server = sorted(
        (v for v in merged if ident(v) not in rank), key=lambda v: live_rank.get(ident(v), 0)
    )
    out: list[Any] = []
    i = j = 0
    while i < len(server) or j < len(named):
        if j >= len(named):
            out.append(server[i])
            i += 1
        elif i >= len(server):
            out.append(named[j])
            j += 1
        else:
            left, right = live_rank.get(ident(server[i])), live_rank.get(ident(named[j]))
            if left is not None and right is not None and left < right:
                out.append(server[i])
                i += 1
            else:
                out.append(named[j])
                j += 1
    return out


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
