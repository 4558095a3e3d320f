"""A locust user over gRPC, after locust's ``examples/grpc/grpc_user.py``.

grpc is switched to gevent (``init_gevent``) before any channel exists; an interceptor times
every call and fires locust's ``request`` event; :class:`GrpcUser` is abstract and opens one
channel per user, once. locustfile.py holds only the tasks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
import grpc.experimental.gevent as grpc_gevent
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2
from locust import User
from locust.env import Environment
from locust.exception import LocustError

# gevent, not threads or asyncio, drives locust users: grpc must use it too.
grpc_gevent.init_gevent()


class PresentationRejected(Exception):
    """An answered call whose presentation was rejected: a failure for a corpus of valid ones."""


def _rejections(response: Any) -> list[str]:
    """Reason codes of the rejected verdicts in a Verify or VerifyBatch response."""
    verdicts = response.verdicts if hasattr(response, "verdicts") else [response.verdict]
    return [
        verifier_pb2.Reason.Name(verdict.reason)
        for verdict in verdicts
        if verdict.decision != verifier_pb2.DECISION_ACCEPTED
    ]


class LocustInterceptor(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Fires one locust ``request`` event per unary call: gRPC errors and rejected
    presentations are failures."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment

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
            rejected = _rejections(response)
            if rejected:
                exception = PresentationRejected(", ".join(sorted(set(rejected))))
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
        channel = grpc.insecure_channel(self.host.removeprefix("grpc://"))
        self.channel = grpc.intercept_channel(channel, LocustInterceptor(environment))
        self.stub = self.stub_class(self.channel)

    def on_stop(self) -> None:
        self.channel.close()
