"""Call errors of the v1 contract as typed exceptions, one class per kind a caller acts on.

A failed call carries a ``google.rpc.Status`` in its ``grpc-status-details-bin`` trailer
(``protos/apcv/verify/v1/verifier.proto``, README "The contract and its errors"): an
``ErrorInfo`` whose ``reason`` (in the domain :data:`ERROR_DOMAIN`) is the stable field to
branch on, and for ``INVALID_ARGUMENT`` a ``BadRequest`` naming the fields. The gRPC library's
own errors (a shutdown, too many concurrent calls) carry none: their ``reason`` is ``""``.

=============================  =====================  ==========================================
exception                      status                 what the caller does
=============================  =====================  ==========================================
:class:`InvalidRequestError`   INVALID_ARGUMENT       fix the request (``field_violations``)
:class:`UnauthenticatedError`  UNAUTHENTICATED        renew the client certificate (revoked)
:class:`PermissionDeniedError` PERMISSION_DENIED      fix the caller's certificate or policy
:class:`RequestIdReusedError`  ALREADY_EXISTS         give each presentation its own request id
:class:`MessageTooLargeError`  RESOURCE_EXHAUSTED     send less per call (``MESSAGE_TOO_LARGE``)
:class:`ServerBusyError`       RESOURCE_EXHAUSTED     back off, try again (``TOO_MANY_CALLS``)
:class:`UnavailableError`      UNAVAILABLE            try again later or on another replica
:class:`CallCancelledError`    CANCELLED              as UNAVAILABLE: the server's side ended it
:class:`DeadlineExceededError` DEADLINE_EXCEEDED      the answer is unknown: resend the same id
:class:`ServerError`           INTERNAL, UNKNOWN      report it (a bug on the server's side)
:class:`VerifierError`         any other              the base class of all of them
=============================  =====================  ==========================================

The messages are the server's fixed phrases and reason codes: never a scan or personal data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

__all__ = [
    "ERROR_DOMAIN",
    "CallCancelledError",
    "DeadlineExceededError",
    "FieldViolation",
    "InvalidRequestError",
    "MessageTooLargeError",
    "PermissionDeniedError",
    "ServerBusyError",
    "ServerError",
    "UnauthenticatedError",
    "UnavailableError",
    "VerifierError",
    "error_from_rpc",
]

#: ``ErrorInfo.domain`` of the v1 contract's errors.
ERROR_DOMAIN = "apcv.verify.v1"


@dataclass(frozen=True)
class FieldViolation:
    """One ``BadRequest`` field violation: ``field`` is a path from the request message
    (``scan.reader.reader_id``, ``scans``), ``reason`` its ``ErrorInfo`` reason."""

    field: str
    description: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.description}"


class VerifierError(Exception):
    """A call to the verifier failed. ``reason`` is the ``ErrorInfo`` reason (``""`` when the
    error came from the gRPC library without details), ``metadata`` its metadata (for
    instance ``limit``/``size``/``setting`` of ``MESSAGE_TOO_LARGE``), ``field_violations``
    the ``BadRequest`` entries; ``message`` is the status message, for people."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        field_violations: Sequence[FieldViolation] = (),
    ) -> None:
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata: Mapping[str, str] = MappingProxyType(dict(metadata or {}))
        self.field_violations: tuple[FieldViolation, ...] = tuple(field_violations)
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.code.name}"
        if self.reason:
            text += f" {self.reason}"
        if self.message:
            text += f": {self.message}"
        if self.field_violations:
            text += " (" + "; ".join(str(item) for item in self.field_violations) + ")"
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class InvalidRequestError(VerifierError):
    """``INVALID_ARGUMENT``: the request is unusable as sent; ``field_violations`` say why."""


class UnauthenticatedError(VerifierError):
    """``UNAUTHENTICATED``: the server refuses this client certificate although it chains to
    its client CA: ``CERTIFICATE_REVOKED`` (its CA revoked it: use a new certificate) or
    ``CLIENT_CRL_MISSING`` (the server has no revocation list of its CA: its operators must
    add one). Not resent: the same certificate is refused again."""


class PermissionDeniedError(VerifierError):
    """``PERMISSION_DENIED``: ``CALLER_NOT_ALLOWED`` (the client certificate's CN is not in
    the server's callers table), ``SCANNED_AT_NOT_ALLOWED``, or ``READER_NOT_ALLOWED`` (a
    scan names a reader id that is not one of the caller's: metadata ``field``)."""


class RequestIdReusedError(VerifierError):
    """``ALREADY_EXISTS`` / ``REQUEST_ID_REUSED``: the ``request_id`` was already answered
    for another presentation from this caller and reader; the first answer stands. Give each
    scan its own id (:func:`~apcv_verify.client.make_scan` does) and keep it for resends."""


class MessageTooLargeError(VerifierError):
    """``RESOURCE_EXHAUSTED`` / ``MESSAGE_TOO_LARGE``: send smaller batches (``metadata``
    has ``limit`` and ``size`` in bytes and, when a setting bounds it, ``setting``). Also
    gRPC's own refusal of a message over a channel's or the server's maximum (``reason``
    ``""``, a message that says ``larger than max``, ``size`` and ``limit`` when it gives
    them): over twice ``server.max_message_bytes``, compressed or not, or a response over
    this client's ``grpc.max_receive_message_length``."""


class ServerBusyError(VerifierError):
    """``RESOURCE_EXHAUSTED`` other than ``MESSAGE_TOO_LARGE``: too many calls in progress
    (``TOO_MANY_CALLS``, ``metadata["setting"]`` names the limit), a stream over the server's
    memory budget (``STREAM_MEMORY_EXHAUSTED``), or the gRPC library's own other than a
    message too large (no details). ``VerifierClient`` and ``EdgeBatcher`` send the call again
    after their backoff: raised once the attempts or the deadline ran out."""


class UnavailableError(VerifierError):
    """``UNAVAILABLE``: the server is unreachable, shutting down, or has no trust list yet
    (``TRUST_LIST_NOT_LOADED``). Resending the same ``request_id`` is safe."""


class CallCancelledError(UnavailableError):
    """``CANCELLED`` from the server's side, without details: its gRPC ended the call
    unanswered. A server past its capacity ends the calls it cannot take this way, within
    milliseconds and before verifying them (docs/reliability.md "Past capacity"); a proxy or
    a server shutting down may too. As for ``UNAVAILABLE``, resending the same
    ``request_id`` is safe, later or on another replica. (A call this client cancels itself
    raises :class:`asyncio.CancelledError`, never this.)"""


class DeadlineExceededError(VerifierError):
    """``DEADLINE_EXCEEDED``: no answer in time. The scan may or may not have been verified:
    resend it with the same ``request_id``: it gets the answer given to it, if any
    (``Verdict.resent``), and is verified otherwise."""


class ServerError(VerifierError):
    """``INTERNAL`` (``INTERNAL_ERROR``: a bug on the server's side) or ``UNKNOWN``."""


_BY_CODE: dict[grpc.StatusCode, type[VerifierError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.ALREADY_EXISTS: RequestIdReusedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.CANCELLED: CallCancelledError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.INTERNAL: ServerError,
    grpc.StatusCode.UNKNOWN: ServerError,
}


def error_from_rpc(error: grpc.RpcError) -> VerifierError:
    """The typed exception for a failed call (``grpc.aio.AioRpcError`` or a synchronous
    ``grpc.Call`` error), its details parsed with grpcio-status ``rpc_status.from_call``."""
    code: grpc.StatusCode = error.code()
    message: str = error.details() or ""
    reason = ""
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # a trailer that contradicts the call's status: ignored
        status = None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.domain == ERROR_DOMAIN:
                reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations += [
                FieldViolation(item.field, item.description, item.reason)
                for item in bad.field_violations
            ]
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        too_large = reason == "MESSAGE_TOO_LARGE"
        if not reason and (grpc_sizes := _grpc_too_large(message)) is not None:
            too_large, metadata = True, grpc_sizes
        kind: type[VerifierError] = MessageTooLargeError if too_large else ServerBusyError
    else:
        kind = _BY_CODE.get(code, VerifierError)
    return kind(code, message, reason=reason, metadata=metadata, field_violations=violations)


#: gRPC's own refusal of a message over a channel's or server's maximum (its core's texts:
#: "Received message larger than max (5000 vs. 4096)", "Sent message larger than max (…)",
#: "Decompressed message larger than max"), with the size and the limit when it gives them.
_GRPC_TOO_LARGE = re.compile(r"message larger than max(?: \((\d+) vs\. (\d+)\))?")


def _grpc_too_large(message: str) -> dict[str, str] | None:
    """For a ``RESOURCE_EXHAUSTED`` without details that is gRPC refusing a message too large
    for a channel's or server's maximum (it would be refused again, unlike too many calls):
    its ``size`` and ``limit`` when the message gives them, else {}. None for any other."""
    found = _GRPC_TOO_LARGE.search(message)
    if found is None:
        return None
    size, limit = found.groups()
    return {} if size is None else {"size": size, "limit": limit}
