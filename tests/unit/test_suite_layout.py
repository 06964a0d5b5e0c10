"""The suite's own layout: pytest imports test modules by basename (rootdir-relative
packages are not used), so two test modules of one name in tests/unit and
tests/integration make the whole run fail at collection."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_two_test_modules_share_a_basename() -> None:
    names = Counter(p.name for p in TESTS.glob("*/test_*.py"))
    assert [name for name, count in names.items() if count > 1] == []
