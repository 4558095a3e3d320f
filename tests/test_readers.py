"""A caller bound to its readers (``callers.readers``): a scan naming another reader id is
refused — the call for ``Verify`` and ``VerifyBatch``, the item in place for ``VerifyStream``
— before anything is verified, recorded or kept (docs/security.md "Compromised reader")."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from apcv_verify import _native
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2, verifier_pb2_grpc
from apcv_verify.config import Config, ConfigError
from apcv_verify.issuer import DemoPKI, qr_text
from apcv_verify.service.policy import RefusalLog
from apcv_verify.service.startup import ServerHandle, start_server
from apcv_verify.trust.material import load_trust_material
from structlog.testing import capture_logs

from .conftest import pki_config
from .test_contract import status_details
from .test_stream import refused_items

Scan = verifier_pb2.Scan
Reader = verifier_pb2.ReaderContext

#: The one caller of these servers (no TLS: every call is ``anonymous``).
BOUND = {"id": "anonymous", "readers": ["desk-1", "ward-7-*"]}


def scan(request_id: str, presentation: str, reader_id: str) -> verifier_pb2.Scan:
    return Scan(request_id=request_id, qr_text=presentation, reader=Reader(reader_id=reader_id))


def config_with(pki: DemoPKI, callers: list[dict[str, Any]]) -> Config:
    """:func:`pki_config` with the callers table ``callers``."""
    return pki_config(pki, environ={"APCV_CALLERS": json.dumps(callers)})


@asynccontextmanager
async def serving(
    pki: DemoPKI,
) -> AsyncIterator[tuple[ServerHandle, verifier_pb2_grpc.VerifierServiceStub]]:
    """An in-process server whose only caller is :data:`BOUND`, and a stub to it."""
    config = config_with(pki, [BOUND])
    running = await start_server(config, load_trust_material(config))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield running, verifier_pb2_grpc.VerifierServiceStub(channel)
    finally:
        await running.stop(0)


def call_errors(running: ServerHandle, method: str) -> dict[tuple[str, str], float]:
    """``apcv_call_errors_total`` of the verifier's ``method`` by code and reason."""
    assert running.metrics is not None
    return {
        (sample.labels["grpc_code"], sample.labels["reason"]): sample.value
        for family in running.metrics.registry.collect()
        for sample in family.samples
        if sample.name == "apcv_call_errors_total" and sample.labels["grpc_method"] == method
    }


def test_reader_ids_are_exact_ids_or_prefixes() -> None:
    readers = _native.ReaderIds(["desk-1", "ward-7-*"])
    assert readers.allows("desk-1")
    assert not readers.allows("desk-10")  # an exact id is not a prefix
    assert not readers.allows("desk-")
    assert readers.allows("ward-7-")
    assert readers.allows("ward-7-bed-12")
    assert not readers.allows("ward-70")
    assert not readers.allows("")
    assert _native.ReaderIds(["*"]).allows("any-reader")


def test_reader_ids_may_name_the_caller() -> None:
    readers = _native.ReaderIds(["{caller}", "{caller}/*", "shared-1"], "desk-3")
    assert readers.allows("desk-3") and readers.allows("desk-3/usb") and readers.allows("shared-1")
    assert not readers.allows("desk-30")
    assert not readers.allows("desk-4/usb")
    assert not readers.allows("{caller}")  # the placeholder is never a reader id itself
    # Whether an id is a prefix is read before the caller's id is put in: a certificate
    # whose CN ends in "*" gets that exact id, not every id it starts.
    starred = _native.ReaderIds(["{caller}"], "desk*")
    assert starred.allows("desk*") and not starred.allows("desk-3")


def test_readers_in_the_callers_table(pki: DemoPKI) -> None:
    config = config_with(pki, [BOUND, {"id": "*"}])
    bound = config.caller("anonymous")
    anyone = config.caller("someone-else")
    assert bound is not None and bound.readers == ("desk-1", "ward-7-*")
    assert anyone is not None and anyone.readers == ()  # not listed: any reader
    assert not bound.readers_name_the_caller
    per_caller = config_with(pki, [{"id": "*", "readers": ["{caller}", "{caller}/*"]}])
    fleet = per_caller.caller("desk-3")
    assert fleet is not None and fleet.readers_name_the_caller


@pytest.mark.parametrize(
    ("readers", "message"),
    [
        ("desk-1", r"callers\[0\]\.readers: expected list of strings"),
        ([""], r"callers\[0\]\.readers: empty reader id"),
        (["ward-*-1"], r"callers\[0\]\.readers: 'ward-\*-1': '\*' may only end"),
        (["**"], r"'\*' may only end"),
        (["r" * 129], r"at most 128 characters"),
        (["{cn}-*"], r"'\{cn\}-\*': \{caller\} is the only name in braces"),
        (["{caller"], r"\{caller\} is the only name in braces"),
    ],
)
def test_bad_readers_name_the_entry(pki: DemoPKI, readers: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_with(pki, [{"id": "a", "readers": readers}])


def test_a_unary_scan_from_another_reader_is_permission_denied(pki: DemoPKI) -> None:
    code = qr_text(pki.present("alice"))

    async def scenario() -> None:
        async with serving(pki) as (running, stub):
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await stub.Verify(verifier_pb2.VerifyRequest(scan=scan("u-1", code, "desk-2")))
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert call_errors(running, "Verify") == {
                ("PERMISSION_DENIED", "READER_NOT_ALLOWED"): 1
            }
            info, violations = status_details(denied.value)
            assert (info.reason, dict(info.metadata), violations) == (
                "READER_NOT_ALLOWED",
                {"field": "scan.reader.reader_id"},
                [],
            )
            assert denied.value.details() == (
                "scan.reader.reader_id: not one of caller 'anonymous''s readers (callers.readers)"
            )
            # Not verified, so not recorded: the caller's own reader gets it first, and
            # replay judges its readers as usual (another of them: REPLAYED).
            for reader_id, expected in (
                ("desk-1", verifier_pb2.REASON_OK),
                ("ward-7-bed-3", verifier_pb2.REASON_REPLAYED),
            ):
                answer = await stub.Verify(
                    verifier_pb2.VerifyRequest(scan=scan(f"u-{reader_id}", code, reader_id))
                )
                assert (answer.verdict.reason, answer.verdict.duplicate) == (expected, False)

    asyncio.run(scenario())


def test_a_batch_with_another_readers_scan_is_refused_whole(pki: DemoPKI) -> None:
    first = qr_text(pki.present("alice"))
    second = qr_text(pki.present("alice"))

    async def scenario() -> None:
        async with serving(pki) as (running, stub):
            batch = verifier_pb2.VerifyBatchRequest(
                scans=[scan("b-0", first, "ward-7-1"), scan("b-1", second, "ward-8-1")]
            )
            with capture_logs() as logs, pytest.raises(grpc.aio.AioRpcError) as denied:
                await stub.VerifyBatch(batch)
            # Who was refused, for what: never the reader id it sent.
            assert [entry for entry in logs if entry["event"] == "caller_refused"] == [
                {
                    "event": "caller_refused",
                    "log_level": "warning",
                    "caller": "anonymous",
                    "reason": "READER_NOT_ALLOWED",
                    "method": "VerifyBatch",
                    "refusals": 1,
                }
            ]
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert call_errors(running, "VerifyBatch") == {
                ("PERMISSION_DENIED", "READER_NOT_ALLOWED"): 1
            }
            info, _ = status_details(denied.value)
            assert (info.reason, dict(info.metadata)) == (
                "READER_NOT_ALLOWED",
                {"field": "scans[1].reader.reader_id"},
            )
            assert "ward-8-1" not in (denied.value.details() or "")
            # Nothing of the refused batch was verified: its first scan is new to ward-7-1.
            again = await stub.VerifyBatch(
                verifier_pb2.VerifyBatchRequest(scans=[scan("b-2", first, "ward-7-1")])
            )
            (verdict,) = again.verdicts
            assert (verdict.reason, verdict.duplicate) == (verifier_pb2.REASON_OK, False)

    asyncio.run(scenario())


def test_a_stream_scan_from_another_reader_is_answered_in_place(pki: DemoPKI) -> None:
    codes = [qr_text(pki.present("alice")) for _ in range(3)]

    async def scenario() -> None:
        async with serving(pki) as (running, stub):
            call = stub.VerifyStream()
            await call.write(verifier_pb2.VerifyStreamRequest(scan=scan("s-0", codes[0], "desk-1")))
            await call.write(
                verifier_pb2.VerifyStreamRequest(
                    scans=[scan("s-1", codes[1], "desk-9"), scan("s-2", codes[2], "ward-7-2")]
                )
            )
            await call.done_writing()
            with capture_logs() as logs:
                answers = [response async for response in call]
            told = [entry for entry in logs if entry["event"] == "caller_refused"]
            assert [(e["reason"], e["method"], e["refusals"]) for e in told] == [
                ("READER_NOT_ALLOWED", "VerifyStream", 1)
            ]
            verdicts = [
                verdict
                for response in answers
                for verdict in ([response.verdict] if response.HasField("verdict") else [])
                + list(response.verdicts)
            ]
            assert [(v.request_id, v.reason) for v in verdicts] == [
                ("s-0", verifier_pb2.REASON_OK),
                ("s-1", verifier_pb2.REASON_MALFORMED),
                ("s-2", verifier_pb2.REASON_OK),
            ]
            assert verdicts[1].decision == verifier_pb2.DECISION_REJECTED
            assert verdicts[1].detail == (
                "scans[0].reader.reader_id: not one of this caller's readers (READER_NOT_ALLOWED)"
            )
            assert await call.code() == grpc.StatusCode.OK
            # Counted by why (never by reader id: the label is the code alone).
            assert refused_items(running) == {"READER_NOT_ALLOWED": 1}

    asyncio.run(scenario())


def test_refusals_are_logged_once_a_minute_per_caller_and_reason() -> None:
    now = [0.0]
    refusals = RefusalLog(interval=60.0, clock=lambda: now[0])
    with capture_logs() as logs:
        refusals.tell("ward-8", "READER_NOT_ALLOWED", "Verify")
        refusals.tell("ward-8", "READER_NOT_ALLOWED", "Verify")  # within the minute: counted
        refusals.tell_items("ward-8", "VerifyStream", [("READER_NOT_ALLOWED", 3)])
        refusals.tell("ward-8", "SCANNED_AT_NOT_ALLOWED", "Verify")  # another reason: told
        refusals.tell_items("ward-9", "VerifyStream", [("SCAN_UNDECODABLE", 2)])  # the scan's
        now[0] = 61.0
        refusals.tell("ward-8", "READER_NOT_ALLOWED", "VerifyBatch")
    assert [(e["caller"], e["reason"], e["method"], e["refusals"]) for e in logs] == [
        ("ward-8", "READER_NOT_ALLOWED", "Verify", 1),
        ("ward-8", "SCANNED_AT_NOT_ALLOWED", "Verify", 1),
        ("ward-8", "READER_NOT_ALLOWED", "VerifyBatch", 5),  # the 4 held back, and this one
    ]
