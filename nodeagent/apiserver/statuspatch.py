"""The body of a pod status patch: a two-way strategic merge patch, as the kubelet sends it.

The kubelet's status manager (``syncPod``) merges its status into the API's copy
(``mergePodStatus``) and sends the difference between the two as computed by
``statusutil.PatchPodStatus``, that is ``strategicpatch.CreateTwoWayMergePatch`` over the Pod
type. This module does both, as pure functions of JSON documents:

- ``merge_status``: the status to have. Ours, except what other writers own: conditions the
  kubelet does not own (readiness gates, the scheduler's, a controller's DisruptionTarget)
  stay as the API has them; the kubelet's own conditions come from us, keeping the API's
  ``lastTransitionTime`` while their status holds; the shared ``DisruptionTarget`` is ours
  to add only as the pod turns terminal. ``startTime`` never moves once set, ``qosClass`` is
  the API's (immutable, set at creation), and top-level fields we do not compute
  (``nominatedNodeName``, ``resourceClaimStatuses`` ...) are kept.
- ``two_way_patch``: ``CreateTwoWayMergePatch``'s rules for the fields of a PodStatus.
  Lists tagged ``patchStrategy:"merge"`` (``conditions`` by ``type``, ``podIPs`` and
  ``hostIPs`` by ``ip``, ``resourceClaimStatuses`` by ``name``) are diffed item by item: a
  changed item is sent with its merge key and only its changed fields, a removed field as
  null; an item gone from the list is sent as ``{key: value, "$patch": "delete"}`` after
  the others; and whenever the list's items or order changed, ``$setElementOrder/<list>``
  lists every merge key in our order. A list the API lacks is sent whole, without a
  directive. Every other list (``containerStatuses``, ``initContainerStatuses``) is atomic
  and sent whole when it differs. A field we no longer have is sent as null.

Why the directives matter: kube-apiserver puts list items new to the live list *before* the
live ones (strategicpatch ``mergeSlice``) and then validates the pod (one IP per family,
``podIPs[0] == podIP``). A second sandbox's ``podIPs: [{ip: NEW}]`` sent alone merges into
``[NEW, OLD]`` and is refused with a 422, freezing the pod's API status; with the delete
directive and the element order it becomes ``[NEW]``.

Documents are compared as Go's ``omitempty`` encoding would see them: a missing field and an
empty one (None, "", {}, []) are the same, so a status equal but for empty fields gives an
empty patch and nothing is sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Obj = dict[str, Any]

# PodStatus lists with patchStrategy "merge", and their patchMergeKey (k8s.io/api core/v1).
MERGE_KEYS: Mapping[str, str] = {
    "conditions": "type",
    "podIPs": "ip",
    "hostIPs": "ip",
    "resourceClaimStatuses": "name",
}
# Pod conditions the kubelet owns (kubelet/types PodConditionByKubelet) and shares.
KUBELET_CONDITIONS = frozenset(
    {
        "PodScheduled",
        "Ready",
        "Initialized",
        "ContainersReady",
        "PodReadyToStartContainers",
        "PodResizeInProgress",
        "PodResizePending",
    }
)
SHARED_CONDITIONS = frozenset({"DisruptionTarget"})
# Top-level status fields the kubelet computes; any other field is another writer's.
KUBELET_FIELDS = frozenset(
    {
        "phase",
        "conditions",
        "message",
        "reason",
        "hostIP",
        "hostIPs",
        "podIP",
        "podIPs",
        "startTime",
        "initContainerStatuses",
        "containerStatuses",
        "ephemeralContainerStatuses",
        "qosClass",
    }
)
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
DELETE = "$patch"
ORDER_PREFIX = "$setElementOrder/"


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == {} or value == []


def omit_empty(value: Any) -> Any:
    """``value`` without None, "", {} and [] anywhere: Go's omitempty view of a document."""
    if isinstance(value, Mapping):
        out = {k: omit_empty(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if not _empty(v)}
    if isinstance(value, list):
        return [omit_empty(v) for v in value]
    return value


def status_patch(api: Mapping[str, Any] | None, ours: Mapping[str, Any]) -> Obj:
    """The strategic merge patch of ``status`` that turns the API's status into
    ``merge_status(api, ours)``; {} when there is nothing to send."""
    wanted = merge_status(api or {}, ours)
    return two_way_patch(omit_empty(api or {}), omit_empty(wanted), wanted)


def merge_status(api: Mapping[str, Any], ours: Mapping[str, Any]) -> Obj:
    """The status to have in the API: ``ours``, with what other writers own kept from ``api``
    (``mergePodStatus``, plus the fields the kubelet keeps: startTime, qosClass)."""
    merged: Obj = {k: v for k, v in api.items() if k not in KUBELET_FIELDS}
    merged.update(ours)
    for kept in ("startTime", "qosClass"):
        if not _empty(api.get(kept)):
            merged[kept] = api[kept]
    conditions = _merge_conditions(api, ours)
    if conditions:
        merged["conditions"] = conditions
    else:
        merged.pop("conditions", None)
    return merged


def _merge_conditions(api: Mapping[str, Any], ours: Mapping[str, Any]) -> list[Obj]:
    live = {c.get("type"): c for c in api.get("conditions") or []}
    result = [c for c in api.get("conditions") or [] if c.get("type") not in KUBELET_CONDITIONS]
    terminal = api.get("phase") not in TERMINAL_PHASES and ours.get("phase") in TERMINAL_PHASES
    for cond in ours.get("conditions") or []:
        kind = cond.get("type")
        if kind in SHARED_CONDITIONS and not terminal:
            continue  # sent once, as the pod turns terminal (its containers all stopped)
        if kind not in KUBELET_CONDITIONS and kind not in SHARED_CONDITIONS:
            continue
        prior = live.get(kind)
        if prior is not None and prior.get("status") == cond.get("status"):
            cond = {**cond, "lastTransitionTime": prior.get("lastTransitionTime")}
        if kind in SHARED_CONDITIONS:
            result = [c for c in result if c.get("type") != kind]
        result.append(cond)
    return result


def two_way_patch(
    original: Mapping[str, Any], modified: Mapping[str, Any], values: Mapping[str, Any]
) -> Obj:
    """``CreateTwoWayMergePatch(original, modified)`` for a PodStatus. ``original`` and
    ``modified`` are compared in omitempty form; what is sent comes from ``values`` (the
    modified status as it is): fields Go always encodes, such as a container's empty
    ``imageID``, must reach the server, whose decoders require them."""
    patch: Obj = {}
    for key, new in modified.items():
        if key not in original:
            patch[key] = _wire(values[key])
            continue
        old = original[key]
        if isinstance(old, dict) and isinstance(new, dict):
            sub = _diff_maps(old, new, values[key])
            if sub:
                patch[key] = sub
        elif isinstance(old, list) and isinstance(new, list) and key in MERGE_KEYS:
            patch.update(_diff_merge_list(key, old, new, values[key], MERGE_KEYS[key]))
        elif old != new:
            patch[key] = _wire(values[key])
    for key in original:
        if key not in modified:
            patch[key] = None
    return patch


def _diff_maps(original: Mapping[str, Any], modified: Mapping[str, Any], values: Any) -> Obj:
    """A map below the status: changed and added fields, removed ones as null; lists in it
    carry no merge strategy (atomic)."""
    patch: Obj = {}
    for key, new in modified.items():
        old = original.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            sub = _diff_maps(old, new, values[key])
            if sub:
                patch[key] = sub
        elif key not in original or old != new:
            patch[key] = _wire(values[key])
    for key in original:
        if key not in modified:
            patch[key] = None
    return patch


def _diff_merge_list(
    field: str, original: list[Any], modified: list[Any], values: list[Any], key: str
) -> Obj:
    """The patch entries for one merge list: ``field`` (changes, then deletions) and
    ``$setElementOrder/field``, as upstream's diffLists emits them for lists of maps."""
    before = {_ident(item, key): item for item in original}
    after = {_ident(item, key): (item, value) for item, value in zip(modified, values, strict=True)}
    changes: list[Obj] = []
    for ident, (item, value) in after.items():  # modified's order (normalizeSliceOrder)
        prior = before.get(ident)
        if prior is None:
            changes.append(_wire(value))
            continue
        sub = _diff_maps(prior, item, value)
        if sub:
            changes.append({**sub, key: item[key]})
    # Deletions follow, in the merge keys' sorted order (upstream sorts both lists to diff).
    deletions = [
        {key: before[ident][key], DELETE: "delete"} for ident in sorted(set(before) - set(after))
    ]
    items = changes + deletions
    out: Obj = {}
    if items:
        out[field] = items
    same_order = [i for i in before if i in after] == [i for i in after if i in before]
    if items or not same_order:
        out[ORDER_PREFIX + field] = [{key: item[key]} for item in modified]
    return out


def _wire(value: Any) -> Any:
    """A value as sent: without None (Go encodes an unset pointer as nothing, or null)."""
    if isinstance(value, Mapping):
        return {k: _wire(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_wire(v) for v in value]
    return value


def _ident(item: Any, key: str) -> str:
    """The merge key's value as upstream compares it (formatted with %v)."""
    value = item.get(key) if isinstance(item, Mapping) else item
    return str(value)
