"""One-time pairing codes: 8 decimal digits, the last a Damm check digit.

A code is 7 random digits (``secrets``: about 23 bits) followed by the check digit of the Damm
algorithm (H. Michael Damm, *Total anti-symmetrische Quasigruppen*, 2004; the order-10 table of
his dissertation, as Wikipedia's "Damm algorithm" lists it). Damm was chosen over Luhn because it
catches every single-digit error **and every swap of two adjacent digits** (Luhn misses 09 <-> 90),
the two mistakes people make when they type a code they read off another screen. A typo is then
reported at once, on the typing side, without spending one of the shower's few attempts.

Codes are shown as two groups of four, ``4821-0937``; :func:`parse_code` accepts the digits with
any ``-`` or space between them. The QR code carries the same code with the shower's node ID, as
the URI ``florete://pair?code=48210937&id=<node ID>&n=<name>`` (:func:`pairing_uri`), so that a
device that scans it knows which neighbour to pair with.

The code is the password of the SPAKE2 exchange (:mod:`agent.pairing.crypto`): seeing the
exchange does not reveal it, and a guesser gets one try per attempt, with the attempts limited
(:mod:`agent.pairing.flow`).
"""

from __future__ import annotations

import dataclasses
import secrets
import urllib.parse

from agent.errors import BadRequestError
from agent.identity import parse_node_id

__all__ = [
    "CODE_DIGITS",
    "URI_PREFIX",
    "InvalidCodeError",
    "PairingTarget",
    "damm_check_digit",
    "damm_valid",
    "format_code",
    "new_code",
    "pairing_uri",
    "parse_code",
    "parse_target",
]

CODE_DIGITS = 8
"""Digits of a code, the check digit included."""
URI_PREFIX = "florete://pair"
"""Start of the pairing URI carried by the QR code."""

# Damm's totally anti-symmetric quasigroup of order 10: row = interim digit, column = next digit.
_DAMM = (
    (0, 3, 1, 7, 5, 9, 8, 6, 4, 2),
    (7, 0, 9, 2, 1, 5, 4, 8, 6, 3),
    (4, 2, 0, 6, 8, 7, 1, 3, 5, 9),
    (1, 7, 5, 0, 9, 8, 3, 4, 2, 6),
    (6, 1, 2, 3, 0, 4, 5, 9, 7, 8),
    (3, 6, 7, 4, 2, 0, 9, 5, 8, 1),
    (5, 8, 6, 9, 7, 2, 0, 1, 3, 4),
    (8, 9, 4, 5, 3, 6, 2, 0, 1, 7),
    (9, 4, 3, 8, 6, 1, 7, 2, 0, 5),
    (2, 5, 8, 1, 4, 3, 6, 7, 9, 0),
)


class InvalidCodeError(BadRequestError):
    """A typed code is not 8 digits, or its check digit does not match (a typo)."""

    code = "pairing_code_invalid"


def _interim(digits: str) -> int:
    interim = 0
    for char in digits:
        interim = _DAMM[interim][ord(char) - 48]
    return interim


def damm_check_digit(digits: str) -> str:
    """Return the Damm check digit of ``digits`` (ASCII decimal digits only)."""
    return str(_interim(digits))


def damm_valid(digits: str) -> bool:
    """True when ``digits`` (ending with its check digit) passes the Damm check."""
    return bool(digits) and digits.isascii() and digits.isdigit() and _interim(digits) == 0


def new_code() -> str:
    """A fresh code: 7 random digits and the Damm check digit (8 digits, no separator)."""
    body = f"{secrets.randbelow(10 ** (CODE_DIGITS - 1)):0{CODE_DIGITS - 1}d}"
    return body + damm_check_digit(body)


def format_code(code: str) -> str:
    """Show a code as two groups of four digits: ``"48210937"`` -> ``"4821-0937"``."""
    return f"{code[:4]}-{code[4:]}"


def parse_code(text: str) -> str:
    """Read a code a person typed.

    Args:
        text: 8 digits, optionally separated by ``-`` or spaces (``"4821-0937"``,
            ``"4821 0937"``, ``"48210937"``).

    Returns:
        The 8 digits without separators.

    Raises:
        InvalidCodeError: other characters, not 8 digits, or a check digit that does not match.
    """
    digits = "".join(ch for ch in text.strip() if ch not in "- ")
    if digits and not (digits.isascii() and digits.isdigit()):
        raise InvalidCodeError(
            f"a pairing code has only digits (with '-' or spaces between groups), got {text!r}"
        )
    if len(digits) != CODE_DIGITS:
        raise InvalidCodeError(f"a pairing code has {CODE_DIGITS} digits, got {len(digits)}")
    if not damm_valid(digits):
        raise InvalidCodeError(
            f"{format_code(digits)} is not a valid code (its check digit does not match): "
            "check for a typo"
        )
    return digits


@dataclasses.dataclass(frozen=True)
class PairingTarget:
    """What ``florete-agent pair CODE`` was given.

    Attributes:
        code: the 8 digits.
        node_id: the shower's node ID when the pairing URI named it, else None.
    """

    code: str
    node_id: str | None = None


def pairing_uri(code: str, node_id: str, name: str) -> str:
    """The text of the QR code: ``florete://pair?code=<8 digits>&id=<node ID>&n=<name>``."""
    query = urllib.parse.urlencode({"code": code, "id": node_id, "n": name})
    return f"{URI_PREFIX}?{query}"


def parse_target(text: str) -> PairingTarget:
    """Read a typed code or a scanned pairing URI (see :func:`pairing_uri`).

    Raises:
        InvalidCodeError: the code is malformed, or the URI lacks a code or names an invalid
            node ID.
    """
    if not text.strip().lower().startswith(URI_PREFIX):
        return PairingTarget(parse_code(text))
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(text.strip()).query)
    codes, ids = query.get("code", []), query.get("id", [])
    if len(codes) != 1 or len(ids) > 1:
        raise InvalidCodeError(f"a pairing URI has one code= and at most one id=: {text!r}")
    node_id = None
    if ids:
        try:
            node_id = parse_node_id(ids[0])
        except ValueError as err:
            raise InvalidCodeError(f"pairing URI id=: {err}") from err
    return PairingTarget(parse_code(codes[0]), node_id)
