"""A bug in a handler reaches the caller as INTERNAL with nothing of the exception echoed; a call
that ended before its handler could answer it is no bug."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import Iterator
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


@contextlib.contextmanager
def json_logs() -> Iterator[list[dict[str, Any]]]:
    """The service's JSON log records made inside the block, in the list yielded (filled when
    the block ends). Loggers first used here must not stay cached on its buffer for later
    tests."""
    saved = structlog.get_config()
    buffer = io.StringIO()
    records: list[dict[str, Any]] = []
    try:
        configure_logging("info")
        structlog.configure(
            logger_factory=structlog.PrintLoggerFactory(file=buffer),
            cache_logger_on_first_use=False,
        )
        yield records
    finally:
        structlog.configure(**saved)
        records.extend(json.loads(line) for line in buffer.getvalue().splitlines())


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
    with json_logs() as logged:
        status, detail, reason = asyncio.run(_call_with_broken_core(pki))
    assert status == grpc.StatusCode.INTERNAL
    assert detail == INTERNAL_ERROR_DETAIL
    assert reason == "INTERNAL_ERROR"  # the stable reason a client can branch on
    (record,) = [line for line in logged if line["event"] == "unhandled_error"]
    assert record["error_type"] == "RuntimeError"
    assert record["raised_at"].startswith("test_errors.py:")
    assert SECRET not in json.dumps(logged)


async def _late_call(pki: DemoPKI) -> tuple[grpc.StatusCode, dict[str, float]]:
    running = await start_server(pki_config(pki))
    try:
        scan = verifier_pb2.Scan(request_id="late-1", qr_text=qr_text(pki.present()))
        scan.reader.reader_id = "desk-1"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = verifier_pb2_grpc.VerifierServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await stub.Verify(verifier_pb2.VerifyRequest(scan=scan), timeout=LATE_DEADLINE)
        assert running.metrics is not None
        registry = running.metrics.registry
        for _ in range(200):  # the handler ends after the client has given up: wait for it
            handled = {
                sample.labels["grpc_code"]: sample.value
                for family in registry.collect()
                for sample in family.samples
                if sample.name == "grpc_server_handled_total"
                and sample.labels["grpc_method"] == "Verify"
            }
            if handled:
                break
            await asyncio.sleep(0.01)
        return ended.value.code(), handled
    finally:
        await running.stop(1.0)


#: The late call's deadline, and how long the loop is held before its handler goes on: as a
#: process past its capacity holds a call it has taken while it answers the ones before.
LATE_DEADLINE = 0.1
BUSY_SECONDS = 0.3


def test_a_call_whose_deadline_passed_in_the_handler_is_not_an_unhandled_error(
    pki: DemoPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler that finds its call's deadline passed ends it DEADLINE_EXCEEDED; when gRPC
    has already ended the call meanwhile, that status cannot be sent. The call is then counted
    DEADLINE_EXCEEDED, not UNKNOWN, and nothing is logged as an unhandled error."""
    verifier = VerifierService._verifier

    def busy_first(self: VerifierService, *args: Any) -> Any:
        time.sleep(BUSY_SECONDS)  # the event loop held, as by other calls' work
        return verifier(self, *args)

    monkeypatch.setattr(VerifierService, "_verifier", busy_first)
    with json_logs() as logged:
        status, handled = asyncio.run(_late_call(pki))
    assert status == grpc.StatusCode.DEADLINE_EXCEEDED
    assert handled == {"DEADLINE_EXCEEDED": 1.0}
    assert [line for line in logged if line["level"] == "error"] == []
