"""Label and field selectors, parsed from their query-string forms.

Follows the upstream docs "Labels and Selectors" (equality-based ``=``, ``==``, ``!=`` and
set-based ``in``, ``notin``, ``key``, ``!key``; requirements joined by ``,`` are ANDed; also
the ``key>N`` / ``key<N`` forms of ``labels.Parse``) and "Field Selectors" (``=``, ``==``,
``!=`` on the fields each resource supports, ``\\`` escapes for ``,``, ``=`` and ``\\`` in
values; a missing field compares as ""). A selector that does not parse is a 400, as
upstream.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_NAME = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
_KEY = rf"(?:[a-z0-9](?:[-a-z0-9.]*[a-z0-9])?/)?{_NAME}"
_VALUE = rf"(?:{_NAME})?"
_EQ = re.compile(rf"^({_KEY})\s*(==|=|!=)\s*({_VALUE})$")
_SET = re.compile(rf"^({_KEY})\s+(in|notin)\s*\((.*)\)$")
_CMP = re.compile(rf"^({_KEY})\s*([<>])\s*(-?\d+)$")
_EXISTS = re.compile(rf"^(!?)\s*({_KEY})$")
_VALUE_RE = re.compile(rf"^{_VALUE}$")


@dataclass(frozen=True)
class LabelRequirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", "gt", "lt"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key, "")
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            # Upstream: a missing key satisfies != and notin.
            return not present or value not in self.values
        if not present:
            return False
        try:
            have = int(value)
        except ValueError:
            return False
        bound = int(next(iter(self.values)))
        return have > bound if self.op == "gt" else have < bound


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside parentheses: ``a in (x,y),b`` -> two requirements."""
    parts: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def parse_labels(text: str | None) -> list[LabelRequirement]:
    """Parse a labelSelector; raise ValueError on bad syntax. Empty selects everything."""
    if text is None or not text.strip():
        return []
    reqs: list[LabelRequirement] = []
    for raw in _split_top_level(text):
        part = raw.strip()
        if m := _EQ.match(part):
            op = "!=" if m.group(2) == "!=" else "="
            reqs.append(LabelRequirement(m.group(1), op, frozenset([m.group(3)])))
        elif m := _SET.match(part):
            values = [v.strip() for v in m.group(3).split(",")]
            if not all(_VALUE_RE.match(v) for v in values):
                raise ValueError(f"invalid label value in {part!r}")
            reqs.append(LabelRequirement(m.group(1), m.group(2), frozenset(values)))
        elif m := _CMP.match(part):
            op = "gt" if m.group(2) == ">" else "lt"
            reqs.append(LabelRequirement(m.group(1), op, frozenset([m.group(3)])))
        elif m := _EXISTS.match(part):
            reqs.append(LabelRequirement(m.group(2), "!" if m.group(1) else "exists"))
        else:
            raise ValueError(f"unable to parse requirement: {part!r}")
    return reqs


def match_labels(reqs: list[LabelRequirement], labels: Mapping[str, str] | None) -> bool:
    have = labels or {}
    return all(r.matches(have) for r in reqs)


def selector_from_map(selector: Mapping[str, str]) -> list[LabelRequirement]:
    """A Service-style ``{key: value}`` selector as requirements."""
    return [LabelRequirement(k, "=", frozenset([v])) for k, v in sorted(selector.items())]


@dataclass(frozen=True)
class FieldRequirement:
    field: str
    op: str  # "=" or "!="
    value: str

    def matches(self, fields: Mapping[str, str]) -> bool:
        have = fields.get(self.field, "")
        return have == self.value if self.op == "=" else have != self.value


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    buf: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            buf.append(text[i : i + 2])
            i += 2
            continue
        if ch == sep:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
        i += 1
    parts.append("".join(buf))
    return parts


def _unescape(value: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "\\":
            if i + 1 >= len(value) or value[i + 1] not in "\\,=":
                raise ValueError(f"invalid escape sequence in field selector value {value!r}")
            out.append(value[i + 1])
            i += 2
            continue
        if ch in ",=":
            raise ValueError(f"invalid field selector value {value!r}: unescaped {ch!r}")
        out.append(ch)
        i += 1
    return "".join(out)


def parse_fields(text: str | None, supported: tuple[str, ...]) -> list[FieldRequirement]:
    """Parse a fieldSelector against the resource's supported fields; ValueError if bad."""
    if text is None or not text.strip():
        return []
    reqs: list[FieldRequirement] = []
    for part in _split_unescaped(text, ","):
        part = part.strip()
        for op in ("!=", "==", "="):
            idx = _find_unescaped(part, op)
            if idx >= 0:
                name, value = part[:idx].strip(), part[idx + len(op) :]
                break
        else:
            raise ValueError(f"invalid selector: {part!r}; can't understand")
        if name not in supported:
            raise ValueError(f'field label not supported: "{name}"')
        reqs.append(FieldRequirement(name, "!=" if op == "!=" else "=", _unescape(value)))
    return reqs


def _find_unescaped(text: str, op: str) -> int:
    i = 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text.startswith(op, i):
            return i
        i += 1
    return -1


def match_fields(reqs: list[FieldRequirement], fields: Mapping[str, str]) -> bool:
    return all(r.matches(fields) for r in reqs)


def object_fields(obj: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, str]:
    """The selectable field values of ``obj``: dotted lookups, booleans as "true"/"false"."""
    out: dict[str, str] = {}
    for name in names:
        cur: Any = obj
        for part in name.split("."):
            cur = cur.get(part) if isinstance(cur, Mapping) else None
        if name == "source" and isinstance(cur, Mapping):
            cur = cur.get("component")  # events: "source" selects source.component
        if isinstance(cur, bool):
            out[name] = "true" if cur else "false"
        elif cur is None:
            out[name] = "false" if name in ("spec.unschedulable", "spec.hostNetwork") else ""
        else:
            out[name] = str(cur)
    return out
