"""A bug in a handler reaches the caller as INTERNAL with nothing of the exception echoed."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import grpc
import pytest
import structlog
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2, verifier_pb2_grpc
from apcv_verify.issuer import DemoPKI, qr_text
from apcv_verify.observe.logs import configure_logging
from apcv_verify.service.errors import ERROR_DOMAIN, INTERNAL_ERROR_DETAIL
from apcv_verify.service.servicer import VerifierService
from apcv_verify.service.startup import start_server
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from .conftest import pki_config

SECRET = "DUPONT 185127505612355"  # what a careless exception message could carry


async def _call_with_broken_core(pki: DemoPKI) -> tuple[grpc.StatusCode, str, str]:
    config = pki_config(pki)
    running = await start_server(config)
    try:
        scan = verifier_pb2.Scan(request_id="e-1", qr_text=qr_text(pki.present()))
        scan.reader.reader_id = "desk-1"
        request = verifier_pb2.VerifyRequest(scan=scan)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = verifier_pb2_grpc.VerifierServiceStub(channel)
            try:
                await stub.Verify(request, timeout=10)
            except grpc.aio.AioRpcError as error:
                status, detail = error.code(), error.details() or ""
                details = rpc_status.from_call(error)
            else:
                raise AssertionError("a broken core must not answer")
            assert details is not None and len(details.details) == 1
            info = error_details_pb2.ErrorInfo()
            assert details.details[0].Unpack(info) and info.domain == ERROR_DOMAIN
            return status, detail, info.reason

    finally:
        await running.stop(1.0)


def test_an_unexpected_exception_becomes_internal_without_its_text(
    pki: DemoPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(SECRET)

    def broken_unary(*args: Any, **kwargs: Any) -> Any:  # a plain call, not a coroutine
        raise RuntimeError(SECRET)

    monkeypatch.setattr(VerifierService, "_answer", broken)
    monkeypatch.setattr(VerifierService, "_answer_unary", broken_unary)  # in-process stores
    saved = structlog.get_config()
    buffer = io.StringIO()
    try:
        configure_logging("info")
        # The service's JSON records, into a buffer; loggers first used here must not stay
        # cached on it for later tests.
        structlog.configure(
            logger_factory=structlog.PrintLoggerFactory(file=buffer),
            cache_logger_on_first_use=False,
        )
        status, detail, reason = asyncio.run(_call_with_broken_core(pki))
    finally:
        structlog.configure(**saved)
    assert status == grpc.StatusCode.INTERNAL
    assert detail == INTERNAL_ERROR_DETAIL
    assert reason == "INTERNAL_ERROR"  # the stable reason a client can branch on
    logged = [json.loads(line) for line in buffer.getvalue().splitlines()]
    (record,) = [line for line in logged if line["event"] == "unhandled_error"]
    assert record["error_type"] == "RuntimeError"
    assert record["raised_at"].startswith("test_errors.py:")
    assert SECRET not in json.dumps(logged)
