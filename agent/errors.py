"""The one error tree of florete-agent.

Every error the project raises on purpose derives from :class:`FloreteError` and carries a stable
``code`` (a short snake_case string that scripts may match on), the Kubernetes ``Status.reason`` it
maps to and the HTTP status the local API answers with. The tree is split by whose fault it is, as
h11 does with ``LocalProtocolError`` / ``RemoteProtocolError``:

* :class:`LocalError` — this side asked for something wrong or impossible (bad manifest, unknown
  config key, missing object, unhealthy runtime).
* :class:`RemoteError` — the other end (a peer, the agent's API seen from the CLI, a decoder's
  input) sent something wrong.

This module imports nothing from the project, so every package may import it: it is the root of the
dependency graph (see docs/design.md).
"""

from __future__ import annotations


class FloreteError(Exception):
    """Root of every florete-agent error.

    Attributes:
        code: stable machine-readable code, e.g. ``"manifest_invalid"``.
        reason: the Kubernetes ``metav1.StatusReason`` this error maps to, e.g. ``"Invalid"``.
        http_status: HTTP status code the local API answers with.
    """

    code = "internal"
    reason = "InternalError"
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class LocalError(FloreteError):
    """This side is at fault: bad input, bad configuration, or a request that cannot be met."""

    code = "local"


class RemoteError(FloreteError):
    """The other end is at fault: it sent bytes or answers that break the protocol."""

    code = "remote"


class ConfigError(LocalError):
    """A configuration value or key is invalid (the message names the key and its source)."""

    code = "config_invalid"
    reason = "Invalid"
    http_status = 422


class ManifestError(LocalError):
    """A manifest is malformed or uses a field florete-agent does not support.

    Attributes:
        errors: one message per problem, each starting with its field path
            (``spec.volumes[0].nfs: not supported by florete-agent``) or YAML position.
    """

    code = "manifest_invalid"
    reason = "Invalid"
    http_status = 422

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


class BadRequestError(LocalError):
    """A request is malformed (bad query parameter, body that is not JSON, wrong content)."""

    code = "bad_request"
    reason = "BadRequest"
    http_status = 400


class NotFoundError(LocalError):
    """The named object (pod, container, log, route) does not exist."""

    code = "not_found"
    reason = "NotFound"
    http_status = 404


class AlreadyExistsError(LocalError):
    """An object with the same identity already exists and cannot be replaced as asked."""

    code = "already_exists"
    reason = "AlreadyExists"
    http_status = 409


class RuntimeUnavailableError(LocalError):
    """The selected workload runtime is missing or unhealthy."""

    code = "runtime_unavailable"
    reason = "ServiceUnavailable"
    http_status = 503


class CapabilityError(LocalError):
    """The runtime lacks the capability an operation needs (for example ``exec``)."""

    code = "capability_missing"
    reason = "MethodNotAllowed"
    http_status = 405


class WorkloadError(LocalError):
    """A workload could not be started, stopped or inspected (for example: executable not found)."""

    code = "workload_failed"
    reason = "InternalError"
    http_status = 500


class LocalProtocolError(LocalError):
    """This side asked a protocol core for something its state does not allow (a bug in the
    caller, as h11's ``LocalProtocolError``): an event with no entry in a state table, data on a
    closed session, a message longer than the protocol carries."""

    code = "local_protocol"


class RemoteProtocolError(RemoteError):
    """Bytes received from a peer or a device do not follow the protocol."""

    code = "remote_protocol"
    reason = "BadRequest"
    http_status = 400


class ApiError(RemoteError):
    """The agent's API answered with a Kubernetes ``Status`` error (seen from a client).

    Attributes:
        status: the HTTP status code of the answer.
        api_reason: the ``Status.reason`` field, e.g. ``"NotFound"``.
    """

    code = "api_error"

    def __init__(self, message: str, status: int, api_reason: str) -> None:
        super().__init__(message)
        self.status = status
        self.api_reason = api_reason
