"""Node-pressure eviction for memory, as the kubelet's eviction manager does it (hard only).

The decision is pure: from a memory reading, the ``--eviction-hard`` threshold and the pods
that run here, ``decide`` says whether the node is under MemoryPressure and which one pod to
evict now. The monitor (``EvictionMonitor``) only reads, decides and calls back; how memory is
read and how a pod is evicted are injected by the daemon, so this module imports no effects.

Facts matched (upstream's node-pressure eviction):

- the signal is ``memory.available``: the node's available memory, compared with the
  threshold (an absolute quantity, or a percentage of the node's total memory);
- at most one pod is evicted per monitoring pass (every 10 s), and the next pass waits
  until the victim is cleaned up (at most 30 s), so that the memory it frees is seen before
  another one is chosen;
- ranking: pods whose memory use exceeds their requests first, then lower priority first,
  then larger use above requests first. A BestEffort pod requests nothing, so any use
  exceeds it; Guaranteed and Burstable pods within their requests come last;
- an evicted pod ends ``Failed`` with reason ``Evicted`` and a message naming the resource,
  a ``DisruptionTarget`` condition (reason ``TerminationByKubelet``) and its containers
  terminated; the API is told once they have stopped (a pod is never reported terminal
  while its containers still run);
- the MemoryPressure condition stays True for the pressure transition period (5 minutes)
  after the last reading below the threshold, so that it does not flap; evictions follow the
  readings themselves.

Where a pod's use is not known (no stats from the runtime), a pod with no memory request
counts as exceeding it and one with a request as within it, so QoS orders them as above:
BestEffort, then Burstable, then Guaranteed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from nodeagent.config import EvictionThreshold
from nodeagent.model.pod import Pod, PodUID

log = structlog.get_logger("nodeagent.eviction")

EVICTED_REASON = "Evicted"
DISRUPTION_TARGET = "DisruptionTarget"  # the condition upstream adds to a pod it evicts
DISRUPTION_REASON = "TerminationByKubelet"
PRESSURE_TRANSITION_S = 300.0  # upstream's --eviction-pressure-transition-period
POD_CLEANUP_TIMEOUT_S = 30.0  # how long a pass waits for its victim to be gone (upstream's)
_QOS_ORDER = {"BestEffort": 0, "Burstable": 1, "Guaranteed": 2}


@dataclass(frozen=True)
class MemoryReading:
    available_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class Candidate:
    """A running pod as the ranking sees it."""

    uid: PodUID
    key: str  # namespace/name
    qos: str  # BestEffort, Burstable or Guaranteed
    memory_request_bytes: int  # the sum of its containers' requests (limits when unset)
    usage_bytes: int | None = None  # None: the runtime reported no use
    priority: int = 0


@dataclass(frozen=True)
class Decision:
    under_pressure: bool
    threshold_bytes: int
    victim: Candidate | None
    message: str  # why the node is (not) under pressure; the victim's status message


def threshold_bytes(threshold: EvictionThreshold, total_bytes: int) -> int:
    if threshold.percent is not None:
        return int(total_bytes * threshold.percent / 100)
    return threshold.quantity_bytes or 0


def exceeds_requests(pod: Candidate) -> bool:
    if pod.usage_bytes is None:
        return pod.memory_request_bytes == 0
    return pod.usage_bytes > pod.memory_request_bytes


def rank(pods: Sequence[Candidate]) -> list[Candidate]:
    """Pods in eviction order, first to go first."""

    def key(pod: Candidate) -> tuple[int, int, int, int, str]:
        above = (pod.usage_bytes or 0) - pod.memory_request_bytes
        return (
            0 if exceeds_requests(pod) else 1,
            pod.priority,
            -above,
            _QOS_ORDER.get(pod.qos, 0),
            pod.key,  # a stable order between equals
        )

    return sorted(pods, key=key)


def decide(
    threshold: EvictionThreshold, reading: MemoryReading, pods: Sequence[Candidate]
) -> Decision:
    limit = threshold_bytes(threshold, reading.total_bytes)
    available = _mi(reading.available_bytes)
    if reading.available_bytes >= limit:
        return Decision(False, limit, None, f"{available} available")
    message = (
        f"The node was low on resource: memory. Threshold quantity: {_mi(limit)}, "
        f"available: {available}."
    )
    ranked = rank(pods)
    return Decision(True, limit, ranked[0] if ranked else None, message)


def candidate(pod: Pod, qos: str, usage_bytes: int | None = None) -> Candidate:
    request = 0
    for c in pod.spec.containers:
        r = c.resources
        # An unset request defaults to the limit, as the API server defaults it.
        request += r.memory_request_bytes or r.memory_limit_bytes or 0
    return Candidate(
        uid=pod.uid, key=pod.key, qos=qos, memory_request_bytes=request, usage_bytes=usage_bytes
    )


def _mi(value: int) -> str:
    return f"{value // 2**20}Mi"


class EvictionMonitor:
    """Every ``interval_s``: read memory, decide, evict at most one pod.

    ``read`` may block (it runs in a thread); ``pods`` runs on the loop; ``evict`` starts the
    eviction and returns an awaitable that ends when the pod is gone from the runtime.
    """

    def __init__(
        self,
        threshold: EvictionThreshold,
        *,
        read: Callable[[], MemoryReading],
        pods: Callable[[], Sequence[Candidate]],
        evict: Callable[[Candidate, str], Awaitable[None]],
        interval_s: float,
        transition_s: float = PRESSURE_TRANSITION_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self._read, self._pods, self._evict = read, pods, evict
        self.interval_s = interval_s
        self.transition_s = transition_s
        self._clock = clock
        self.last: Decision | None = None
        self.reading: MemoryReading | None = None
        self.checks = 0
        self.evictions = 0
        self._pressure_seen: float | None = None  # clock time of the last reading below

    @property
    def under_pressure(self) -> bool | None:
        """The MemoryPressure condition; None until the first reading."""
        if self.last is None:
            return None
        seen = self._pressure_seen
        return seen is not None and self._clock() - seen < self.transition_s

    def report(self) -> dict[str, Any]:
        """For the status JSON: what the last pass saw."""
        last, reading = self.last, self.reading
        return {
            "threshold": str(self.threshold),
            "checks": self.checks,
            "evictions": self.evictions,
            **(
                {
                    "availableBytes": reading.available_bytes,
                    "thresholdBytes": last.threshold_bytes,
                    "belowThreshold": last.under_pressure,
                }
                if last is not None and reading is not None
                else {}
            ),
        }

    async def check(self) -> Decision:
        reading = await asyncio.to_thread(self._read)
        decision = decide(self.threshold, reading, self._pods())
        if self.last is None or decision.under_pressure != self.last.under_pressure:
            log.info(
                "memory_pressure" if decision.under_pressure else "memory_sufficient",
                available_bytes=reading.available_bytes,
                threshold_bytes=decision.threshold_bytes,
            )
        if decision.under_pressure:
            self._pressure_seen = self._clock()
        self.last, self.reading = decision, reading
        self.checks += 1
        if decision.victim is not None:
            victim = decision.victim
            log.warning("pod_evicting", pod=victim.key, uid=victim.uid, reason=EVICTED_REASON)
            gone = self._evict(victim, decision.message)
            self.evictions += 1
            try:
                async with asyncio.timeout(POD_CLEANUP_TIMEOUT_S):
                    await gone
            except TimeoutError:
                log.warning("evicted_pod_not_cleaned_up", pod=victim.key, uid=victim.uid)
        return decision

    async def run(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self.interval_s)


def evicted_status(last: Mapping[str, Any] | None, message: str, *, now: str) -> dict[str, Any]:
    """An evicted pod's final PodStatus, from its last one (after the kill: the stopped
    containers as the runtime reported them), as upstream's eviction manager writes it:
    Failed, reason Evicted, the message naming the resource; nothing ready; a
    ``DisruptionTarget`` condition (reason TerminationByKubelet, the same message); every
    container terminated (one never seen stopped as upstream's ContainerStatusUnknown)."""
    status = dict(last or {})
    status.update(phase="Failed", reason=EVICTED_REASON, message=message)
    conditions = []
    for cond in status.get("conditions") or []:
        if cond.get("type") == DISRUPTION_TARGET:
            continue
        if cond.get("type") in ("Ready", "ContainersReady") and cond.get("status") != "False":
            cond = {**cond, "status": "False", "reason": "PodFailed", "lastTransitionTime": now}
        conditions.append(cond)
    conditions.append(
        {
            "type": DISRUPTION_TARGET,
            "status": "True",
            "reason": DISRUPTION_REASON,
            "message": message,
            "lastProbeTime": None,
            "lastTransitionTime": now,
        }
    )
    status["conditions"] = conditions
    for key in ("containerStatuses", "initContainerStatuses"):
        if key in status:
            status[key] = [_stopped(c) for c in status[key]]
    return status


def _stopped(container: Mapping[str, Any]) -> dict[str, Any]:
    state = container.get("state") or {}
    stopped = {**container, "ready": False, "started": False}
    if "terminated" not in state:
        stopped["state"] = {
            "terminated": {
                "exitCode": 137,
                "reason": "ContainerStatusUnknown",
                "message": "The container could not be located when the pod was terminated",
            }
        }
    return stopped
