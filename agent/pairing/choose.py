"""Which neighbour ``pair CODE`` pairs with (see docs/pairing.md, "Finding the peer").

The one named (by a scanned QR URI's node ID, or ``--peer``), else the one neighbour whose mDNS
announcement says it shows a code (``pair=1.<n>``), else the one unpaired radio neighbour heard:
at once when mDNS does not run here (nothing could announce a code over IP), after waiting for a
network neighbour with a code otherwise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from agent.errors import BadRequestError, NotFoundError
from agent.identity import short_id
from agent.neighbours import NeighbourTable
from agent.pairing.code import PairingTarget

__all__ = ["choose_peer"]


async def choose_peer(
    table: NeighbourTable,
    target: PairingTarget,
    peer: str | None,
    *,
    clock: Callable[[], float],
    wait: float,
    mdns: Callable[[], bool | None],
) -> str:
    """The node ID to pair with: named, else the one neighbour that shows a code.

    Args:
        table: the neighbour table (read again every 0.1 s while waiting).
        target: the typed code, or a scanned URI's code and node ID.
        peer: a neighbour name, node ID or short ID (``--peer``), or None.
        clock: monotonic seconds.
        wait: seconds to wait for the neighbour named, or one that shows a code.
        mdns: whether mDNS runs here (None: not known yet).

    Raises:
        NotFoundError: no neighbour by that name, or none shows a code.
        BadRequestError: the name fits several, or several show a code (or several unpaired
            radio neighbours are heard): name one with ``--peer``.
    """
    if target.node_id is not None or peer is not None:
        wanted = target.node_id or peer or ""
        deadline = clock() + wait
        while True:
            found = _resolve(table, wanted)
            if found or clock() > deadline:
                break
            await asyncio.sleep(0.1)
        if not found:
            raise NotFoundError(f'no neighbour "{wanted}" (not discovered on our links)')
        if len(found) > 1:
            raise BadRequestError(f'"{wanted}" names {len(found)} neighbours: use the node ID')
        return found[0]
    deadline = clock() + wait
    while True:
        showing = [
            n
            for n in table.neighbours()
            if n.capabilities.get("pair", "").startswith("1.") and n.state != "gone"
        ]
        radios = [
            n
            for n in table.neighbours()
            if any(link.startswith("serial_radio:") for link in n.links)
            and table.trust_of(n.node_id) != "trusted"
            and n.state != "gone"
        ]
        # Without mDNS here no network neighbour can be seen showing a code: a radio
        # neighbour heard is the answer, with no wait for announcements that cannot come.
        if showing or clock() > deadline or (radios and mdns() is False):
            break
        await asyncio.sleep(0.1)
    if not showing:
        if len(radios) == 1:
            return radios[0].node_id
        if radios:
            names = ", ".join(f"{n.name} ({short_id(n.node_id)})" for n in radios)
            raise BadRequestError(
                f"no neighbour on the network shows a pairing code, and several unpaired "
                f"radio neighbours are heard: {names}; choose one with --peer NAME"
            )
        raise NotFoundError(
            "no neighbour shows a pairing code: run `florete-agent pair` on the other "
            "device first (both on the same network with mDNS on, or on one radio link)"
        )
    if len(showing) > 1:
        names = ", ".join(f"{n.name} ({short_id(n.node_id)})" for n in showing)
        raise BadRequestError(
            f"several neighbours show a pairing code: {names}; choose one with --peer NAME"
        )
    return showing[0].node_id


def _resolve(table: NeighbourTable, name: str) -> list[str]:
    return sorted(
        {
            n.node_id
            for n in table.neighbours()
            if name in (n.node_id, n.name) or n.node_id.split("-", 1)[0] == name.upper()
        }
    )
