"""Kubernetes resource quantities ("500m", "1.5", "128Mi", "1G", "2e3") as integers."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]?)$")
_MAX_LEN = 64
# Exponents make short texts astronomically large; nothing we configure exceeds int64.
_MAX_VALUE = Decimal(2**63 - 1)


class QuantityError(ValueError):
    pass


def parse_quantity(value: object) -> Decimal:
    """The quantity as an exact decimal in base units (cores, bytes)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise QuantityError(f"not a quantity: {value!r}")
    text = str(value).strip()
    match = _QUANTITY.match(text) if len(text) <= _MAX_LEN else None
    if match is None:
        raise QuantityError(f"not a quantity: {text!r}")
    number, suffix = match.groups()
    try:
        base = Decimal(number)
    except InvalidOperation as exc:
        raise QuantityError(f"not a quantity: {text!r}") from exc
    if base < 0:
        raise QuantityError(f"negative quantity: {text!r}")
    scale = Decimal(_BINARY[suffix]) if suffix in _BINARY else _DECIMAL[suffix]
    try:
        value = base * scale
    except ArithmeticError as exc:  # decimal.Overflow past the context's exponent limit
        raise QuantityError(f"quantity too large: {text!r}") from exc
    if value > _MAX_VALUE:
        raise QuantityError(f"quantity too large: {text!r}")
    return value


def cpu_millis(value: object) -> int:
    """CPU in millicores, rounded up as the kubelet does (1m is the smallest unit)."""
    millis = parse_quantity(value) * 1000
    return int(millis.to_integral_value(rounding="ROUND_CEILING"))


def memory_bytes(value: object) -> int:
    return int(parse_quantity(value).to_integral_value(rounding="ROUND_CEILING"))
