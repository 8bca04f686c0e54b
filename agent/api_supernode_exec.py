"""``kubectl exec`` of a supernode pod that runs on another member: the WebSocket side.

The member that kubectl talks to answers the WebSocket upgrade (``v5.channel.k8s.io`` or
``v4.channel.k8s.io``) with :mod:`agent.api_exec`'s session, as for local pods, runs the command
on the pod's member over the mesh (:func:`supernode.proxy.remote_exec`: to completion,
non-interactive) and sends its output on channel 1 (stdout) and the ``Status`` on channel 3
(error), then closes. ``-i`` and ``-t`` are refused before the upgrade: interactive exec is
served only by the agent that runs the pod.
"""

from __future__ import annotations

from agent.api_exec import Command, channel_upgrade, to_completion
from agent.errors import BadRequestError
from agent.httproute import Request, Upgrade

__all__ = ["exec_upgrade"]


def exec_upgrade(request: Request, command: Command, where: str) -> Upgrade:
    """Check an exec request and answer it with an upgrade that runs ``command``.

    Args:
        request: ``GET|POST .../pods/{name}/exec`` with ``command`` query parameters.
        command: runs the command (on the pod's member): ``() -> (exit code, output)``; raises
            :class:`agent.errors.FloreteError` on failure, sent as the ``Status`` message.
        where: ``namespace/pod/container`` for the log.

    Raises:
        BadRequestError: no command, ``stdin`` or ``tty`` asked for, or not a WebSocket upgrade
            offering a ``channel.k8s.io`` protocol.
    """
    argv = request.query.get_all("command")
    if not argv:
        raise BadRequestError("you must specify at least one command for the container")
    if request.query.get_bool("stdin") or request.query.get_bool("tty"):
        raise BadRequestError(
            "interactive exec (-i, -t) of a pod on another member is not supported: run the "
            "command without -i and -t, or run kubectl exec against the agent of the member "
            "that runs the pod"
        )
    return channel_upgrade(
        request,
        to_completion(command),
        where=f"{where} (another member)",
        what=argv[0],
        stdout=True,
        stderr=False,
    )
