"""Kubernetes resource quantities: ``500m`` CPU, ``128Mi`` memory.

Grammar (``k8s.io/apimachinery/pkg/api/resource/quantity.go``; Kubernetes docs, "Resource
Management for Pods and Containers", "Meaning of CPU" / "Meaning of memory")::

    quantity   ::= [sign] number [suffix]
    number     ::= digits | digits "." [digits] | "." digits
    suffix     ::= binarySI | decimalSI | ("e" | "E") [sign] digits
    binarySI   ::= Ki | Mi | Gi | Ti | Pi | Ei        (powers of 1024)
    decimalSI  ::= m | k | M | G | T | P | E         (powers of 1000; m is 1/1000)

As ``Quantity.MilliValue()`` and ``Quantity.Value()`` do, a CPU amount finer than one millicore and
a memory amount finer than one byte are rounded up. One rule is stricter than Kubernetes: memory
with the ``m`` suffix is rejected, because ``128m`` (0.128 bytes) is almost always a mistake for
``128M`` or ``128Mi``.
"""

from __future__ import annotations

import json
import math
import re
from fractions import Fraction

_QUANTITY = re.compile(
    r"(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)|[eE](?P<exponent>[+-]?[0-9]+))?"
)
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"m": -1, "k": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}
#: Largest amount a Kubernetes int64 field holds; larger quantities are rejected.
MAX_AMOUNT = 2**63 - 1
#: Decimal exponents beyond this are out of range either way (and would be slow to evaluate).
_MAX_EXPONENT = 100
#: Longer strings are rejected before they reach ``Fraction`` (which refuses huge digit counts).
_MAX_LENGTH = 100


def _parse(value: str | int | float, path: str, unit: int, what: str) -> int:
    """Parse a quantity and return it in ``1/unit`` of its base unit, rounded up.

    Raises:
        ValueError: ``"<path>: <problem>"``; not a quantity, negative, or over :data:`MAX_AMOUNT`.
    """
    text = str(value)
    if len(text) > _MAX_LENGTH:
        raise ValueError(f"{path}: a quantity of {len(text)} characters is too long")
    shown = json.dumps(value) if isinstance(value, str) else text
    match = _QUANTITY.fullmatch(text)
    if match is None:
        raise ValueError(f"{path}: must be a quantity such as {what}, got {shown}")
    suffix, exponent_text = match["suffix"], match["exponent"]
    amount = Fraction(match["number"])
    if suffix in _BINARY:
        amount *= 1024 ** _BINARY[suffix]
    else:
        exponent = 3 * _DECIMAL[suffix] if suffix else int(exponent_text or 0)
        if abs(exponent) > _MAX_EXPONENT:
            raise ValueError(f"{path}: quantity {shown} is out of range")
        amount *= Fraction(10) ** exponent
    if amount < 0:
        raise ValueError(f"{path}: must not be negative, got {shown}")
    scaled = math.ceil(amount * unit)
    if scaled > MAX_AMOUNT:
        raise ValueError(f"{path}: quantity {shown} is too large")
    return scaled


def parse_cpu(value: str | int | float, path: str) -> int:
    """Parse a CPU quantity into millicores.

    Args:
        value: ``"500m"``, ``"1"``, ``"0.5"``, ``"2.5"``, ``1``, ``0.25`` (a number from YAML).
        path: where the value comes from, e.g. ``spec.containers[0].resources.limits[cpu]``;
            it starts the error message.

    Returns:
        Millicores (1000 = one core), rounded up to a whole millicore.

    Raises:
        ValueError: ``"<path>: <problem>"``: not a quantity, negative, or too large.
    """
    return _parse(value, path, 1000, "1, 0.5 or 500m (cores)")


def parse_memory(value: str | int | float, path: str) -> int:
    """Parse a memory quantity into bytes.

    Args:
        value: ``"128Mi"``, ``"1Gi"``, ``"512M"``, ``"1e9"``, ``"1.5Gi"``, ``1048576``.
        path: where the value comes from; it starts the error message.

    Returns:
        Bytes, rounded up to a whole byte.

    Raises:
        ValueError: ``"<path>: <problem>"``: not a quantity, negative, too large, or using the
            ``m`` suffix.
    """
    if isinstance(value, str) and _QUANTITY.fullmatch(value) and value.endswith("m"):
        number = value[:-1]
        raise ValueError(
            f"{path}: {json.dumps(value)} means {number} thousandths of a byte; "
            f"write {number}Mi (mebibytes) or {number}M (megabytes)"
        )
    return _parse(value, path, 1, "128Mi, 1Gi, 500M or 1e9 (bytes)")


def format_cpu(millis: int) -> str:
    """Format millicores the way Kubernetes prints them: ``"2"`` for whole cores, else ``"250m"``.

    Args:
        millis: millicores, non-negative.

    Returns:
        A quantity that :func:`parse_cpu` maps back to ``millis``.
    """
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def format_memory(size: int) -> str:
    """Format bytes as the shortest exact quantity: ``"128Mi"``, ``"500M"``, ``"1E"``, ``"1500"``.

    Binary suffixes win ties with decimal ones, which win ties with plain bytes.

    Args:
        size: bytes, non-negative.

    Returns:
        A quantity that :func:`parse_memory` maps back to ``size``.
    """
    if size == 0:
        return "0"
    candidates = []
    for base, suffixes in ((1024, _BINARY), (1000, _DECIMAL)):
        exact = [(p, s) for s, p in suffixes.items() if p > 0 and size % base**p == 0]
        if exact:
            power, suffix = max(exact)
            candidates.append(f"{size // base**power}{suffix}")
    candidates.append(str(size))
    return min(candidates, key=len)
