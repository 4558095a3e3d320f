"""The server's two interceptors, both built on :func:`wrap_handler`:

* :class:`MetricsInterceptor` — ``grpc_server_started_total``, ``…_handled_total`` and
  ``…_handling_seconds`` per call (go-grpc-prometheus names, :mod:`apcv_verify.observe.metrics`);
* :class:`ErrorInterceptor` — the one place where an unexpected exception becomes a gRPC
  status: INTERNAL with a fixed message and the reason ``INTERNAL_ERROR``, never the exception
  text (:mod:`apcv_verify.service.errors`).

The metrics interceptor goes first, so that it counts the status the error mapping sets.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import structlog

from ..observe.metrics import ServiceMetrics
from .errors import INTERNAL_ERROR_DETAIL, abort

__all__ = ["ErrorInterceptor", "MetricsInterceptor", "wrap_handler"]

log = structlog.get_logger("apcv_verify.service.interceptors")

#: What runs after a call, given how it ended: None when it returned (or its stream ended),
#: else the exception that ended it. It may raise another exception in its place; if it
#: returns, the exception propagates unchanged.
After = Callable[[BaseException | None], Awaitable[None]]
#: Called with the call's context when a call begins; returns what runs after it.
Around = Callable[[grpc.aio.ServicerContext], After]

#: A method handler's behaviour attributes, with go-grpc-prometheus' ``grpc_type`` of each.
_KINDS = (
    ("unary_unary", "unary"),
    ("unary_stream", "server_stream"),
    ("stream_unary", "client_stream"),
    ("stream_stream", "bidi_stream"),
)


def handler_kind(handler: grpc.RpcMethodHandler) -> tuple[str, str] | None:
    """(behaviour attribute, ``grpc_type``) of ``handler``, or None if it has no behaviour."""
    for attribute, grpc_type in _KINDS:
        if getattr(handler, attribute) is not None:
            return attribute, grpc_type
    return None


def wrap_handler(handler: grpc.RpcMethodHandler, around: Around) -> grpc.RpcMethodHandler:
    """``handler`` with ``around`` run at the start and end of each call of its behaviour.

    A synchronous behaviour (none in this service) is returned unchanged: it runs in grpc's
    thread pool, with grpc's own handling.
    """
    kind = handler_kind(handler)
    if kind is None:
        return handler
    attribute = kind[0]
    behaviour = getattr(handler, attribute)
    wrapped: Callable[..., Any]
    if inspect.iscoroutinefunction(behaviour):

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            after = around(context)
            try:
                response = await behaviour(request, context)
            except BaseException as error:
                await after(error)
                raise
            await after(None)
            return response

        wrapped = call
    elif inspect.isasyncgenfunction(behaviour):

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            after = around(context)
            try:
                async for response in behaviour(request, context):
                    yield response
            except BaseException as error:
                await after(error)
                raise
            await after(None)

        wrapped = stream
    else:
        return handler
    factory = getattr(grpc, f"{attribute}_rpc_method_handler")
    return factory(
        wrapped,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _split_method(full_method: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` → (``pkg.Service``, ``Method``)."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method


#: How close to the server's own deadline a call cut short, or a stream that ends, counts as
#: ended by the deadline. The server computes its deadline when the request arrives, so it
#: falls a little after the client's: when the client's deadline cuts the call, the server
#: sees a cancel (or its request stream end) while its own clock still shows time left —
#: more so on a loaded host.
DEADLINE_SLACK_SECONDS = 0.25


def _final_code(
    context: grpc.aio.ServicerContext, error: BaseException | None, *, streaming: bool
) -> str:
    """The status the call ends with, as go-grpc-prometheus names it (``OK``, ``NOT_FOUND``)."""
    if isinstance(error, grpc.aio.AbortError):
        code = context.code()  # set by abort()
        return "UNKNOWN" if code is None else str(code.name)
    remaining = context.time_remaining()
    near_deadline = remaining is not None and remaining <= DEADLINE_SLACK_SECONDS
    # grpc.aio leaves cancelled() False after a client cancel (grpc/grpc#36193) and a
    # streaming handler may simply see its request stream end, so a cancelled stream
    # without a deadline can count as OK; a passed deadline is always seen.
    cut_short = context.cancelled() or isinstance(error, asyncio.CancelledError | GeneratorExit)
    if cut_short:
        return "DEADLINE_EXCEEDED" if near_deadline else "CANCELLED"
    deadline_passed = remaining is not None and remaining <= 0
    if error is None and (deadline_passed or (streaming and near_deadline)):
        return "DEADLINE_EXCEEDED"
    if error is None:
        code = context.code()  # set_code(); None means OK
        return "OK" if code is None else str(code.name)
    return "UNKNOWN"  # what grpc.aio answers for an unhandled exception


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """``grpc_server_started_total``, ``…_handled_total`` and ``…_handling_seconds`` per call.

    Put it first in the interceptor list so that codes set by inner interceptors (the
    exception-to-status mapping) are what it counts. Unknown methods are not counted (their
    names are caller-chosen: unbounded label values).
    """

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        kind = handler_kind(handler)
        if kind is None:
            return handler
        service, method = _split_method(handler_call_details.method)
        return wrap_handler(handler, self._observer(kind[1], service, method))

    def _observer(self, grpc_type: str, service: str, method: str) -> Around:
        metrics = self._metrics
        labels = {"grpc_type": grpc_type, "grpc_service": service, "grpc_method": method}
        streaming = grpc_type != "unary"
        counts_as_stream = streaming and service in metrics.stream_services

        def begin(context: grpc.aio.ServicerContext) -> After:
            metrics.grpc_started.labels(**labels).inc()
            if counts_as_stream:
                metrics.inflight_streams.inc()
            started = time.perf_counter()

            async def end(error: BaseException | None) -> None:
                if counts_as_stream:
                    metrics.inflight_streams.dec()
                code = _final_code(context, error, streaming=streaming)
                metrics.grpc_handled.labels(**labels, grpc_code=code).inc()
                metrics.grpc_handling_seconds.labels(**labels).observe(
                    time.perf_counter() - started
                )

            return end

        return begin


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
        method = handler_call_details.method

        def guard(context: grpc.aio.ServicerContext) -> After:
            async def fail(error: BaseException | None) -> None:
                if isinstance(error, Exception) and not isinstance(error, _PASS_THROUGH):
                    await _fail(method, error, context)

            return fail

        return wrap_handler(handler, guard)


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
