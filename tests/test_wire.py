"""The core's own decoding and encoding of batch, stream and unary messages
(``_native.WireBatch``, what VerifyBatch, VerifyStream and Verify use) against the service's
protobuf rules (``messages.scan_problem``, ``messages.fill_verdict``, the audit trail's
fields), item by item: the same verdicts, details, disclosure and audit rows for the same
scans."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import pytest
from apcv_verify import _native
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2
from apcv_verify.config import FIELD_GROUPS, USES
from apcv_verify.issuer import DemoPKI
from apcv_verify.observe.audit import AuditRow, AuditTrail
from apcv_verify.replay.answers import AnswerRecovery, MemoryAnswers
from apcv_verify.service.decode import UNDECODABLE
from apcv_verify.service.messages import fill_verdict, scan_problem

Scan = verifier_pb2.Scan
Reader = verifier_pb2.ReaderContext


def new_verifier(
    pki: DemoPKI, now: int, replay: _native.MemoryReplayStore | None = None
) -> _native.Verifier:
    trust = _native.TrustList.verify(pki.trust_list, [pki.anchor_cose_key], now)
    lists = [_native.StatusList.verify(s, trust, now) for s in pki.status_lists.values()]
    return _native.Verifier(
        trust,
        lists,
        _native.Policy(allow_test_identities=True),
        _native.MemoryReplayStore() if replay is None else replay,
    )


def scans_of_every_kind(pki: DemoPKI, now: int) -> list[Scan]:
    """Accepted (with AMC attestations, through a delegation, a beneficiary), rejected for
    several reasons, and unusable in each way the contract names."""
    delegate_key, delegation = pki.delegate("alice")
    attestations = [
        pki.amc_attestation("alice"),
        pki.amc_attestation("alice", nbf=now - 7200, exp=now - 3600),  # expired
    ]
    presentations = [
        pki.present("alice", amc=attestations),
        pki.present("alice", dlg=delegation, signer=delegate_key),
        pki.present("alice", ben=1, use="dmp"),
        pki.present("alice", use="auth"),
        *pki.samples(now=now).values(),
    ]
    scans = [
        Scan(request_id=f"r-{i}", nfc_bytes=p, reader=Reader(reader_id="desk-1"))
        for i, p in enumerate(presentations)
    ]
    good = presentations[0]
    scans += [
        Scan(request_id="no-presentation", reader=Reader(reader_id="desk-1")),
        Scan(request_id="empty-qr", qr_text="", reader=Reader(reader_id="desk-1")),
        Scan(nfc_bytes=good, reader=Reader(reader_id="desk-1")),
        Scan(request_id="no-reader", nfc_bytes=good),
        Scan(request_id="é" * 129, nfc_bytes=good, reader=Reader(reader_id="desk-1")),
        Scan(request_id="long-reader", nfc_bytes=good, reader=Reader(reader_id="x" * 129)),
        Scan(
            request_id="long-nonce", nfc_bytes=good, reader=Reader(reader_id="d", nonce=b"n" * 65)
        ),
        # 100 characters in 200 bytes: within the bound, which counts characters.
        Scan(request_id="é" * 100, qr_text="APCV1:0", reader=Reader(reader_id="ü" * 128)),
    ]
    return scans


# An audit row (WireBatch.audit_rows) of a scan the core verified, by its index in the scans.
Row = tuple[int, str, str, bool, str, bool, str | None, bool, bool]


def expected(
    pki: DemoPKI, scans: list[Scan], now: int, disclosed: frozenset[str], path: str | None
) -> tuple[list[verifier_pb2.Verdict], list[Row]]:
    """The verdicts and audit rows of the protobuf path (``path`` None: a batch's items)."""
    verdicts = [verifier_pb2.Verdict() for _ in scans]
    valid = []
    for index, (scan, verdict) in enumerate(zip(scans, verdicts, strict=True)):
        problem = scan_problem(scan)
        if problem is None:
            valid.append(index)
            continue
        at = f"scans[{index}]" if path is None else path
        verdict.request_id = scan.request_id
        verdict.decision = verifier_pb2.DECISION_REJECTED
        verdict.reason = verifier_pb2.REASON_MALFORMED
        verdict.detail = f"{at}.{problem.field}: {problem.description}"
    core = [
        _native.Scan(
            scans[i].qr_text
            if scans[i].WhichOneof("presentation") == "qr_text"
            else scans[i].nfc_bytes,
            scans[i].reader.reader_id,
            nonce=scans[i].reader.nonce or None,
            allowed_uses=list(USES),
        )
        for i in valid
    ]
    results = new_verifier(pki, now).verify_batch(core, now)
    rows = []
    for i, result in zip(valid, results, strict=True):
        fill_verdict(verdicts[i], scans[i].request_id, result, disclosed=disclosed, verified_at=now)
        rows.append(
            (
                i,
                scans[i].request_id,
                scans[i].reader.reader_id,
                result.accepted,
                result.reason,
                result.duplicate,
                result.credential_id,
                result.replay_unchecked,
                result.resent,
            )
        )
    return verdicts, rows


@pytest.mark.parametrize("groups", [tuple(FIELD_GROUPS), (), ("identity", "amo")])
def test_a_unary_request_is_answered_as_the_protobuf_path_answers_it(
    pki: DemoPKI, groups: tuple[str, ...]
) -> None:
    """Each scan as a ``VerifyRequest`` of its own: an unusable one gives ``scan_problem``'s
    reason and description with the field from the request (what Verify ends INVALID_ARGUMENT
    with), a usable one the protobuf path's verdict and audit row, without a position."""
    now = int(time.time())
    scans = scans_of_every_kind(pki, now)
    verdicts, rows = expected(pki, scans, now, frozenset(groups), "scan")
    by_index = {row[0]: row[1:] for row in rows}
    verifier = new_verifier(pki, now)
    for index, scan in enumerate(scans):
        data = verifier_pb2.VerifyRequest(scan=scan).SerializeToString()
        call = _native.WireBatch.unary(data)
        assert call is not None and len(call) == 1
        problem = scan_problem(scan)
        if problem is not None:
            field = f"scan.{problem.field}"
            assert call.problem == (problem.reason, field, problem.description)
            continue
        assert call.problem is None
        verifier.verify_wire(call, list(USES), now)
        reply = verifier_pb2.VerifyResponse.FromString(
            call.response({use: list(groups) for use in ("", *USES)})
        )
        assert reply.verdict == verdicts[index]
        assert call.audit_rows() == [(None, *by_index[index])]
    assert _native.WireBatch.unary(b"\x0a\x05\x0a\x03\xff\xfe\xfd") is None  # invalid UTF-8
    assert _native.WireBatch.unary(b"\x0a\x10") is None  # truncated


@pytest.mark.parametrize(
    "groups", [tuple(FIELD_GROUPS), (), ("ins",), ("identity", "amo"), ("amc",)]
)
def test_a_batch_is_answered_as_the_protobuf_path_answers_it(
    pki: DemoPKI, groups: tuple[str, ...]
) -> None:
    now = int(time.time())
    scans = scans_of_every_kind(pki, now)
    data = verifier_pb2.VerifyBatchRequest(scans=scans).SerializeToString()
    batch = _native.WireBatch.batch(data)
    assert batch is not None and len(batch) == len(scans)
    new_verifier(pki, now).verify_wire(batch, list(USES), now)
    reply = verifier_pb2.VerifyBatchResponse.FromString(
        batch.response({use: list(groups) for use in ("", *USES)})
    )
    verdicts, rows = expected(pki, scans, now, frozenset(groups), None)
    assert list(reply.verdicts) == verdicts
    assert batch.audit_rows() == rows
    assert sum(v.decision == verifier_pb2.DECISION_ACCEPTED for v in reply.verdicts) >= 5
    assert any(len(v.amc) == 2 for v in reply.verdicts) == ("amc" in groups)
    assert any(v.delegation.used for v in reply.verdicts)


def test_stream_messages_are_answered_one_response_each(pki: DemoPKI) -> None:
    now = int(time.time())
    scans = scans_of_every_kind(pki, now)
    messages = [verifier_pb2.VerifyStreamRequest(scan=s).SerializeToString() for s in scans]
    batch = _native.WireBatch.stream([*messages, b"\xff\xff"], 40, 1000)
    new_verifier(pki, now).verify_wire(batch, list(USES), now)
    replies = batch.response({use: list(FIELD_GROUPS) for use in ("", *USES)})
    verdicts, rows = expected(pki, scans, now, frozenset(FIELD_GROUPS), "scan")
    answered = [verifier_pb2.VerifyStreamResponse.FromString(r).verdict for r in replies]
    assert answered[:-1] == verdicts
    assert answered[-1].reason == verifier_pb2.REASON_MALFORMED
    assert answered[-1].detail == f"scan: {UNDECODABLE}"
    # A stream's items are numbered along the stream.
    assert batch.audit_rows() == [(40 + row[0], *row[1:]) for row in rows]


def test_a_stream_request_of_several_scans_is_answered_as_a_batch_in_one_response(
    pki: DemoPKI,
) -> None:
    """``scans`` in one request: one response whose ``verdicts`` are what a VerifyBatch of the
    same scans gets (details naming ``scans[i]``), numbered along the stream."""
    now = int(time.time())
    scans = scans_of_every_kind(pki, now)
    one = verifier_pb2.VerifyStreamRequest(scan=scans[0]).SerializeToString()
    several = verifier_pb2.VerifyStreamRequest(scans=scans).SerializeToString()
    assert (_native.WireBatch.stream_scans(one), _native.WireBatch.stream_scans(several)) == (
        0,
        len(scans),
    )
    assert _native.WireBatch.stream_scans(b"\xff\xff") == 0  # no framing: no count
    batch = _native.WireBatch.stream([one, several], 7, 1000)
    assert len(batch) == 1 + len(scans)
    new_verifier(pki, now).verify_wire(batch, list(USES), now)
    first, reply = (
        verifier_pb2.VerifyStreamResponse.FromString(r)
        for r in batch.response({use: list(FIELD_GROUPS) for use in ("", *USES)})
    )
    assert first.HasField("verdict") and not first.verdicts
    assert not reply.HasField("verdict")
    verdicts, rows = expected(pki, scans, now, frozenset(FIELD_GROUPS), None)
    # The first scan was verified just before, in the same core call: its retry is a duplicate.
    assert [v.request_id for v in reply.verdicts] == [v.request_id for v in verdicts]
    assert [v.detail for v in reply.verdicts][1:] == [v.detail for v in verdicts][1:]
    assert [row[0] for row in batch.audit_rows()] == [7] + [8 + row[0] for row in rows]


def test_an_undecodable_item_is_answered_in_place_a_broken_batch_is_none(pki: DemoPKI) -> None:
    good = verifier_pb2.Scan(request_id="r", qr_text="x", reader=Reader(reader_id="d"))
    raw = verifier_pb2.VerifyBatchRequest(scans=[good]).SerializeToString()
    # A scan whose request_id is not UTF-8: the batch's framing holds, that item does not.
    broken = b"\x0a\x03\x0a\x01\xff"
    batch = _native.WireBatch.batch(raw + broken)
    assert batch is not None and len(batch) == 2 and batch.valid == 1
    assert batch.refusal_counts() == [("SCAN_UNDECODABLE", 1)]
    assert _native.WireBatch.batch(raw).refusal_counts() == []  # type: ignore[union-attr]
    assert _native.WireBatch.batch(b"\x0a\xff") is None
    empty = _native.WireBatch.batch(b"")
    assert empty is not None and len(empty) == 0


def test_the_core_writes_the_audit_records_the_audit_trail_would(pki: DemoPKI) -> None:
    """Batch records rendered by the core (``WireBatch.audit_lines``) are the audit trail's
    records rendered by ``json.dumps``, byte for byte, whatever the ids hold."""
    now = int(time.time())
    odd = 'r-"\\\n\t\x01\x7fé😀'
    scans = [
        Scan(request_id=odd, nfc_bytes=pki.present("alice"), reader=Reader(reader_id="desk-ü")),
        Scan(request_id="r-2", qr_text="APCV1:0", reader=Reader(reader_id='d"1')),
    ]
    batch = _native.WireBatch.batch(
        verifier_pb2.VerifyBatchRequest(scans=scans).SerializeToString()
    )
    assert batch is not None
    new_verifier(pki, now).verify_wire(batch, list(USES), now)
    common = {"event": "verification", "worker": 1, "level": "info", "timestamp": "2026-01-01Z"}
    tail = json.dumps(common)[1:]
    secret = b"audit secret"
    lines = batch.audit_lines(
        _native.HolderRefKey(secret), json.dumps("caller-é"), json.dumps("VerifyBatch"), "1.5", tail
    )
    trail = AuditTrail(secret)
    expected = [
        json.dumps({**trail._fields("VerifyBatch", *row[1:], 0.0015, "caller-é", row[0]), **common})
        + "\n"
        for row in batch.audit_rows()
    ]
    assert lines == expected
    assert json.loads(lines[0])["holder_ref"] and json.loads(lines[1])["holder_ref"] is None
    assert _native.HolderRefKey(secret).holder_ref("c-1") == trail.holder_ref("c-1")
    assert "audit secret" not in repr(_native.HolderRefKey(secret))
    assert batch.decision_counts() == [(True, "OK", 1), (False, "MALFORMED", 1)]


@pytest.mark.parametrize("rendered_by_core", [True, False])
def test_a_batch_is_counted_timed_and_traced_as_one_core_call(
    pki: DemoPKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rendered_by_core: bool
) -> None:
    """``record_wire``, its records rendered by the core (logging configured, the audit in its
    own file) or record by record (not configured): each kind of decision counted, each
    audited item's share of the batch's time observed once, one core span in the call's span,
    and the core-rendered records in the audit file with the call's trace and span ids."""
    from apcv_verify.observe import logs
    from apcv_verify.observe.metrics import ServiceMetrics
    from apcv_verify.observe.tracing import CORE_SPAN, configure_tracing, shutdown_tracing
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    now = int(time.time())
    batch = _native.WireBatch.batch(
        verifier_pb2.VerifyBatchRequest(scans=scans_of_every_kind(pki, now)).SerializeToString()
    )
    assert batch is not None
    new_verifier(pki, now).verify_wire(batch, list(USES), now)
    rows = batch.audit_rows()
    metrics = ServiceMetrics()
    trail = AuditTrail(b"audit secret", metrics)
    audit_path = tmp_path / "audit.jsonl"
    if rendered_by_core:
        logs.configure_logging("info")
        logs.configure_audit_file(str(audit_path), 0, 0)
    else:
        monkeypatch.setattr(logs, "_audit_buffer", None)
    exporter = InMemorySpanExporter()
    tracing = configure_tracing(True, exporter=exporter, batch=False)
    assert tracing is not None
    try:
        with tracing.tracer.start_as_current_span("call") as call:
            trail.record_wire("VerifyBatch", batch, 0.004, caller="his-1")
    finally:
        shutdown_tracing()
        if rendered_by_core:
            logs.flush_audit()
            logs.configure_logging("info")  # the audit records on stdout again

    sample = metrics.registry.get_sample_value
    method = {"method": "VerifyBatch"}
    counts = batch.decision_counts()
    assert len({reason for _, reason, _ in counts}) > 2
    for accepted, reason, count in counts:
        labels = {"decision": "ACCEPTED" if accepted else "REJECTED", "reason": reason, **method}
        assert sample("apcv_verifications_total", labels) == count, reason
    assert sum(count for *_, count in counts) == len(rows)
    assert sample("apcv_verification_seconds_count", method) == len(rows)
    assert sample("apcv_verification_seconds_sum", method) == pytest.approx(0.004)
    (core,) = [span for span in exporter.get_finished_spans() if span.name == CORE_SPAN]
    assert core.attributes == {"apcv.method": "VerifyBatch", "apcv.items": len(rows)}
    assert core.parent is not None and core.parent.span_id == call.get_span_context().span_id
    if rendered_by_core:
        records = [json.loads(line) for line in audit_path.read_text().splitlines()]
        assert [record["request_id"] for record in records] == [row[1] for row in rows]
        ids = call.get_span_context()
        assert {(r["trace_id"], r["span_id"]) for r in records} == {
            (f"{ids.trace_id:032x}", f"{ids.span_id:016x}")
        }


def test_answer_recovery_answers_a_batch_in_place(pki: DemoPKI) -> None:
    """A batch's resends get their kept answers (``resent``, audited as such), another
    presentation under a used request id is refused in place and not audited, and the same
    request twice in one batch is answered once, as ``AnswerRecovery.answer`` does."""
    now = int(time.time())
    verifier = new_verifier(pki, now)
    recovery = AnswerRecovery(MemoryAnswers(100), 3600)
    first_code, other_code = pki.present("alice"), pki.present("alice")

    def answered(scans: list[Scan]) -> tuple[_native.WireBatch, list[verifier_pb2.Verdict]]:
        data = verifier_pb2.VerifyBatchRequest(scans=scans).SerializeToString()
        batch = _native.WireBatch.batch(data)
        assert batch is not None

        async def verify() -> None:
            verifier.verify_wire(batch, list(USES), now)

        asyncio.run(recovery.answer_wire(batch, "caller-1", now, verify))
        reply = batch.response({use: list(FIELD_GROUPS) for use in ("", *USES)})
        return batch, list(verifier_pb2.VerifyBatchResponse.FromString(reply).verdicts)

    def scan(code: bytes, request_id: str) -> Scan:
        return Scan(request_id=request_id, nfc_bytes=code, reader=Reader(reader_id="desk-1"))

    batch, (first,) = answered([scan(first_code, "r-1")])
    assert (first.reason, first.resent, batch.recovery_counts()) == (
        verifier_pb2.REASON_OK,
        False,
        (0, 0),
    )
    batch, (again, reused, fresh, twice) = answered(
        [
            scan(first_code, "r-1"),
            scan(other_code, "r-1"),
            scan(other_code, "r-2"),
            scan(other_code, "r-2"),
        ]
    )
    assert again.resent and not again.duplicate  # the first answer, not a duplicate
    again.ClearField("resent")
    assert again == first
    assert (reused.request_id, reused.reason, reused.detail) == (
        "r-1",
        verifier_pb2.REASON_MALFORMED,
        "scans[1].request_id: already used for another presentation by this caller and reader"
        " (REQUEST_ID_REUSED)",
    )
    assert (fresh.reason, fresh.resent, twice.reason, twice.resent) == (
        verifier_pb2.REASON_OK,
        False,
        verifier_pb2.REASON_OK,
        True,
    )
    assert batch.recovery_counts() == (2, 1)
    assert batch.refusal_counts() == [("REQUEST_ID_REUSED", 1)]  # not the resends
    rows = batch.audit_rows()
    assert [(row[0], row[-1]) for row in rows] == [(0, True), (2, False), (3, True)]
    secret = b"audit secret"
    tail = json.dumps({"event": "verification"})[1:]
    lines = batch.audit_lines(
        _native.HolderRefKey(secret), json.dumps("caller-1"), json.dumps("VerifyBatch"), "0.0", tail
    )
    trail = AuditTrail(secret)
    assert lines == [
        json.dumps(
            {
                **trail._fields("VerifyBatch", *row[1:], 0.0, "caller-1", row[0]),
                "event": "verification",
            }
        )
        + "\n"
        for row in rows
    ]
    assert [json.loads(line).get("resent") for line in lines] == [True, None, True]


def test_a_stream_item_with_scanned_at_is_refused_in_place(pki: DemoPKI) -> None:
    now = int(time.time())
    scans = [
        Scan(request_id="s-1", nfc_bytes=pki.present("alice"), reader=Reader(reader_id="d")),
        Scan(request_id="s-2", nfc_bytes=pki.present("alice"), reader=Reader(reader_id="d")),
    ]
    scans[1].scanned_at.seconds = now - 10
    messages = [verifier_pb2.VerifyStreamRequest(scan=s).SerializeToString() for s in scans]
    batch = _native.WireBatch.stream(messages, 0, 1000)
    assert batch.scanned_at
    assert batch.refusal_counts() == []
    batch.refuse_scanned_at()
    assert (batch.valid, batch.scanned_at) == (1, False)
    assert batch.refusal_counts() == [("SCANNED_AT_NOT_ALLOWED", 1)]
    new_verifier(pki, now).verify_wire(batch, list(USES), now)
    first, second = (
        verifier_pb2.VerifyStreamResponse.FromString(r).verdict
        for r in batch.response({use: [] for use in ("", *USES)})
    )
    assert first.reason == verifier_pb2.REASON_OK
    assert (second.request_id, second.reason, second.detail) == (
        "s-2",
        verifier_pb2.REASON_MALFORMED,
        "scan.scanned_at: not allowed for this caller (SCANNED_AT_NOT_ALLOWED)",
    )


def unary_call(scan: Scan) -> _native.WireBatch:
    """A ``Verify`` request of ``scan`` as the service decodes it (``scan`` usable)."""
    call = _native.WireBatch.unary(verifier_pb2.VerifyRequest(scan=scan).SerializeToString())
    assert call is not None and call.problem is None
    return call


#: What ``WireBatch.answer_unary`` returns: unreadable, resent, reused, the response.
Answer = tuple[int, int, int, bytes | None]


@pytest.mark.parametrize("groups", [tuple(FIELD_GROUPS), (), ("identity", "amo")])
def test_answer_unary_answers_as_its_steps_do(pki: DemoPKI, groups: tuple[str, ...]) -> None:
    """``WireBatch.answer_unary`` (the unary call's one binding call) gives each usable scan
    the response, audit rows and recovery outcomes of ``recover_from``, ``verify_wire``,
    ``keep_in`` and ``response`` called one after the other."""
    now = int(time.time())
    disclosure = {use: list(groups) for use in ("", *USES)}
    view = _native.CallerView(list(USES), disclosure)
    usable = [scan for scan in scans_of_every_kind(pki, now) if scan_problem(scan) is None]
    by_steps, in_one = new_verifier(pki, now), new_verifier(pki, now)
    stores = [MemoryAnswers(100, "secret"), MemoryAnswers(100, "secret")]

    def steps(scan: Scan, store: MemoryAnswers | None) -> tuple[Answer, list[AuditRow]]:
        call = unary_call(scan)
        unreadable = 0
        if store is not None:
            unreadable = call.recover_from(store.store, store.answer_keys, "caller-1", now)
        if call.fresh:
            by_steps.verify_wire(call, list(USES), now)
            if store is not None:
                unreadable += call.keep_in(store.store, store.answer_keys, now, now + 60)
        resent, reused = call.recovery_counts()
        reply = None if reused or call.fhir_wanted() else call.response(disclosure)
        return (unreadable, resent, reused, reply), call.audit_rows()

    def in_one_call(scan: Scan, store: MemoryAnswers | None) -> tuple[Answer, list[AuditRow]]:
        call = unary_call(scan)
        if store is None:
            answer = call.answer_unary(in_one, view, now)
        else:
            answer = call.answer_unary(
                in_one, view, now, store.store, store.answer_keys, "caller-1", now + 60
            )
        assert answer[4:] == (0, 0)  # not audited here without ``audit``
        return answer[:4], call.audit_rows()

    for scan in usable:  # first seen: verified (a replay when seen again without a store)
        assert in_one_call(scan, None) == steps(scan, None)
        assert in_one_call(scan, stores[1]) == steps(scan, stores[0])
    resend, other = usable[0], Scan()
    other.CopyFrom(resend)
    other.nfc_bytes = pki.present("alice")
    (answer, rows), expected_answer = in_one_call(resend, stores[1]), steps(resend, stores[0])
    assert (answer, rows) == expected_answer
    assert answer[1:3] == (1, 0) and rows[0][-1] is True  # resent, audited as such
    (answer, rows), expected_answer = in_one_call(other, stores[1]), steps(other, stores[0])
    assert (answer, rows) == expected_answer
    assert answer == (0, 0, 1, None) and rows == []  # reused: no response, not audited
    fhir = Scan()
    fhir.CopyFrom(resend)
    fhir.request_id, fhir.include_fhir = "r-fhir", True
    fhir.nfc_bytes = pki.present("alice")
    answer, rows = in_one_call(fhir, None)
    assert answer == (0, 0, 0, None) and len(rows) == 1  # FHIR JSON: response() after set_fhir
    batch = _native.WireBatch.batch(
        verifier_pb2.VerifyBatchRequest(scans=[resend]).SerializeToString()
    )
    assert batch is not None
    with pytest.raises(ValueError, match="a unary call's scan"):
        batch.answer_unary(in_one, view, now)


#: An audit line's latency and timestamp, which differ between two calls.
_TIMES = re.compile(r'"latency_ms": [0-9.]+|"timestamp": "[^"]+"')


def test_answer_unary_audits_as_audit_does(pki: DemoPKI) -> None:
    """``answer_unary`` with ``audit`` queues the decision's record and counts it as
    ``WireBatch.audit`` with the usual tail does after the same steps: the queue renders
    the same line (but for the latency, measured within the call, and the timestamp); a
    reused request id is not audited, a scan asking for FHIR JSON is; REPLAY_UNAVAILABLE
    decisions are counted apart."""
    now = int(time.time())
    disclosure = {use: list(FIELD_GROUPS) for use in ("", *USES)}
    view = _native.CallerView(list(USES), disclosure)
    key = _native.HolderRefKey(b"audit-secret")
    bounds = [0.001, 0.01, 0.1, 1.0]
    counts = [_native.VerificationCounts(bounds), _native.VerificationCounts(bounds)]
    usable = [scan for scan in scans_of_every_kind(pki, now) if scan_problem(scan) is None]
    by_steps, in_one = new_verifier(pki, now), new_verifier(pki, now)
    stores = [MemoryAnswers(100, "secret"), MemoryAnswers(100, "secret")]

    def steps(scan: Scan) -> list[str]:
        call = unary_call(scan)
        call.recover_from(stores[0].store, stores[0].answer_keys, "caller-1", now)
        if call.fresh:
            by_steps.verify_wire(call, list(USES), now)
            call.keep_in(stores[0].store, stores[0].answer_keys, now, now + 60)
        if call.recovery_counts()[1]:
            return []
        return call.audit(key, "caller-1", "Verify", "0.5", None, counts[0], 0.0005, 4096)[1]

    queue = _native.AuditQueue()

    def in_one_call(scan: Scan) -> tuple[bytes | None, int, list[str], int]:
        answer = unary_call(scan).answer_unary(
            in_one,
            view,
            now,
            stores[1].store,
            stores[1].answer_keys,
            "caller-1",
            now + 60,
            (key, counts[1], queue),
        )
        lines = queue.take(4096)
        # About the bytes waiting: within a tenth of the line's (0 when none was queued).
        assert abs(answer[4] - sum(map(len, lines))) <= sum(map(len, lines)) / 10
        assert len(queue) == 0
        return answer[3], answer[2], lines, answer[5]

    def without_times(lines: list[str]) -> list[str]:
        return [_TIMES.sub("", line) for line in lines]

    resend, other, fhir = Scan(), Scan(), Scan()
    resend.CopyFrom(usable[0])
    other.CopyFrom(resend)
    other.nfc_bytes = pki.present("alice")
    fhir.CopyFrom(resend)
    fhir.request_id, fhir.include_fhir = "r-fhir", True
    fhir.nfc_bytes = pki.present("alice")
    for scan in [*usable, resend, other, fhir]:
        expected = steps(scan)
        reply, reused, lines, unavailable = in_one_call(scan)
        assert without_times(lines) == without_times(expected)
        assert unavailable == 0
        if scan is other:
            assert reused == 1 and reply is None and lines == []  # ends ALREADY_EXISTS
        else:
            assert len(lines) == 1 and lines[0].endswith("\n")
            record = json.loads(lines[0])
            assert record["method"] == "Verify" and record["caller"] == "caller-1"
            assert isinstance(record["latency_ms"], float) and record["latency_ms"] >= 0
        if scan is fhir:
            assert reply is None  # the service adds the FHIR JSON, then the response
    # The same decisions counted; each latency observed once (values differ: not compared).
    (decisions0, histograms0), (decisions1, histograms1) = (c.snapshot() for c in counts)
    assert sorted(decisions1) == sorted(decisions0)
    assert [h[1][-1] for h in histograms1] == [h[1][-1] for h in histograms0]
    # A full replay store: REPLAY_UNAVAILABLE, counted apart for the store's error metric.
    full = new_verifier(pki, now, _native.MemoryReplayStore(max_entries=1))
    reader = resend.reader
    first, second = (
        unary_call(Scan(request_id=f"r-full-{n}", nfc_bytes=pki.present("alice"), reader=reader))
        for n in range(2)
    )
    assert first.answer_unary(full, view, now, audit=(key, None, queue))[5] == 0
    answer = second.answer_unary(full, view, now, caller="caller-1", audit=(key, None, queue))
    first_line, second_line = queue.take()
    assert json.loads(first_line)["decision"] == "ACCEPTED"
    assert answer[5] == 1 and json.loads(second_line)["reason"] == "REPLAY_UNAVAILABLE"
