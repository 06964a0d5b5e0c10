"""Restart and image-pull backoff, the kubelet's way, as pure functions.

A key (a container name, or an image) that fails gets a delay of 10 s, doubling on each
further failure up to 300 s. The delay is measured from the moment of failure (the
container's finish time), so the first restart is immediate and the second waits 10 s, as
upstream. An entry that has not been touched for twice the cap is forgotten, and a container
that ran cleanly for 10 minutes starts again from the initial delay.
"""

from __future__ import annotations

from dataclasses import dataclass

INITIAL_S = 10.0
CAP_S = 300.0
RESET_AFTER_RUNNING_S = 600.0


@dataclass(frozen=True)
class Backoff:
    delay_s: float  # the delay that applies to the next failure
    updated_at: float  # wall-clock seconds of the last advance


def expired(entry: Backoff | None, *, now: float) -> bool:
    return entry is None or now - entry.updated_at > 2 * CAP_S


def wait_until(entry: Backoff | None, *, failed_at: float, now: float) -> float | None:
    """When the key may be retried, if it is still backing off; None if it may go now."""
    if entry is None or expired(entry, now=now):
        return None
    until = failed_at + entry.delay_s
    return until if now < until else None


def advance(entry: Backoff | None, *, now: float) -> Backoff:
    """Record a retry: the next failure waits twice as long, up to the cap."""
    if entry is None or expired(entry, now=now):
        return Backoff(delay_s=INITIAL_S, updated_at=now)
    return Backoff(delay_s=min(entry.delay_s * 2, CAP_S), updated_at=now)
