"""The unary call wrapper (``CallInterceptor``) reads the caller id once per call with client
certificates, and not at all without them (no ``tls.client_ca``: every caller is anonymous)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from apcv_verify.config import Config
from apcv_verify.observe.metrics import ServiceMetrics
from apcv_verify.service.interceptors import CallInterceptor, ErrorInterceptor, MetricsInterceptor
from apcv_verify.service.limits import LimitMetrics, LimitsInterceptor
from apcv_verify.service.policy import CALLER


class Call:
    """What the wrapper reads of a call's context, counting the ``auth_context()`` reads."""

    def __init__(self, common_name: bytes | None) -> None:
        self.common_name = common_name
        self.auth_reads = 0

    def auth_context(self) -> dict[str, list[bytes]]:
        self.auth_reads += 1
        return {} if self.common_name is None else {"x509_common_name": [self.common_name]}

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"

    def code(self) -> grpc.StatusCode | None:
        return None

    def time_remaining(self) -> float | None:
        return None

    def cancelled(self) -> bool:
        return False


@pytest.mark.parametrize(
    ("certificates", "common_name", "reads", "caller"),
    [
        (True, b"his-1", 1, "his-1"),
        (True, None, 1, "anonymous"),
        (False, None, 0, "anonymous"),
    ],
)
def test_the_caller_id_is_read_once_and_only_when_a_caller_can_be_named(
    certificates: bool, common_name: bytes | None, reads: int, caller: str
) -> None:
    config = Config()
    metrics = ServiceMetrics()
    calls = CallInterceptor(
        MetricsInterceptor(metrics),
        ErrorInterceptor(),
        LimitsInterceptor(config.server, LimitMetrics(metrics.registry), stream_services=()),
        client_certificates=certificates,
    )
    seen: list[str | None] = []

    async def handler(request: bytes, context: Any) -> bytes:
        seen.append(CALLER.get())
        return request

    wrapped = calls._wrap(
        "/apcv.verify.v1.VerifierService/Verify", grpc.unary_unary_rpc_method_handler(handler)
    )
    context = Call(common_name)
    assert asyncio.run(wrapped.unary_unary(b"x", context)) == b"x"
    assert (context.auth_reads, seen) == (reads, [caller])
