"""A path-tracking reader over untrusted JSON-like documents.

Validation reads every field through a ``Node``, which knows the field's path
(``spec.containers[1].image``) and records a ``FieldError`` instead of raising on the first
problem, so one pass reports every mistake in a manifest. Type confusion (a list where a map
belongs, a bool where an int belongs) is an error, never an exception.

A reader is strict or lenient about fields it does not know. Strict (manifest files): every
unknown field is an error. Lenient (the API's pods, which kube-apiserver validated already):
at a level whose complete upstream field list is declared (``reject_unknown(..., upstream=)``),
a field Kubernetes does not know either is a newer API's field and is only collected in
``future``, as the kubelet's lenient decoding drops it; a field Kubernetes knows but we do not
honour stays an error at every level.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Bounds that keep a hostile or broken manifest from costing unbounded time or memory.
MAX_STRING = 64 * 1024
MAX_LIST = 1024


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ValidationError(ValueError):
    """A document is invalid; ``errors`` names every offending field."""

    def __init__(self, obj: str, errors: Iterable[FieldError]) -> None:
        self.obj = obj
        self.errors = tuple(errors)
        super().__init__(f"{obj}: " + "; ".join(str(e) for e in self.errors))


class Node:
    """One position in a document: a value plus its path, sharing one error list."""

    def __init__(
        self, value: Any, path: str, errors: list[FieldError], future: list[str] | None = None
    ) -> None:
        self.value = value
        self.path = path
        self.errors = errors
        # None: strict. Else the paths of fields newer than the API we track, ignored.
        self.future = future

    def error(self, message: str, key: str | None = None) -> None:
        self.errors.append(FieldError(self._join(key) if key else self.path, message))

    def _join(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def present(self, key: str) -> bool:
        return isinstance(self.value, Mapping) and self.value.get(key) is not None

    def child(self, key: str) -> Node:
        """The field ``key`` of a map; an absent field reads as an empty map."""
        raw = self.value.get(key) if isinstance(self.value, Mapping) else None
        node = Node({} if raw is None else raw, self._join(key), self.errors, self.future)
        if raw is not None and not isinstance(raw, Mapping):
            node.error("must be an object")
            node.value = {}
        return node

    def items(self, key: str) -> list[Node]:
        """The elements of a list field, each with its indexed path."""
        raw = self.value.get(key) if isinstance(self.value, Mapping) else None
        if raw is None:
            return []
        path = self._join(key)
        if not isinstance(raw, list):
            self.errors.append(FieldError(path, "must be a list"))
            return []
        if len(raw) > MAX_LIST:
            self.errors.append(FieldError(path, f"more than {MAX_LIST} items"))
            return []
        return [Node(item, f"{path}[{i}]", self.errors, self.future) for i, item in enumerate(raw)]

    def _get(self, key: str) -> Any:
        return self.value.get(key) if isinstance(self.value, Mapping) else None

    def string(self, key: str, *, default: str = "", required: bool = False) -> str:
        raw = self._get(key)
        if raw is None or raw == "":
            if required:
                self.error("is required", key)
            return default
        if not isinstance(raw, str):
            self.error("must be a string", key)
            return default
        if len(raw) > MAX_STRING:
            self.error(f"longer than {MAX_STRING} characters", key)
            return default
        return raw

    def integer(self, key: str, *, default: int, minimum: int | None = None) -> int:
        raw = self._get(key)
        if raw is None:
            return default
        if isinstance(raw, bool) or not isinstance(raw, int):
            self.error("must be an integer", key)
            return default
        if minimum is not None and raw < minimum:
            self.error(f"must be >= {minimum}, got {raw}", key)
            return default
        if raw > 2**31 - 1:
            self.error("is too large", key)
            return default
        return raw

    def boolean(self, key: str, *, default: bool = False) -> bool:
        raw = self._get(key)
        if raw is None:
            return default
        if not isinstance(raw, bool):
            self.error("must be true or false", key)
            return default
        return raw

    def strings(self, key: str) -> tuple[str, ...]:
        result = []
        for item in self.items(key):
            if isinstance(item.value, str) and len(item.value) <= MAX_STRING:
                result.append(item.value)
            else:
                item.error("must be a string")
        return tuple(result)

    def string_map(self, key: str) -> dict[str, str]:
        node = self.child(key)
        result: dict[str, str] = {}
        for k, v in node.value.items():
            if not isinstance(k, str) or not isinstance(v, str):
                node.error(f"entry {k!r} must map a string to a string")
            else:
                result[k] = v
        return result

    def int_or_string(self, key: str, *, required: bool = False) -> int | str | None:
        raw = self._get(key)
        if raw is None:
            if required:
                self.error("is required", key)
            return None
        if isinstance(raw, bool) or not isinstance(raw, (int, str)) or raw == "":
            self.error("must be a port number or a port name", key)
            return None
        return raw

    def enum_value(self, key: str, allowed: Iterable[str], *, default: str) -> str:
        choices = tuple(allowed)
        value = self.string(key, default=default)
        if value not in choices:
            self.error(f"unsupported value {value!r}: must be one of {', '.join(choices)}", key)
            return default
        return value

    def reject_unknown(
        self,
        known: Iterable[str],
        ignored: Iterable[str] = (),
        *,
        upstream: Iterable[str] | None = None,
    ) -> None:
        """Fail on fields we neither honour nor can safely ignore.

        ``upstream``: the other fields Kubernetes defines here (all unsupported). Given it,
        a lenient reader sets aside a field outside all three lists as a newer API's."""
        if not isinstance(self.value, Mapping):
            return
        allowed = set(known) | set(ignored)
        unsupported = None if upstream is None else set(upstream)
        for key in self.value:
            if key in allowed:
                continue
            if self.future is not None and unsupported is not None and key not in unsupported:
                self.future.append(self._join(str(key)))
                continue
            self.error("field is not supported by nodeagent", str(key))
