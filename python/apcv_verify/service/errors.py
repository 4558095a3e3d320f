"""Call errors a client can act on, and what the caller gets for an unexpected exception
(docs/architecture.md "Choices worth knowing").

Rejected presentations are responses, and call-level problems are answered by the handlers
with :func:`abort` (INVALID_ARGUMENT, PERMISSION_DENIED, UNAVAILABLE, …): a
``google.rpc.Status`` in the ``grpc-status-details-bin`` trailer (grpcio-status) carrying an
``ErrorInfo`` with a stable reason in the domain :data:`ERROR_DOMAIN` and, for
INVALID_ARGUMENT, a ``BadRequest`` naming the field — the reasons are listed in
``protos/apcv/verify/v1/verifier.proto``. Anything else that escapes a handler is a bug: the
caller gets INTERNAL with a fixed message and the reason ``INTERNAL_ERROR`` — never the
exception text or a stack trace, which could echo request data — and the log gets the
exception's class and where it was raised (file, line, function) under an
``unhandled_error`` event; not its message, for the same reason (docs/profile.md §9). That
mapping is :class:`~apcv_verify.service.interceptors.ErrorInterceptor`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import NamedTuple, NoReturn

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

__all__ = [
    "ABORT_REASON",
    "ERROR_DOMAIN",
    "INTERNAL_ERROR_DETAIL",
    "FieldProblem",
    "Refusal",
    "abort",
    "call_status",
]

#: What the caller is told about a bug on our side.
INTERNAL_ERROR_DETAIL = "internal error"

#: ``ErrorInfo.domain`` of every error this service sends: its reasons are unique within it.
ERROR_DOMAIN = "apcv.verify.v1"

#: The ``ErrorInfo`` reason of the last :func:`abort` in this task: grpc.aio runs each call
#: in a task of its own, so the metrics wrapper reads the reason of the call it saw end
#: with an AbortError (``apcv_call_errors_total``) without parsing the status it sent.
ABORT_REASON: ContextVar[str] = ContextVar("apcv_abort_reason", default="")

#: gRPC's server pushback (gRFC A6, "Retry Design"): a negative value tells a client's retry
#: policy not to resend the call. Sent with refusals that the same request meets again
#: however long the client waits (MESSAGE_TOO_LARGE), so that a client whose policy resends
#: RESOURCE_EXHAUSTED, to wait out TOO_MANY_CALLS, does not resend those.
NO_RETRY = ("grpc-retry-pushback-ms", "-1")


@dataclass(frozen=True)
class _Status(grpc.Status):
    """A call's end as ``abort_with_status`` takes it."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


@dataclass(frozen=True)
class FieldProblem:
    """Why one field of a request is unusable: a ``BadRequest`` field violation.

    ``field`` is a path from the request message (``scan.reader.reader_id``,
    ``scans[3]``), ``description`` a fixed phrase (never request data), ``reason`` the
    stable ``ErrorInfo`` reason of the problem.
    """

    reason: str
    field: str
    description: str

    def __str__(self) -> str:
        return f"{self.field}: {self.description}"


class Refusal(NamedTuple):
    """Why a call must end, as :func:`abort` takes it (``abort(context, *refusal)``): found
    by a plain function, so that the handler stays one coroutine with an ``await`` only on
    the way out."""

    code: grpc.StatusCode
    reason: str
    message: str
    #: The ``ErrorInfo`` metadata (``{"field": "scans[3].reader.reader_id"}``).
    metadata: Mapping[str, str] | None = None


def call_status(
    code: grpc.StatusCode,
    reason: str,
    message: str,
    *,
    violations: Sequence[FieldProblem] = (),
    metadata: Mapping[str, str] | None = None,
    retryable: bool = True,
) -> grpc.Status:
    """A status with its ``google.rpc.Status`` details: an ``ErrorInfo`` (``reason`` in
    :data:`ERROR_DOMAIN`, with ``metadata``) and, when there are ``violations``, a
    ``BadRequest`` listing them; not ``retryable``: with :data:`NO_RETRY`."""
    details = status_pb2.Status(code=code.value[0], message=message)
    details.details.add().Pack(
        error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata or {})
    )
    if violations:
        details.details.add().Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=problem.field,
                        description=problem.description,
                        reason=problem.reason,
                    )
                    for problem in violations
                ]
            )
        )
    status = rpc_status.to_status(details)
    if retryable:
        return status
    return _Status(status.code, status.details, (*status.trailing_metadata, NO_RETRY))


async def abort(
    context: grpc.aio.ServicerContext,
    code: grpc.StatusCode,
    reason: str,
    message: str,
    metadata: Mapping[str, str] | None = None,
    *,
    violations: Sequence[FieldProblem] = (),
    retryable: bool = True,
) -> NoReturn:
    """End the call with ``code`` and :func:`call_status`'s details (raises AbortError);
    ``retryable=False`` for a refusal that resending the same request cannot change.

    A call that has already ended — its deadline passed, or its client went away, while the
    process was busy with other calls — cannot be sent a status: gRPC's send fails
    (``grpc.aio.InternalError``). Nobody waits for an answer then, and it is no fault of the
    service's, so the handler ends as grpc.aio ends a cancelled call (CancelledError: counted
    CANCELLED, or DEADLINE_EXCEEDED past the deadline), not as an unhandled error."""
    status = call_status(
        code, reason, message, violations=violations, metadata=metadata, retryable=retryable
    )
    ABORT_REASON.set(reason)
    try:
        await context.abort_with_status(status)
    except grpc.aio.InternalError as unsent:
        raise asyncio.CancelledError("the call ended before its status was sent") from unsent
    raise AssertionError("not reached: abort_with_status raises")  # for the type checker
