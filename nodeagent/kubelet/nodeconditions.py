"""Node condition transitions: when a condition changes, it is recorded, as the kubelet does.

A condition sampled now and then is a poor witness: a pressure that comes and goes between two
looks is never seen. So each change leaves a record, as upstream's node status setters leave
one (``pkg/kubelet/nodestatus``):

- the condition's ``lastTransitionTime``: when it took its present status, kept while the
  status holds;
- an event on the Node (type Normal, message ``Node <name> status is now: <reason>``) named as
  the kubelet names it: ``NodeReady``/``NodeNotReady``, ``NodeHasInsufficientMemory``/
  ``NodeHasSufficientMemory``, ``NodeHasDiskPressure``/``NodeHasNoDiskPressure``,
  ``NodeHasInsufficientPID``/``NodeHasSufficientPID``. As upstream, a pressure condition seen
  for the first time tells its status (a starting node says it has sufficient memory), while
  Ready tells only changes;
- ``nodeagent_node_condition_transitions_total{condition, status}``.

The decision is pure (``track``: the states known, a new sample, the time -> the new states
and the transitions). ``NodeConditionTracker`` holds the states and hands each transition to
a callback; the daemon sends the event where pod events go (the local ring, and the API in
cluster mode). Every sample the local status takes goes through it, so the status and the
record never disagree, and its own loop samples every ``interval_s`` so that a change is
recorded when nobody is looking. Samples are taken and observed on the event loop, in one
step: a sample taken in a thread could be observed after a later one, and tell a flap that
never happened. The API's Node keeps its own ``lastTransitionTime``, carried over from the
Node as the API holds it (``nodeagent.apiserver.node``), as upstream's setters carry it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from nodeagent import metrics
from nodeagent.kubelet.podstatus import rfc3339

log = structlog.get_logger("nodeagent.nodeconditions")

INTERVAL_S = 1.0  # how often the tracker samples (the local status' own sampling period)
# (condition, new status) -> the event upstream's setters record.
EVENT_REASONS: Mapping[tuple[str, str], str] = {
    ("Ready", "True"): "NodeReady",
    ("Ready", "False"): "NodeNotReady",
    ("MemoryPressure", "True"): "NodeHasInsufficientMemory",
    ("MemoryPressure", "False"): "NodeHasSufficientMemory",
    ("DiskPressure", "True"): "NodeHasDiskPressure",
    ("DiskPressure", "False"): "NodeHasNoDiskPressure",
    ("PIDPressure", "True"): "NodeHasInsufficientPID",
    ("PIDPressure", "False"): "NodeHasSufficientPID",
}
# Upstream's Ready setter records an event only when a known status changes.
_TOLD_WHEN_FIRST_SEEN = frozenset({"MemoryPressure", "DiskPressure", "PIDPressure"})

Condition = Mapping[str, Any]  # a NodeCondition as nodestatus renders it (type, status, ...)


@dataclass(frozen=True)
class ConditionState:
    status: str  # True, False or Unknown
    since: float  # wall-clock seconds: when it took this status


@dataclass(frozen=True)
class Transition:
    condition: str  # Ready, MemoryPressure, ...
    status: str  # the new status
    at: float  # wall-clock seconds
    reason: str  # the event's reason; "" when no event goes with it (Ready first seen)


@dataclass(frozen=True)
class Tracked:
    states: Mapping[str, ConditionState]  # condition type -> state
    transitions: tuple[Transition, ...]


def track(known: Mapping[str, ConditionState], sample: Sequence[Condition], now: float) -> Tracked:
    """The states after ``sample`` (taken at ``now``), and the changes it brings.

    A condition missing from the sample keeps its last state (nothing was said about it)."""
    states = dict(known)
    transitions = []
    for cond in sample:
        kind, status = str(cond.get("type")), str(cond.get("status"))
        before = known.get(kind)
        if before is not None and before.status == status:
            continue
        states[kind] = ConditionState(status, now)
        told = before is not None or kind in _TOLD_WHEN_FIRST_SEEN
        reason = EVENT_REASONS.get((kind, status), "") if told else ""
        transitions.append(Transition(kind, status, now, reason))
    return Tracked(states, tuple(transitions))


def stamped(
    sample: Sequence[Condition], states: Mapping[str, ConditionState]
) -> list[dict[str, Any]]:
    """``sample`` with each condition's ``lastTransitionTime`` (from ``states``)."""
    out = []
    for cond in sample:
        state = states.get(str(cond.get("type")))
        since = {"lastTransitionTime": rfc3339(state.since)} if state is not None else {}
        out.append({**cond, **since})
    return out


class NodeConditionTracker:
    """Records the transitions of the node's conditions (see the module docstring).

    ``sample`` runs on the loop: it must be cheap (the daemon's reads memory, disk and the
    process count, a few milliseconds). ``on_transition`` runs once per transition, in the
    order of the sample.
    """

    def __init__(
        self,
        sample: Callable[[], Sequence[Condition]],
        *,
        on_transition: Callable[[Transition], None],
        interval_s: float = INTERVAL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sample = sample
        self._on_transition = on_transition
        self.interval_s = interval_s
        self._clock = clock
        self.states: Mapping[str, ConditionState] = {}
        self.transitions = 0

    def observe(self, sample: Sequence[Condition]) -> list[dict[str, Any]]:
        """Take in one sample, just taken; return it stamped with the transition times."""
        tracked = track(self.states, sample, self._clock())
        self.states = tracked.states
        for change in tracked.transitions:
            self.transitions += 1
            metrics.node_condition_transition(change.condition, change.status)
            log.info(
                "node_condition_changed",
                condition=change.condition,
                status=change.status,
                reason=change.reason,
            )
            self._on_transition(change)
        return stamped(sample, tracked.states)

    async def run(self) -> None:
        while True:
            self.observe(self._sample())
            await asyncio.sleep(self.interval_s)
