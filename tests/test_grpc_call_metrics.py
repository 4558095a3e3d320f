"""The per-call gRPC metrics of one process, kept in plain Python (``GrpcCallCounts``,
exported by ``GrpcCallCollector``), give the exposition text prometheus_client's ``Counter``,
``Counter`` and ``Histogram`` give — the path kept for several workers — for the same calls."""

from __future__ import annotations

import grpc
import pytest
from apcv_verify.observe.metrics import GrpcCallCollector, GrpcCallCounts, ServiceMetrics
from apcv_verify.service.interceptors import MetricsInterceptor
from prometheus_client import generate_latest


class EndedCall:
    """What the metrics' end reads of a call's context: its code, deadline and cancel."""

    def __init__(self, code: grpc.StatusCode | None) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def time_remaining(self) -> float | None:
        return None

    def cancelled(self) -> bool:
        return False


def grpc_families(metrics: ServiceMetrics) -> bytes:
    text = generate_latest(metrics.registry)
    lines = [line for line in text.splitlines(keepends=True) if b"grpc_server_" in line]
    return b"".join(line for line in lines if b"msg_" not in line)


def drive(metrics: ServiceMetrics, clock: list[float], monkeypatch: pytest.MonkeyPatch) -> None:
    interceptor = MetricsInterceptor(metrics)
    monkeypatch.setattr("time.perf_counter", lambda: clock[0])
    verify = interceptor.hooks("/apcv.verify.v1.Verifier/Verify", "unary")
    health = interceptor.hooks("/grpc.health.v1.Health/Check", "unary")
    stream = interceptor.hooks("/apcv.verify.v1.Verifier/VerifyStream", "bidi_stream")
    calls = (
        (verify, 0.0003, None),
        (health, 0.0001, None),  # on a bound
        (verify, 0.002, grpc.StatusCode.INVALID_ARGUMENT),
        (stream, 12.0, None),  # beyond the last bound
        (verify, 0.0, None),
        (health, 0.07, grpc.StatusCode.NOT_FOUND),
    )
    for (begin, end), seconds, code in calls:
        clock[0] = 100.0
        started = begin(EndedCall(code))
        clock[0] = 100.0 + seconds
        end(EndedCall(code), started, None)
    # A call that raised: UNKNOWN.
    begin, end = verify
    end(EndedCall(None), begin(EndedCall(None)), RuntimeError("x"))


def test_plain_python_counts_export_as_prometheus_clients_metrics(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    plain = ServiceMetrics(stream_services=["apcv.verify.v1.Verifier"])
    assert plain.grpc_calls is not None and plain.grpc_started is None
    drive(plain, [0.0], monkeypatch)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    reference = ServiceMetrics(stream_services=["apcv.verify.v1.Verifier"])
    assert reference.grpc_calls is None and reference.grpc_started is not None
    drive(reference, [0.0], monkeypatch)
    expected = grpc_families(reference)
    assert grpc_families(plain) == expected
    assert b'grpc_code="UNKNOWN"' in expected
    assert b'grpc_server_handling_seconds_bucket{grpc_method="VerifyStream"' in expected


def test_a_method_is_exported_before_its_first_call() -> None:
    counts = GrpcCallCounts((0.1, 1.0))
    counts.method("unary", "pkg.S", "M")
    assert counts.method("unary", "pkg.S", "M") is counts.method("unary", "pkg.S", "M")
    started, handled, seconds = GrpcCallCollector(counts).collect()
    assert [s.value for s in started.samples] == [0]
    assert handled.samples == []
    assert [s.value for s in seconds.samples] == [0, 0, 0, 0, 0.0]
