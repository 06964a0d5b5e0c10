"""Pod status as kube-apiserver converts and validates it on every write.

- The v1 conversion (``Convert_v1_PodStatus_To_core_PodStatus`` and back): ``podIPs`` is the
  internal field; ``podIP`` alone fills it; when both are sent and ``podIP`` differs from
  ``podIPs[0]``, ``podIP`` is authoritative and ``podIPs`` becomes ``[podIP]`` (for old clients
  that only know ``podIP``). What is stored and served always has ``podIP == podIPs[0].ip``.
  ``hostIP``/``hostIPs`` alike.
- ``ValidatePodStatusUpdate`` (pkg/apis/core/validation), the rules a node agent can break:
  every ``podIPs``/``hostIPs`` entry a valid IP, at most one per IP family and no duplicates;
  ``qosClass`` immutable; a container whose old status is terminated may not turn
  non-terminated unless its restart policy would restart it (pod ``restartPolicy: Always``,
  ``OnFailure`` after a non-zero exit, a restartable init container: the container's own
  ``restartPolicy: Always``); ephemeral containers never restart.

A rejected update is a 422 Invalid whose message lists the field errors (``status.podIPs:
Invalid value: ...``) and whose ``details.causes`` carry them one by one; the stored pod is
left as it was.

Simplified: values in messages are rendered as JSON, not Go syntax; the metadata, condition
and resource-claim rules of the same function are not checked.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True)
class FieldError:
    """One cause of a 422, as ``field.Error`` renders it."""

    field: str
    reason: str  # FieldValueInvalid, FieldValueForbidden, FieldValueDuplicate
    detail: str
    value: Any = None

    def __str__(self) -> str:
        if self.reason == "FieldValueForbidden":
            return f"{self.field}: Forbidden: {self.detail}"
        if self.reason == "FieldValueDuplicate":
            return f"{self.field}: Duplicate value: {_render(self.value)}"
        return f"{self.field}: Invalid value: {_render(self.value)}: {self.detail}"

    def cause(self) -> Obj:
        return {"reason": self.reason, "message": str(self), "field": self.field}


def _render(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def convert(status: Obj) -> None:
    """The v1 -> internal -> v1 round trip of the IP fields, in place."""
    for single, plural in (("podIP", "podIPs"), ("hostIP", "hostIPs")):
        one = status.get(single) or ""
        many = status.get(plural) or []
        if one and (not many or not isinstance(many[0], dict) or many[0].get("ip") != one):
            status[plural] = [{"ip": one}]
        many = status.get(plural) or []
        if many and isinstance(many[0], dict) and many[0].get("ip"):
            status[single] = many[0]["ip"]
        else:
            status.pop(single, None)
            if not many:
                status.pop(plural, None)


def validate_update(old: Obj, new: Obj) -> list[FieldError]:
    """``ValidatePodStatusUpdate``'s rules above, for a pod going from ``old`` to ``new``."""
    old_status, new_status = old.get("status") or {}, new.get("status") or {}
    spec = old.get("spec") or {}
    errs: list[FieldError] = []
    old_qos, new_qos = old_status.get("qosClass") or "", new_status.get("qosClass") or ""
    if old_qos != new_qos:
        errs.append(
            FieldError("status.qosClass", "FieldValueInvalid", "field is immutable", new_qos)
        )
    errs += _transitions(new_status, old_status, spec, "containerStatuses", "containers")
    errs += _transitions(new_status, old_status, spec, "initContainerStatuses", "initContainers")
    errs += _transitions(new_status, old_status, spec, "ephemeralContainerStatuses", "")
    errs += _ips(new_status, "podIPs")
    errs += _ips(new_status, "hostIPs")
    return errs


def _should_restart(container: Obj | None, pod_policy: str, exit_code: int) -> bool:
    """podutil.ContainerShouldRestart without restart rules: the container's policy (set only
    on restartable init containers), else the pod's."""
    policy = (container or {}).get("restartPolicy") or pod_policy or "Always"
    if policy == "OnFailure":
        return exit_code != 0
    return policy == "Always"


def _transitions(new: Obj, old: Obj, spec: Obj, field: str, group: str) -> list[FieldError]:
    containers = {c.get("name"): c for c in spec.get(group) or []} if group else {}
    pod_policy = str(spec.get("restartPolicy") or "Always")
    new_by_name = {s.get("name"): s for s in new.get(field) or [] if isinstance(s, dict)}
    errs = []
    for i, before in enumerate(old.get(field) or []):
        terminated = (before.get("state") or {}).get("terminated")
        if terminated is None:
            continue
        after = new_by_name.get(before.get("name"))
        if after is None or (after.get("state") or {}).get("terminated") is not None:
            continue
        exit_code = int(terminated.get("exitCode") or 0)
        if group and _should_restart(containers.get(before.get("name")), pod_policy, exit_code):
            continue
        errs.append(
            FieldError(
                f"status.{field}[{i}].state",
                "FieldValueForbidden",
                "may not be transitioned to non-terminated state",
            )
        )
    return errs


def _ips(status: Obj, field: str) -> list[FieldError]:
    entries = status.get(field) or []
    errs: list[FieldError] = []
    families: list[int] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        ip = str((entry or {}).get("ip") or "") if isinstance(entry, dict) else ""
        try:
            families.append(ipaddress.ip_address(ip).version)
        except ValueError:
            errs.append(
                FieldError(
                    f"status.{field}[{i}]",
                    "FieldValueInvalid",
                    "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                    ip,
                )
            )
        if len(entries) > 1 and ip in seen:
            errs.append(FieldError(f"status.{field}[{i}]", "FieldValueDuplicate", "", entry))
        seen.add(ip)
    if len(entries) > 1 and (len(entries) > 2 or len(set(families)) != len(families)):
        errs.append(
            FieldError(
                f"status.{field}",
                "FieldValueInvalid",
                "may specify no more than one IP for each IP family",
                entries,
            )
        )
    return errs
