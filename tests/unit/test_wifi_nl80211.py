"""The ``wifi`` driver: nl80211 decoding against the documented layout, config, iw argv, and the
driver on a machine without Wi-Fi (this one: no cfg80211, no wireless interface).

Messages are built two ways: byte by byte from the attribute numbers and types documented in
``linux/nl80211.h`` (then decoded by pyroute2's ``nl80211cmd``), and with pyroute2's own encoder
(whose attribute numbers are checked on the wire against the same documented numbers).
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pyroute2.netlink.nl80211 import nl80211cmd

from agent.errors import ConfigError, LocalError, RemoteProtocolError
from link_drivers.api import LinkDriver, load_driver
from link_drivers.udp import UdpAddress, UdpDriver
from link_drivers.wifi import (
    AssociationEvent,
    AssociationState,
    Nl80211Radio,
    RadioMetrics,
    WifiConfig,
    WifiDriver,
    parse_interface,
    parse_mlme_event,
    parse_station,
    run_commands,
    setup_commands,
)
from link_drivers.wifi import nl80211 as nl

HEADER = Path("/usr/include/linux/nl80211.h")

# Numbers from linux/nl80211.h (enum nl80211_attrs, nl80211_sta_info, nl80211_rate_info,
# nl80211_commands); checked against the installed header where there is one.
ATTR = {
    "IFINDEX": 3,
    "IFNAME": 4,
    "IFTYPE": 5,
    "MAC": 6,
    "STA_INFO": 21,
    "WIPHY_FREQ": 38,
    "SSID": 52,
    "REASON_CODE": 54,
    "TIMED_OUT": 65,
    "DISCONNECTED_BY_AP": 71,
    "STATUS_CODE": 72,
}
STA = {
    "INACTIVE_TIME": 1,
    "SIGNAL": 7,
    "TX_BITRATE": 8,
    "TX_RETRIES": 11,
    "TX_FAILED": 12,
    "SIGNAL_AVG": 13,
    "RX_BITRATE": 14,
    "CONNECTED_TIME": 16,
    "EXPECTED_THROUGHPUT": 27,
}
RATE = {"BITRATE": 1, "BITRATE32": 5}
CMD = {
    "GET_INTERFACE": 5,
    "GET_STATION": 17,
    "NEW_STATION": 19,
    "DEL_STATION": 20,
    "AUTHENTICATE": 37,
    "CONNECT": 46,
    "ROAM": 47,
    "DISCONNECT": 48,
}
AP = "02:11:22:33:44:55"
PEER = "02:aa:bb:cc:dd:ee"


# ------------------------------------------------------------------ wire helpers


def nla(kind: int, payload: bytes) -> bytes:
    """One netlink attribute: u16 length, u16 type, payload, padding to 4 bytes."""
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def genl(cmd: int, *attrs: bytes, msg_type: int = 0x1C) -> bytes:
    """nlmsghdr (16 bytes) + genlmsghdr (cmd, version, reserved) + attributes."""
    body = struct.pack("=BBH", cmd, 1, 0) + b"".join(attrs)
    return struct.pack("=IHHII", 16 + len(body), msg_type, 0, 1, 0) + body


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def decode(data: bytes) -> Any:
    msg = nl80211cmd(data)
    msg.decode()
    return msg


def encode(cmd: int, attrs: list[list[Any]]) -> Any:
    """Encode with pyroute2's nl80211cmd, then decode the bytes again."""
    msg = nl80211cmd()
    msg["cmd"] = cmd
    msg["version"] = 1
    msg["attrs"] = attrs
    msg.encode()
    return decode(msg.data)


def tlvs(data: bytes) -> dict[int, bytes]:
    """Top-level attributes of a raw payload, by type number (NLA flag bits masked)."""
    out, i = {}, 0
    while i + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, i)
        out[kind & 0x3FFF] = data[i + 4 : i + length]
        i += length + (-length % 4)
    return out


def header_enum(text: str, name: str) -> dict[str, int]:
    """Values of a C enum in the header (explicit values, aliases and implicit increments)."""
    found = re.search(rf"enum {name} \{{(.*?)\n\}};", text, re.S)
    assert found is not None, name
    body = re.sub(r"/\*.*?\*/", "", found.group(1), flags=re.S)
    body = "\n".join(line for line in body.splitlines() if not line.strip().startswith("#"))
    values: dict[str, int] = {}
    nxt = 0
    for entry in (e.strip() for e in body.split(",")):
        if not entry:
            continue
        key, _, expr = (p.strip() for p in entry.partition("="))
        if expr in values:
            value = values[expr]
        elif re.fullmatch(r"\d+|0x[0-9a-fA-F]+", expr):
            value = int(expr, 0)
        elif not expr:
            value = nxt
        else:
            continue
        values[key] = nxt = value
        nxt += 1
    return values


# ------------------------------------------------------------------ the documented numbers


@pytest.mark.skipif(not HEADER.exists(), reason="linux/nl80211.h not installed")
def test_documented_numbers_match_the_installed_header() -> None:
    text = HEADER.read_text()
    attrs = header_enum(text, "nl80211_attrs")
    sta = header_enum(text, "nl80211_sta_info")
    rate = header_enum(text, "nl80211_rate_info")
    cmds = header_enum(text, "nl80211_commands")
    assert {k: attrs[f"NL80211_ATTR_{k}"] for k in ATTR} == ATTR
    assert {k: sta[f"NL80211_STA_INFO_{k}"] for k in STA} == STA
    assert {k: rate[f"NL80211_RATE_INFO_{k}"] for k in RATE} == RATE
    assert {k: cmds[f"NL80211_CMD_{k}"] for k in CMD} == CMD
    assert '#define NL80211_MULTICAST_GROUP_MLME\t\t"mlme"' in text


def test_module_commands_are_the_documented_ones() -> None:
    ours = {
        "GET_INTERFACE": nl.CMD_GET_INTERFACE,
        "GET_STATION": nl.CMD_GET_STATION,
        "NEW_STATION": nl.CMD_NEW_STATION,
        "DEL_STATION": nl.CMD_DEL_STATION,
        "CONNECT": nl.CMD_CONNECT,
        "ROAM": nl.CMD_ROAM,
        "DISCONNECT": nl.CMD_DISCONNECT,
    }
    assert ours == {k: v for k, v in CMD.items() if k in ours}


def test_pyroute2_puts_the_documented_numbers_on_the_wire() -> None:
    """Every attribute the decoders read, encoded by pyroute2: its type number on the wire
    must be the one linux/nl80211.h documents."""
    msg = nl80211cmd()
    msg["cmd"] = CMD["NEW_STATION"]
    msg["attrs"] = [
        ["NL80211_ATTR_IFINDEX", 3],
        ["NL80211_ATTR_IFNAME", "wlan0"],
        ["NL80211_ATTR_IFTYPE", 2],
        ["NL80211_ATTR_MAC", AP],
        ["NL80211_ATTR_WIPHY_FREQ", 2412],
        ["NL80211_ATTR_SSID", "net"],
        ["NL80211_ATTR_REASON_CODE", 3],
        ["NL80211_ATTR_TIMED_OUT", b""],
        ["NL80211_ATTR_DISCONNECTED_BY_AP", b""],
        ["NL80211_ATTR_STATUS_CODE", b"\0\0"],
        [
            "NL80211_ATTR_STA_INFO",
            {
                "attrs": [
                    [f"NL80211_STA_INFO_{k}", 1]
                    for k in STA
                    if k not in ("TX_BITRATE", "RX_BITRATE")
                ]
                + [
                    [
                        "NL80211_STA_INFO_TX_BITRATE",
                        {"attrs": [[f"NL80211_RATE_INFO_{k}", 1] for k in RATE]},
                    ],
                    ["NL80211_STA_INFO_RX_BITRATE", {"attrs": []}],
                ]
            },
        ],
    ]
    msg.encode()
    top = tlvs(msg.data[20:])
    assert set(top) == set(ATTR.values())
    sta = tlvs(top[ATTR["STA_INFO"]])
    assert set(sta) == set(STA.values())
    assert set(tlvs(sta[STA["TX_BITRATE"]])) == set(RATE.values())


# ------------------------------------------------------------------ station figures


def station_bytes() -> bytes:
    """A GET_STATION reply laid out by hand as linux/nl80211.h documents it."""
    tx_rate = nla(RATE["BITRATE32"], struct.pack("=I", 8667)) + nla(
        RATE["BITRATE"], struct.pack("=H", 8667 & 0xFFFF)
    )
    rx_rate = nla(RATE["BITRATE"], struct.pack("=H", 540))
    info = b"".join(
        [
            nla(STA["INACTIVE_TIME"], struct.pack("=I", 120)),
            nla(STA["SIGNAL"], bytes([0xCC])),  # u8 carrying -52 dBm
            nla(STA["SIGNAL_AVG"], bytes([0xCE])),  # -50 dBm
            nla(STA["TX_BITRATE"], tx_rate),
            nla(STA["RX_BITRATE"], rx_rate),
            nla(STA["TX_RETRIES"], struct.pack("=I", 7)),
            nla(STA["TX_FAILED"], struct.pack("=I", 1)),
            nla(STA["CONNECTED_TIME"], struct.pack("=I", 3600)),
            nla(STA["EXPECTED_THROUGHPUT"], struct.pack("=I", 540_000)),  # kbit/s
        ]
    )
    return genl(
        CMD["NEW_STATION"],
        nla(ATTR["IFINDEX"], struct.pack("=I", 3)),
        nla(ATTR["MAC"], mac(AP)),
        nla(ATTR["STA_INFO"], info),
    )


def test_parse_station_from_hand_built_bytes() -> None:
    m = parse_station(decode(station_bytes()))
    assert m == RadioMetrics(
        peer=AP,
        signal_dbm=-52,
        signal_avg_dbm=-50,
        tx_bitrate=866.7e6,
        rx_bitrate=54e6,
        expected_throughput=540e6,
        inactive_ms=120,
        connected_s=3600,
        tx_retries=7,
        tx_failed=1,
    )


def test_parse_station_units_and_absent_figures() -> None:
    msg = encode(
        CMD["NEW_STATION"],
        [
            ["NL80211_ATTR_MAC", PEER],
            [
                "NL80211_ATTR_STA_INFO",
                {
                    "attrs": [
                        ["NL80211_STA_INFO_SIGNAL", -90],
                        [
                            "NL80211_STA_INFO_TX_BITRATE",
                            {"attrs": [["NL80211_RATE_INFO_BITRATE", 10]]},
                        ],
                        ["NL80211_STA_INFO_RX_BITRATE", {"attrs": []}],
                        ["NL80211_STA_INFO_EXPECTED_THROUGHPUT", 0],
                    ]
                },
            ],
        ],
    )
    m = parse_station(msg)
    assert m.peer == PEER
    assert m.signal_dbm == -90
    assert m.tx_bitrate == 1e6  # legacy u16 field: 10 x 100 kbit/s
    assert m.rx_bitrate is None  # no rate given
    assert m.expected_throughput is None  # 0: the driver cannot estimate
    assert m.inactive_ms is None


def test_parse_station_without_sta_info_is_a_remote_error() -> None:
    with pytest.raises(RemoteProtocolError, match="NL80211_ATTR_STA_INFO"):
        parse_station(encode(CMD["NEW_STATION"], [["NL80211_ATTR_MAC", PEER]]))


def test_parse_interface() -> None:
    raw = genl(
        CMD["GET_INTERFACE"],
        nla(ATTR["IFINDEX"], struct.pack("=I", 4)),
        nla(ATTR["IFNAME"], b"wlan0\0"),
        nla(ATTR["IFTYPE"], struct.pack("=I", 7)),  # NL80211_IFTYPE_MESH_POINT
        nla(ATTR["MAC"], mac(PEER)),
        nla(ATTR["WIPHY_FREQ"], struct.pack("=I", 5180)),
    )
    info = parse_interface(decode(raw))
    assert (info.ifindex, info.name, info.mode, info.mac) == (4, "wlan0", "mesh", PEER)
    assert (info.ssid, info.frequency) == (None, 5180)
    managed = parse_interface(
        encode(CMD["GET_INTERFACE"], [["NL80211_ATTR_IFTYPE", 2], ["NL80211_ATTR_SSID", "net"]])
    )
    assert (managed.mode, managed.ssid) == ("managed", "net")


# ------------------------------------------------------------------ association events


def u16(value: int) -> bytes:
    return value.to_bytes(2, sys.byteorder)


def test_connect_roam_disconnect_from_hand_built_bytes() -> None:
    connect = genl(
        CMD["CONNECT"],
        nla(ATTR["IFINDEX"], struct.pack("=I", 3)),
        nla(ATTR["MAC"], mac(AP)),
        nla(ATTR["STATUS_CODE"], u16(0)),
    )
    assert parse_mlme_event(CMD["CONNECT"], decode(connect)) == AssociationEvent(
        "connected", "bss", AP, 3
    )
    refused = genl(CMD["CONNECT"], nla(ATTR["MAC"], mac(AP)), nla(ATTR["STATUS_CODE"], u16(17)))
    assert parse_mlme_event(CMD["CONNECT"], decode(refused)) == AssociationEvent(
        "disconnected", "bss", AP, None, reason=17
    )
    timed_out = genl(CMD["CONNECT"], nla(ATTR["MAC"], mac(AP)), nla(ATTR["TIMED_OUT"], b""))
    event = parse_mlme_event(CMD["CONNECT"], decode(timed_out))
    assert event is not None
    assert (event.kind, event.reason) == ("disconnected", None)
    roam = genl(
        CMD["ROAM"], nla(ATTR["IFINDEX"], struct.pack("=I", 3)), nla(ATTR["MAC"], mac(PEER))
    )
    assert parse_mlme_event(CMD["ROAM"], decode(roam)) == AssociationEvent("roamed", "bss", PEER, 3)
    disconnect = genl(
        CMD["DISCONNECT"],
        nla(ATTR["IFINDEX"], struct.pack("=I", 3)),
        nla(ATTR["REASON_CODE"], u16(3)),  # WLAN_REASON_DEAUTH_LEAVING
        nla(ATTR["DISCONNECTED_BY_AP"], b""),
    )
    assert parse_mlme_event(CMD["DISCONNECT"], decode(disconnect)) == AssociationEvent(
        "disconnected", "bss", None, 3, reason=3, by_ap=True
    )


def test_station_events_and_unrelated_commands() -> None:
    new = encode(CMD["NEW_STATION"], [["NL80211_ATTR_IFINDEX", 5], ["NL80211_ATTR_MAC", PEER]])
    assert parse_mlme_event(CMD["NEW_STATION"], new) == AssociationEvent(
        "connected", "peer", PEER, 5
    )
    gone = encode(CMD["DEL_STATION"], [["NL80211_ATTR_MAC", PEER]])
    assert parse_mlme_event(CMD["DEL_STATION"], gone) == AssociationEvent(
        "disconnected", "peer", PEER
    )
    auth = encode(CMD["AUTHENTICATE"], [["NL80211_ATTR_MAC", AP]])
    assert parse_mlme_event(CMD["AUTHENTICATE"], auth) is None
    local = encode(CMD["DISCONNECT"], [["NL80211_ATTR_REASON_CODE", 3]])
    event = parse_mlme_event(CMD["DISCONNECT"], local)
    assert event is not None
    assert not event.by_ap


def test_association_state_managed() -> None:
    s = AssociationState("managed")
    assert not s.associated
    assert s.apply(AssociationEvent("connected", "bss", AP))
    assert not s.apply(AssociationEvent("connected", "peer", PEER))  # station entries: ignored
    assert not s.apply(AssociationEvent("roamed", "bss", PEER))
    assert s.bssid == PEER
    assert s.apply(AssociationEvent("disconnected", "bss", None, reason=3))
    assert not s.associated
    s.seed([AP])
    assert s.bssid == AP


def test_association_state_mesh() -> None:
    s = AssociationState("mesh")
    assert not s.apply(AssociationEvent("connected", "bss", AP))  # not a mesh event
    assert s.apply(AssociationEvent("connected", "peer", PEER))
    assert not s.apply(AssociationEvent("connected", "peer", AP))
    assert not s.apply(AssociationEvent("disconnected", "peer", PEER))
    assert s.apply(AssociationEvent("disconnected", "peer", AP))
    s.seed([PEER, None])
    assert s.peers == {PEER}


# ------------------------------------------------------------------ config and iw


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({}, "interface is required"),
        ({"interface": "wlan0", "channel": 6}, "unknown key 'channel'"),
        ({"interface": "wlan0", "mode": "ap"}, "mode must be one of managed, mesh, ibss"),
        ({"interface": "wlan0", "mode": "mesh"}, "needs mesh_id"),
        ({"interface": "wlan0", "mode": "mesh", "mesh_id": "m" * 33}, "at most 32 bytes"),
        ({"interface": "wlan0", "mode": "ibss", "ssid": "cell"}, "needs ssid and frequency"),
        ({"interface": "wlan0", "mesh_id": "m"}, "mesh_id applies to mode 'mesh' only"),
        ({"interface": "wlan0", "ssid": "net"}, "ssid applies to mode 'ibss' only"),
        ({"interface": "wlan0", "frequency": 2412}, "frequency applies to modes"),
        (
            {"interface": "wlan0", "mode": "mesh", "mesh_id": "m", "frequency": 6},
            r"frequency is in MHz .*got 6",
        ),
        (
            {"interface": "wlan0", "mode": "mesh", "mesh_id": "m", "frequency": "2412"},
            "frequency must be an integer",
        ),
        ({"interface": "wlan0", "mtu": 5}, "^wifi: mtu must be 16..65507"),
        ({"interface": "wlan0", "poll_interval": 0}, "poll_interval"),
        ({"interface": ""}, "interface must name one interface"),
    ],
)
def test_config_errors(mapping: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        WifiConfig.from_mapping(mapping)


def test_config_builds_the_udp_data_path() -> None:
    cfg = WifiConfig.from_mapping({"interface": "wlan0", "port": 0, "mtu": 1000, "queue": 8})
    udp = cfg.udp_config()
    assert (udp.interfaces, udp.port, udp.mtu, udp.queue) == (("wlan0",), 0, 1000, 8)


def test_setup_commands_argv() -> None:
    assert setup_commands(WifiConfig("wlan0")) == []
    mesh = WifiConfig("wlan0", mode="mesh", mesh_id="florete", frequency=2412)
    assert setup_commands(mesh) == [
        ("ip", "link", "set", "dev", "wlan0", "down"),
        ("iw", "dev", "wlan0", "set", "type", "mp"),
        ("ip", "link", "set", "dev", "wlan0", "up"),
        ("iw", "dev", "wlan0", "mesh", "join", "florete", "freq", "2412"),
    ]
    assert setup_commands(WifiConfig("wlan1", mode="mesh", mesh_id="m"))[-1] == (
        "iw",
        "dev",
        "wlan1",
        "mesh",
        "join",
        "m",
    )
    ibss = WifiConfig("wlan0", mode="ibss", ssid="cell one", frequency=5180)
    assert setup_commands(ibss)[1:] == [
        ("iw", "dev", "wlan0", "set", "type", "ibss"),
        ("ip", "link", "set", "dev", "wlan0", "up"),
        ("iw", "dev", "wlan0", "ibss", "join", "cell one", "5180"),
    ]


async def test_run_commands_reports_a_missing_iw(tmp_path: Path) -> None:
    cmds = setup_commands(WifiConfig("wlan0", mode="mesh", mesh_id="m"))
    reason = await run_commands(cmds, path=str(tmp_path))
    assert reason is not None
    assert reason.startswith("ip and iw not installed")
    assert "install the iproute2 and iw package" in reason


async def test_run_commands_runs_in_order_and_stops_at_a_failure() -> None:
    assert await run_commands([("true",)]) is None
    reason = await run_commands([("ip", "link", "set", "dev", "flt-absent0", "down"), ("false",)])
    assert reason is not None
    assert reason.startswith("ip link set dev flt-absent0 down failed (exit ")
    assert "flt-absent0" in reason


# ------------------------------------------------------------------ the driver without Wi-Fi


@pytest.fixture
async def peer() -> AsyncIterator[UdpDriver]:
    driver = UdpDriver({"interfaces": ["lo"], "port": 0, "ipv6": False})
    await driver.start()
    yield driver
    await driver.aclose()


def v4(driver: UdpDriver | WifiDriver) -> UdpAddress:
    a = next(a for a in driver.bound if not a.ipv6)
    return UdpAddress("127.0.0.1", a.port, a.interface)


def test_registered_and_a_link_driver() -> None:
    assert load_driver("wifi") is WifiDriver
    driver = WifiDriver({"interface": "wlan0"})
    assert isinstance(driver, LinkDriver)
    assert driver.name == "wifi"


async def test_radio_is_unavailable_here() -> None:
    """No cfg80211 in this kernel: lo is no nl80211 interface either way."""
    radio = Nl80211Radio("lo")
    with pytest.raises(LocalError, match="nl80211") as err:
        await radio.open()
    assert err.value.message
    radio.close()


async def test_driver_without_a_radio_runs_the_data_path(
    peer: UdpDriver, caplog: pytest.LogCaptureFixture
) -> None:
    driver = WifiDriver({"interface": "lo", "port": 0, "ipv6": False, "poll_interval": 0.05})
    assert driver.available() == "no wireless interface lo: /sys/class/net/lo/phy80211 missing"
    try:
        await driver.start()
        assert "radio not watched: no wireless interface lo" in caplog.text
        assert not driver.up
        assert driver.radio_metrics() is None
        assert driver.stations() == []
        assert driver.info.bitrate == 100e6
        assert driver.info.cost == 2.0
        ch = driver.channel(v4(peer))
        assert ch.metrics.up
        await ch.send(b"over lo")
        async with asyncio.timeout(2):
            theirs = await peer.accept()
            assert await theirs.receive() == b"over lo"
            await theirs.send(b"back")
            assert await ch.receive() == b"back"
        await asyncio.sleep(0.15)  # the poller runs and changes nothing
        assert driver.bound == [UdpAddress("0.0.0.0", v4(driver).port, "lo")]
    finally:
        await driver.aclose()


async def test_disassociation_marks_channels_down_and_they_resume(peer: UdpDriver) -> None:
    driver = WifiDriver({"interface": "lo", "port": 0, "ipv6": False})
    try:
        await driver.start()
        ch = driver.channel(v4(peer))
        disconnect = genl(CMD["DISCONNECT"], nla(ATTR["REASON_CODE"], u16(4)))
        event = parse_mlme_event(CMD["DISCONNECT"], decode(disconnect))
        assert event is not None
        driver.handle_event(event)
        assert not ch.metrics.up
        assert not ch.closed
        await ch.send(b"still sent")  # the session above keeps probing
        async with asyncio.timeout(2):
            assert await (await peer.accept()).receive() == b"still sent"
        connect = genl(CMD["CONNECT"], nla(ATTR["MAC"], mac(AP)), nla(ATTR["STATUS_CODE"], u16(0)))
        event = parse_mlme_event(CMD["CONNECT"], decode(connect))
        assert event is not None
        driver.handle_event(event)
        assert ch.metrics.up
        assert driver.state.bssid == AP
        driver.handle_event(
            AssociationEvent("disconnected", "bss", ifindex=socket.if_nametoindex("lo"))
        )
        assert not ch.metrics.up  # no radio: the ifindex filter has nothing to compare with
    finally:
        await driver.aclose()


async def test_missing_interface_still_opens_down() -> None:
    driver = WifiDriver({"interface": "flt-absent0", "port": 0, "peer": "10.99.0.2:4737"})
    assert driver.available() == "no wireless interface flt-absent0: no such interface"
    try:
        ch = await driver.open()
        assert not ch.metrics.up
        assert not driver.up
        await ch.send(b"dropped")
        assert driver.udp.stats.send_dropped == 1
        assert driver.udp.unbound() == [("flt-absent0", "ipv4"), ("flt-absent0", "ipv6")]
    finally:
        await driver.aclose()
    with pytest.raises(ConfigError, match="needs the config to name exactly one peer"):
        await WifiDriver({"interface": "lo"}).open()
