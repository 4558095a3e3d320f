"""The server's two interceptors, both built on :func:`wrap_handler`:

* :class:`MetricsInterceptor` — ``grpc_server_started_total``, ``…_handled_total`` and
  ``…_handling_seconds`` per call, ``…_msg_received_total`` and ``…_msg_sent_total`` per
  stream message (go-grpc-prometheus names, :mod:`apcv_verify.observe.metrics`);
* :class:`ErrorInterceptor` — the one place where an unexpected exception becomes a gRPC
  status: INTERNAL with a fixed message and the reason ``INTERNAL_ERROR``, never the exception
  text (:mod:`apcv_verify.service.errors`).

* :class:`TracingInterceptor` — a span per call, only when tracing is on.

The tracing and metrics interceptors go first, so that they see the status the error mapping
sets. The server puts the metrics, the error mapping and the limits
(:mod:`apcv_verify.service.limits`) together as one :class:`CallInterceptor`: a unary call then
passes one wrapper that does the three concerns' bookkeeping in that order, not three nested
ones (docs/benchmarks.md "Service, third pass"). It does not install it as a server
interceptor: it registers its services through :meth:`CallInterceptor.registration`, which
wraps each method handler once, when it is registered, so that grpc.aio runs no interceptor
per call (docs/benchmarks.md "Unary: where the gap to the echo call goes"); only tracing,
when on, stays an interceptor, outside those wrappers.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import traceback
from bisect import bisect_left
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, Protocol

import grpc
import structlog

from ..config import ANONYMOUS_CALLER
from ..observe.metrics import ServiceMetrics
from ..observe.tracing import Tracing
from .errors import ABORT_REASON, INTERNAL_ERROR_DETAIL, abort
from .policy import CALLER, CertificateRefused, refuse_certificate

__all__ = [
    "CallInterceptor",
    "ErrorInterceptor",
    "MetricsInterceptor",
    "Registration",
    "TracingInterceptor",
    "wrap_handler",
]

log = structlog.get_logger("apcv_verify.service.interceptors")

#: Called with the call's context when a call begins; what it returns is given to :data:`End`.
Begin = Callable[[grpc.aio.ServicerContext], Any]
#: Called when a call ends, with the call's context, what :data:`Begin` returned and how the
#: call ended: None when it returned (or its stream ended), else the exception that ended it.
#: It may return an awaitable (awaited before the exception propagates), which may raise
#: another exception in its place; otherwise the exception propagates unchanged.
End = Callable[[grpc.aio.ServicerContext, Any, BaseException | None], Awaitable[None] | None]

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


def wrap_handler(
    handler: grpc.RpcMethodHandler,
    begin: Begin,
    end: End,
    *,
    request_deserializer: Callable[[bytes], Any] | None = None,
    response_serializer: Callable[[Any], bytes] | None = None,
) -> grpc.RpcMethodHandler:
    """``handler`` with ``begin`` run at the start of each call of its behaviour and ``end`` at
    its end, and the given (de)serializers in place of its own, if any. Made once per method
    (the interceptors cache it): a call costs the two calls and no new closure.

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
            token = begin(context)
            try:
                response = await behaviour(request, context)
            except BaseException as error:
                pending = end(context, token, error)
                if pending is not None:
                    await pending
                raise
            pending = end(context, token, None)
            if pending is not None:
                await pending
            return response

        wrapped = call
    elif inspect.isasyncgenfunction(behaviour):

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            token = begin(context)
            try:
                async for response in behaviour(request, context):
                    yield response
            except BaseException as error:
                pending = end(context, token, error)
                if pending is not None:
                    await pending
                raise
            pending = end(context, token, None)
            if pending is not None:
                await pending

        wrapped = stream
    else:
        return handler
    factory = getattr(grpc, f"{attribute}_rpc_method_handler")
    return factory(
        wrapped,
        request_deserializer=request_deserializer or handler.request_deserializer,
        response_serializer=response_serializer or handler.response_serializer,
    )


class _CachingInterceptor(grpc.aio.ServerInterceptor):
    """An interceptor that wraps each method's handler once (:meth:`_wrap`) and then answers
    every call of that method with the wrapped handler, without asking the interceptors
    after it again: the handlers of a server are registered once and never change. Unknown
    methods (no handler) are not cached: their names are chosen by callers."""

    def __init__(self) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = await continuation(handler_call_details)
            if handler is None:
                return handler
            wrapped = self._wrapped[method] = self._wrap(method, handler)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        raise NotImplementedError


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


#: What ends a call early from the outside: the client's cancel or the deadline.
_CUT_SHORT = (asyncio.CancelledError, GeneratorExit)


def _final_code(
    context: grpc.aio.ServicerContext, error: BaseException | None, *, streaming: bool
) -> str:
    """The status the call ends with, as go-grpc-prometheus names it (``OK``, ``NOT_FOUND``).
    A call that returned is tested first: every answered call takes that way."""
    remaining = context.time_remaining()
    near_deadline = remaining is not None and remaining <= DEADLINE_SLACK_SECONDS
    # grpc.aio leaves cancelled() False after a client cancel (grpc/grpc#36193) and a
    # streaming handler may simply see its request stream end, so a cancelled stream
    # without a deadline can count as OK; a passed deadline is always seen.
    if error is None:
        if context.cancelled():
            return "DEADLINE_EXCEEDED" if near_deadline else "CANCELLED"
        if near_deadline and (streaming or remaining <= 0):  # deadline passed, or near it
            return "DEADLINE_EXCEEDED"
        code = context.code()  # set_code(); None means OK
        return "OK" if code is None else str(code.name)
    if isinstance(error, grpc.aio.AbortError):
        code = context.code()  # set by abort()
        return "UNKNOWN" if code is None else str(code.name)
    if context.cancelled() or isinstance(error, _CUT_SHORT):
        return "DEADLINE_EXCEEDED" if near_deadline else "CANCELLED"
    return "UNKNOWN"  # what grpc.aio answers for an unhandled exception


class MetricsInterceptor(_CachingInterceptor):
    """``grpc_server_started_total``, ``…_handled_total`` and ``…_handling_seconds`` per call.

    Put it first in the interceptor list so that codes set by inner interceptors (the
    exception-to-status mapping) are what it counts. Unknown methods are not counted (their
    names are caller-chosen: unbounded label values).
    """

    def __init__(self, metrics: ServiceMetrics) -> None:
        super().__init__()
        self._metrics = metrics

    def hooks(self, method: str, grpc_type: str) -> tuple[Begin, End]:
        """The begin and end of a call of ``method`` (``grpc_type``: go-grpc-prometheus' type),
        with its label children looked up once."""
        service, name = _split_method(method)
        metrics = self._metrics
        labels = {"grpc_type": grpc_type, "grpc_service": service, "grpc_method": name}
        streaming = grpc_type != "unary"
        counts_as_stream = streaming and service in metrics.stream_services
        inflight = metrics.inflight_streams
        call_error = metrics.observe_call_error
        perf_counter = time.perf_counter
        calls = metrics.grpc_calls
        if calls is not None:
            # One process: the counts in plain Python (ServiceMetrics.grpc_calls), the same
            # updates prometheus_client's children would make, without their locks and calls.
            counts = calls.method(grpc_type, service, name)
            handled_cell = calls.handled_cell
            bounds = calls.bounds
            buckets = counts.buckets
            codes = counts.handled

            def begin_counted(context: grpc.aio.ServicerContext) -> float:
                counts.started += 1
                if counts_as_stream:
                    inflight.inc()
                return perf_counter()

            def end_counted(
                context: grpc.aio.ServicerContext, started: float, error: BaseException | None
            ) -> None:
                if counts_as_stream:
                    inflight.dec()
                code = _final_code(context, error, streaming=streaming)
                cell = codes.get(code)
                if cell is None:
                    cell = handled_cell(counts, code)
                cell[0] += 1
                if error is not None and isinstance(error, grpc.aio.AbortError):
                    call_error(service, name, code, ABORT_REASON.get())
                elapsed = perf_counter() - started
                buckets[bisect_left(bounds, elapsed)] += 1
                counts.seconds += elapsed

            return begin_counted, end_counted
        assert metrics.grpc_started is not None and metrics.grpc_handled is not None
        assert metrics.grpc_handling_seconds is not None
        grpc_handled = metrics.grpc_handled
        # The label children, looked up once: per call only the code's child is looked up.
        started_total = metrics.grpc_started.labels(**labels)
        handling_seconds = metrics.grpc_handling_seconds.labels(**labels)
        handled: dict[str, Any] = {}

        def begin(context: grpc.aio.ServicerContext) -> float:
            started_total.inc()
            if counts_as_stream:
                inflight.inc()
            return perf_counter()

        def end(
            context: grpc.aio.ServicerContext, started: float, error: BaseException | None
        ) -> None:
            if counts_as_stream:
                inflight.dec()
            code = _final_code(context, error, streaming=streaming)
            child = handled.get(code)
            if child is None:
                child = handled[code] = grpc_handled.labels(**labels, grpc_code=code)
            child.inc()
            if error is not None and isinstance(error, grpc.aio.AbortError):
                call_error(service, name, code, ABORT_REASON.get())
            handling_seconds.observe(perf_counter() - started)

        return begin, end

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        kind = handler_kind(handler)
        if kind is None:
            return handler
        grpc_type = kind[1]
        begin, end = self.hooks(method, grpc_type)
        if grpc_type == "unary":
            return wrap_handler(handler, begin, end)
        service, name = _split_method(method)
        metrics = self._metrics
        labels = {"grpc_type": grpc_type, "grpc_service": service, "grpc_method": name}
        # Each message of a stream passes its (de)serializer once: count it there, without
        # wrapping the request iterator or the responses.
        received = metrics.grpc_msg_received.labels(**labels).inc
        sent = metrics.grpc_msg_sent.labels(**labels).inc
        deserialize = handler.request_deserializer or _identity
        serialize = handler.response_serializer or _identity

        def counted_request(data: bytes) -> Any:
            received()
            return deserialize(data)

        def counted_response(message: Any) -> bytes:
            sent()
            return serialize(message)

        return wrap_handler(
            handler,
            begin,
            end,
            request_deserializer=counted_request,
            response_serializer=counted_response,
        )


def _identity(value: Any) -> Any:
    return value


#: Codes that mark a server span as failed (OpenTelemetry semantic conventions for gRPC: the
#: others are the caller's problem, not the server's).
_SERVER_ERROR_CODES = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)


class TracingInterceptor(_CachingInterceptor):
    """One SERVER span per call (:mod:`apcv_verify.observe.tracing`), current while the
    handler runs (so the core call's span and the log lines join it), continuing the trace of
    the caller's ``traceparent`` metadata. Put first: it ends with the status the others set.
    Only in the interceptor list when tracing is on."""

    def __init__(self, tracing: Tracing) -> None:
        super().__init__()
        self._tracing = tracing

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        from opentelemetry import context as otel_context
        from opentelemetry import propagate, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        kind = handler_kind(handler)
        if kind is None:
            return handler
        service, name = _split_method(method)
        span_name = f"{service}/{name}"
        streaming = kind[1] != "unary"
        tracer = self._tracing.tracer
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}

        def begin(context: grpc.aio.ServicerContext) -> tuple[Any, Any]:
            carrier = {
                key: value
                for key, value in context.invocation_metadata() or ()
                if isinstance(value, str)
            }
            parent = propagate.extract(carrier)
            span = tracer.start_span(
                span_name, context=parent, kind=SpanKind.SERVER, attributes=attributes
            )
            return span, otel_context.attach(trace.set_span_in_context(span, parent))

        def end(
            context: grpc.aio.ServicerContext,
            token: tuple[Any, Any],
            error: BaseException | None,
        ) -> None:
            span, attached = token
            code = _final_code(context, error, streaming=streaming)
            span.set_attribute("rpc.grpc.status_code", grpc.StatusCode[code].value[0])
            if code in _SERVER_ERROR_CODES:
                span.set_status(Status(StatusCode.ERROR, code))
            span.end()
            otel_context.detach(attached)

        return wrap_handler(handler, begin, end)


#: Exceptions that already carry the call's outcome and must pass through unchanged: an
#: abort() by the handler, a cancellation, a closed generator.
_PASS_THROUGH = (grpc.aio.AbortError, asyncio.CancelledError, GeneratorExit)


def _no_token(context: grpc.aio.ServicerContext) -> None:
    return None


class ErrorInterceptor(_CachingInterceptor):
    """Maps exceptions escaping a handler to INTERNAL, with nothing of them echoed."""

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        def fail(
            context: grpc.aio.ServicerContext, _token: None, error: BaseException | None
        ) -> Awaitable[None] | None:
            if isinstance(error, Exception) and not isinstance(error, _PASS_THROUGH):
                return _fail(method, error, context)
            return None

        return wrap_handler(handler, _no_token, fail)


#: A limits' admission of one call (:meth:`Limits.admission`), given the call's context and
#: caller id: the call's keys, or the setting that refuses it.
Admit = Callable[[grpc.aio.ServicerContext, str], "tuple[str, str] | str"]
#: Counts an admitted call out again, given its keys.
Release = Callable[[tuple[str, str]], None]


class Limits(Protocol):
    """What :class:`CallInterceptor` needs of the limits
    (:class:`~apcv_verify.service.limits.LimitsInterceptor`)."""

    #: Names a call's caller from its auth context; raises CertificateRefused.
    identify: Callable[[Mapping[str, Sequence[bytes]]], str]

    def admission(self, method: str) -> tuple[Admit, Release]: ...

    async def refuse(self, context: grpc.aio.ServicerContext, setting: str) -> NoReturn: ...

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler: ...


class CallInterceptor(_CachingInterceptor):
    """:class:`MetricsInterceptor`, :class:`ErrorInterceptor` and the limits, in that order, as
    one interceptor. A unary call passes one wrapper — one coroutine around the handler's,
    doing what the three nested wrappers did, in the same order: the metrics see the status
    the error mapping sets and the calls the limits refuse, the error mapping catches an
    exception of the limits too. Streams keep the three wrappers (their per-message and
    per-stream rules are the limits' and the metrics' own).

    The server does not install it as an interceptor but registers its services through
    :meth:`registration`: the same wrappers, made once per method when it is registered. A
    unary call's wrapper reads the caller id from ``auth_context()`` once (the limits'
    ``identify``: with ``tls.client_crls``, the client certificate's revocation checked too),
    for the limits and for the handler (:data:`~apcv_verify.service.policy.CALLER`) — and not
    at all without ``client_certificates`` (no ``tls.client_ca``): no client certificate is
    then verified, so every caller is ``anonymous``
    (:func:`~apcv_verify.service.policy.caller_id`), and the read (a dict of the
    connection's properties built per call, ≈ 4 µs) is saved."""

    def __init__(
        self,
        metrics: MetricsInterceptor,
        errors: ErrorInterceptor,
        limits: Limits,
        *,
        client_certificates: bool = True,
    ):
        super().__init__()
        self._parts = (metrics, errors, limits)
        self._client_certificates = client_certificates

    def registration(self, server: grpc.aio.Server) -> Registration:
        """``server`` as the ``add_…_to_server`` functions see it, registering each method
        handler wrapped by this interceptor (:class:`Registration`)."""
        return Registration(server, self._wrap)

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        metrics, errors, limits = self._parts
        behaviour = handler.unary_unary
        if behaviour is None or not inspect.iscoroutinefunction(behaviour):
            for part in reversed(self._parts):
                handler = part._wrap(method, handler)
            return handler
        begin, end = metrics.hooks(method, "unary")
        admit, release = limits.admission(method)
        refuse = limits.refuse
        identify = limits.identify
        set_caller = CALLER.set
        certificates = self._client_certificates

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = begin(context)
            try:
                try:
                    # The one read of this call, if a caller can have a name at all.
                    caller = identify(context.auth_context()) if certificates else ANONYMOUS_CALLER
                    keys = admit(context, caller)
                    if isinstance(keys, str):
                        await refuse(context, keys)
                    # This call's task only (grpc.aio runs each call in a task of its own).
                    set_caller(caller)
                    try:
                        response = await behaviour(request, context)
                    finally:
                        release(keys)
                except _PASS_THROUGH:
                    raise
                except CertificateRefused as refused:
                    await refuse_certificate(context, refused)
                except Exception as error:
                    await _fail(method, error, context)  # raises: the call ends INTERNAL
                    raise
            except BaseException as error:
                end(context, started, error)
                raise
            end(context, started, None)
            return response

        return grpc.unary_unary_rpc_method_handler(
            call,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


#: Wraps one method's handler (the method's full name, its handler).
Wrap = Callable[[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler]


class Registration:
    """A server as the ``add_…_to_server`` functions (generated, health, reflection and
    :func:`~apcv_verify.service.servicer.add_verifier_service`) use it: each method handler
    they register, generic or registered method, is registered on ``server`` wrapped by
    ``wrap``, once. A server interceptor would instead be asked for the handler at every call
    (grpc.aio runs its interceptors per call, even for registered methods)."""

    def __init__(self, server: grpc.aio.Server, wrap: Wrap) -> None:
        self._server = server
        self._wrap = wrap
        #: method → (handler, wrapped): a handler registered both ways is wrapped once.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def wrapped(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """``handler`` of ``method`` (``/pkg.Service/Method``), wrapped."""
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def add_generic_rpc_handlers(
        self, generic_rpc_handlers: Sequence[grpc.GenericRpcHandler]
    ) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_WrappedGeneric(handler, self.wrapped) for handler in generic_rpc_handlers)
        )

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self._server.add_registered_method_handlers(
            service_name,
            {
                name: self.wrapped(f"/{service_name}/{name}", handler)
                for name, handler in method_handlers.items()
            },
        )


class _WrappedGeneric(grpc.GenericRpcHandler):
    """A generic handler's method handlers, each wrapped once, when first asked for. Unknown
    methods (no handler) are not cached: their names are chosen by callers."""

    def __init__(self, inner: grpc.GenericRpcHandler, wrapped: Wrap) -> None:
        self._inner = inner
        self._wrapped = wrapped

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        return self._wrapped(handler_call_details.method, handler)


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
