"""Change tracking for the proxy: one tracker shape for services and for endpoints.

Upstream kube-proxy has two trackers (``ServiceChangeTracker``, ``EndpointsChangeTracker``)
whose results mean subtly different things, a known trap. Here there is one class, used twice
(``ChangeTracker[ServicePortInfo]`` and ``ChangeTracker[tuple[Endpoint, ...]]``), and its
result has exactly ONE meaning:

    ``apply()`` returns the set of service port keys whose value differs between the last
    ``apply()`` and now: added, removed or changed. Nothing else.

Between two applies, updates are merged per key as (value at the last apply, latest value)
pairs, the way ``servicechangetracker.go`` merges (previous, current): a key that changes and
changes back is no change at all and is dropped, so a pod that flaps between two syncs costs
no rule rewrite. ``replace`` takes a complete snapshot (our sources are level-triggered: the
manifest directory and the pod list are read whole) and turns it into such updates.

The union of both trackers' results is the set of service ports whose chains a partial sync
rewrites.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Generic, TypeVar

from nodeagent.proxy.state import ServicePortName

V = TypeVar("V")

_ABSENT = object()  # "no value", distinct from any value a caller may store


class ChangeTracker(Generic[V]):
    def __init__(self) -> None:
        self._applied: dict[ServicePortName, V] = {}  # as of the last apply()
        self._latest: dict[ServicePortName, V] = {}  # as of the last update
        # key -> value at the last apply (or _ABSENT), for keys touched since then.
        self._pending: dict[ServicePortName, object] = {}

    @property
    def current(self) -> Mapping[ServicePortName, V]:
        """The values as of the last ``apply()``: what the rules are built from."""
        return self._applied

    def update(self, key: ServicePortName, value: V | None) -> None:
        """Record the latest value of ``key``; None removes it."""
        before = self._applied.get(key, _ABSENT)
        if value is None:
            self._latest.pop(key, None)
        else:
            self._latest[key] = value
        after = self._latest.get(key, _ABSENT)
        if after == before:
            self._pending.pop(key, None)  # back where it was: no change after all
        else:
            self._pending[key] = before

    def replace(self, values: Mapping[ServicePortName, V]) -> None:
        """Make ``values`` the complete latest state: keys not in it are removed."""
        for key in [k for k in self._latest if k not in values]:
            self.update(key, None)
        for key, value in values.items():
            if self._latest.get(key, _ABSENT) != value:
                self.update(key, value)

    def pending(self) -> bool:
        return bool(self._pending)

    def apply(self) -> frozenset[ServicePortName]:
        """Adopt the latest values; return the keys that changed since the last apply."""
        changed = frozenset(self._pending)
        for key in changed:
            if key in self._latest:
                self._applied[key] = self._latest[key]
            else:
                self._applied.pop(key, None)
        self._pending.clear()
        return changed
