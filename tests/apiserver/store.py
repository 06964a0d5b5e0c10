"""The object store: what etcd plus the generic registry do for a real API server.

Follows the upstream docs:
- "API Concepts" / "Resource versions": one global counter, bumped by every write and set as
  the written object's ``metadata.resourceVersion``; a list carries the counter in its own
  metadata. A write that changes nothing (same bytes) is not a write: no new version, no
  event (etcd3 ``GuaranteedUpdate``).
- "Object Names and IDs": ``uid`` and ``creationTimestamp`` set on create; ``generateName``
  plus five random characters when no name is given; names validated as DNS subdomains
  (labels for Namespaces and Services).
- "API Concepts" / "Conflicts": a PUT or PATCH that carries a ``metadata.resourceVersion``
  other than the current one is a 409 Conflict; a ``metadata.uid`` other than the object's is
  a 409 "Precondition failed" (the kubelet puts the uid in its status patches for that).
- "Subresources": for kinds with a status subresource, writes to the object keep its status
  and writes to ``/status`` change only the status.
- "Finalizers" and "Pod Lifecycle" / "Termination of Pods" (graceful deletion): DELETE on a
  pod bound to a node sets ``deletionTimestamp`` (now + grace) and
  ``deletionGracePeriodSeconds`` and emits MODIFIED; the grace period is the body's or query's
  ``gracePeriodSeconds``, else the pod's ``terminationGracePeriodSeconds`` (30). A DELETE with
  0, or of an unscheduled or terminal pod, removes it (DELETED). A later DELETE may shorten the
  grace period, never lengthen it. Objects with finalizers stay, marked, until an update
  empties them. ``preconditions`` (uid, resourceVersion) that do not match are a 409.

Every read hands out a deep copy; stored dicts are never mutated in place (a ``Change`` in
the watch history shares them). All methods are synchronous: on one event loop, a write and
the events it causes are atomic. Controllers run as hooks after each commit, one change at a
time in commit order; a hook's own writes queue behind the change that caused them.
"""

from __future__ import annotations

import copy
import logging
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from tests.apiserver import errors
from tests.apiserver.admission import Admission
from tests.apiserver.patch import PatchError, apply
from tests.apiserver.resources import ALL, NAMESPACES, ResourceType
from tests.apiserver.selectors import FieldRequirement, LabelRequirement
from tests.apiserver.watch import (
    ADDED,
    BOOKMARK,
    DELETED,
    MODIFIED,
    Change,
    Filter,
    Subscription,
    WatchEvent,
    WatchHub,
    bookmark,
)

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Hook = Callable[[Change], None]
# An admission check of the request's user (NodeRestriction): (old or None, new) -> None or raise.
Guard = Callable[[Obj | None, Obj], None]
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # upstream's utilrand alphabet


def rfc3339(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def parse_rfc3339(text: str) -> float:
    import calendar

    return float(calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")))


def _meta(obj: Obj) -> Obj:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        raise errors.bad_request("metadata must be an object")
    return meta


def _same(a: Obj, b: Obj) -> bool:
    """Equal apart from resourceVersion: such an update is a no-op."""
    ma = {k: v for k, v in a.get("metadata", {}).items() if k != "resourceVersion"}
    mb = {k: v for k, v in b.get("metadata", {}).items() if k != "resourceVersion"}
    return ma == mb and {**a, "metadata": None} == {**b, "metadata": None}


class Store:
    def __init__(
        self,
        *,
        history_size: int = 1000,
        clock: Callable[[], float] = time.time,
        service_account_admission: bool = True,
    ) -> None:
        self.rv = 0
        self.clock = clock
        self.hub = WatchHub(history_size)
        self.admission = Admission(self, service_account_admission=service_account_admission)
        self._objects: dict[str, dict[tuple[str, str], Obj]] = {rt.key: {} for rt in ALL}
        self._hooks: list[Hook] = []
        self._pending: deque[Change] = deque()
        self._draining = False

    # -- reads ---------------------------------------------------------------------------

    def find(self, rt: ResourceType, namespace: str | None, name: str) -> Obj | None:
        """The stored object itself (do not mutate), or None."""
        return self._objects[rt.key].get(((namespace or "") if rt.namespaced else "", name))

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        obj = self.find(rt, namespace, name)
        if obj is None:
            raise errors.not_found(rt, name)
        return copy.deepcopy(obj)

    def items(self, rt: ResourceType, namespace: str | None = None) -> Iterator[Obj]:
        """Stored objects (do not mutate), in key order."""
        for (ns, _name), obj in sorted(self._objects[rt.key].items()):
            if namespace is None or ns == namespace:
                yield obj

    def list(
        self,
        rt: ResourceType,
        namespace: str | None = None,
        *,
        labels: list[LabelRequirement] | None = None,
        fields: list[FieldRequirement] | None = None,
    ) -> list[Obj]:
        flt = Filter(rt, namespace, labels or [], fields or [])
        return [copy.deepcopy(o) for o in self.items(rt, namespace) if flt.matches(o)]

    def watch(
        self,
        flt: Filter,
        resource_version: str | None,
        *,
        send_initial_events: bool = False,
    ) -> Subscription:
        """Open a watch; raises watch.Expired for a version older than the history."""
        initial: list[WatchEvent] = []
        if send_initial_events or resource_version in (None, "", "0"):
            initial = [(ADDED, copy.deepcopy(o)) for o in self.items(flt.rt) if flt.matches(o)]
            if send_initial_events:
                initial.append((BOOKMARK, bookmark(flt.rt, self.rv, initial_end=True)))
        if resource_version not in (None, "", "0") and not send_initial_events:
            initial = self.hub.replay(int(resource_version), flt)
        return self.hub.subscribe(flt, initial)

    # -- writes --------------------------------------------------------------------------

    def add_hook(self, hook: Hook) -> None:
        self._hooks.append(hook)

    def _commit(self, rt: ResourceType, kind: str, obj: Obj, prev: Obj | None) -> Obj:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        meta = obj["metadata"]
        key = (meta.get("namespace", "") if rt.namespaced else "", meta["name"])
        if kind == DELETED:
            self._objects[rt.key].pop(key, None)
        else:
            self._objects[rt.key][key] = obj
        change = Change(self.rv, rt, kind, obj, prev)
        self.hub.record(change)
        self._pending.append(change)
        if not self._draining:
            self._draining = True
            try:
                while self._pending:
                    queued = self._pending.popleft()
                    for hook in self._hooks:
                        try:
                            hook(queued)
                        except Exception:
                            log.exception("controller hook failed on %s", queued.type)
            finally:
                self._draining = False
        return obj

    def _generate_name(self, rt: ResourceType, namespace: str, prefix: str) -> str:
        for _ in range(100):
            name = prefix + "".join(secrets.choice(_NAME_CHARS) for _ in range(5))
            if self.find(rt, namespace, name) is None:
                return name
        raise errors.internal("could not generate a unique name")

    def create(
        self, rt: ResourceType, namespace: str | None, body: Obj, *, guard: Guard | None = None
    ) -> Obj:
        obj = copy.deepcopy(body)
        if not isinstance(obj, dict):
            raise errors.bad_request("the body must be a JSON object")
        meta = obj.setdefault("metadata", {})
        _meta(obj)
        self._check_type(rt, obj)
        ns = self._place(rt, namespace, meta)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = self._generate_name(rt, ns, meta["generateName"])
        name = meta.get("name") or ""
        if not name:
            raise errors.invalid(
                rt, "", "metadata.name: Required value: name or generateName is required"
            )
        self.admission.check_name(rt, name)
        if rt.namespaced:
            self._check_namespace_open(rt, ns, name)
        if self.find(rt, ns, name) is not None:
            raise errors.already_exists(rt, name)
        if meta.get("resourceVersion"):
            raise errors.internal("resourceVersion should not be set on objects to be created")
        for server_owned in ("deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
            meta.pop(server_owned, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = rfc3339(self.clock())
        if rt.kind == "Pod":  # pods track generation (PodObservedGenerationTracking)
            meta["generation"] = 1
        self.admission.on_create(rt, obj)
        if guard is not None:
            guard(None, obj)
        return copy.deepcopy(self._commit(rt, ADDED, obj, None))

    def _check_type(self, rt: ResourceType, obj: Obj) -> None:
        kind, api_version = obj.get("kind"), obj.get("apiVersion")
        if kind and kind != rt.kind:
            raise errors.bad_request(f"the kind in the body ({kind}) does not match {rt.kind}")
        if api_version and api_version != rt.api_version:
            raise errors.bad_request(
                f"the API version in the data ({api_version}) does not match the expected "
                f"API version ({rt.api_version})"
            )
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind

    def _place(self, rt: ResourceType, namespace: str | None, meta: Obj) -> str:
        if not rt.namespaced:
            meta.pop("namespace", None)
            return ""
        body_ns = meta.get("namespace")
        if body_ns and namespace and body_ns != namespace:
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on "
                "the request"
            )
        ns = namespace or body_ns or ""
        if not ns:
            raise errors.bad_request("a namespace is required for namespaced resources")
        meta["namespace"] = ns
        return str(ns)

    def _check_namespace_open(self, rt: ResourceType, ns: str, name: str) -> None:
        ns_obj = self.find(NAMESPACES, None, ns)
        if ns_obj is None:
            raise errors.not_found(NAMESPACES, ns)
        if ns_obj["metadata"].get("deletionTimestamp"):
            raise errors.forbidden(
                rt,
                name,
                f"unable to create new content in namespace {ns} because it is being terminated",
            )

    def update(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        body: Obj,
        *,
        subresource: str | None = None,
        guard: Guard | None = None,
    ) -> Obj:
        cur = self.find(rt, namespace, name)
        new = copy.deepcopy(body)
        if not isinstance(new, dict):
            raise errors.bad_request("the body must be a JSON object")
        meta = new.setdefault("metadata", {})
        _meta(new)
        if meta.get("name") and meta["name"] != name:
            raise errors.bad_request(
                f"the name of the object ({meta['name']}) does not match the name on the URL "
                f"({name})"
            )
        if cur is None:
            if rt.allow_create_on_update and subresource is None:
                meta["name"] = name
                meta.pop("resourceVersion", None)
                return self.create(rt, namespace, new, guard=guard)
            raise errors.not_found(rt, name)
        self._check_type(rt, new)
        self._place(rt, namespace, meta)
        self._check_preconditions(rt, cur, meta.get("uid"), meta.get("resourceVersion"))
        merged = self._merge_update(rt, cur, new, subresource)
        self.admission.on_update(rt, cur, merged, subresource)
        if guard is not None:
            guard(cur, merged)
        if _same(merged, cur):
            return copy.deepcopy(cur)
        mmeta = merged["metadata"]
        if (
            mmeta.get("deletionTimestamp")
            and not mmeta.get("finalizers")
            and not mmeta.get("deletionGracePeriodSeconds")
        ):
            return copy.deepcopy(self._commit(rt, DELETED, merged, cur))
        return copy.deepcopy(self._commit(rt, MODIFIED, merged, cur))

    def _check_preconditions(
        self, rt: ResourceType, cur: Obj, uid: str | None, resource_version: str | None
    ) -> None:
        meta = cur["metadata"]
        if uid and uid != meta["uid"]:
            raise errors.conflict(
                rt,
                meta["name"],
                f"Precondition failed: UID in precondition: {uid}, UID in object meta: "
                f"{meta['uid']}",
            )
        if resource_version and resource_version != meta["resourceVersion"]:
            raise errors.conflict(rt, meta["name"], errors.STALE)

    def _merge_update(self, rt: ResourceType, cur: Obj, new: Obj, subresource: str | None) -> Obj:
        if subresource == "status":
            merged = copy.deepcopy(cur)
            if "status" in new:
                merged["status"] = new["status"]
            else:
                merged.pop("status", None)
            return merged
        merged = new
        if rt.status_subresource:
            if "status" in cur:
                merged["status"] = copy.deepcopy(cur["status"])
            else:
                merged.pop("status", None)
        meta, old = merged["metadata"], cur["metadata"]
        for owned in (
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "resourceVersion",
        ):
            if owned in old:
                meta[owned] = old[owned]
            else:
                meta.pop(owned, None)
        if "generation" in old and merged.get("spec") != cur.get("spec"):
            meta["generation"] = int(old.get("generation", 0)) + 1
        return merged

    def patch(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        content_type: str,
        body: Any,
        *,
        subresource: str | None = None,
        guard: Guard | None = None,
    ) -> Obj:
        cur = self.find(rt, namespace, name)
        if cur is None:
            raise errors.not_found(rt, name)
        try:
            patched = apply(content_type, copy.deepcopy(cur), body, rt.kind)
        except (PatchError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise errors.invalid(rt, name, f"the patch does not apply: {exc}") from exc
        return self.update(rt, namespace, name, patched, subresource=subresource, guard=guard)

    def delete(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        *,
        grace_period: int | None = None,
        preconditions: Obj | None = None,
        guard: Guard | None = None,
    ) -> tuple[Obj, bool]:
        """Delete or start deleting; returns (object, whether it is gone)."""
        cur = self.find(rt, namespace, name)
        if cur is None:
            raise errors.not_found(rt, name)
        if guard is not None:
            guard(cur, cur)
        pre = preconditions or {}
        meta = cur["metadata"]
        if pre.get("uid") and pre["uid"] != meta["uid"]:
            raise errors.conflict(
                rt,
                name,
                f"Precondition failed: UID in precondition: {pre['uid']}, UID in object meta: "
                f"{meta['uid']}",
            )
        if pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]:
            raise errors.conflict(
                rt,
                name,
                f"Precondition failed: ResourceVersion in precondition: "
                f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                f"{meta['resourceVersion']}",
            )
        now = self.clock()
        if rt is NAMESPACES:
            if name in ("default", "kube-system", "kube-public"):
                raise errors.forbidden(rt, name, "this namespace may not be deleted")
            if meta.get("deletionTimestamp"):
                return copy.deepcopy(cur), False
            obj = copy.deepcopy(cur)
            obj["metadata"]["deletionTimestamp"] = rfc3339(now)
            obj.setdefault("status", {})["phase"] = "Terminating"
            return copy.deepcopy(self._commit(rt, MODIFIED, obj, cur)), False
        grace = self.admission.deletion_grace(rt, cur, grace_period)
        if grace > 0:
            obj = copy.deepcopy(cur)
            omet = obj["metadata"]
            if omet.get("deletionTimestamp"):
                old_grace = omet.get("deletionGracePeriodSeconds")
                if old_grace is None or grace >= old_grace:
                    return obj, False
                start = parse_rfc3339(omet["deletionTimestamp"]) - old_grace
                omet["deletionTimestamp"] = rfc3339(start + grace)
            else:
                omet["deletionTimestamp"] = rfc3339(now + grace)
                if "generation" in omet:
                    omet["generation"] = int(omet["generation"]) + 1
            omet["deletionGracePeriodSeconds"] = grace
            return copy.deepcopy(self._commit(rt, MODIFIED, obj, cur)), False
        if meta.get("finalizers"):
            obj = copy.deepcopy(cur)
            omet = obj["metadata"]
            omet.setdefault("deletionTimestamp", rfc3339(now))
            omet["deletionGracePeriodSeconds"] = 0
            if _same(obj, cur):
                return obj, False
            return copy.deepcopy(self._commit(rt, MODIFIED, obj, cur)), False
        return copy.deepcopy(self._commit(rt, DELETED, copy.deepcopy(cur), cur)), True

    def replace(self, rt: ResourceType, obj: Obj) -> Obj:
        """Store ``obj`` over the current object with no admission or preconditions (for
        controllers and the binding subresource). A no-op write is skipped, as in update."""
        meta = obj["metadata"]
        cur = self.find(rt, meta.get("namespace"), meta["name"])
        if cur is None:
            raise errors.not_found(rt, meta["name"])
        if _same(obj, cur):
            return copy.deepcopy(cur)
        return copy.deepcopy(self._commit(rt, MODIFIED, copy.deepcopy(obj), cur))

    def remove(self, rt: ResourceType, namespace: str | None, name: str) -> None:
        """Remove at once, whatever the finalizers or grace period (namespace finalization)."""
        cur = self.find(rt, namespace, name)
        if cur is not None:
            self._commit(rt, DELETED, copy.deepcopy(cur), cur)

    # -- test hooks ----------------------------------------------------------------------

    def compact(self) -> None:
        """Drop the whole watch history (a watch from any older version gets 410)."""
        self.hub.compact(self.rv)

    def dump(self) -> Obj:
        """Everything needed to restart with the same objects and versions."""
        return {
            "resourceVersion": self.rv,
            "objects": {key: list(objs.values()) for key, objs in self._objects.items()},
        }

    def load(self, state: Obj) -> None:
        """Restore a ``dump``; the history starts empty at the restored version."""
        by_key = {rt.key: rt for rt in ALL}
        for key, objs in state["objects"].items():
            rt = by_key[key]
            for obj in objs:
                meta = obj["metadata"]
                self._objects[key][
                    (meta.get("namespace", "") if rt.namespaced else "", meta["name"])
                ] = obj
        self.rv = int(state["resourceVersion"])
        self.hub.compact(self.rv)
