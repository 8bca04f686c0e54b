"""The log cursor: answers of the helper's ``fetch`` in, records and positions out."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wri_plugins.android.logs import LogCursor


def _answer(state: str, out: tuple[int, int, bytes], err: tuple[int, int, bytes]) -> bytes:
    parts = [state.encode() + b"\n"]
    for stream, (file_no, offset, data) in (("stdout", out), ("stderr", err)):
        parts.append(f"@{stream} {file_no} {offset} {len(data)}\n".encode() + data)
    return b"".join(parts)


def _line(second: int, stream: str, text: str, tag: str = "F") -> bytes:
    return f"2024-01-01T00:00:{second:02d}.000000000Z {stream} {tag} {text}\n".encode()


def test_records_of_both_streams_come_merged_by_time() -> None:
    cursor = LogCursor()
    assert cursor.fetch_args("t", None) == ["t", "-1", "0", "0", "0", "0"]
    out = _line(1, "stdout", "one") + _line(3, "stdout", "three")
    err = _line(2, "stderr", "two")
    fetched = cursor.feed(_answer("t running 5 1.0", (0, len(out), out), (0, len(err), err)))
    assert [(r.stream, r.text) for r in fetched.records] == [
        ("stdout", b"one"),
        ("stderr", b"two"),
        ("stdout", b"three"),
    ]
    assert not fetched.state.ended
    assert cursor.positions == {"stdout": (0, len(out)), "stderr": (0, len(err))}
    assert cursor.fetch_args("t", 10) == ["t", "10", "0", str(len(out)), "0", str(len(err))]


def test_a_line_being_written_is_left_for_the_next_fetch() -> None:
    cursor = LogCursor()
    whole = _line(1, "stdout", "done")
    cut = _line(2, "stdout", "half")[:20]
    fetched = cursor.feed(
        _answer("t running 5 1.0", (2, 100 + len(whole + cut), whole + cut), (0, 0, b""))
    )
    assert [r.text for r in fetched.records] == [b"done"]
    assert cursor.positions["stdout"] == (2, 100 + len(whole))


def test_partial_tag_and_exit_state() -> None:
    data = _line(1, "stderr", "no newline at the end", "P")
    fetched = LogCursor().feed(_answer("t exited 0 2.0 5 1.0", (0, 0, b""), (0, len(data), data)))
    assert fetched.state.ended
    assert [(r.text, r.partial) for r in fetched.records] == [(b"no newline at the end", True)]


def test_malformed_lines_are_skipped() -> None:
    data = b"garbage\n" + _line(1, "stdout", "ok")
    fetched = LogCursor().feed(_answer("t running 5 1.0", (0, len(data), data), (0, 0, b"")))
    assert [r.text for r in fetched.records] == [b"ok"]


@pytest.mark.parametrize(
    "answer",
    [
        b"",
        b"t running 5 1.0",
        b"t running 5 1.0\n",
        b"t running 5 1.0\n@stderr 0 0 0\n@stdout 0 0 0\n",
        b"t running 5 1.0\n@stdout 0 0 10\nshort",
        b"t dancing\n@stdout 0 0 0\n@stderr 0 0 0\n",
        b"t running 5 1.0\n@stdout x 0 0\n@stderr 0 0 0\n",
    ],
)
def test_bad_framing_is_a_value_error(answer: bytes) -> None:
    with pytest.raises(ValueError, match=r"."):
        LogCursor().feed(answer)


@given(st.binary(max_size=300))
def test_garbage_parses_or_raises_value_error(answer: bytes) -> None:
    cursor = LogCursor()
    try:
        cursor.feed(answer)
    except ValueError:
        return
    assert all(offset >= 0 for _, offset in cursor.positions.values())


@given(
    st.lists(
        st.text(
            alphabet=st.characters(codec="utf-8", blacklist_characters="\n\x00"),
            max_size=30,
        )
    )
)
def test_any_text_survives_the_round_trip(texts: list[str]) -> None:
    data = b"".join(_line(i % 60, "stdout", t) for i, t in enumerate(texts))
    fetched = LogCursor().feed(_answer("t running 1 1.0", (0, len(data), data), (0, 0, b"")))
    assert [r.text for r in fetched.records] == [t.encode() for t in texts]
