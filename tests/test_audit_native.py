"""The audit work of one call done in one binding call (``WireBatch.audit``): the lines the
core renders with the usual end of the line (its timestamp read in the core) are the lines
the audit trail rendered with ``audit_tail`` — the same keys, values and timestamp format —,
and the decision counts come with them."""

from __future__ import annotations

import calendar
import json
import re
import time

import pytest
import structlog
from apcv_verify import _native
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2
from apcv_verify.config import USES
from apcv_verify.issuer import DemoPKI
from apcv_verify.observe import logs
from apcv_verify.observe.audit import RECORD_KEYS, AuditTrail
from apcv_verify.observe.logs import configure_logging
from apcv_verify.observe.metrics import ServiceMetrics
from apcv_verify.observe.tracing import configure_tracing, shutdown_tracing
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from .test_audit import StdoutRecorder
from .test_wire import new_verifier, scans_of_every_kind

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z")


def verified_batch(pki: DemoPKI) -> _native.WireBatch:
    now = int(time.time())
    batch = _native.WireBatch.batch(
        verifier_pb2.VerifyBatchRequest(scans=scans_of_every_kind(pki, now)).SerializeToString()
    )
    assert batch is not None
    new_verifier(pki, now).verify_wire(batch, list(USES), now)
    return batch


def test_the_core_renders_the_usual_tail_as_audit_tail_does(pki: DemoPKI) -> None:
    """With nothing bound, ``WireBatch.audit`` without a tail gives ``audit_lines`` with
    ``audit_tail``'s tail but for the timestamp, which has structlog's format and is read at
    the call; with a tail it uses that one; the counts are ``decision_counts``."""
    batch = verified_batch(pki)
    key = _native.HolderRefKey(b"audit secret")
    args = (key, "his-1", "VerifyBatch", "4.0")
    rendered = (key, json.dumps("his-1"), json.dumps("VerifyBatch"), "4.0")
    saved = structlog.get_config()
    try:
        configure_logging("info")
        assert logs.native_audit_tail(RECORD_KEYS) is True
        tail = logs.audit_tail(RECORD_KEYS)
        assert tail is not None
        before = time.time()
        counts, lines = batch.audit(*args, None)
        after = time.time()
        assert counts == batch.decision_counts()
        expected = batch.audit_lines(*rendered, tail)
        assert len(lines) == len(expected) == len(batch.audit_rows()) > 2
        for line, wanted in zip(lines, expected, strict=True):
            assert line.endswith("}\n")
            record, reference = json.loads(line), json.loads(wanted)
            stamp = record.pop("timestamp")
            assert ISO_UTC.fullmatch(stamp)
            assert list(record) == [k for k in reference if k != "timestamp"]
            reference.pop("timestamp")
            assert record == reference
            # The same text but for the timestamp's value: spacing and order included.
            assert line.replace(stamp, "T") == wanted.replace(json.loads(wanted)["timestamp"], "T")
            seconds = calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S"))
            assert int(before) - 1 <= seconds <= after + 1
        given = '"event": "verification", "worker": 1, "level": "info", "timestamp": "x"}'
        assert batch.audit(*args, given)[1] == batch.audit_lines(*rendered, given)
        assert batch.audit(*args, "") == (counts, [])
        structlog.contextvars.bind_contextvars(worker=1)
        bound = logs.native_audit_tail(RECORD_KEYS)
        assert isinstance(bound, str) and '"worker": 1' in bound
        structlog.contextvars.unbind_contextvars("worker")
        configure_logging("warning")
        assert logs.native_audit_tail(RECORD_KEYS) == ""
    finally:
        structlog.configure(**saved)
        configure_logging("info")


def test_a_unary_call_is_audited_in_the_core_only_with_the_usual_tail() -> None:
    """``native_tail_queue``: the audit buffer's queue when ``native_audit_tail`` is True and
    tracing is off (a unary call's record is then left there by its binding call), else
    None — a bound variable, the audit's level not logged, tracing on."""
    saved = structlog.get_config()
    try:
        configure_logging("info")
        queue = logs.native_tail_queue(RECORD_KEYS)
        assert isinstance(queue, _native.AuditQueue)
        assert logs.native_tail_queue(RECORD_KEYS | {"level"}) is None
        structlog.contextvars.bind_contextvars(worker=1)
        assert logs.native_tail_queue(RECORD_KEYS) is None
        structlog.contextvars.unbind_contextvars("worker")
        assert logs.native_tail_queue(RECORD_KEYS) is queue
        configure_tracing(True, exporter=InMemorySpanExporter(), batch=False)
        try:
            assert logs.native_audit_tail(RECORD_KEYS) is True  # no span: the usual tail
            assert logs.native_tail_queue(RECORD_KEYS) is None  # but the call is traced
        finally:
            shutdown_tracing()
        configure_logging("warning")
        assert logs.native_tail_queue(RECORD_KEYS) is None
    finally:
        structlog.configure(**saved)
        configure_logging("info")


def test_the_lines_come_joined_in_whole_lines_of_at_most_chunk_bytes(pki: DemoPKI) -> None:
    """With ``chunk_bytes``, ``WireBatch.audit`` gives the same lines joined in order into
    chunks of whole lines, each at most that long but for a longer line alone, and the same
    counts."""
    batch = verified_batch(pki)
    key = _native.HolderRefKey(b"audit secret")
    tail = '"event": "verification", "level": "info", "timestamp": "T"}'
    args = (key, "his-1", "VerifyBatch", "4.0", tail)
    counts, lines = batch.audit(*args)
    longest = max(map(len, lines))
    assert len(lines) > 2
    for limit in (1, longest, 2 * longest + 1, 4096):
        chunked_counts, chunks = batch.audit(*args, chunk_bytes=limit)
        assert chunked_counts == counts
        assert "".join(chunks) == "".join(lines)
        # Each chunk is whole lines, as many as fit (the next line would not).
        cut = 0
        for chunk in chunks:
            held = chunk.splitlines(keepends=True)
            assert held == lines[cut : cut + len(held)]
            cut += len(held)
            assert len(chunk) <= limit or len(held) == 1
            if cut < len(lines):
                assert len(chunk) + len(lines[cut]) > limit
        assert cut == len(lines)
    assert batch.audit(*args, chunk_bytes=1)[1] == lines


def test_record_wire_writes_the_core_rendered_lines_and_counts_them(
    pki: DemoPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``record_wire`` in the usual case: one line per decision, as the records rendered
    with ``audit_tail`` would be, and each kind of decision counted."""
    batch = verified_batch(pki)
    recorder = StdoutRecorder()
    monkeypatch.setattr("sys.stdout", recorder)
    saved = structlog.get_config()
    metrics = ServiceMetrics()
    trail = AuditTrail(b"audit secret", metrics)
    try:
        configure_logging("info")
        trail.record_wire("VerifyBatch", batch, 0.004, caller="his-1")
        logs.flush_audit()
    finally:
        structlog.configure(**saved)
    lines = "".join(recorder.writes).splitlines()
    assert len(lines) == len(batch.audit_rows())
    expected = batch.audit_lines(
        _native.HolderRefKey(b"audit secret"),
        json.dumps("his-1"),
        json.dumps("VerifyBatch"),
        json.dumps(4.0),
        '"event": "verification", "level": "info", "timestamp": "T"}',
    )
    for line, wanted in zip(lines, expected, strict=True):
        stamp = json.loads(line)["timestamp"]
        assert ISO_UTC.fullmatch(stamp)
        assert line.replace(stamp, "T") + "\n" == wanted
    sample = metrics.registry.get_sample_value
    for accepted, reason, count in batch.decision_counts():
        labels = {"decision": "ACCEPTED" if accepted else "REJECTED", "reason": reason}
        assert sample("apcv_verifications_total", {**labels, "method": "VerifyBatch"}) == count
    assert sample("apcv_verification_seconds_count", {"method": "VerifyBatch"}) == len(lines)


def test_the_core_counts_export_as_prometheus_clients_counter_and_histogram(
    pki: DemoPKI,
) -> None:
    """The counts ``WireBatch.audit`` keeps (``VerificationCounts``, exported by
    ``VerificationCollector``) give the exposition text prometheus_client's own ``Counter``
    and ``Histogram`` of the same names give for the same decisions and latencies."""
    from apcv_verify.observe.metrics import (
        VERIFICATION_SECONDS_BUCKETS,
        VERIFICATION_SECONDS_HELP,
        VERIFICATIONS_HELP,
        VerificationCollector,
        observe_many,
    )
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    batch = verified_batch(pki)
    key = _native.HolderRefKey(b"audit secret")
    counts = _native.VerificationCounts(list(VERIFICATION_SECONDS_BUCKETS))
    native = CollectorRegistry()
    native.register(VerificationCollector(counts))
    reference = CollectorRegistry()
    total = Counter(
        "apcv_verifications_total",
        VERIFICATIONS_HELP,
        ["decision", "reason", "method"],
        registry=reference,
    )
    seconds = Histogram(
        "apcv_verification_seconds",
        VERIFICATION_SECONDS_HELP,
        ["method"],
        buckets=VERIFICATION_SECONDS_BUCKETS,
        registry=reference,
    )
    for method, latency in (("VerifyBatch", 0.004), ("Verify", 0.00025), ("VerifyBatch", 3.0)):
        kinds, _ = batch.audit(key, "his-1", method, "1", "", counts, latency)
        for accepted, reason, count in kinds:
            decision = "ACCEPTED" if accepted else "REJECTED"
            total.labels(decision=decision, reason=reason, method=method).inc(count)
        decided = sum(count for *_, count in kinds)
        observe_many(seconds.labels(method=method), latency / decided, decided)
    counts.count("REJECTED", "REPLAYED", "Verify", 2)
    total.labels(decision="REJECTED", reason="REPLAYED", method="Verify").inc(2)
    counts.observe("Verify", 0.00001, 1)  # on a bound
    seconds.labels(method="Verify").observe(0.00001)
    assert generate_latest(native) == generate_latest(reference)
    assert b"apcv_verification_seconds_bucket" in generate_latest(native)
    with pytest.raises(ValueError, match="ACCEPTED or REJECTED"):
        counts.count("MAYBE", "OK", "Verify", 1)
