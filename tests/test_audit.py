"""Audit records of a real ``apcv-verify serve`` process: one per verification, pseudonymous."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
from apcv_verify import _native
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2, verifier_pb2_grpc
from apcv_verify.config import ConfigError, load_config
from apcv_verify.issuer import DemoPKI, parse_sign1, qr_text
from apcv_verify.observe.audit import HOLDER_REF_HEX_CHARS, AuditRow, AuditTrail, holder_ref
from apcv_verify.observe.logs import configure_logging
from apcv_verify.replay.memory import memory_replay_store
from apcv_verify.service.startup import build_verifiers
from apcv_verify.trust.material import load_trust_material

from .conftest import (
    ServerProcess,
    nir_numbers,
    personal_values,
    pki_config,
    start_server,
    stop_server,
)
from .test_metrics import call

SECRET = "audit-test-secret-0123456789abcdef"
AUDIT_FIELDS = {
    "event", "kind", "level", "timestamp", "request_id", "caller", "reader_id", "method",
    "decision", "reason", "duplicate", "latency_ms", "holder_ref",
}  # fmt: skip


def credential_id(pki: DemoPKI, holder: str) -> str:
    """The credential id (CWT claim 2) the core reports as ``credential_id``."""
    return str(parse_sign1(pki.holder(holder).credential).claims()[2])


def audit_records(server: ServerProcess) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    return [record for record in records if record.get("kind") == "audit"]


def serve_with_secret(
    pki: DemoPKI, log_path: Path, monkeypatch: pytest.MonkeyPatch, secret: str
) -> ServerProcess:
    monkeypatch.setenv("APCV_AUDIT_HOLDER_REF_SECRET", secret)
    monkeypatch.setenv("APCV_METRICS_LISTEN", "")
    return start_server(pki.directory, log_path, "--allow-test-identities")


class StdoutRecorder:
    """Stands in for ``sys.stdout``: keeps each write apart, to see how lines are written."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_holder_ref_is_a_keyed_pseudonym() -> None:
    first = holder_ref(b"secret-one", "cred-0001")
    assert first == holder_ref(b"secret-one", "cred-0001")
    assert first != holder_ref(b"secret-two", "cred-0001")
    assert first != holder_ref(b"secret-one", "cred-0002")
    assert re.fullmatch(f"[0-9a-f]{{{HOLDER_REF_HEX_CHARS}}}", first)
    assert "cred-0001" not in first
    with pytest.raises(ValueError, match="must not be empty"):
        AuditTrail(b"")
    assert "secret-one" not in repr(AuditTrail(b"secret-one"))


@pytest.mark.slow
def test_one_audit_record_per_verification(
    pki: DemoPKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve_with_secret(pki, tmp_path / "audit.log", monkeypatch, SECRET)
    try:
        responses = {
            "a-1": call(server, qr_text(pki.present("alice")), "a-1", "desk-1"),
            "a-2": call(server, pki.present("alice"), "a-2", "desk-2"),
            "a-3": call(server, qr_text(pki.present("lunar")), "a-3", "desk-1"),
            "a-4": call(server, "APCV1:%%%%", "a-4", "desk-3"),
        }
        replayed = qr_text(pki.present("corsica"))
        responses["a-5"] = call(server, replayed, "a-5", "desk-1")
        responses["a-6"] = call(server, replayed, "a-6", "desk-1")
        with server.channel() as channel, pytest.raises(grpc.RpcError):
            verifier_pb2_grpc.VerifierServiceStub(channel).Verify(
                verifier_pb2.VerifyRequest(scan=verifier_pb2.Scan(request_id="a-7")), timeout=10
            )
    finally:
        stop_server(server)

    records = audit_records(server)
    # The refused call (INVALID_ARGUMENT) verified nothing: no record.
    assert [record["request_id"] for record in records] == list(responses)
    by_id = {record["request_id"]: record for record in records}
    for request_id, response in responses.items():
        record = by_id[request_id]
        assert set(record) == AUDIT_FIELDS, request_id
        assert record["event"] == "verification" and record["level"] == "info"
        assert record["caller"] == "anonymous" and record["method"] == "Verify"
        assert record["decision"] == verifier_pb2.Decision.Name(response.decision).removeprefix(
            "DECISION_"
        )
        assert record["reason"] == verifier_pb2.Reason.Name(response.reason).removeprefix("REASON_")
        assert record["duplicate"] is response.duplicate
        assert isinstance(record["latency_ms"], float) and 0 <= record["latency_ms"] < 10_000
    assert [by_id[key]["reader_id"] for key in ("a-1", "a-2", "a-4")] == [
        "desk-1", "desk-2", "desk-3",
    ]  # fmt: skip
    assert by_id["a-6"]["duplicate"] is True

    alice = holder_ref(SECRET.encode(), credential_id(pki, "alice"))
    # Two presentations (QR and NFC) of one credential: one reference, never the id itself.
    assert by_id["a-1"]["holder_ref"] == by_id["a-2"]["holder_ref"] == alice
    assert by_id["a-3"]["holder_ref"] == holder_ref(SECRET.encode(), credential_id(pki, "lunar"))
    assert by_id["a-3"]["holder_ref"] != alice
    assert by_id["a-4"]["holder_ref"] is None  # too broken to name a credential
    logs = server.logs()
    for holder in pki.holders:
        assert credential_id(pki, holder) not in logs
    assert '"audit_secret_ephemeral"' not in logs


@pytest.mark.slow
def test_holder_ref_stable_across_restarts_with_a_secret_not_without(
    pki: DemoPKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def alice_ref(secret: str, name: str) -> tuple[str, str]:
        server = serve_with_secret(pki, tmp_path / f"{name}.log", monkeypatch, secret)
        try:
            call(server, qr_text(pki.present("alice")), name)
        finally:
            stop_server(server)
        (record,) = audit_records(server)
        return record["holder_ref"], server.logs()

    first, _ = alice_ref(SECRET, "first")
    again, _ = alice_ref(SECRET, "again")
    other, _ = alice_ref(SECRET[::-1], "other")
    assert first == again
    assert other != first
    ephemeral, logs = alice_ref("", "ephemeral")
    ephemeral_again, _ = alice_ref("", "ephemeral-again")
    assert len({first, ephemeral, ephemeral_again}) == 3
    warnings = [json.loads(line) for line in logs.splitlines() if "audit_secret_ephemeral" in line]
    assert [warning["level"] for warning in warnings] == ["warning"]


def test_every_log_line_of_every_scenario_is_free_of_personal_data(
    pki: DemoPKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The suite's scenarios (test_service.py) against one server; then every line is scanned."""
    pki.revoke(pki.holder("revoked").status_index)
    server = serve_with_secret(pki, tmp_path / "scan.log", monkeypatch, SECRET)
    try:
        now = int(time.time())
        for name, sample in pki.samples(now=now).items():
            call(server, qr_text(sample), f"s-{name}", "desk-1")
            call(server, sample, f"s-{name}-nfc", "desk-2")
        for holder in pki.holders:
            call(server, qr_text(pki.present(holder)), f"h-{holder}")
        call(server, pki.present("family", ben=1), "ben-1")
        call(server, pki.present("family", ben=2), "ben-2")
        for n, garbage in enumerate(
            ("APCV1:", "HC1:NCFOXN%TS3DH3ZSUZK+.V0ETD%65NL-AH", b"\xa1\x01\x01")
        ):
            assert isinstance(garbage, str | bytes)  # QR text or NFC bytes
            call(server, garbage, f"g-{n}")
        with server.channel() as channel:
            stub = verifier_pb2_grpc.VerifierServiceStub(channel)
            with pytest.raises(grpc.RpcError):
                stub.Verify(
                    verifier_pb2.VerifyRequest(
                        scan=verifier_pb2.Scan(request_id="big", nfc_bytes=b"\0" * 200_000)
                    ),
                    timeout=10,
                )
    finally:
        stop_server(server)
    logs = server.logs()
    records = audit_records(server)
    assert len(records) == 2 * len(pki.samples(now=now)) + len(pki.holders) + 2 + 3
    assert {record["reason"] for record in records} >= {"OK", "REVOKED", "REPLAYED", "MALFORMED"}
    personal = personal_values(pki)
    for line in logs.splitlines():
        assert [value for value in personal if value in line] == [], line
        assert not nir_numbers(line), line
        assert not re.search(r"\b\d{4}-\d{2}-\d{2}\b", line), line  # no date of birth shape
        assert "APCV1:" not in line  # no raw scan


def _rows(results: list[_native.VerificationResult], request_id: str = "b") -> list[AuditRow]:
    """``results`` as the audit rows ``WireBatch.audit_rows`` gives, one reader, numbered."""
    return [
        (i, f"{request_id}-{i}", "edge-1", r.accepted, r.reason, r.duplicate,
         r.credential_id, r.replay_unchecked, r.resent)
        for i, r in enumerate(results)
    ]  # fmt: skip


def test_audit_trail_counts_verifications_in_process(pki: DemoPKI) -> None:
    """``record_rows`` (a batch's decisions when the core does not render the lines) counts
    each decision and observes the latency."""
    from apcv_verify.observe.metrics import ServiceMetrics

    config = pki_config(pki, {"audit.holder_ref_secret": SECRET})
    metrics = ServiceMetrics()
    trail = AuditTrail.from_config(config, metrics)
    verifier = build_verifiers(
        config, load_trust_material(config), memory_replay_store(config.replay)
    )[0]
    scans = [_native.Scan(qr_text(pki.present("alice")), "edge-1"), _native.Scan("APCV1:", "e")]
    results = verifier.verify_batch(scans, int(time.time()))
    trail.record_rows("VerifyBatch", _rows(results), 0.0004, caller="his-1")
    count = metrics.registry.get_sample_value
    ok = {"decision": "ACCEPTED", "reason": "OK", "method": "VerifyBatch"}
    assert count("apcv_verifications_total", ok) == 1
    assert count("apcv_verification_seconds_count", {"method": "VerifyBatch"}) == 2
    assert count("apcv_verification_seconds_bucket", {"method": "VerifyBatch", "le": "0.0001"}) == 0
    assert (
        count("apcv_verification_seconds_bucket", {"method": "VerifyBatch", "le": "0.00025"}) == 2
    )


def test_a_batch_observes_each_items_share_of_its_time_once(pki: DemoPKI) -> None:
    """A batch of n verified in t seconds: n observations of t / n (not n of t, which made a
    light VerifyBatch load look like slow verifications), in one update."""
    from apcv_verify.observe.metrics import ServiceMetrics

    config = pki_config(pki, {"audit.holder_ref_secret": SECRET})
    metrics = ServiceMetrics()
    trail = AuditTrail.from_config(config, metrics)
    verifier = build_verifiers(
        config, load_trust_material(config), memory_replay_store(config.replay)
    )[0]
    scans = [_native.Scan(qr_text(pki.present(name)), "edge-1") for name in ("alice", "lunar")]
    scans += [_native.Scan("APCV1:", "edge-1")] * 2
    results = verifier.verify_batch(scans, int(time.time()))
    trail.record_rows("VerifyBatch", _rows(results), 0.002)
    sample = metrics.registry.get_sample_value
    batch = {"method": "VerifyBatch"}
    assert sample("apcv_verification_seconds_count", batch) == 4
    assert sample("apcv_verification_seconds_sum", batch) == pytest.approx(0.002)
    # Each item's share, 0.5 ms, lands in the 0.5 ms bucket, not in the batch's 2.5 ms one.
    assert sample("apcv_verification_seconds_bucket", {**batch, "le": "0.00025"}) == 0
    assert sample("apcv_verification_seconds_bucket", {**batch, "le": "0.0005"}) == 4
    assert (
        sum(
            sample("apcv_verifications_total", {"decision": d, "reason": r, **batch}) or 0
            for d, r in (("ACCEPTED", "OK"), ("REJECTED", "MALFORMED"))
        )
        == 4
    )


@pytest.mark.parametrize("amount", [0.0, 0.000005, 0.0000051, 0.3, 1.0, 7.5])
def test_observe_many_equals_observing_one_by_one(amount: float) -> None:
    """observe_many updates prometheus_client's own values: pinned against ``observe``."""
    from apcv_verify.observe.metrics import VERIFICATION_SECONDS_BUCKETS, observe_many
    from prometheus_client import CollectorRegistry, Histogram

    exposed = []
    for counted in (False, True):
        registry = CollectorRegistry()
        histogram = Histogram("h", "h", buckets=VERIFICATION_SECONDS_BUCKETS, registry=registry)
        if counted:
            observe_many(histogram, amount, 7)
        else:
            for _ in range(7):
                histogram.observe(amount)
        exposed.append(
            {(s.name, s.labels.get("le")): s.value for m in registry.collect() for s in m.samples}
        )
    one_by_one, counted_at_once = exposed
    assert one_by_one.keys() == counted_at_once.keys()
    for key, expected in one_by_one.items():
        assert counted_at_once[key] == pytest.approx(expected, rel=1e-12), key


def test_audit_secret_is_validated_and_masked(pki: DemoPKI) -> None:
    base = {"trust.anchors": [str(pki.directory / "anchor.pem")], "trust.trust_list": __file__}
    with pytest.raises(ConfigError, match=r"^audit\.holder_ref_secret: at least 16 characters"):
        load_config(None, environ={"APCV_AUDIT_HOLDER_REF_SECRET": "short"}, overrides=base)
    config = load_config(None, environ={"APCV_AUDIT_HOLDER_REF_SECRET": SECRET}, overrides=base)
    assert config.audit.holder_ref_secret == SECRET
    assert SECRET not in repr(config)


def test_each_log_record_is_one_write_ending_in_a_newline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Worker processes share one stdout: a record and its newline must not be split."""

    saved = structlog.get_config()
    recorder = StdoutRecorder()
    monkeypatch.setattr("sys.stdout", recorder)
    try:
        configure_logging("info")
        logger = structlog.get_logger("test")
        logger.info("verification", kind="audit", request_id="w-1")
        logger.warning("something", detail="x")
    finally:
        structlog.configure(**saved)
    assert len(recorder.writes) == 2
    for text in recorder.writes:
        assert text.endswith("\n") and text.count("\n") == 1
        json.loads(text)


def test_audit_lines_are_what_structlog_would_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit trail renders its records itself (buffered): the same keys and values as the
    configured structlog chain gives ``log.info("verification", **fields)``, one line each,
    written at the latest at shutdown (flush_audit)."""
    from apcv_verify.observe import logs

    saved = structlog.get_config()
    recorder = StdoutRecorder()
    monkeypatch.setattr("sys.stdout", recorder)
    fields: dict[str, object] = {
        "kind": "audit",
        "request_id": "w-1",
        "item": 3,
        "duplicate": False,
    }
    try:
        configure_logging("info")
        structlog.contextvars.bind_contextvars(worker=1)
        structlog.get_logger("test").info("verification", **fields)

        async def in_the_server() -> None:
            assert logs.audit_lines([fields, {**fields, "request_id": "w-2"}])
            assert len(recorder.writes) == 1  # on an event loop, audit lines wait a little
            logs.flush_audit()

        asyncio.run(in_the_server())
        configure_logging("warning")  # info records, the audit's, are not logged
        assert logs.audit_lines([fields])
    finally:
        structlog.contextvars.unbind_contextvars("worker")
        structlog.configure(**saved)
    direct, first, second = (json.loads(line) for line in "".join(recorder.writes).splitlines())
    assert "".join(recorder.writes).count("\n") == 3
    for record in (direct, first, second):
        record.pop("timestamp")
    assert first == direct and second == {**direct, "request_id": "w-2"}


def test_audit_tail_is_the_end_of_what_structlog_would_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The end of the line the core's records get (``audit_tail``), with nothing bound and
    with a bound context variable: the keys and values of the structlog chain's own line, and
    its timestamp format (ISO 8601 in UTC with "Z")."""
    from apcv_verify.observe import logs
    from apcv_verify.observe.audit import RECORD_KEYS

    recorder = StdoutRecorder()
    monkeypatch.setattr("sys.stdout", recorder)
    saved = structlog.get_config()
    iso_utc = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z")
    try:
        configure_logging("info")
        for bound in ({}, {"worker": 1}):
            structlog.contextvars.bind_contextvars(**bound)
            structlog.get_logger("test").info("verification", kind="audit")
            direct = json.loads(recorder.writes[-1])
            tail = logs.audit_tail(RECORD_KEYS)
            assert tail is not None and tail.endswith("}")
            rendered = json.loads("{" + tail)
            assert iso_utc.fullmatch(rendered["timestamp"])
            assert iso_utc.fullmatch(direct["timestamp"])
            assert {**rendered, "kind": "audit", "timestamp": direct["timestamp"]} == direct
            structlog.contextvars.unbind_contextvars(*bound)
        configure_logging("warning")
        assert logs.audit_tail(RECORD_KEYS) == ""
    finally:
        structlog.configure(**saved)


@pytest.mark.slow
def test_the_audit_trail_has_its_own_rotated_file(
    pki: DemoPKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """audit.path: the records go to a file of JSON lines rotated by size, none to stdout,
    whole lines in every file, all of them kept (backup_count) and written by shutdown."""
    audit = tmp_path / "audit" / "audit.jsonl"
    audit.parent.mkdir()
    monkeypatch.setenv("APCV_AUDIT_PATH", str(audit))
    monkeypatch.setenv("APCV_AUDIT_MAX_BYTES", "1500")
    monkeypatch.setenv("APCV_AUDIT_BACKUP_COUNT", "50")
    server = serve_with_secret(pki, tmp_path / "server.log", monkeypatch, SECRET)
    try:
        for index in range(12):
            call(server, qr_text(pki.present("alice")), f"f-{index}")
            time.sleep(0.06)  # past the buffer's delay: one write, one rotation check, each
    finally:
        stop_server(server)
    assert not audit_records(server)  # nothing on stdout
    assert any('"event": "serving"' in line for line in server.logs().splitlines())
    files = sorted(audit.parent.iterdir())
    assert audit in files and len(files) >= 3, files  # rotated: audit.jsonl.1, .2, …
    records = []
    for file in files:
        text = file.read_text()
        assert text.endswith("\n")
        assert file.stat().st_size <= 1500, file
        records += [json.loads(line) for line in text.splitlines()]
    assert sorted(r["request_id"] for r in records) == sorted(f"f-{i}" for i in range(12))
    assert {r["kind"] for r in records} == {"audit"}
    assert {r["holder_ref"] for r in records} == {
        holder_ref(SECRET.encode(), credential_id(pki, "alice"))
    }


def test_audit_file_settings_are_checked(pki: DemoPKI, tmp_path: Path) -> None:
    from apcv_verify.cli.workers import worker_audit_path

    base = {"trust.anchors": [str(pki.directory / "anchor.pem")], "trust.trust_list": __file__}
    for key, value, message in [
        ("PATH", str(tmp_path / "missing" / "a.jsonl"), r"^audit\.path: directory not found"),
        ("PATH", str(tmp_path), r"^audit\.path: is a directory"),
        ("MAX_BYTES", "-1", r"^audit\.max_bytes: must not be negative"),
        ("BACKUP_COUNT", "-1", r"^audit\.backup_count: must not be negative"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(None, environ={f"APCV_AUDIT_{key}": value}, overrides=base)
    config = load_config(None, environ={}, overrides=base)
    assert (config.audit.path, config.audit.max_bytes, config.audit.backup_count) == (
        "",
        100 * 1024 * 1024,
        10,
    )  # stdout, as before
    # A relative path is relative to the config file; each worker rotates its own file.
    (tmp_path / "c.toml").write_text('[audit]\npath = "audit.jsonl"\n')
    assert load_config(tmp_path / "c.toml", environ={}, overrides=base).audit.path == str(
        tmp_path / "audit.jsonl"
    )
    assert worker_audit_path("/var/log/apcv-verify/audit.jsonl", 1) == (
        "/var/log/apcv-verify/audit.1.jsonl"
    )
