"""Kubernetes resource quantities: CPU in millicores, memory in bytes."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.quantity import MAX_AMOUNT, format_cpu, format_memory, parse_cpu, parse_memory

PATH = "spec.containers[0].resources.limits[cpu]"


@pytest.mark.parametrize(
    ("value", "millis"),
    [
        ("500m", 500),
        ("1", 1000),
        ("0.5", 500),
        ("2.5", 2500),
        (".25", 250),
        ("1.", 1000),
        ("+2", 2000),
        ("0", 0),
        (1, 1000),
        (0.1, 100),
        (2.0, 2000),
        ("1e-3", 1),
        ("1E2", 100_000),
        ("0.0001", 1),  # rounded up to a whole millicore, like Quantity.MilliValue()
        ("100.5m", 101),
        ("1k", 1_000_000),
        ("1Ki", 1_024_000),
    ],
)
def test_parse_cpu(value: str | int | float, millis: int) -> None:
    assert parse_cpu(value, PATH) == millis


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("128Mi", 128 * 2**20),
        ("1Gi", 2**30),
        ("1.5Gi", 3 * 2**29),
        ("0.5Ki", 512),
        ("1Ti", 2**40),
        ("1Pi", 2**50),
        ("1Ei", 2**60),
        ("1k", 1000),
        ("500M", 500_000_000),
        ("1G", 10**9),
        ("1T", 10**12),
        ("1P", 10**15),
        ("1E", 10**18),
        ("1e9", 10**9),
        ("1E3", 1000),
        ("12e+2", 1200),
        ("1048576", 2**20),
        (1048576, 2**20),
        ("0.5", 1),  # rounded up to a whole byte, like Quantity.Value()
        ("7", 7),
    ],
)
def test_parse_memory(value: str | int | float, size: int) -> None:
    assert parse_memory(value, "m") == size


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", 'p: must be a quantity such as 1, 0.5 or 500m (cores), got ""'),
        ("1.5 cores", 'p: must be a quantity such as 1, 0.5 or 500m (cores), got "1.5 cores"'),
        ("1K", 'p: must be a quantity such as 1, 0.5 or 500m (cores), got "1K"'),
        ("1mi", 'p: must be a quantity such as 1, 0.5 or 500m (cores), got "1mi"'),
        ("1e", 'p: must be a quantity such as 1, 0.5 or 500m (cores), got "1e"'),
        ("--1", 'p: must be a quantity such as 1, 0.5 or 500m (cores), got "--1"'),
        (float("inf"), "p: must be a quantity such as 1, 0.5 or 500m (cores), got inf"),
        (True, "p: must be a quantity such as 1, 0.5 or 500m (cores), got True"),
        ("-1", 'p: must not be negative, got "-1"'),
        ("-500m", 'p: must not be negative, got "-500m"'),
        ("1e101", 'p: quantity "1e101" is out of range'),
        ("9223372036854776", 'p: quantity "9223372036854776" is too large'),
        ("1" * 101, "p: a quantity of 101 characters is too long"),
    ],
)
def test_parse_cpu_rejects(value: str | float, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_cpu(value, "p")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "128m",
            'p: "128m" means 128 thousandths of a byte; '
            "write 128Mi (mebibytes) or 128M (megabytes)",
        ),
        ("12 GB", 'p: must be a quantity such as 128Mi, 1Gi, 500M or 1e9 (bytes), got "12 GB"'),
        ("1gi", 'p: must be a quantity such as 128Mi, 1Gi, 500M or 1e9 (bytes), got "1gi"'),
        ("8Ei", 'p: quantity "8Ei" is too large'),
        ("-1Mi", 'p: must not be negative, got "-1Mi"'),
    ],
)
def test_parse_memory_rejects(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_memory(value, "p")


def test_largest_amounts() -> None:
    assert parse_memory(str(MAX_AMOUNT), "p") == MAX_AMOUNT
    assert parse_cpu("9223372036854775807m", "p") == MAX_AMOUNT


@pytest.mark.parametrize(
    ("millis", "text"), [(0, "0"), (250, "250m"), (1000, "1"), (2500, "2500m")]
)
def test_format_cpu(millis: int, text: str) -> None:
    assert format_cpu(millis) == text


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0"),
        (7, "7"),
        (1024, "1Ki"),
        (128 * 2**20, "128Mi"),
        (3 * 2**29, "1536Mi"),
        (2**60, "1Ei"),
        (1000, "1k"),
        (500_000_000, "500M"),
        (10**18, "1E"),
        (1500, "1500"),
    ],
)
def test_format_memory(size: int, text: str) -> None:
    assert format_memory(size) == text


@given(st.integers(0, MAX_AMOUNT))
def test_format_then_parse_is_identity(amount: int) -> None:
    assert parse_memory(format_memory(amount), "p") == amount
    assert parse_cpu(format_cpu(amount), "p") == amount


@given(
    st.text(max_size=30)
    | st.from_regex(r"[+-]?[0-9.]{0,6}([eE][+-]?[0-9]{0,4}|[KMGTPEkmi]{0,2})", fullmatch=True)
)
def test_garbage_raises_only_value_error(text: str) -> None:
    for parse in (parse_cpu, parse_memory):
        try:
            amount = parse(text, "p")
        except ValueError as err:
            message = str(err)
        else:
            assert 0 <= amount <= MAX_AMOUNT
            continue
        assert message.startswith("p: ")
