"""Discovery on radio links: beacon datagrams and their pacing (sans-IO).

Radio links (``serial_radio``) carry no mDNS, so a node announces itself with a small beacon
datagram on the link, sent beside the ARQ packets of its sessions.

Wire format (at most :data:`MAX_BEACON_SIZE` bytes)::

    0xF0 || CBOR map {"id": bytes(35), "n": text, "fp": bytes(32), "v": uint}

The first byte shares its high nibble with the ARQ packet type (``link_drivers/arq/packets.py``
puts the type in the high nibble: HELLO 1, DATA 2, ACK 3, PING 4). Type 0xF is unused there
(``decode_packet`` rejects it), so a link demultiplexer routes datagrams with :func:`is_beacon`
first and hands the rest to ARQ. The low nibble is 0 in version 1; other values are reserved.

* ``id``: the node ID's 56 base32 characters (dashes dropped) decoded to 35 bytes. They
  include the four check characters, so the decoder validates the ID with
  :func:`agent.identity.parse_node_id`.
* ``n``: the node name in UTF-8, cut to :data:`MAX_NAME_BYTES` bytes on encoding.
* ``fp``: the SHA-256 certificate fingerprint, raw 32 bytes.
* ``v``: the beacon protocol version, 1.

The largest beacon (a 32-byte name) is 118 bytes: 0.12 s of air at 9600 baud.

:class:`BeaconScheduler` decides when to send. It never reads a clock: the caller passes
``now`` (monotonic seconds) in and gets the next deadline out, as aioquic's connection does.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import random
from typing import TypeVar

import cbor2

from agent.errors import ConfigError, LocalProtocolError, RemoteProtocolError
from agent.identity import parse_node_id
from link_drivers.api import LinkInfo

__all__ = [
    "BEACON_TYPE",
    "BEACON_VERSION",
    "MAX_BEACON_SIZE",
    "MAX_NAME_BYTES",
    "Beacon",
    "BeaconScheduler",
    "decode_beacon",
    "encode_beacon",
    "is_beacon",
]

BEACON_TYPE = 0xF0
"""First byte of every version-1 beacon (type nibble 0xF, flags 0)."""
BEACON_VERSION = 1
MAX_BEACON_SIZE = 120
"""Largest beacon, in bytes, type byte included; the decoder refuses longer datagrams."""
MAX_NAME_BYTES = 32
"""Longest name, in UTF-8 bytes, that :func:`encode_beacon` sends (longer names are cut)."""

_ID_BYTES = 35  # 56 base32 characters * 5 bits
_FP_BYTES = 32  # SHA-256
_T = TypeVar("_T")


@dataclasses.dataclass(frozen=True)
class Beacon:
    """What a beacon announces.

    Attributes:
        node_id: the sender's node ID, display form.
        name: the sender's name (not authenticated).
        fingerprint: SHA-256 fingerprint of its certificate, display form (``"3A:0F:…"``).
        version: the beacon protocol version.
    """

    node_id: str
    name: str
    fingerprint: str
    version: int = BEACON_VERSION


def is_beacon(datagram: bytes) -> bool:
    """Return True when a datagram belongs to discovery rather than to ARQ.

    Args:
        datagram: one datagram as received from a link channel.

    Returns:
        True when the type nibble of the first byte is 0xF (see the module docstring); such a
        datagram goes to :func:`decode_beacon`, never to the ARQ decoder.
    """
    return bool(datagram) and datagram[0] >> 4 == BEACON_TYPE >> 4


def _cut_utf8(text: str, limit: int) -> str:
    return text.encode("utf-8")[:limit].decode("utf-8", errors="ignore")


def encode_beacon(beacon: Beacon) -> bytes:
    """Encode a beacon (see the module docstring for the format).

    Args:
        beacon: what to announce; ``name`` is cut to :data:`MAX_NAME_BYTES` UTF-8 bytes.

    Returns:
        The datagram, at most :data:`MAX_BEACON_SIZE` bytes.

    Raises:
        LocalProtocolError: the node ID or the fingerprint is malformed.
    """
    try:
        raw_id = base64.b32decode(parse_node_id(beacon.node_id).replace("-", ""))
        fingerprint = bytes.fromhex(beacon.fingerprint.replace(":", ""))
    except ValueError as err:
        raise LocalProtocolError(f"cannot encode beacon {beacon}: {err}") from err
    if len(fingerprint) != _FP_BYTES:
        raise LocalProtocolError(f"fingerprint is {len(fingerprint)} bytes, not {_FP_BYTES}")
    body = {
        "id": raw_id,
        "n": _cut_utf8(beacon.name, MAX_NAME_BYTES),
        "fp": fingerprint,
        "v": beacon.version,
    }
    return bytes((BEACON_TYPE,)) + cbor2.dumps(body)


def _field(body: dict[object, object], key: str, kind: type[_T]) -> _T:
    value = body.get(key)
    if not isinstance(value, kind) or type(value) is not kind:  # bool is not an int here
        raise RemoteProtocolError(f"beacon field {key!r}: expected {kind.__name__}, got {value!r}")
    return value


def _check_map_header(item: bytes, body: dict[object, object]) -> None:
    """Refuse an indefinite-length map, or one whose header counts more pairs than it holds.

    RFC 8949 §3: the low 5 bits of the first byte hold the pair count (0-23), say that it
    follows in 1, 2, 4 or 8 big-endian bytes (24-27), or mark an indefinite length (31). A
    decoded map with fewer entries than its header counts had duplicate keys. This stands in
    for cbor2 6's ``allow_indefinite=False, allow_duplicate_keys=False`` on the beacon's own
    map: the pure-Python cbor2 5.9, the one an ARMv7 board without a compiler can install
    (and the Debian package carries), has neither option.

    Raises:
        RemoteProtocolError: the map has an indefinite length or duplicate keys.
    """
    info = item[0] & 0x1F
    if info == 31:
        raise RemoteProtocolError("beacon map has an indefinite length")
    count = info if info < 24 else int.from_bytes(item[1 : 1 + (1 << (info - 24))], "big")
    if len(body) != count:
        raise RemoteProtocolError("beacon map has duplicate keys")


def decode_beacon(datagram: bytes) -> Beacon:
    """Decode and validate a beacon.

    Unknown map keys are ignored (a later version may add some); known ones must have their
    exact types.

    Args:
        datagram: a datagram for which :func:`is_beacon` is True.

    Returns:
        The beacon, with ``node_id`` and ``fingerprint`` in display form.

    Raises:
        RemoteProtocolError: longer than :data:`MAX_BEACON_SIZE`, a first byte other than
            0xF0, CBOR that does not decode or has trailing bytes, a map of indefinite length
            or with duplicate keys, a missing or mistyped field, a node ID whose check
            characters fail, or a version other than 1.
    """
    if not datagram or datagram[0] != BEACON_TYPE:
        raise RemoteProtocolError(f"not a version-1 beacon (first byte {datagram[:1].hex()!r})")
    if len(datagram) > MAX_BEACON_SIZE:
        raise RemoteProtocolError(f"beacon of {len(datagram)} bytes exceeds {MAX_BEACON_SIZE}")
    stream = io.BytesIO(datagram[1:])
    try:
        body = cbor2.CBORDecoder(stream, max_depth=4).decode()
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError) as err:
        raise RemoteProtocolError(f"beacon is not valid CBOR: {err}") from err
    if stream.tell() != len(datagram) - 1:
        raise RemoteProtocolError("beacon has trailing bytes after its CBOR map")
    if not isinstance(body, dict):
        raise RemoteProtocolError(f"beacon body is {type(body).__name__}, not a map")
    _check_map_header(datagram[1:], body)
    version = _field(body, "v", int)
    if version != BEACON_VERSION:
        raise RemoteProtocolError(f"unsupported beacon version {version!r}")
    raw_id = _field(body, "id", bytes)
    fingerprint = _field(body, "fp", bytes)
    name = _field(body, "n", str)
    if len(raw_id) != _ID_BYTES or len(fingerprint) != _FP_BYTES:
        raise RemoteProtocolError("beacon id or fp has the wrong length")
    try:
        node_id = parse_node_id(base64.b32encode(raw_id).decode("ascii"))
    except ValueError as err:
        raise RemoteProtocolError(f"beacon node ID: {err}") from err
    return Beacon(node_id, name, fingerprint.hex(":").upper(), BEACON_VERSION)


class BeaconScheduler:
    """When to send beacons on one link, within a share of its capacity (sans-IO).

    Two rules combine; the later deadline wins:

    1. **Backoff** (as Trickle, RFC 6206 §4.2, without suppression): after a reset the
       interval is ``floor``; it doubles after every beacon up to ``ceiling``. A reset happens
       at the first :meth:`next_due` and at :meth:`fast_start` (the caller heard a new
       neighbour, which then learns of this node at once).
    2. **Budget** (a token bucket): beacons use at most ``share`` of the link's transmit
       capacity, ``bitrate * duty_cycle``, counted as air time: ``turnaround`` (half-duplex)
       plus ``(nbytes + frame_overhead) * 8 / bitrate`` seconds per beacon. The bucket holds
       ``burst`` beacons of ``beacon_size`` bytes and starts full, so a fast start can send a
       few beacons at once; over any window of T seconds the beacons' air time is at most
       ``share * duty_cycle * T`` plus one bucket. On a slow link the budget stretches the
       interval past ``ceiling``: the budget is never exceeded.

    Each wait is multiplied by a factor drawn uniformly from ``[1, 1 + jitter]`` (it only ever
    lengthens, so both rules still hold), so nodes that start together do not stay in step
    and collide on a half-duplex channel.

    Figures with the defaults, from ``tests/unit/test_beacons.py``: at 9600 baud (bitrate
    7680 bit/s, 7 bytes of framing) a 120-byte beacon takes 0.132 s of air, so the budget
    interval is 13.2 s; a fresh start sends 3 beacons within 4 s, the 4th after ~13 s (the
    bucket is empty), then the interval doubles to the ceiling: one beacon every 60-75 s,
    0.2 % of the link. At 1200 baud the budget interval (106 s) exceeds the ceiling and sets
    the pace. On LoRa EU 868 (5470 bit/s, 1 % duty cycle) it is 32 minutes: 1 % of 1 %.

    Args:
        info: the link's :class:`~link_drivers.api.LinkInfo`.
        share: largest share of the link capacity for beacons, 0 < share <= 1.
        rng: source of jitter (inject a seeded :class:`random.Random` in tests).
        beacon_size: bytes of the beacons this node sends (to size the bucket).
        floor: first and shortest interval, seconds (default 1).
        ceiling: longest interval the backoff reaches, seconds (default 60).
        burst: beacons the bucket holds (default 3).
        jitter: relative jitter, 0 <= jitter < 1 (default 0.25).

    Raises:
        ConfigError: a parameter is out of range.
    """

    def __init__(
        self,
        info: LinkInfo,
        share: float = 0.01,
        *,
        rng: random.Random | None = None,
        beacon_size: int = MAX_BEACON_SIZE,
        floor: float = 1.0,
        ceiling: float = 60.0,
        burst: int = 3,
        jitter: float = 0.25,
    ) -> None:
        if not 0.0 < share <= 1.0:
            raise ConfigError(f"beacon share must be in (0, 1], got {share}")
        if not 0.0 < floor <= ceiling:
            raise ConfigError(f"need 0 < floor <= ceiling, got {floor} and {ceiling} s")
        if burst < 1 or not 0.0 <= jitter < 1.0 or beacon_size < 1:
            raise ConfigError("need burst >= 1, beacon_size >= 1 and 0 <= jitter < 1")
        self._info = info
        self._rate = share * info.duty_cycle  # air seconds earned per second
        self._rng = rng if rng is not None else random.Random()
        self._floor, self._ceiling, self._jitter = floor, ceiling, jitter
        self._size = beacon_size
        self._capacity = burst * self.airtime(beacon_size)
        self._tokens = self._capacity
        self._tokens_at: float | None = None
        self._interval = floor
        self._due: float | None = None
        self._last_sent: float | None = None

    def airtime(self, nbytes: int) -> float:
        """Seconds of channel time one datagram of ``nbytes`` bytes takes on this link."""
        info = self._info
        turnaround = info.turnaround if info.half_duplex else 0.0
        return turnaround + (nbytes + info.frame_overhead) * 8 / info.bitrate

    @property
    def budget_interval(self) -> float:
        """Shortest mean interval, in seconds, that keeps beacons of ``beacon_size`` bytes
        within the share: ``airtime(beacon_size) / (share * duty_cycle)``."""
        return self.airtime(self._size) / self._rate

    def next_due(self, now: float) -> float:
        """Return when the next beacon is due (monotonic seconds; may be <= ``now``).

        The first call starts the schedule as :meth:`fast_start` does.
        """
        if self._due is None:
            self.fast_start(now)
        assert self._due is not None
        return self._due

    def fast_start(self, now: float) -> None:
        """Reset the backoff to ``floor``: after start, or on hearing a new neighbour.

        The next beacon may move earlier, but never before the budget allows it nor within
        ``floor`` seconds of the previous one.
        """
        self._interval = self._floor
        due = max(now + self._rng.uniform(0.0, self._jitter * self._floor), self._ready_at(now))
        if self._last_sent is not None:
            due = max(due, self._last_sent + self._floor)
        self._due = due if self._due is None else min(self._due, due)

    def sent(self, now: float, nbytes: int) -> None:
        """Record that a beacon of ``nbytes`` bytes was sent at ``now`` and plan the next.

        Sending early (before :meth:`next_due`) is counted all the same: the bucket goes into
        debt and the next beacon waits for it.
        """
        self._tokens = self._tokens_now(now) - self.airtime(nbytes)
        self._tokens_at = now
        self._last_sent = now
        wait = max(self._interval, self._ready_at(now) - now)
        self._due = now + wait * self._rng.uniform(1.0, 1.0 + self._jitter)
        self._interval = min(2 * self._interval, self._ceiling)

    def _tokens_now(self, now: float) -> float:
        if self._tokens_at is None:
            return self._tokens
        return min(self._capacity, self._tokens + (now - self._tokens_at) * self._rate)

    def _ready_at(self, now: float) -> float:
        """When the bucket holds one beacon of ``beacon_size`` bytes again."""
        missing = self.airtime(self._size) - self._tokens_now(now)
        return now if missing <= 0 else now + missing / self._rate
