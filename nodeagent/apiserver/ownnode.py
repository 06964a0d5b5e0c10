"""Our own Node as admission reads it: watched, and read again when a pod depends on it.

The kubelet judges a new pod by its Node's labels and taints as the API has them now, not as
it registered them: ``kubectl label node`` and taints count at once. So the Node is listed and
watched (``fieldSelector=metadata.name=<node>``, what the Node authorizer lets a node read).

A watch may lag: a label added just before a pod that selects it can reach us after the pod.
Upstream's predicate admit handler therefore reads the Node again, synchronously, when node
affinity is the only reason to refuse a pod, and judges it once more. Ours does the same
without blocking: ``recheck(uid)`` says whether the pod must wait for a fresh read (the caller
holds it), starts the GET, and calls ``on_read`` when it is done; a pod is re-read for once.
The newer copy (watched or read, by resourceVersion) is the Node.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog

from nodeagent.apiserver.client import ApiClient, ApiFailure
from nodeagent.apiserver.reflector import Reflector
from nodeagent.model.pod import PodUID

log = structlog.get_logger("nodeagent.apiserver.ownnode")

Obj = dict[str, Any]


class OwnNode:
    def __init__(
        self,
        client: ApiClient,
        *,
        node_name: str,
        watched: Reflector,
        registered: Callable[[], Obj | None],
        on_read: Callable[[], None],
    ) -> None:
        """``watched``: the watch of our own Node (one per agent: node registration runs it
        for the podCIDR); ``registered()``: the Node as we last wrote it (before the first
        list); ``on_read``: called after each re-read, to judge the waiting pods again."""
        self.client = client
        self.node_name = node_name
        self.reflector = watched
        self._registered = registered
        self._on_read = on_read
        self._fetched: Obj | None = None
        self._fetch: asyncio.Task[None] | None = None
        self._waiting: set[PodUID] = set()  # pods waiting for the read under way (or next)
        self._rechecked: set[PodUID] = set()  # pods judged against a read made for them

    async def close(self) -> None:
        if self._fetch is not None:
            self._fetch.cancel()
            await asyncio.gather(self._fetch, return_exceptions=True)

    def current(self) -> Obj | None:
        """The newest copy of our Node we have; None before it exists."""
        copies = [c for c in (self._watched(), self._fetched) if c is not None]
        if not copies:
            return self._registered()
        return max(copies, key=_resource_version)

    def labels(self) -> dict[str, str]:
        labels = ((self.current() or {}).get("metadata") or {}).get("labels") or {}
        return {str(k): str(v) for k, v in labels.items()}

    def recheck(self, uid: PodUID) -> bool:
        """Whether ``uid``, refused for node affinity, must wait for a fresh read of the
        Node (True: the read is under way), or has had one already (False: refuse it)."""
        if uid in self._rechecked:
            return False
        self._waiting.add(uid)
        if self._fetch is None:
            self._fetch = asyncio.create_task(self._read(), name="read-own-node")
        return True

    def keep(self, uids: set[PodUID]) -> None:
        """Forget the pods that are gone."""
        self._rechecked &= uids

    def _watched(self) -> Obj | None:
        return next(iter(self.reflector.objects.values()), None)

    async def _read(self) -> None:
        waiting = set(self._waiting)
        try:
            self._fetched = await self.client.request("GET", f"/api/v1/nodes/{self.node_name}")
        except ApiFailure as exc:  # judged by the watched copy then: no worse than before
            log.warning("node_read_failed", node=self.node_name, error=str(exc))
        self._rechecked |= waiting
        self._waiting -= waiting
        self._fetch = None
        if self._waiting:  # refused while the read was under way: a read of their own
            self._fetch = asyncio.create_task(self._read(), name="read-own-node")
        self._on_read()


def _resource_version(obj: Obj) -> int:
    """For picking the newer of two copies of one object. Opaque by contract; etcd revisions
    (integers that grow) in kube-apiserver, which is what makes this comparison hold."""
    version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
    return int(version) if version.isdigit() else 0
