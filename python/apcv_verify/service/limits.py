"""Limits that keep one connection, one caller or one stream from taking the whole server
(docs/operations.md "Limits" and "Streams that hold memory").

:class:`LimitsInterceptor` counts the calls in progress and refuses one over a limit with the
retryable ``RESOURCE_EXHAUSTED`` and the ``ErrorInfo`` reason ``TOO_MANY_CALLS`` (metadata
``setting``: the key that bounds it, ``limit``):

* ``server.max_concurrent_rpcs`` — every call of this process except health checks;
* :data:`MAX_HEALTH_CALLS` — health checks and watches, counted apart and in no other limit,
  so that a server, connection or caller full of calls still answers its probes (the port
  of ``server.health_listen`` has its own count of them);
* ``server.max_streams_per_connection`` — calls open on one HTTP/2 connection;
* ``server.max_streams_per_caller`` — calls open for one caller: the client certificate's CN
  with mTLS, else the peer's IP address (without a certificate every caller is ``anonymous``
  to the policy, which must not make every plaintext client share one count).

For ``VerifyStream`` it also ends, with ``UNAVAILABLE`` and the reason ``STREAM_IDLE``, a stream
whose client sent no message for ``server.stream_idle_seconds`` while the server was waiting
for one, and holds every stream's read-ahead in one budget, ``server.stream_memory_bytes``:
the bytes of requests read and not yet answered, all streams together. A stream that would go
over it stops reading (HTTP/2 flow control then holds its client back) until answers free
some; one that cannot get its share within :data:`MEMORY_WAIT_SECONDS` is ended with
``RESOURCE_EXHAUSTED`` and the reason ``STREAM_MEMORY_EXHAUSTED``, after the answers of what it
sent before.

Both stream rules act on the request iterator handed to the servicer and on the responses it
yields: they rely only on the stream's contract (one response per request, in request order)
and on an exception raised by the request iterator ending the handler, as any exception of
the iterator does.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, NoReturn

import grpc
from google.protobuf.message import Message
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client import Counter as PromCounter

from ..config import ANONYMOUS_CALLER, ServerSection
from .errors import abort
from .interceptors import Admit, _CachingInterceptor, _split_method, handler_kind
from .policy import CertificateRefused, caller_id, refuse_certificate

__all__ = [
    "HEALTH_SERVICE",
    "MAX_HEALTH_CALLS",
    "MEMORY_WAIT_SECONDS",
    "LimitMetrics",
    "LimitsInterceptor",
    "MemoryBudget",
]

#: The standard health service (grpc.health.v1): probes, never verification.
HEALTH_SERVICE = "grpc.health.v1.Health"
#: Health calls (checks and watches) at once on a port. They are not counted in
#: ``server.max_concurrent_rpcs``, so a server whose verification calls fill it still answers
#: its probes; this bound only keeps a flood of watches from growing without end.
MAX_HEALTH_CALLS = 100
#: How long a stream over ``server.stream_memory_bytes`` waits for the budget before it is
#: ended (RESOURCE_EXHAUSTED, ``STREAM_MEMORY_EXHAUSTED``): long enough for other streams'
#: answers to free some, short enough that its client retries rather than stalls.
MEMORY_WAIT_SECONDS = 10.0

#: The ``limit`` label values of ``apcv_calls_refused_total``: the setting that refused.
_SETTINGS = (
    "server.max_concurrent_rpcs",
    "server.max_streams_per_connection",
    "server.max_streams_per_caller",
    "health",
    "server.stream_idle_seconds",
    "server.stream_memory_bytes",
)


class LimitMetrics:
    """``apcv_calls_refused_total{limit}`` and ``apcv_stream_buffered_bytes``, in the server's
    registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.refused = PromCounter(
            "apcv_calls_refused_total",
            "Calls refused or streams ended by a limit, by the setting that bounds it.",
            ["limit"],
            registry=registry,
        )
        for setting in _SETTINGS:  # every series present from the start, at 0
            self.refused.labels(limit=setting)
        self.buffered = Gauge(
            "apcv_stream_buffered_bytes",
            "Bytes of VerifyStream requests read and not yet answered, all streams together "
            "(bounded by server.stream_memory_bytes).",
            multiprocess_mode="livesum",  # server.workers > 1: the sum over live workers
            registry=registry,
        )


class MemoryBudget:
    """A number of bytes shared by every stream: taken when a request is read, given back when
    it is answered. Waiters are served in arrival order, so a large request is not starved by
    small ones."""

    def __init__(self, limit: int, gauge: Gauge | None = None) -> None:
        self.limit = limit
        self.held = 0
        self._gauge = gauge
        self._waiters: deque[tuple[asyncio.Future[None], int]] = deque()

    def _set(self, held: int) -> None:
        self.held = held
        if self._gauge is not None:
            self._gauge.set(held)

    async def take(self, size: int, timeout: float) -> None:
        """Hold ``size`` more bytes, waiting up to ``timeout`` seconds for them (TimeoutError)."""
        size = min(size, self.limit)  # a request larger than the whole budget waits for all of it
        if not self._waiters and self.held + size <= self.limit:
            self._set(self.held + size)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((waiter, size))
        try:
            await asyncio.wait_for(waiter, timeout)
        except BaseException:
            if waiter.done() and not waiter.cancelled():  # granted as it timed out
                self.give(size)
            raise
        finally:
            self._serve()  # a waiter that left may have been blocking the next ones

    def give(self, size: int) -> None:
        """Give back ``size`` bytes (as taken: :meth:`take` clamps to the whole budget)."""
        self._set(self.held - min(size, self.limit))
        self._serve()

    def _serve(self) -> None:
        while self._waiters:
            waiter, size = self._waiters[0]
            if waiter.done():
                self._waiters.popleft()
                continue
            if self.held + size > self.limit:
                return
            self._waiters.popleft()
            self._set(self.held + size)
            waiter.set_result(None)


class _StreamIdle(Exception):
    """The client sent nothing for ``server.stream_idle_seconds`` while the server waited."""


class _OverBudget(Exception):
    """The stream's next request did not fit in ``server.stream_memory_bytes`` in time."""


def request_size(request: object) -> int:
    """Bytes a request read ahead holds: its encoded size. VerifyStream requests arrive as their
    wire bytes (the core decodes them); a decoded message counts its encoded size; an
    undecodable or oversize one is kept as a marker without its bytes."""
    if isinstance(request, bytes | bytearray | memoryview):
        return len(request)
    return request.ByteSize() if isinstance(request, Message) else 0


class _IdleWatchdog:
    """``server.stream_idle_seconds`` for one stream: ends a wait for the next request that
    lasts the whole idle time, as an ``asyncio.timeout`` around each wait would, with one
    timer per stream instead of one per request (docs/benchmarks.md "Service, fifth pass").
    The timer is armed at the first wait's deadline; when it fires it cancels the waiting
    task if that wait's deadline has passed, else it is armed again at the current wait's
    deadline (or, with no wait in progress, at the next wait's start)."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None
        self._deadline = 0.0
        #: Whether a wait is in progress (set by :meth:`wait`, cleared by the caller after it).
        self.waiting = False
        self._fired = False

    def wait(self) -> int:
        """A wait for the next request begins: its deadline is the idle time from now. Returns
        the task's cancellation count, for :meth:`expired`."""
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._deadline = self._loop.time() + self._seconds
        self.waiting = True
        self._fired = False
        if self._timer is None:
            self._timer = self._loop.call_at(self._deadline, self._check)
        return task.cancelling()

    def _check(self) -> None:
        self._timer = None
        if not self.waiting or self._task is None:
            return  # armed again by the next wait
        if self._loop.time() >= self._deadline:
            self._fired = True
            self._task.cancel()
        else:
            self._timer = self._loop.call_at(self._deadline, self._check)

    def expired(self, cancelling: int) -> bool:
        """Whether the cancellation that ended the wait was this watchdog's alone (as
        ``asyncio.timeout`` decides it: then it is an idle stream, not a cancelled call)."""
        if not self._fired or self._task is None:
            return False
        self._fired = False
        return self._task.uncancel() <= cancelling

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._task = None


class _StreamGuard:
    """One VerifyStream's idle timeout and share of the memory budget."""

    def __init__(self, idle_seconds: float, budget: MemoryBudget | None) -> None:
        self._idle = idle_seconds or None
        self._budget = budget
        #: Sizes of the requests read and not yet answered, oldest first.
        self._held: deque[int] = deque()

    async def requests(self, iterator: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """``iterator``'s requests, each admitted to the budget before it is handed on."""
        source = aiter(iterator)
        watchdog = None if self._idle is None else _IdleWatchdog(self._idle)
        try:
            while True:
                cancelling = 0 if watchdog is None else watchdog.wait()
                try:
                    request = await anext(source)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    if watchdog is not None and watchdog.expired(cancelling):
                        raise _StreamIdle from None
                    raise
                finally:
                    if watchdog is not None:
                        watchdog.waiting = False
                size = request_size(request)
                if self._budget is not None and size:
                    try:
                        await self._budget.take(size, MEMORY_WAIT_SECONDS)
                    except TimeoutError:
                        raise _OverBudget from None
                self._held.append(size)
                yield request
        finally:
            if watchdog is not None:
                watchdog.close()

    def answered(self) -> None:
        """One response was sent: its request (the oldest held) is released."""
        if self._held:
            size = self._held.popleft()
            if self._budget is not None and size:
                self._budget.give(size)

    def release(self) -> None:
        while self._held:
            self.answered()


#: The caller id of a call, from its auth context; raises CertificateRefused when the client
#: certificate may not call (policy.caller_id, or ClientRevocation.caller_id with CRLs).
Identify = Callable[[Mapping[str, Sequence[bytes]]], str]


class LimitsInterceptor(_CachingInterceptor):
    """Concurrent-call limits per server, connection and caller; idle timeout and memory
    budget for the streams of ``stream_services`` (see the module docstring). Put it last in
    the interceptor list, so that the metrics interceptor counts what it refuses.

    ``identify`` names each call's caller, the first step of its admission: a client
    certificate it refuses ends the call before any limit counts it."""

    def __init__(
        self,
        server: ServerSection,
        metrics: LimitMetrics,
        *,
        stream_services: Sequence[str] = (),
        identify: Identify = caller_id,
    ) -> None:
        super().__init__()
        self.identify = identify
        self._metrics = metrics
        self._stream_services = frozenset(stream_services)
        self._limits: Mapping[str, int] = {
            "server.max_concurrent_rpcs": server.max_concurrent_rpcs,
            "server.max_streams_per_connection": server.max_streams_per_connection,
            "server.max_streams_per_caller": server.max_streams_per_caller,
            "health": MAX_HEALTH_CALLS,
        }
        self._idle_seconds = server.stream_idle_seconds
        self.budget = (
            MemoryBudget(server.stream_memory_bytes, metrics.buffered)
            if server.stream_memory_bytes
            else None
        )
        #: The limits :meth:`admission` checks, in that order.
        self._maxima = (
            server.max_concurrent_rpcs,
            server.max_streams_per_connection,
            server.max_streams_per_caller,
        )
        self._calls = 0
        self._health_calls = 0
        self._per_connection: dict[str, int] = {}
        self._per_caller: dict[str, int] = {}

    # -- counting --------------------------------------------------------------------------

    def admission(
        self, method: str
    ) -> tuple[
        Callable[[grpc.aio.ServicerContext, str], tuple[str, str] | str],
        Callable[[tuple[str, str]], None],
    ]:
        """How a call of ``method`` is counted in and out: ``admit(context, caller)``
        (``caller``: the call's caller id, :func:`~apcv_verify.service.policy.caller_id`)
        gives the call's keys, counted in — the peer address with its port (one per TCP
        connection) and the caller's (the client certificate's CN or, without one, the
        peer's IP address) —, or the setting that refuses it (to :meth:`refuse` with; a
        limit of 0: none); ``release(keys)`` counts it out. Plain tests and dict updates in
        one call each way: every call pays them. Health probes only compete with probes."""
        if _split_method(method)[0] == HEALTH_SERVICE:
            return self._health_admission()
        max_calls, max_per_connection, max_per_caller = self._maxima
        per_connection = self._per_connection
        per_caller = self._per_caller

        def admit(context: grpc.aio.ServicerContext, caller: str) -> tuple[str, str] | str:
            connection = context.peer() or ""
            key = (
                "ip:" + connection.rpartition(":")[0]
                if caller == ANONYMOUS_CALLER
                else "cn:" + caller
            )
            if max_calls and self._calls >= max_calls:
                return "server.max_concurrent_rpcs"
            on_connection = per_connection.get(connection, 0)
            if max_per_connection and on_connection >= max_per_connection:
                return "server.max_streams_per_connection"
            of_caller = per_caller.get(key, 0)
            if max_per_caller and of_caller >= max_per_caller:
                return "server.max_streams_per_caller"
            self._calls += 1
            per_connection[connection] = on_connection + 1
            per_caller[key] = of_caller + 1
            return connection, key

        def release(keys: tuple[str, str]) -> None:
            connection, key = keys
            self._calls -= 1
            # No entry kept for a connection or caller without calls.
            left = per_connection[connection] - 1
            if left:
                per_connection[connection] = left
            else:
                del per_connection[connection]
            left = per_caller[key] - 1
            if left:
                per_caller[key] = left
            else:
                del per_caller[key]

        return admit, release

    def _health_admission(
        self,
    ) -> tuple[
        Callable[[grpc.aio.ServicerContext, str], tuple[str, str] | str],
        Callable[[tuple[str, str]], None],
    ]:
        """:meth:`admission` of the health service: at most MAX_HEALTH_CALLS at once."""

        def admit(context: grpc.aio.ServicerContext, caller: str) -> tuple[str, str] | str:
            if self._health_calls >= MAX_HEALTH_CALLS:
                return "health"
            self._health_calls += 1
            return "", ""

        def release(keys: tuple[str, str]) -> None:
            self._health_calls -= 1

        return admit, release

    async def enter(self, context: grpc.aio.ServicerContext, admit: Admit) -> tuple[str, str]:
        """A call's admission: its caller named (:attr:`identify`), then counted in by
        ``admit`` (:meth:`admission`); the call ends here when either refuses it."""
        try:
            caller = self.identify(context.auth_context())
        except CertificateRefused as refused:
            await refuse_certificate(context, refused)
        keys = admit(context, caller)
        if isinstance(keys, str):
            await self.refuse(context, keys)
        return keys

    async def refuse(self, context: grpc.aio.ServicerContext, setting: str) -> NoReturn:
        """End the call RESOURCE_EXHAUSTED (``TOO_MANY_CALLS``), ``setting`` refusing it."""
        await self._refuse(context, setting)
        raise AssertionError("not reached: abort_with_status raises")

    async def _refuse(self, context: grpc.aio.ServicerContext, setting: str) -> None:
        self._metrics.refused.labels(limit=setting).inc()
        limit = self._limits[setting]
        what = "health calls" if setting == "health" else setting
        await abort(
            context,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "TOO_MANY_CALLS",
            f"too many calls in progress ({what}: {limit}): retry with backoff",
            metadata={"setting": setting, "limit": str(limit)},
        )

    # -- wrapping --------------------------------------------------------------------------

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        kind = handler_kind(handler)
        if kind is None:
            return handler
        attribute = kind[0]
        behaviour = getattr(handler, attribute)
        service = _split_method(method)[0]
        guarded = attribute == "stream_stream" and service in self._stream_services
        admit, release = self.admission(method)
        wrapped: Callable[..., Any]
        if inspect.iscoroutinefunction(behaviour):  # a unary answer, or one sent by write()

            async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
                keys = await self.enter(context, admit)
                try:
                    return await behaviour(request, context)
                finally:
                    release(keys)

            wrapped = call
        elif guarded and inspect.isasyncgenfunction(behaviour):

            async def guarded_stream(
                requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                keys = await self.enter(context, admit)
                guard = _StreamGuard(self._idle_seconds, self.budget)
                try:
                    async for response in behaviour(guard.requests(requests), context):
                        yield response
                        guard.answered()  # resumed: gRPC has sent it
                except _StreamIdle:
                    await self._end_idle(context)
                except _OverBudget:
                    await self._end_over_budget(context)
                finally:
                    guard.release()
                    release(keys)

            wrapped = guarded_stream
        elif inspect.isasyncgenfunction(behaviour):

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                keys = await self.enter(context, admit)
                try:
                    async for response in behaviour(request, context):
                        yield response
                finally:
                    release(keys)

            wrapped = stream
        else:  # synchronous (none here): grpc's thread pool, with grpc's own handling
            return handler
        factory = getattr(grpc, f"{attribute}_rpc_method_handler")
        return factory(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    async def _end_idle(self, context: grpc.aio.ServicerContext) -> None:
        self._metrics.refused.labels(limit="server.stream_idle_seconds").inc()
        seconds = f"{self._idle_seconds:g}"
        await abort(
            context,
            grpc.StatusCode.UNAVAILABLE,
            "STREAM_IDLE",
            f"no request for {seconds} s (server.stream_idle_seconds): open a new stream"
            " when there is more to send",
            metadata={"setting": "server.stream_idle_seconds", "limit": seconds},
        )

    async def _end_over_budget(self, context: grpc.aio.ServicerContext) -> None:
        self._metrics.refused.labels(limit="server.stream_memory_bytes").inc()
        assert self.budget is not None
        await abort(
            context,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "STREAM_MEMORY_EXHAUSTED",
            "the server holds too many unanswered stream requests"
            " (server.stream_memory_bytes): resend the unanswered ones with backoff",
            metadata={"setting": "server.stream_memory_bytes", "limit": str(self.budget.limit)},
        )
