"""A locust user over gRPC, after locust's ``examples/grpc/grpc_user.py``.

grpc is switched to gevent (``init_gevent``) before any channel exists; an interceptor times
every unary call and fires locust's ``request`` event; :class:`GrpcUser` is abstract and opens
one channel per user, once. A bidirectional stream has no single answer to time, so
:class:`StreamSession` keeps one stream open per user and the user fires one event per answer
it reads (:meth:`GrpcUser.fire`). locustfile.py holds only the tasks.

Nothing here knows the verifier: what an answer must be is the concrete user's
:meth:`GrpcUser.judge` (an exception is a locust failure).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import gevent.queue  # type: ignore[import-untyped]
import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import User
from locust.env import Environment
from locust.exception import LocustError

# gevent, not threads or asyncio, drives locust users: grpc must use it too.
grpc_gevent.init_gevent()

__all__ = ["GrpcUser", "LocustInterceptor", "StreamSession"]


class LocustInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Fires one locust ``request`` event per unary call: a gRPC error, or what ``judge``
    returns for the response, is a failure."""

    def __init__(
        self, environment: Environment, judge: Callable[[Any, Any], Exception | None]
    ) -> None:
        self.environment = environment
        self.judge = judge

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], call_details: Any, request: Any
    ) -> Any:
        started = time.perf_counter()
        exception: Exception | None = None
        length = 0
        call = continuation(call_details, request)
        try:
            response = call.result()
            length = response.ByteSize()
            exception = self.judge(request, response)
        except grpc.RpcError as error:
            exception = error
        self.environment.events.request.fire(
            request_type="grpc",
            name=call_details.method,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            response=None,
            context=None,
            exception=exception,
        )
        return call


class StreamSession:
    """One open bidirectional stream: :meth:`exchange` writes requests and reads as many
    responses (the service answers each request once, in order). The requests go through a
    gevent queue that grpc reads as the call's request iterator."""

    _CLOSE = object()

    def __init__(self, method: Callable[..., Iterator[Any]], **call_options: Any) -> None:
        self._requests: gevent.queue.Queue[Any] = gevent.queue.Queue()
        self._responses = method(iter(self._requests.get, self._CLOSE), **call_options)
        self._reading = False

    def exchange(self, requests: Sequence[Any]) -> Iterator[Any]:
        """Send ``requests``, then yield their responses as they arrive (a gRPC error that
        ends the stream is raised from the iteration)."""
        for request in requests:
            self._requests.put(request)
        self._reading = True
        for _ in requests:
            yield next(self._responses)
        self._reading = False

    def close(self) -> None:
        """Half-close and read the stream to its end; a stream cut in the middle of an
        exchange (the user was stopped while it read) is cancelled instead, since its
        interrupted read still holds the call."""
        self._requests.put(self._CLOSE)
        if self._reading:
            self._responses.cancel()  # type: ignore[attr-defined]
            return
        try:
            for _ in self._responses:
                pass
        except grpc.RpcError:
            pass  # it is over either way


class GrpcUser(User):
    """One channel per user, created once, with :class:`LocustInterceptor`; ``stub_class``
    is set by the concrete user; ``host`` is ``HOST:PORT`` (``--host``)."""

    abstract = True
    stub_class: type | None = None

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        if self.host is None:
            raise LocustError("You must specify the host (--host HOST:PORT).")
        if self.stub_class is None:
            raise LocustError("You must specify the stub_class.")
        self._plain_channel = grpc.insecure_channel(self.host.removeprefix("grpc://"))
        self.channel = grpc.intercept_channel(
            self._plain_channel, LocustInterceptor(environment, self.judge)
        )
        self.stub = self.stub_class(self.channel)
        #: For streams: the same channel, without the unary interceptor.
        self.stream_stub = self.stub_class(self._plain_channel)

    def judge(self, request: Any, response: Any) -> Exception | None:
        """The failure a unary ``response`` to ``request`` stands for, if any (default: none)."""
        return None

    def fire(
        self, name: str, started: float, length: int = 0, exception: Exception | None = None
    ) -> None:
        """One locust ``request`` event for an answer read at this moment (``started`` is the
        ``time.perf_counter()`` when its request was sent)."""
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            response=None,
            context=None,
            exception=exception,
        )

    def on_stop(self) -> None:
        self.channel.close()
