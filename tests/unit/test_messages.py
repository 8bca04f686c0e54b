"""Typed CBOR messages: round trips, documented sizes, precise decode errors, topic rules."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import LocalProtocolError, RemoteProtocolError
from agent.messages import (
    MAX_DEPTH,
    MAX_MESSAGE_SIZE,
    MAX_PREAMBLE,
    Goodbye,
    Message,
    PairingMessage,
    Preamble,
    Publish,
    Request,
    Response,
    Subscribe,
    UnknownMessageTypeError,
    Unsubscribe,
    decode,
    decode_preamble,
    encode,
    encode_preamble,
    topic_matches,
    validate_pattern,
    validate_topic,
)

EXAMPLES: list[Message] = [
    Goodbye(),
    Goodbye("shutting down"),
    Request(7, "ping", None),
    Request(0xFFFFFFFF, "raft.append", {"term": 3, "entries": [b"\x00" * 5, -1, 1.5]}),
    Response(7, 200, None),
    Response(8, 404, "no such method"),
    Publish("a/b", b"x" * 20),
    Publish("sensors/temp", {"c": 21.5, "ok": True, 3: None}),
    Subscribe("a/#"),
    Subscribe("+/temp"),
    Unsubscribe("a/#"),
    PairingMessage(0x40, b"spake2 message"),
    PairingMessage(0x4F, None),
]


@pytest.mark.parametrize("msg", EXAMPLES, ids=repr)
def test_round_trip(msg: Message) -> None:
    assert decode(encode(msg)) == msg


def test_documented_sizes() -> None:
    assert len(encode(Goodbye())) == 3
    assert len(encode(Request(7, "ping", None))) == 9
    assert len(encode(Response(7, 200, None))) == 6
    assert len(encode(Publish("a/b", b"x" * 20))) == 27
    assert len(encode(Subscribe("a/#"))) == 6
    assert len(encode(Unsubscribe("a/#"))) == 6


def test_encoding_is_a_compact_array() -> None:
    assert encode(Publish("a/b", b"x" * 20))[:6] == bytes.fromhex("830363612f62")
    assert encode(PairingMessage(0x41, None)) == bytes.fromhex("821841f6")
    assert encode(Response(1, 200, 1.5)) == bytes.fromhex("84020118c8f93e00")


def raw(*items: Any) -> bytes:
    data: bytes = cbor2.dumps(list(items))
    return data


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "not valid CBOR"),
        (b"\x83\x01", "not valid CBOR"),
        (b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff", "not valid CBOR"),
        (b"\x81" * 1000, "not valid CBOR"),
        (raw(3, "a", None) + b"\x00", "1 bytes follow the message"),
        (cbor2.dumps({"type": 1}), "is a dict, not an array"),
        (cbor2.dumps([]), "is a list, not an array"),
        (raw("x", 1), "is a list, not an array"),
        (raw(1, 7, "ping"), r"Request \(type 0x1\) has 3 fields, got 2"),
        (raw(0), r"Goodbye \(type 0x0\) has 1 fields, got 0"),
        (raw(1, -1, "ping", None), "Request.id: expected an integer 0..4294967295, got int"),
        (raw(1, True, "ping", None), "Request.id: .* got bool"),
        (raw(1, 1, "", None), "Request.method: expected 1..64 characters, got 0"),
        (raw(1, 1, "m" * 65, None), "Request.method: expected 1..64 characters, got 65"),
        (raw(1, 1, b"ping", None), "Request.method: expected text, got bytes"),
        (raw(2, 1, 1000, None), "Response.status: expected a status 0..999"),
        (raw(3, "a/+", None), "Publish.topic: topic 'a/\\+' holds a wildcard"),
        (raw(3, "", None), "Publish.topic: topic must be 1..256 bytes"),
        (raw(3, "é" * 129, None), "topic must be 1..256 bytes of UTF-8, got 258"),
        (raw(4, "a/#/b"), "Subscribe.pattern: .*'#' must be the whole last level"),
        (raw(5, "a+/b"), "Unsubscribe.pattern: .*'\\+' must be a whole level"),
        (raw(4, "a\0"), "holds a NUL character"),
        (raw(0, 5), "Goodbye.reason: expected text, got int"),
        (raw(0x40, cbor2.CBORTag(1234, 1)), "PairingMessage.body: body holds CBORTag"),
        (cbor2.dumps([3, "t", {1, 2}]), "body holds (frozen)?set"),
        (bytes.fromhex("83036174c1"), "not valid CBOR"),
        (bytes.fromhex("83036174c11a5f5e1000"), "body holds datetime"),
        (raw(3, "t", {(1, 2): 1}), "body map key is tuple"),
        (raw(3, "t", 2**70), "body holds int|does not fit 64 bits"),
    ],
)
def test_decode_errors_are_precise(data: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError, match=reason):
        decode(data)


def test_decode_unknown_type_is_its_own_error() -> None:
    with pytest.raises(UnknownMessageTypeError, match="unknown message type 0x20") as info:
        decode(raw(0x20, "future"))
    assert info.value.type == 0x20


def test_decode_refuses_oversize_and_deep_nesting() -> None:
    with pytest.raises(RemoteProtocolError, match=f"exceeds {MAX_MESSAGE_SIZE}"):
        decode(raw(3, "t", b"x" * MAX_MESSAGE_SIZE))
    deep: Any = None
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(RemoteProtocolError, match="nests deeper than 32"):
        decode(raw(3, "t", deep))


def test_decode_refuses_shared_reference_cycles() -> None:
    cyclic = bytes.fromhex("83036174d81c81d81d00")  # [3, "t", shareable([sharedref(0)])]
    with pytest.raises(RemoteProtocolError):
        decode(cyclic)


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        (Request(2**32, "m"), "Request.id: expected an integer"),
        (Request(1, "m", {1, 2}), "Request.body: body holds set"),
        (Request(1, "m", (1, 2)), "Request.body: body holds tuple"),
        (Publish("a/#", None), "Publish.topic: topic 'a/#' holds a wildcard"),
        (Publish("\udc80", None), "Publish.topic"),
        (Publish("t", "\udc80"), "Publish cannot be encoded"),
        (Subscribe("#/a"), "'#' must be the whole last level"),
        (PairingMessage(0x50, None), "outside 0x40..0x4f"),
        (Publish("t", b"x" * MAX_MESSAGE_SIZE), f"more than {MAX_MESSAGE_SIZE}"),
        (Message(), "Message is not a registered message type"),
    ],
)
def test_encode_errors_are_local(msg: Message, reason: str) -> None:
    with pytest.raises(LocalProtocolError, match=reason):
        encode(msg)


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/+", "a", False),
        ("+/+", "a/b", True),
        ("+", "a", True),
        ("+", "/a", False),
        ("+/a", "/a", True),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("a/#", "b", False),
        ("#", "a/b", True),
        ("#", "$SYS/x", False),
        ("+/x", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
        ("a/+/c", "a/b/c", True),
        ("a/+/c", "a/b/d", False),
    ],
)
def test_topic_matching_follows_mqtt(pattern: str, topic: str, expected: bool) -> None:
    validate_pattern(pattern)
    validate_topic(topic)
    assert topic_matches(pattern, topic) is expected


@pytest.mark.parametrize("pattern", ["", "a#", "#/a", "a/b+", "++", "x" * 257])
def test_invalid_patterns(pattern: str) -> None:
    with pytest.raises(ValueError, match="pattern"):
        validate_pattern(pattern)


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_decode_of_arbitrary_bytes_raises_only_protocol_errors(data: bytes) -> None:
    try:
        decode(data)
    except RemoteProtocolError:
        pass


cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=10)
    | st.binary(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=20,
)


@settings(max_examples=500)
@given(st.integers(min_value=-5, max_value=0x50), st.lists(cbor_values, max_size=4))
def test_decode_of_arbitrary_arrays_raises_only_protocol_errors(
    type_: int, fields: list[Any]
) -> None:
    try:
        msg = decode(cbor2.dumps([type_, *fields]))
    except RemoteProtocolError:
        return
    assert isinstance(msg, Message)


plain_bodies = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False)
    | st.text(max_size=10)
    | st.binary(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=4) | st.integers(), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300)
@given(st.integers(min_value=0, max_value=0xFFFFFFFF), plain_bodies)
def test_plain_bodies_round_trip(request_id: int, body: Any) -> None:
    msg = Request(request_id, "m", body)
    assert decode(encode(msg)) == msg


def test_preamble_round_trip_and_bound() -> None:
    node_id = "P56IOI7-MZJNU2Y-IQGDREY-DM2MGTI-MGL3BXN-PQ6W5BM-TBBZ4TJ-XZWICQ2"
    fingerprint = ":".join(["AB"] * 32)
    plain = Preamble(node_id, "robot-7", fingerprint)
    assert decode_preamble(encode_preamble(plain)) == plain
    long = Preamble(node_id, "ü" * 300, fingerprint)  # 600 bytes of UTF-8: cut to 253
    data = encode_preamble(long)
    assert len(data) <= MAX_PREAMBLE
    assert decode_preamble(data).name == "ü" * 126
