"""Restart and pull backoff (nodeagent.kubelet.backoff)."""

from __future__ import annotations

from nodeagent.kubelet import backoff
from nodeagent.kubelet.backoff import Backoff


def test_constants_match_the_kubelet() -> None:
    assert (backoff.INITIAL_S, backoff.CAP_S, backoff.RESET_AFTER_RUNNING_S) == (10, 300, 600)


def test_delays_double_from_10s_up_to_300s() -> None:
    entry: Backoff | None = None
    delays = []
    for step in range(8):
        entry = backoff.advance(entry, now=1000.0 + step)
        delays.append(entry.delay_s)
    assert delays == [10, 20, 40, 80, 160, 300, 300, 300]


def test_advance_records_when() -> None:
    entry = backoff.advance(None, now=5.0)
    assert entry == Backoff(delay_s=10, updated_at=5.0)
    assert backoff.advance(entry, now=9.0) == Backoff(delay_s=20, updated_at=9.0)


def test_no_entry_means_no_wait() -> None:
    assert backoff.wait_until(None, failed_at=100.0, now=100.0) is None


def test_wait_is_measured_from_the_failure() -> None:
    entry = Backoff(delay_s=20, updated_at=100.0)
    assert backoff.wait_until(entry, failed_at=110.0, now=111.0) == 130.0
    assert backoff.wait_until(entry, failed_at=110.0, now=129.9) == 130.0
    assert backoff.wait_until(entry, failed_at=110.0, now=130.0) is None


def test_entries_expire_after_twice_the_cap() -> None:
    entry = Backoff(delay_s=300, updated_at=0.0)
    assert not backoff.expired(entry, now=600.0)
    assert backoff.expired(entry, now=600.1)
    assert backoff.expired(None, now=0.0)
    # An expired entry no longer holds anything back, and the next advance starts over.
    assert backoff.wait_until(entry, failed_at=600.5, now=601.0) is None
    assert backoff.advance(entry, now=601.0).delay_s == backoff.INITIAL_S
    assert backoff.advance(entry, now=599.0).delay_s == backoff.CAP_S
