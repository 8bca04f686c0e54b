"""Where paired peers were met: ``udp://10.99.0.2:4737``, ``ssh://user@host:22``.

Kept in the agent's store, table ``pairing_addresses`` (one row per peer and address, so never
a duplicate). Pairing again replaces a peer's addresses of the same scheme: re-pairing refreshes
them, and an SSH address survives a later pairing by code.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from agent.store import Store

__all__ = ["PeerAddresses"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pairing_addresses (
    node_id TEXT NOT NULL,
    address TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (node_id, address)
)
"""


def _scheme(address: str) -> str:
    return address.split("://", 1)[0] if "://" in address else address.split(":", 1)[0]


class PeerAddresses:
    """The ``pairing_addresses`` table.

    Args:
        store: the agent's database.
        wall_clock: Unix seconds (the rows' ``updated_at``).
    """

    def __init__(self, store: Store, wall_clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._wall = wall_clock

    def create(self) -> None:
        """Create the table if it does not exist (idempotent)."""
        with self._store.transaction() as db:
            db.execute(_SCHEMA)

    def record(self, node_id: str, addresses: list[str]) -> None:
        """Remember where ``node_id`` was paired: ``addresses`` replace its addresses of the
        same schemes; others stay. Durable (``synchronous=FULL``)."""
        now = self._wall()
        schemes = {_scheme(a) for a in addresses}
        with self._store.transaction() as db:
            db.execute(_SCHEMA)
            rows = db.execute(
                "SELECT address FROM pairing_addresses WHERE node_id = ?", (node_id,)
            ).fetchall()
            for (old,) in rows:
                if _scheme(old) in schemes and old not in addresses:
                    db.execute(
                        "DELETE FROM pairing_addresses WHERE node_id = ? AND address = ?",
                        (node_id, old),
                    )
            for address in dict.fromkeys(addresses):
                db.execute(
                    "INSERT OR REPLACE INTO pairing_addresses (node_id, address, updated_at) "
                    "VALUES (?, ?, ?)",
                    (node_id, address, now),
                )

    def of(self, node_id: str) -> list[str]:
        """The addresses of ``node_id``, newest first (empty when none, or before
        :meth:`create`)."""
        rows = self._store.query(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'pairing_addresses'"
        )
        if not rows:
            return []
        found = self._store.query(
            "SELECT address FROM pairing_addresses WHERE node_id = ? "
            "ORDER BY updated_at DESC, address",
            (node_id,),
        )
        return [row[0] for row in found]
