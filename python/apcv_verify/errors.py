"""Call errors a client can act on, and the one place where an unexpected exception becomes
a gRPC status (docs/architecture.md "Choices worth knowing").

Rejected presentations are responses, and call-level problems are answered by the handlers
with :func:`abort` (INVALID_ARGUMENT, PERMISSION_DENIED, UNAVAILABLE, …): a
``google.rpc.Status`` in the ``grpc-status-details-bin`` trailer (grpcio-status) carrying an
``ErrorInfo`` with a stable reason in the domain :data:`ERROR_DOMAIN` and, for
INVALID_ARGUMENT, a ``BadRequest`` naming the field — the reasons are listed in
``protos/apcv/verify/v1/verifier.proto``. Anything else that escapes a handler is a bug: the
caller gets INTERNAL with a fixed message and the reason ``INTERNAL_ERROR`` — never the
exception text or a stack trace, which could echo request data — and the log gets the
exception's class and where it was raised (file, line, function) under an
``unhandled_error`` event; not its message, for the same reason (docs/profile.md §9).
"""

from __future__ import annotations

import asyncio
import inspect
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import grpc
import structlog
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

__all__ = [
    "ERROR_DOMAIN",
    "INTERNAL_ERROR_DETAIL",
    "ErrorInterceptor",
    "FieldProblem",
    "abort",
    "call_status",
]

log = structlog.get_logger("apcv_verify.errors")

#: What the caller is told about a bug on our side.
INTERNAL_ERROR_DETAIL = "internal error"

#: ``ErrorInfo.domain`` of every error this service sends: its reasons are unique within it.
ERROR_DOMAIN = "apcv.verify.v1"


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


def call_status(
    code: grpc.StatusCode,
    reason: str,
    message: str,
    *,
    violations: Sequence[FieldProblem] = (),
    metadata: Mapping[str, str] | None = None,
) -> grpc.Status:
    """A status with its ``google.rpc.Status`` details: an ``ErrorInfo`` (``reason`` in
    :data:`ERROR_DOMAIN`, with ``metadata``) and, when there are ``violations``, a
    ``BadRequest`` listing them."""
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
    return rpc_status.to_status(details)


async def abort(
    context: grpc.aio.ServicerContext,
    code: grpc.StatusCode,
    reason: str,
    message: str,
    *,
    violations: Sequence[FieldProblem] = (),
    metadata: Mapping[str, str] | None = None,
) -> NoReturn:
    """End the call with ``code`` and :func:`call_status`'s details (raises AbortError)."""
    await context.abort_with_status(
        call_status(code, reason, message, violations=violations, metadata=metadata)
    )
    raise AssertionError("not reached: abort_with_status raises")  # for the type checker


#: Exceptions that already carry the call's outcome and must pass through unchanged: an
#: abort() by the handler, a cancellation, a closed generator.
_PASS_THROUGH = (grpc.aio.AbortError, asyncio.CancelledError, GeneratorExit)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps exceptions escaping a handler to INTERNAL, with nothing of them echoed."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            behaviour = getattr(handler, kind)
            if behaviour is None:
                continue
            wrapped = _guard(behaviour, handler_call_details.method)
            if wrapped is None:
                return handler
            factory = getattr(grpc, f"{kind}_rpc_method_handler")
            return factory(
                wrapped,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def _raised_at(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "unknown"
    last = frames[-1]
    return f"{Path(last.filename).name}:{last.lineno} in {last.name}"


async def _fail(method: str, error: Exception, context: grpc.aio.ServicerContext) -> None:
    log.error(
        "unhandled_error",
        method=method,
        error_type=type(error).__name__,
        raised_at=_raised_at(error),
    )
    await abort(context, grpc.StatusCode.INTERNAL, "INTERNAL_ERROR", INTERNAL_ERROR_DETAIL)


def _guard(behaviour: Callable[..., Any], method: str) -> Callable[..., Any] | None:
    if inspect.iscoroutinefunction(behaviour):

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await behaviour(request, context)
            except _PASS_THROUGH:
                raise
            except Exception as error:
                await _fail(method, error, context)

        return call

    if inspect.isasyncgenfunction(behaviour):

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for response in behaviour(request, context):
                    yield response
            except _PASS_THROUGH:
                raise
            except Exception as error:
                await _fail(method, error, context)

        return stream
    return None  # synchronous handlers (none here) keep grpc's own handling
