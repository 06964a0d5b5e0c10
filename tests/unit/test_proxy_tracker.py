"""The change tracker: one meaning of its result, the service port keys that changed."""

from __future__ import annotations

from nodeagent.proxy.state import ServicePortName
from nodeagent.proxy.tracker import ChangeTracker

A = ServicePortName("ns", "a", "", "TCP")
B = ServicePortName("ns", "b", "http", "TCP")
C = ServicePortName("ns", "c", "dns", "UDP")


def test_apply_returns_added_changed_and_removed_keys() -> None:
    t: ChangeTracker[int] = ChangeTracker()
    t.replace({A: 1, B: 2})
    assert t.pending()
    assert t.apply() == {A, B}
    assert dict(t.current) == {A: 1, B: 2}
    t.replace({A: 1, B: 3, C: 4})  # B changed, C added, A unchanged
    assert t.apply() == {B, C}
    t.replace({B: 3})  # A and C removed
    assert t.apply() == {A, C}
    assert dict(t.current) == {B: 3}
    assert t.apply() == frozenset()
    assert not t.pending()


def test_a_change_that_changes_back_is_no_change() -> None:
    t: ChangeTracker[str] = ChangeTracker()
    t.replace({A: "x"})
    t.apply()
    t.update(A, "y")
    t.update(A, "x")
    assert not t.pending()
    assert t.apply() == frozenset()
    t.update(B, "new")
    t.update(B, None)  # added and removed between two applies
    assert t.apply() == frozenset()


def test_updates_merge_until_apply() -> None:
    t: ChangeTracker[int] = ChangeTracker()
    t.update(A, 1)
    t.update(A, 2)
    t.update(A, 3)
    assert t.current == {}  # nothing adopted before apply()
    assert t.apply() == {A}
    assert t.current[A] == 3


def test_services_and_endpoints_trackers_mean_the_same() -> None:
    services: ChangeTracker[str] = ChangeTracker()
    endpoints: ChangeTracker[tuple[str, ...]] = ChangeTracker()
    services.replace({A: "svc-a", B: "svc-b"})
    endpoints.replace({A: ("10.0.0.1:80",), B: ()})
    assert services.apply() | endpoints.apply() == {A, B}
    endpoints.replace({A: ("10.0.0.1:80", "10.0.0.2:80"), B: ()})
    assert services.apply() | endpoints.apply() == {A}
