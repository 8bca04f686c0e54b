"""Where paired peers were met: refreshed by re-pairing, never duplicated, kept per scheme."""

from __future__ import annotations

from pathlib import Path

from agent.pairing.addresses import PeerAddresses
from agent.store import Store


def test_repairing_refreshes_addresses_of_its_scheme_without_duplicates(tmp_path: Path) -> None:
    store = Store(tmp_path / "agent.db")
    clock = iter(float(t) for t in range(100))
    addresses = PeerAddresses(store, lambda: next(clock))
    assert addresses.of("N") == []  # before the table exists
    addresses.create()
    addresses.record("N", ["ssh://pi@robot:22"])
    addresses.record("N", ["udp://10.0.0.2:4737"])
    addresses.record("N", ["udp://10.0.0.2:4737"])
    assert addresses.of("N") == ["udp://10.0.0.2:4737", "ssh://pi@robot:22"]
    addresses.record("N", ["udp://10.0.0.9:4737", "udp://10.0.0.9:4737"])
    assert addresses.of("N") == ["udp://10.0.0.9:4737", "ssh://pi@robot:22"]
    addresses.record("M", ["serial_radio:/dev/ttyUSB0"])
    assert addresses.of("M") == ["serial_radio:/dev/ttyUSB0"]
    store.close()
    again = Store(tmp_path / "agent.db")
    assert PeerAddresses(again).of("N") == ["udp://10.0.0.9:4737", "ssh://pi@robot:22"]
    again.close()
