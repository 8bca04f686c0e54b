"""Errors of the supernode, in the project's one tree (:mod:`agent.errors`)."""

from __future__ import annotations

from agent.errors import LocalError

__all__ = ["AlreadyMemberError", "NoQuorumError", "NotMemberError", "ProposalError"]


class NotMemberError(LocalError):
    """This node is not a member of a supernode (or not of the one named)."""

    code = "supernode_not_member"
    reason = "NotFound"
    http_status = 404


class AlreadyMemberError(LocalError):
    """This node is already a member of a supernode; leave it first."""

    code = "supernode_already_member"
    reason = "Conflict"
    http_status = 409


class NoQuorumError(LocalError):
    """The supernode cannot commit a change now: no leader, or no majority of members reachable.

    Running pods are not affected; only changes (apply, delete, join, leave) wait for a majority.
    """

    code = "supernode_no_quorum"
    reason = "ServiceUnavailable"
    http_status = 503


class ProposalError(LocalError):
    """A change was refused by the replicated state machine or by Raft (the message says why)."""

    code = "supernode_proposal_failed"
    reason = "Conflict"
    http_status = 409
