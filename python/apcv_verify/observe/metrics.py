"""Prometheus metrics: standard gRPC server metrics and the verifier's own.

The gRPC metrics are fed by :class:`~apcv_verify.service.interceptors.MetricsInterceptor`,
the verification metrics by the audit trail (:mod:`apcv_verify.observe.audit`); the trust
list and status list metrics live with their sources (:mod:`apcv_verify.trust.metrics`) and
register in the same registry.

Each server gets its own :class:`~prometheus_client.CollectorRegistry` (never the global
default), so several servers can run in one process (tests) without sharing counters.

Privacy and cardinality rule (docs/profile.md §9, docs/operations.md "Privacy and
cardinality"): label values come from small closed sets only — gRPC method and status names,
decisions, reason codes, status-list URIs from the signed trust material. Never a name, NIR/INS,
birth date, request id or reader id: reader ids go to the audit log
(:mod:`apcv_verify.observe.audit`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

__all__ = [
    "BATCH_SIZE_BUCKETS",
    "VERIFICATION_SECONDS_BUCKETS",
    "ServiceMetrics",
    "start_metrics_server",
]

#: A verification takes tens of microseconds in the core: buckets start at 0.1 ms so the
#: histogram resolves it; 1 s is already far beyond any useful answer at a reception desk.
VERIFICATION_SECONDS_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
#: Batch sizes from a single scan to a full batch of a reader's offline spool.
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class ServiceMetrics:
    """Every metric of one server, registered in that server's own registry."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        stream_services: Iterable[str] = (),
    ) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        #: Services whose streaming calls count in ``apcv_inflight_streams``.
        self.stream_services = frozenset(stream_services)
        registry = self.registry
        # Names, labels and help of go-grpc-prometheus (grpc-ecosystem), so existing
        # dashboards and alerts work unchanged.
        self.grpc_started = Counter(
            "grpc_server_started_total",
            "Total number of RPCs started on the server.",
            ["grpc_type", "grpc_service", "grpc_method"],
            registry=registry,
        )
        self.grpc_handled = Counter(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
            registry=registry,
        )
        self.grpc_handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level "
            "handled by the server.",
            ["grpc_type", "grpc_service", "grpc_method"],
            registry=registry,
        )
        self.verifications = Counter(
            "apcv_verifications_total",
            "Verification decisions, by decision, reason code and RPC method.",
            ["decision", "reason", "method"],
            registry=registry,
        )
        self.verification_seconds = Histogram(
            "apcv_verification_seconds",
            "Time from the start of the core call to the decision, one observation per "
            "verification (a batch item observes its batch's time).",
            ["method"],
            buckets=VERIFICATION_SECONDS_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "apcv_batch_size",
            "Number of presentations per VerifyBatch call.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.inflight_streams = Gauge(
            "apcv_inflight_streams",
            "Streaming calls of the verifier service currently open.",
            multiprocess_mode="livesum",  # server.workers > 1: the open streams of all workers
            registry=registry,
        )
        self.replay_store_errors = Counter(
            "apcv_replay_store_errors_total",
            "Verifications the replay store could not answer: decided REPLAY_UNAVAILABLE, or "
            "accepted unchecked when the store fails open.",
            ["backend"],
            registry=registry,
        )
        self._verification_children: dict[tuple[str, str, str], Any] = {}
        self._seconds_children: dict[str, Any] = {}

    def observe_verification(
        self,
        *,
        method: str,
        decision: str,
        reason: str,
        seconds: float,
        replay_backend: str,
        count: int = 1,
    ) -> None:
        """Count ``count`` decisions of one kind that took ``seconds`` each, and observe their
        latency (called by the audit trail: a batch's decisions by kind)."""
        # The label children, looked up once per label set (small closed sets, see above).
        key = (decision, reason, method)
        counter = self._verification_children.get(key)
        if counter is None:
            counter = self.verifications.labels(decision=decision, reason=reason, method=method)
            self._verification_children[key] = counter
        counter.inc(count)
        histogram = self._seconds_children.get(method)
        if histogram is None:
            histogram = self._seconds_children[method] = self.verification_seconds.labels(
                method=method
            )
        for _ in range(count):  # one observation per verification
            histogram.observe(seconds)
        if reason == "REPLAY_UNAVAILABLE":
            self.replay_store_errors.labels(backend=replay_backend).inc(count)

    def observe_batch(self, size: int) -> None:
        """Record the size of one VerifyBatch call."""
        self.batch_size.observe(size)


def start_metrics_server(listen: str, registry: CollectorRegistry) -> WSGIServer:
    """Serve ``/metrics`` from ``registry`` on ``HOST:PORT`` in a daemon thread.

    Port 0 picks a free port (``server.server_port``). Stop with ``shutdown()``.
    """
    host, _, port = listen.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host.strip("[]"), registry=registry)
    return server
