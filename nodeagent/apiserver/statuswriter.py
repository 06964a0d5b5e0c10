"""Pod status to the API server: ``PATCH pods/<name>/status``, only what changed.

Follows the kubelet's status manager:
- The patch is a strategic merge patch carrying ``metadata.uid`` as a precondition (a pod
  replaced by a namesake answers 409 instead of receiving a stranger's status).
  ``conditions`` merge by ``type``, so only changed conditions are sent and conditions other
  writers own (DisruptionTarget, say) are left alone; ``containerStatuses``,
  ``initContainerStatuses`` and ``ephemeralContainerStatuses`` are atomic lists and are sent
  whole.
- "Changed" is judged against the API's own copy (from the watch, or from our last patch's
  answer, whichever is newer), compared as Go's ``omitempty`` would: a missing field and an
  empty one are the same. A condition whose status, reason and message hold keeps the API's
  ``lastTransitionTime``: a restarted agent does not rewrite every pod, and ``startTime``
  is never moved once set.
- Coalesced: one pass every ``interval_s`` (or sooner, on ``wake``) sends each pod's latest
  status once, however often it changed in between. A pass sends its patches concurrently
  (at most ``MAX_IN_FLIGHT`` at once, one per pod): in a burst of new pods a pod's patch
  does not queue behind every other pod's round trip to a busy API server (sent one after
  the other, a 30-pod burst's patches reached the API up to 1 s after their containers
  started, on 2 cores). One pod never has two patches of one pass in flight, and passes do
  not overlap, so a pod's patches stay in order.
- A pass wakes on every pod event (our own patches come back as events too) and on every
  change of a pod's IP, readiness or phase: in a burst, most passes find most pods in sync.
  A pod found in sync is remembered with the very objects compared (its wanted status, the
  API's copy), and skipped while both are the same objects: statuses and API objects are
  replaced when they change, never changed in place (``compute_status``, the reflector and
  the patch answers all make new ones). Comparing two statuses field by field is what a
  pass otherwise spends its time on (2 ms per pass at 30 pods).
- Failures: 5xx, 429 and no answer end the pass (no further patch of it starts) and retry
  after a backoff; 409 re-reads the pod (another incarnation, or our copy was stale); 404
  drops it (the pod is gone). Any other refusal is logged once per distinct status, not
  retried in a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from lightkube.resources.core_v1 import PodStatus as PodStatusResource
from lightkube.types import PatchType

from nodeagent.apiserver.client import ApiClient, ApiFailure, api_errors
from nodeagent.apiserver.reflector import Backoff

log = structlog.get_logger("nodeagent.apiserver.status")

Obj = dict[str, Any]

INTERVAL_S = 0.5
MAX_IN_FLIGHT = 8  # patches of one pass sent at once
_SCALARS = ("phase", "hostIP", "podIP", "qosClass", "reason", "message", "nominatedNodeName")
_LISTS = (
    "hostIPs",
    "podIPs",
    "initContainerStatuses",
    "containerStatuses",
    "ephemeralContainerStatuses",
)
_CONDITION_KEYS = ("status", "reason", "message")


@dataclass(frozen=True)
class Wanted:
    """A status to have in the API: for the pod ``namespace/name`` with this ``uid``.

    ``observed`` is the pod as the watch last showed it (None: not seen yet); its status is
    the base a patch is computed against.
    """

    namespace: str
    name: str
    uid: str
    status: Obj
    observed: Obj | None = None


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


def status_patch(base: Obj | None, new: Obj) -> Obj:
    """The part of ``new`` that ``base`` lacks, as a strategic merge patch of ``status``."""
    old = omit_empty(base or {})
    cur = omit_empty(new)
    patch: Obj = {}
    for key in (*_SCALARS, *_LISTS):
        if key in cur and cur[key] != old.get(key):
            patch[key] = new[key]
    if "startTime" in cur and "startTime" not in old:
        patch["startTime"] = new["startTime"]
    before = {c.get("type"): c for c in old.get("conditions") or []}
    changed = []
    for cond in cur.get("conditions") or []:
        prior = before.get(cond.get("type"))
        if prior is None or any(prior.get(k) != cond.get(k) for k in _CONDITION_KEYS):
            # A merged condition keeps the fields the patch leaves out: null clears them.
            cleared = {k: None for k in _CONDITION_KEYS if k in (prior or {}) and k not in cond}
            changed.append({**cond, **cleared})
    if changed:
        patch["conditions"] = changed
    return patch


def _newer(a: str, b: str) -> bool:
    """Whether resourceVersion ``a`` is newer than ``b``. Versions are opaque to clients,
    but etcd's are integers; anything else counts as newer, so a fresh copy is never lost."""
    if a.isdigit() and b.isdigit():
        return int(a) > int(b)
    return a != b


def _version(obj: Obj | None) -> str:
    return str(((obj or {}).get("metadata") or {}).get("resourceVersion") or "")


class PodStatusWriter:
    def __init__(
        self,
        client: ApiClient,
        *,
        wanted: Callable[[], Mapping[str, Wanted]],
        interval_s: float = INTERVAL_S,
        backoff: Backoff | None = None,
    ) -> None:
        self.client = client
        self._wanted = wanted
        self._interval_s = interval_s
        self._backoff = backoff or Backoff(initial_s=1.0, cap_s=30.0)
        self._wake = asyncio.Event()
        self._answers: dict[str, Obj] = {}  # uid -> the pod our last patch returned
        self._refused: dict[str, Obj] = {}  # uid -> a status the API refused (not retried)
        self._gone: set[str] = set()  # uids the API no longer has
        # uid -> (wanted status, the API's copy) last compared and found equal
        self._in_sync: dict[str, tuple[Obj, Obj | None]] = {}
        self.patches = 0

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            # that lands just as the event is set, and the task would never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval_s):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.write_all()
                self._backoff.reset()
            except ApiFailure as exc:
                delay = self._backoff.next_delay()
                log.warning("pod_status_failed", error=str(exc), retry_in_s=round(delay, 2))
                await asyncio.sleep(delay)

    async def write_all(self) -> None:
        """One pass: patch every pod whose wanted status the API does not show yet.
        Raises ApiFailure for failures worth retrying (the pass stops there)."""
        wanted = self._wanted()
        for uid in set(self._answers) - set(wanted):
            del self._answers[uid]
        self._refused = {u: s for u, s in self._refused.items() if u in wanted}
        self._gone &= set(wanted)
        self._in_sync = {u: pair for u, pair in self._in_sync.items() if u in wanted}
        writes = []
        for uid, item in wanted.items():
            if uid in self._gone or self._refused.get(uid) == item.status:
                continue
            base = self._base(item)
            seen = self._in_sync.get(uid)
            if seen is not None and seen[0] is item.status and seen[1] is base:
                continue
            patch = status_patch((base or {}).get("status"), item.status)
            if patch:
                writes.append((item, patch))
            else:
                self._in_sync[uid] = (item.status, base)
        await self._write_concurrently(writes)

    async def _write_concurrently(self, writes: list[tuple[Wanted, Obj]]) -> None:
        """Send the patches, ``MAX_IN_FLIGHT`` at a time; after a failure worth retrying no
        further one starts, and the first such failure is raised once the others are done."""
        limit = asyncio.Semaphore(MAX_IN_FLIGHT)
        failures: list[ApiFailure] = []

        async def one(item: Wanted, patch: Obj) -> None:
            async with limit:
                if failures:
                    return
                try:
                    await self._write(item, patch)
                except ApiFailure as exc:
                    failures.append(exc)

        await asyncio.gather(*(one(item, patch) for item, patch in writes))
        if failures:
            raise failures[0]

    async def write_now(self, item: Wanted) -> None:
        """Patch ``item`` at once, outside the periodic pass (a deleted pod's final status,
        which must be in the API before the pod is deleted). Raises ApiFailure for failures
        worth retrying; a pod the API no longer has is quietly skipped."""
        if item.uid in self._gone:
            return
        patch = status_patch((self._base(item) or {}).get("status"), item.status)
        if patch:
            await self._write(item, patch)

    def _base(self, item: Wanted) -> Obj | None:
        answer = self._answers.get(item.uid)
        if answer is None or (
            item.observed is not None and _newer(_version(item.observed), _version(answer))
        ):
            return item.observed
        return answer

    async def _write(self, item: Wanted, patch: Obj) -> None:
        body = {"metadata": {"uid": item.uid}, "status": patch}
        try:
            with api_errors():
                answer = await self.client.typed.patch(
                    PodStatusResource,
                    item.name,
                    body,
                    namespace=item.namespace,
                    patch_type=PatchType.STRATEGIC,
                )
        except ApiFailure as exc:
            if exc.retryable:
                raise
            if exc.not_found:
                self._gone.add(item.uid)
            elif exc.conflict:
                await self._reread(item)
            else:
                log.warning(
                    "pod_status_refused", pod=f"{item.namespace}/{item.name}", error=str(exc)
                )
                self._refused[item.uid] = item.status
            return
        self.patches += 1
        self._answers[item.uid] = answer.to_dict()
        log.debug("pod_status_patched", pod=f"{item.namespace}/{item.name}", fields=sorted(patch))

    async def _reread(self, item: Wanted) -> None:
        try:
            pod = await self.client.request(
                "GET", f"/api/v1/namespaces/{item.namespace}/pods/{item.name}"
            )
        except ApiFailure as exc:
            if exc.not_found:
                self._gone.add(item.uid)
                return
            raise
        if (pod.get("metadata") or {}).get("uid") != item.uid:
            self._gone.add(item.uid)  # a namesake: ours is gone
        else:
            self._answers[item.uid] = pod
