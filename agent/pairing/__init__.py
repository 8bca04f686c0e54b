"""Pairing: trust between two devices, established once by a person, with no server.

* :mod:`agent.pairing.code`: one-time 8-digit codes with a Damm check digit, and the QR URI.
* :mod:`agent.pairing.crypto`: SPAKE2, key confirmation, sealed identities.
* :mod:`agent.pairing.states`: the one table of states and transitions.
* :mod:`agent.pairing.wire`: the pairing messages (kinds 0x40-0x45).
* :mod:`agent.pairing.flow`: the sans-IO flows of the shower and the joiner.
* :mod:`agent.pairing.invite`: invitations into a supernode that come with a code.
* :mod:`agent.pairing.service`: the asyncio adapter over the mesh's untrusted sessions.
* :mod:`agent.pairing.choose`: which neighbour a typed code is for.
* :mod:`agent.pairing.ssh`: pairing over an SSH login (run by the CLI).
* :mod:`agent.pairing.ssh_remote`: the remote host's side of it: find, install, start the agent.
* :mod:`agent.pairing.wheelhouse`: wheels of the running agent, packed from its installation.
* :mod:`agent.pairing.remote_setup`: the stdlib-only script that installs and starts it there.

The ``spake2`` package is imported only here, so an agent that never pairs does not load it.
"""
