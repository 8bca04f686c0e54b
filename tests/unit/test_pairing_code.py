"""One-time pairing codes: Damm check digit, parsing, the QR URI."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.pairing.code import (
    InvalidCodeError,
    damm_check_digit,
    damm_valid,
    format_code,
    new_code,
    pairing_uri,
    parse_code,
    parse_target,
)

NODE = "P56IOI7-MZJNU2Y-IQGDREY-DM2MGTI-MGL3BXN-PQ6W5BM-TBBZ4TJ-XZWICQ2"


def test_damm_reference_value() -> None:
    assert damm_check_digit("572") == "4"  # the worked example of Damm's algorithm
    assert damm_valid("5724")
    assert not damm_valid("5723")


@given(st.text(alphabet="0123456789", min_size=7, max_size=7))
def test_every_single_digit_error_and_adjacent_swap_is_caught(body: str) -> None:
    code = body + damm_check_digit(body)
    assert damm_valid(code)
    for i, digit in enumerate(code):
        for other in "0123456789":
            if other != digit:
                assert not damm_valid(code[:i] + other + code[i + 1 :])
    for i in range(len(code) - 1):
        if code[i] != code[i + 1]:
            swapped = code[:i] + code[i + 1] + code[i] + code[i + 2 :]
            assert not damm_valid(swapped)


def test_new_codes_are_eight_valid_digits_and_differ() -> None:
    codes = {new_code() for _ in range(200)}
    assert len(codes) > 190
    assert all(len(c) == 8 and damm_valid(c) for c in codes)


@pytest.mark.parametrize("layout", ["{a}-{b}", "{a} {b}", " {a}{b} ", "{a}-{b} "])
def test_parse_accepts_groups_with_dashes_or_spaces(layout: str) -> None:
    code = "4821093" + damm_check_digit("4821093")
    assert parse_code(layout.format(a=code[:4], b=code[4:])) == code
    assert format_code(code) == f"{code[:4]}-{code[4:]}"


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("4821-093", "has 8 digits, got 7"),
        ("4821-09371", "has 8 digits, got 9"),
        ("4821-O937", "only digits"),
        ("", "has 8 digits, got 0"),
        ("٤٨٢١٠٩٣٧", "only digits"),
    ],
)
def test_parse_rejects_malformed_codes(typed: str, message: str) -> None:
    with pytest.raises(InvalidCodeError, match=message):
        parse_code(typed)


def test_a_typo_is_reported_as_such() -> None:
    code = new_code()
    typo = code[:3] + str((int(code[3]) + 1) % 10) + code[4:]
    with pytest.raises(InvalidCodeError, match="check digit does not match"):
        parse_code(typo)


def test_uri_round_trip_names_the_shower() -> None:
    code = new_code()
    uri = pairing_uri(code, NODE, "robot 1")
    assert uri.startswith("florete://pair?code=")
    target = parse_target(uri)
    assert target.code == code
    assert target.node_id == NODE
    assert parse_target(format_code(code)).node_id is None


@pytest.mark.parametrize(
    "uri",
    ["florete://pair?id=" + NODE, "florete://pair?code=1&code=2", "florete://pair?code=x&id=BAD"],
)
def test_bad_uris_are_refused(uri: str) -> None:
    with pytest.raises(InvalidCodeError):
        parse_target(uri)
