"""Narrowing for tests: a field the test expects to be set, checked once and typed after.

Client models (lightkube's, our own status views) make most fields optional, because the API
may omit them. A test that expects a field says so with ``present(...)``: the check fails with
a message naming the field, and mypy knows the value is set from there on.
"""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def present(value: T | None, what: str = "field") -> T:
    """``value``, asserting that it is set (not None)."""
    assert value is not None, f"{what} is not set"
    return value
