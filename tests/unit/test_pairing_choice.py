"""Which neighbour ``pair CODE`` pairs with: one showing a code over mDNS, else the one
unpaired radio neighbour (at once when mDNS does not run here, after the wait otherwise)."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import pytest

from agent.errors import BadRequestError, NotFoundError
from agent.identity import load_or_create_identity, node_id_from_public_key
from agent.neighbours import NeighbourTable
from agent.pairing.code import PairingTarget
from agent.pairing.service import PairingService, PairingSettings
from agent.store import Store
from agent.trust import TrustStore

FP = "AB:" * 31 + "AB"
WAIT = 0.5  # discover_timeout of these tests, seconds


def _id() -> str:
    return node_id_from_public_key(secrets.token_bytes(32))


def _service(tmp_path: Path) -> tuple[PairingService, NeighbourTable]:
    identity = load_or_create_identity(tmp_path / "state", "me")
    store = Store(tmp_path / "state" / "agent.db")
    table = NeighbourTable(identity.node_id)
    settings = PairingSettings(discover_timeout=WAIT)
    return PairingService(identity, TrustStore(store), None, table, store, settings), table


def _radio(table: NeighbourTable, name: str, port: str = "/dev/ttyUSB0") -> str:
    node_id = _id()
    link = f"serial_radio:{port}"
    table.observe(node_id, name=name, fingerprint=FP, link=link, source="beacon")
    return node_id


def _showing(table: NeighbourTable, name: str) -> str:
    node_id = _id()
    table.observe(
        node_id, name=name, fingerprint=FP, link="udp", source="mdns", capabilities={"pair": "1.1"}
    )
    return node_id


class _Announcer:
    """Stands in for a running Discovery: the service only keeps its ``set_pairing``."""

    async def set_pairing(self, showing: bool) -> None:
        return None


def _mdns(service: PairingService, running: bool) -> None:
    """What the daemon's mDNS start reports: a Discovery, or None (mDNS off)."""
    done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    done.set_result(_Announcer() if running else None)
    service.discovery_started(done)  # type: ignore[arg-type]


async def _choose(service: PairingService) -> tuple[str, float]:
    started = time.monotonic()
    chosen = await service._choose(PairingTarget("1234567", None), None)
    return chosen, time.monotonic() - started


async def test_without_mdns_the_radio_neighbour_is_chosen_at_once(tmp_path: Path) -> None:
    service, table = _service(tmp_path)
    _mdns(service, running=False)
    radio = _radio(table, "robot")
    chosen, took = await _choose(service)
    assert chosen == radio
    assert took < WAIT / 2


async def test_without_mdns_a_radio_neighbour_heard_later_is_waited_for(tmp_path: Path) -> None:
    service, table = _service(tmp_path)
    _mdns(service, running=False)
    later = asyncio.get_running_loop().call_later(0.2, _radio, table, "robot")
    chosen, took = await _choose(service)
    assert table.get(chosen) is not None
    assert 0.15 < took < WAIT
    later.cancel()


async def test_with_mdns_the_radio_neighbour_is_chosen_after_the_wait(tmp_path: Path) -> None:
    service, table = _service(tmp_path)
    _mdns(service, running=True)
    radio = _radio(table, "robot")
    chosen, took = await _choose(service)
    assert chosen == radio
    assert took >= WAIT


async def test_a_neighbour_showing_a_code_wins_over_the_radio(tmp_path: Path) -> None:
    service, table = _service(tmp_path)
    _radio(table, "robot")
    shower = _showing(table, "laptop")
    chosen, took = await _choose(service)
    assert chosen == shower
    assert took < WAIT / 2


async def test_several_radio_neighbours_ask_for_peer(tmp_path: Path) -> None:
    service, table = _service(tmp_path)
    _mdns(service, running=False)
    _radio(table, "robot-1")
    _radio(table, "robot-2", "/dev/ttyUSB1")
    with pytest.raises(BadRequestError, match=r"robot-1 .*robot-2 .*--peer NAME"):
        await _choose(service)


async def test_nothing_heard_is_not_found(tmp_path: Path) -> None:
    service, _ = _service(tmp_path)
    _mdns(service, running=False)
    with pytest.raises(NotFoundError, match="no neighbour shows a pairing code"):
        await _choose(service)
