"""OpenTelemetry tracing (docs/operations.md "Tracing"): spans of a real in-process server
exported to the SDK's in-memory exporter, trace ids in the log and audit lines, and nothing of
OpenTelemetry imported while tracing is off."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import structlog
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2, verifier_pb2_grpc
from apcv_verify.config import load_config
from apcv_verify.issuer import DemoPKI, qr_text
from apcv_verify.observe.logs import configure_audit_file, configure_logging, flush_audit
from apcv_verify.observe.tracing import (
    CORE_SPAN,
    add_trace_ids,
    configure_tracing,
    current_tracing,
    shutdown_tracing,
)
from apcv_verify.service.startup import start_server
from apcv_verify.trust.material import load_trust_material
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from .conftest import REPO, pki_config

VERIFIER = "apcv.verify.v1.VerifierService"
#: The caller's trace context (W3C traceparent: version, trace id, parent span id, sampled).
TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
PARENT_SPAN_ID = 0xB7AD6B7169203331
TRACEPARENT = f"00-{TRACE_ID:032x}-{PARENT_SPAN_ID:016x}-01"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    configure_tracing(True, exporter=exporter, batch=False)
    yield exporter
    shutdown_tracing()


def scan(request_id: str, text: str) -> verifier_pb2.Scan:
    return verifier_pb2.Scan(
        request_id=request_id, qr_text=text, reader=verifier_pb2.ReaderContext(reader_id="desk-1")
    )


def test_calls_and_core_verifications_are_spans_and_logs_carry_their_ids(
    pki: DemoPKI,
    exporter: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    # The audit records in a file of their own (audit.path), read back below; the server's
    # loggers stay on stdout (structlog caches them: never on a stream closed after the test).
    configure_logging("info")
    audit_path = tmp_path / "audit.jsonl"
    configure_audit_file(str(audit_path), 0, 0)
    config = pki_config(pki)

    async def scenario() -> None:
        handle = await start_server(config, load_trust_material(config))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{handle.port}") as channel:
                stub = verifier_pb2_grpc.VerifierServiceStub(channel)
                await stub.Verify(
                    verifier_pb2.VerifyRequest(scan=scan("t-1", qr_text(pki.present("alice")))),
                    metadata=(("traceparent", TRACEPARENT),),
                    timeout=10,
                )
                batch = [scan(f"b-{i}", qr_text(pki.present(n))) for i, n in enumerate(["lunar"])]
                batch.append(scan("b-1", "APCV1:%%%%"))
                await stub.VerifyBatch(verifier_pb2.VerifyBatchRequest(scans=batch), timeout=10)
                with pytest.raises(grpc.aio.AioRpcError):
                    await stub.VerifyBatch(verifier_pb2.VerifyBatchRequest(), timeout=10)
                stream = stub.VerifyStream(
                    iter([verifier_pb2.VerifyStreamRequest(scan=scan("s-0", "APCV1:%%%%"))]),
                    timeout=10,
                )
                assert [answer.verdict.request_id async for answer in stream] == ["s-0"]
        finally:
            await handle.stop(0)

    asyncio.run(scenario())
    spans = exporter.get_finished_spans()

    def named(name: str) -> list[ReadableSpan]:
        return [span for span in spans if span.name == name]

    # The unary call continues the caller's trace; its core call is its child.
    (verify,) = named(f"{VERIFIER}/Verify")
    assert verify.kind == SpanKind.SERVER
    assert verify.context.trace_id == TRACE_ID
    assert verify.parent is not None and verify.parent.span_id == PARENT_SPAN_ID
    assert verify.attributes is not None
    assert dict(verify.attributes) == {
        "rpc.system": "grpc",
        "rpc.service": VERIFIER,
        "rpc.method": "Verify",
        "rpc.grpc.status_code": 0,
    }
    cores = named(CORE_SPAN)
    (verify_core,) = [span for span in cores if span.context.trace_id == TRACE_ID]
    assert verify_core.parent is not None and verify_core.parent.span_id == verify.context.span_id
    assert verify_core.attributes == {"apcv.method": "Verify", "apcv.items": 1}
    assert verify.start_time is not None and verify_core.start_time is not None
    assert verify.end_time is not None and verify_core.end_time is not None
    assert verify.start_time <= verify_core.start_time <= verify_core.end_time <= verify.end_time

    # A batch: a new trace (no traceparent), one core span for its two items; a refused batch
    # (INVALID_ARGUMENT, the caller's fault) has no core span and no error status.
    done, refused = sorted(named(f"{VERIFIER}/VerifyBatch"), key=lambda s: s.start_time or 0)
    assert done.context.trace_id != TRACE_ID
    (batch_core,) = [span for span in cores if span.context.trace_id == done.context.trace_id]
    assert batch_core.attributes == {"apcv.method": "VerifyBatch", "apcv.items": 2}
    assert refused.attributes is not None
    assert refused.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert refused.status.status_code == StatusCode.UNSET
    assert not [span for span in cores if span.context.trace_id == refused.context.trace_id]

    # A stream is one span from its start to its end, its micro-batches child spans; the
    # context attached at its start is detached in the same task (no detach error logged).
    (stream,) = named(f"{VERIFIER}/VerifyStream")
    assert stream.attributes is not None and stream.attributes["rpc.grpc.status_code"] == 0
    (stream_core,) = [span for span in cores if span.context.trace_id == stream.context.trace_id]
    assert stream_core.parent is not None and stream_core.parent.span_id == stream.context.span_id
    assert not [r for r in caplog.records if "detach" in r.getMessage().lower()]

    # Audit records carry their call's trace id (and nothing else changes in them).
    flush_audit()
    configure_logging("info")  # the audit records on stdout again
    lines = [json.loads(line) for line in audit_path.read_text().splitlines()]
    audit = {record["request_id"]: record for record in lines if record.get("kind") == "audit"}
    assert audit["t-1"]["trace_id"] == f"{TRACE_ID:032x}"
    assert audit["t-1"]["span_id"] == f"{verify.context.span_id:016x}"
    assert audit["b-0"]["trace_id"] == audit["b-1"]["trace_id"] == f"{done.context.trace_id:032x}"
    # A batch's and a stream's records, rendered by the core (WireBatch.audit_lines), carry
    # their call's span too, with the keys of a unary call's record (and their position).
    assert audit["b-0"]["span_id"] == audit["b-1"]["span_id"] == f"{done.context.span_id:016x}"
    assert audit["s-0"]["trace_id"] == f"{stream.context.trace_id:032x}"
    assert audit["s-0"]["span_id"] == f"{stream.context.span_id:016x}"
    unary_keys = set(audit["t-1"])
    for request_id in ("b-0", "b-1", "s-0"):
        assert set(audit[request_id]) == unary_keys | {"item"}, request_id


def test_log_lines_inside_a_span_carry_its_ids(exporter: InMemorySpanExporter) -> None:
    """The processor every log record goes through adds the current span's ids, and nothing
    outside a span."""
    configure_logging("info")
    assert add_trace_ids in structlog.get_config()["processors"]
    tracing = current_tracing()
    assert tracing is not None
    with tracing.tracer.start_as_current_span("work") as span:
        inside = add_trace_ids(None, "info", {"event": "inside"})
    outside = add_trace_ids(None, "info", {"event": "outside"})
    assert inside["trace_id"] == f"{span.get_span_context().trace_id:032x}"
    assert inside["span_id"] == f"{span.get_span_context().span_id:016x}"
    assert outside == {"event": "outside"}


def test_off_by_default_and_nothing_imported(pki: DemoPKI) -> None:
    """Off (the default, or OTEL_SDK_DISABLED=true): no tracer, and a server process never
    imports the tracing SDK or an exporter: no interceptor, one test per core call."""
    assert load_config(None, environ={}, overrides=_required(pki)).tracing.enabled is False
    assert configure_tracing(False) is None
    code = f"""
import asyncio, sys
from apcv_verify.config import load_config
from apcv_verify.observe.tracing import configure_tracing, current_tracing
from apcv_verify.service.startup import start_server
config = load_config(None, environ={{}}, overrides={{**{_required(pki)!r},
    "server.listen": "127.0.0.1:0", "metrics.listen": ""}})
configure_tracing(config.tracing.enabled)
async def main():
    handle = await start_server(config)
    await handle.stop(0)
asyncio.run(main())
assert current_tracing() is None
# redis-py (8+) imports the OpenTelemetry metrics SDK by itself when it is installed; the
# tracing SDK, the exporters and the propagators are what this service would import.
ours = ("opentelemetry.sdk.trace", "opentelemetry.exporter", "opentelemetry.propagate")
print(sorted(name for name in sys.modules if name.startswith(ours)))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_the_sdk_can_be_turned_off_by_its_standard_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert configure_tracing(True, exporter=InMemorySpanExporter()) is None


def test_the_otlp_exporter_follows_the_standard_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The exporter is the OTLP one the OTEL_* variables describe (nothing is sent here: the
    provider is shut down before its batch processor's first export)."""
    from apcv_verify.observe.tracing import _otlp_exporter
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpSpanExporter,
    )

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    assert isinstance(_otlp_exporter(), OTLPSpanExporter)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    assert isinstance(_otlp_exporter(), HttpSpanExporter)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")
    with pytest.raises(ValueError, match=r"'http/json' is not supported"):
        _otlp_exporter()
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "verifier-eu-west")
    tracing = configure_tracing(True)
    try:
        assert tracing is not None
        resource = tracing.provider.resource.attributes
        assert resource["service.name"] == "verifier-eu-west"
        assert resource["service.version"]
    finally:
        shutdown_tracing()


def _required(pki: DemoPKI) -> dict[str, object]:
    return {
        "trust.anchors": [str(pki.directory / "anchor.pem")],
        "trust.trust_list": str(pki.trust_list_path),
        "trust.status_lists": [str(path) for path in pki.status_list_paths.values()],
    }
