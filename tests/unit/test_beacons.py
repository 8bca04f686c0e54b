"""Radio beacons: codec round trip and fuzzing, demultiplexing from ARQ, pacing on a fake clock."""

from __future__ import annotations

import itertools
import random
import secrets

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.beacons import (
    MAX_BEACON_SIZE,
    MAX_NAME_BYTES,
    Beacon,
    BeaconScheduler,
    decode_beacon,
    encode_beacon,
    is_beacon,
)
from agent.errors import ConfigError, LocalProtocolError, RemoteProtocolError
from agent.identity import node_id_from_public_key
from link_drivers.api import LinkInfo
from link_drivers.arq.packets import (
    Ack,
    Data,
    Hello,
    Packet,
    Ping,
    decode_packet,
    encode_packet,
)
from link_drivers.serial_radio.config import PROFILES, SerialConfig

NODE_ID = node_id_from_public_key(bytes(range(32)))
FP = bytes(range(32)).hex(":").upper()


def _link(baud: int, profile: str = "wire") -> LinkInfo:
    return SerialConfig(port="/dev/null", baudrate=baud, profile=PROFILES[profile]).link_info()


# --- codec ------------------------------------------------------------------------------------


def test_round_trip() -> None:
    beacon = Beacon(NODE_ID, "rover-1", FP)
    data = encode_beacon(beacon)
    assert data[0] == 0xF0
    assert is_beacon(data)
    assert decode_beacon(data) == beacon


def test_longest_beacon_fits_and_names_are_cut_on_a_character_boundary() -> None:
    data = encode_beacon(Beacon(NODE_ID, "ж" * 40, FP))  # 2 bytes per character
    assert len(data) <= MAX_BEACON_SIZE
    assert decode_beacon(data).name == "ж" * (MAX_NAME_BYTES // 2)
    longest = encode_beacon(Beacon(NODE_ID, "x" * 100, FP))
    assert len(longest) == 118


def test_arq_packets_are_not_beacons_and_beacons_are_not_arq() -> None:
    packets: list[Packet] = [
        Hello(my_sid=1, your_sid=0, isn=0, window=8, mtu=256),
        Data(tag=1, seq=2, payload=b"\xf0abc", end=True),
        Ack(tag=1, cum=3, rwnd=8),
        Ping(tag=1),
    ]
    assert not any(is_beacon(encode_packet(p)) for p in packets)
    assert not is_beacon(b"")
    with pytest.raises(RemoteProtocolError, match="unknown ARQ packet type 15"):
        decode_packet(encode_beacon(Beacon(NODE_ID, "a", FP)))


def _body(**changes: object) -> bytes:
    body: dict[str, object] = {
        "id": cbor2.loads(encode_beacon(Beacon(NODE_ID, "a", FP))[1:])["id"],
        "n": "a",
        "fp": bytes(32),
        "v": 1,
    }
    for key, value in changes.items():
        if value is None:
            del body[key]
        else:
            body[key] = value
    return b"\xf0" + cbor2.dumps(body)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "not a version-1 beacon"),
        (b"\xf1" + _body()[1:], "not a version-1 beacon"),
        (_body() + b"\x00", "trailing bytes"),
        (_body(pad=b"x" * 60), "exceeds"),
        (b"\xf0\xff", "not valid CBOR"),
        (b"\xf0" + cbor2.dumps([1, 2]), "not a map"),
        (b"\xf0\xa2" + cbor2.dumps("v") + b"\x01" + cbor2.dumps("v") + b"\x01", "duplicate keys"),
        (b"\xf0\xbf" + _body()[2:] + b"\xff", "indefinite length"),
        (_body(v=2), "unsupported beacon version"),
        (_body(v=True), "expected int"),
        (_body(id=None), "'id'"),
        (_body(fp=b"short"), "wrong length"),
        (_body(n=b"bytes"), "expected str"),
        (_body(id=b"\x01" * 35), "check character"),
    ],
)
def test_bad_beacons_raise_remote_protocol_error(data: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError, match=reason):
        decode_beacon(data)


def test_unknown_keys_are_ignored() -> None:
    assert decode_beacon(_body(later="x")).node_id == NODE_ID


def test_encoding_a_malformed_beacon_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        encode_beacon(Beacon(NODE_ID, "a", "AB:CD"))
    with pytest.raises(LocalProtocolError):
        encode_beacon(Beacon("not-an-id", "a", FP))


@settings(max_examples=600)
@given(st.binary(max_size=140))
def test_decoder_fuzz_bytes(data: bytes) -> None:
    for datagram in (data, b"\xf0" + data):
        try:
            decode_beacon(datagram)
        except RemoteProtocolError:
            pass


_cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=40)
    | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=5)
    ),
    max_leaves=8,
)


@settings(max_examples=400)
@given(
    st.dictionaries(st.sampled_from(["id", "n", "fp", "v", "x"]), _cbor_values, max_size=5),
    st.integers(0, 6),
)
def test_decoder_fuzz_cbor_maps(body: dict[str, object], cut: int) -> None:
    data = b"\xf0" + cbor2.dumps(body)
    for datagram in (data, data[: len(data) - cut]):
        try:
            beacon = decode_beacon(datagram)
        except RemoteProtocolError:
            continue
        assert beacon.version == 1
        assert len(beacon.fingerprint) == 95


# --- pacing -----------------------------------------------------------------------------------


def _run(
    sched: BeaconScheduler, until: float, nbytes: int = 118, news: tuple[float, ...] = ()
) -> list[float]:
    """Send every beacon when due, on a fake clock; ``news``: times a new neighbour is heard."""
    now, pending = 0.0, sorted(news)
    times: list[float] = []
    while True:
        due = sched.next_due(now)
        if pending and pending[0] < due:
            now = max(now, pending.pop(0))
            sched.fast_start(now)
            continue
        now = max(now, due)
        if now > until:
            return times
        sched.sent(now, nbytes)
        times.append(now)


def test_figures_at_9600_baud() -> None:
    info = _link(9600)
    assert info.bitrate == 7680
    assert info.frame_overhead == 7
    sched = BeaconScheduler(info, rng=random.Random(1))
    assert sched.airtime(120) == pytest.approx(127 * 8 / 7680)  # 0.132 s
    assert sched.budget_interval == pytest.approx(13.23, abs=0.01)
    times = _run(sched, 3600)
    assert times[2] < 4.0  # fast start: three beacons within 4 s
    assert times[3] - times[2] > 9.0  # then the bucket is empty
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(60.0 <= g <= 75.0 for g in gaps[8:])  # the ceiling, with jitter
    assert len(times) < 70
    airtime = len(times) * sched.airtime(118)
    assert airtime / 3600 < 0.003


def test_budget_beats_the_ceiling_on_a_slow_link() -> None:
    sched = BeaconScheduler(_link(1200), rng=random.Random(2))
    assert sched.budget_interval == pytest.approx(105.8, abs=0.1)
    times = _run(sched, 7200)
    steady = times[3:]
    assert (steady[-1] - steady[0]) / (len(steady) - 1) >= sched.airtime(118) / 0.01 > 60.0


def test_duty_cycle_shrinks_the_budget() -> None:
    sched = BeaconScheduler(_link(115200, "lora-eu868"), rng=random.Random(3))
    assert sched.budget_interval == pytest.approx(1943, abs=1)


def test_floor_bounds_fast_links() -> None:
    sched = BeaconScheduler(LinkInfo(mtu=1400, bitrate=1e9), rng=random.Random(4))
    times = _run(sched, 600, news=(100.0, 100.5, 101.0))
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 1.0 - 1e-9
    assert max(gaps) <= 75.0
    assert any(100.0 <= t <= 100.3 for t in times)  # a new neighbour hears us at once


def test_new_neighbour_brings_the_next_beacon_forward() -> None:
    sched = BeaconScheduler(_link(9600), rng=random.Random(5))
    _run(sched, 1000)
    assert sched.next_due(1000.0) > 1010.0
    sched.fast_start(1000.0)
    assert 1000.0 <= sched.next_due(1000.0) <= 1000.25


@settings(max_examples=150, deadline=None)
@given(
    baud=st.sampled_from([1200, 9600, 57600]),
    profile=st.sampled_from(["wire", "hc12", "lora-eu868"]),
    share=st.floats(0.001, 0.2),
    seed=st.integers(0, 2**32),
    news=st.lists(st.floats(0, 3000), max_size=30),
)
def test_the_budget_holds_whatever_new_neighbours_arrive(
    baud: int, profile: str, share: float, seed: int, news: list[float]
) -> None:
    info = _link(baud, profile)
    sched = BeaconScheduler(info, share, rng=random.Random(seed))
    times = _run(sched, 3600, news=tuple(news))
    capacity = 3 * sched.airtime(MAX_BEACON_SIZE)
    for i, t in enumerate(times):  # air time in [0, t] against the bucket's bound
        assert (i + 1) * sched.airtime(118) <= share * info.duty_cycle * t + capacity + 1e-9
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert not gaps or min(gaps) >= 1.0 - 1e-9


def test_sending_early_puts_the_bucket_in_debt() -> None:
    sched = BeaconScheduler(_link(9600), rng=random.Random(6), jitter=0.0)
    for _ in range(5):  # ignores next_due: 5 beacons at once
        sched.sent(0.0, 118)
    debt = 2 * sched.airtime(118) + 3 * (sched.airtime(118) - sched.airtime(120))
    assert sched.next_due(0.0) == pytest.approx((debt + sched.airtime(120)) / 0.01)


def test_scheduler_is_deterministic_with_a_seeded_rng() -> None:
    def run(seed: int) -> list[float]:
        return _run(BeaconScheduler(_link(9600), rng=random.Random(seed)), 600)

    assert run(7) == run(7) != run(8)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"share": 0.0},
        {"share": 1.5},
        {"floor": 0.0},
        {"floor": 10.0, "ceiling": 5.0},
        {"burst": 0},
        {"jitter": 1.0},
    ],
)
def test_bad_parameters_are_config_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        BeaconScheduler(_link(9600), **kwargs)  # type: ignore[arg-type]


def test_random_ids_round_trip() -> None:
    for _ in range(20):
        node_id = node_id_from_public_key(secrets.token_bytes(32))
        fp = secrets.token_bytes(32).hex(":").upper()
        assert decode_beacon(encode_beacon(Beacon(node_id, "n", fp))) == Beacon(node_id, "n", fp)
