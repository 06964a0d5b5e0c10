"""What the pod status writer is told to write: each of this node's API pods, its status.

Pure. A pod refused here is Failed with the refusal's reason; one held for a missing
ConfigMap, Secret or token (with an error to tell) is Pending, every container waiting with
the reason, unless it ran before an agent restart; a pod this node ended on its own
(deleted, evicted) keeps its final status, never overwritten by the worker's older one;
every other pod has its worker's latest status. A static pod's status goes to its mirror
pod, when the mirror is the static pod's own (its annotation names the static pod's uid).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from nodeagent.apiserver.pods import MIRROR_ANNOTATION, ApiPods, Hold
from nodeagent.apiserver.statuswriter import Wanted
from nodeagent.model.pod import Pod, PodUID

Obj = dict[str, Any]


def wanted_statuses(
    api: ApiPods,
    *,
    final: Mapping[str, Obj],
    status_of: Callable[[PodUID], Obj | None],
    static: Mapping[str, tuple[Pod, str]],
    mirrors: Mapping[str, Obj],
) -> dict[str, Wanted]:
    """Per API pod uid, the status it should have (``status_of``: a worker's latest)."""
    result: dict[str, Wanted] = {}
    for uid, obj in api.objects.items():
        rejection = api.reject.get(uid)
        hold = api.hold.get(uid)
        if rejection is not None:
            status: Obj = {
                "phase": "Failed",
                "reason": rejection.reason,
                "message": rejection.message,
            }
        elif hold is not None:
            if not hold.error or (obj.get("status") or {}).get("phase") != "Pending":
                continue  # nothing to say yet, or a pod that ran before an agent restart
            status = held_status(obj, hold)
        elif uid in final:
            status = final[uid]
        else:
            found = status_of(uid)
            if found is None:
                continue
            status = found
        result[uid] = wanted(obj, status)
    for key, obj in mirrors.items():
        meta = obj.get("metadata") or {}
        entry = static.get(key)
        if entry is None or (meta.get("annotations") or {}).get(MIRROR_ANNOTATION) != entry[0].uid:
            continue
        found = status_of(entry[0].uid)
        if found is not None:
            result[str(meta.get("uid"))] = wanted(obj, found)
    return result


def wanted(obj: Obj, status: Obj) -> Wanted:
    meta = obj.get("metadata") or {}
    return Wanted(
        namespace=str(meta.get("namespace") or "default"),
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        status=status,
        observed=obj,
    )


def held_status(obj: Obj, hold: Hold) -> Obj:
    """A pod waiting for its references: Pending, every container waiting with the reason."""
    spec = obj.get("spec") or {}
    waiting = {"reason": hold.reason, "message": hold.message}

    def statuses(group: str) -> list[Obj]:
        return [
            {
                "name": c.get("name"),
                "image": c.get("image"),
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "started": False,
                "state": {"waiting": waiting},
            }
            for c in spec.get(group) or []
        ]

    status: Obj = {"phase": "Pending", "containerStatuses": statuses("containers")}
    # The API's conditions as they are: a two-way patch would delete the ones left out.
    status["conditions"] = (obj.get("status") or {}).get("conditions") or []
    if spec.get("initContainers"):
        status["initContainerStatuses"] = statuses("initContainers")
    return status
