"""Guardrails for every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def no_asyncio_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail a test that makes asyncio log a warning or an error (an unretrieved task exception,
    a callback that raised, a slow callback in debug mode)."""
    yield
    records = caplog.get_records("call") + caplog.get_records("teardown")
    assert not [r.getMessage() for r in records if r.name == "asyncio" and r.levelno >= 30]
