"""The one place where an unexpected exception becomes a gRPC status.

docs/architecture.md "Choices worth knowing" (errors by class).

Rejected presentations are responses, and call-level problems are answered by the handlers
with ``context.abort`` (INVALID_ARGUMENT, PERMISSION_DENIED, UNAVAILABLE, …). Anything else
that escapes a handler is a bug: the caller gets INTERNAL with a fixed message — never the
exception text or a stack trace, which could echo request data — and the log gets the
exception's class and where it was raised (file, line, function) under an
``unhandled_error`` event; not its message, for the same reason (docs/profile.md §9).
"""

from __future__ import annotations

import asyncio
import inspect
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import structlog

__all__ = ["INTERNAL_ERROR_DETAIL", "ErrorInterceptor"]

log = structlog.get_logger("apcv_verify.errors")

#: What the caller is told about a bug on our side.
INTERNAL_ERROR_DETAIL = "internal error"

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
    await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_ERROR_DETAIL)


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
