"""Invitations into a supernode, carried by pairing (sans-IO; docs/pairing.md, "Into a supernode").

``florete-agent pair --supernode NAME`` shows a code that also invites: the shower (a member of
supernode ``NAME``) puts the name in its sealed identity (the IDENTITY box, so it is
authenticated by the code's SPAKE2 key, after both sides confirmed the key). The joiner answers
in its DONE with one of :data:`ANSWERS`, decided before the attempt from what its user asked
(``--no-supernode`` declines) and whether it is a member of a supernode already. Accepting only
says the joiner *will* join: the joining itself is the ordinary ``supernode join NAME`` (its
CLI runs it once the authenticated session is up), so a failed join leaves the pairing intact.

This module holds the rules and the sentences; :mod:`agent.pairing.flow` carries the name and
the answer, :mod:`agent.pairing.service` asks the supernode service what this node is in.
"""

from __future__ import annotations

import dataclasses
import re

from agent.errors import BadRequestError

__all__ = [
    "ACCEPTED",
    "ANSWERS",
    "DECLINED",
    "MEMBER",
    "Invitation",
    "answer",
    "check_inviter",
    "joiner_text",
    "shower_text",
    "valid_name",
]

ACCEPTED = "accepted"
"""The joiner will join the supernode (its CLI runs ``supernode join NAME``)."""
DECLINED = "declined"
"""The joiner's user asked to pair only (``pair CODE --no-supernode``)."""
MEMBER = "member"
"""The joiner is a member of a supernode already (this one, or another it must leave first)."""
ANSWERS = (ACCEPTED, DECLINED, MEMBER)
"""What a joiner may answer to an invitation (field ``supernode`` of DONE)."""

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def valid_name(name: str) -> bool:
    """Whether ``name`` is a supernode name: a DNS-1123 label (RFC 1123 §2.1, lower case, at
    most 63 characters), as ``supernode create`` requires."""
    return bool(_NAME.match(name))


@dataclasses.dataclass(frozen=True)
class Invitation:
    """An invitation as the joiner received and answered it.

    Attributes:
        supernode: the supernode's name.
        answer: one of :data:`ANSWERS`.
        member_of: the supernode this node was a member of when it answered (None: none).
    """

    supernode: str
    answer: str
    member_of: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        """``{"name", "answer", "memberOf"}`` for the API."""
        return {"name": self.supernode, "answer": self.answer, "memberOf": self.member_of}


def answer(accept: bool, member_of: str | None) -> str:
    """The joiner's answer: ``declined`` when its user said so, else ``member`` when it is in a
    supernode already (joining another needs a ``supernode leave`` first), else ``accepted``."""
    if not accept:
        return DECLINED
    return MEMBER if member_of is not None else ACCEPTED


def check_inviter(name: str, member_of: str | None) -> None:
    """Check that this node may invite into supernode ``name``: it must be a member of it.

    Args:
        name: the supernode named by ``pair --supernode``.
        member_of: the supernode this node is a member of, or None.

    Raises:
        BadRequestError: ``name`` is not a supernode name.
        NotMemberError: this node is not a member of ``name`` (of none, or of another).
    """
    from supernode.errors import NotMemberError  # loaded by the daemon anyway; not by the flows

    if not valid_name(name):
        raise BadRequestError(
            f'"{name}" is not a supernode name (lower-case letters, digits and "-", at most 63)'
        )
    if member_of is None:
        raise NotMemberError(
            f'this node is not a member of a supernode, so it cannot invite into "{name}": run '
            f"`florete-agent supernode create {name}` (or `supernode join {name}`) first"
        )
    if member_of != name:
        raise NotMemberError(
            f'this node is a member of supernode "{member_of}", not "{name}": it can invite '
            f'into "{member_of}" only'
        )


def shower_text(peer: str, supernode: str, given: str) -> str:
    """The shower's sentence for the joiner ``peer``'s answer ``given``."""
    if given == ACCEPTED:
        return f"{peer} accepted the invitation into supernode {supernode}"
    if given == DECLINED:
        return f"{peer} declined the invitation into supernode {supernode}: paired only"
    return f"{peer} is a member of a supernode already; it does not join {supernode}"


def joiner_text(peer: str, invitation: Invitation) -> str:
    """The joiner's sentence for an invitation by ``peer`` and the answer it gave."""
    name, member_of = invitation.supernode, invitation.member_of
    text = f"{peer} invites this node into supernode {name}"
    if invitation.answer == ACCEPTED:
        return f"{text}: accepted"
    if invitation.answer == DECLINED:
        return f"{text}: declined (pairing only)"
    if member_of == name:
        return f"{text}: this node is a member of it already"
    return f"{text}: not accepted, this node is a member of supernode {member_of}"
