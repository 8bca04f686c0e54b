"""Supernode: several boards act as one node, with Raft-replicated placements and failover.

Protocol cores without I/O: :mod:`supernode.state` (the replicated state machine),
:mod:`supernode.placement` (filter and score), :mod:`supernode.failover` (failure detection,
placement rounds, what a member runs), :mod:`supernode.timing` (timeouts from the links).
asyncio adapters: :mod:`supernode.raft` (pysyncobj over the mesh) with its durable log
(:mod:`supernode.journal`), :mod:`supernode.member` (a running member), :mod:`supernode.proxy`
(logs and exec of pods on other members), :mod:`supernode.service` (the daemon's entry point)
with the mesh methods it answers (:mod:`supernode.methods`). docs/supernode.md has the user's
guide.
"""

from supernode.errors import AlreadyMemberError, NoQuorumError, NotMemberError, ProposalError
from supernode.service import Supernode

__all__ = ["AlreadyMemberError", "NoQuorumError", "NotMemberError", "ProposalError", "Supernode"]
