"""Prometheus metrics: standard gRPC server metrics and the verifier's own.

Each server gets its own :class:`~prometheus_client.CollectorRegistry` (never the global
default), so several servers can run in one process (tests) without sharing counters.

Privacy and cardinality rule (docs/profile.md §9, docs/operations.md "Privacy and
cardinality"): label values come from small closed sets only — gRPC method and status names,
decisions, reason codes, status-list URIs from the signed trust material. Never a name, NIR/INS,
birth date, request id or reader id: reader ids go to the audit log (:mod:`apcv_verify.audit`).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal

import grpc
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from .server import TrustMaterial

__all__ = [
    "BATCH_SIZE_BUCKETS",
    "VERIFICATION_SECONDS_BUCKETS",
    "MetricsInterceptor",
    "ServiceMetrics",
    "start_metrics_server",
]

log = structlog.get_logger("apcv_verify.metrics")

#: A verification takes tens of microseconds in the core: buckets start at 0.1 ms so the
#: histogram resolves it; 1 s is already far beyond any useful answer at a reception desk.
VERIFICATION_SECONDS_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
#: Batch sizes from a single scan to a full batch of a reader's offline spool.
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)

#: go-grpc-prometheus ``grpc_type`` values, by which of the handler's behaviours is set.
_GRPC_TYPES = (
    ("unary_unary", "unary"),
    ("unary_stream", "server_stream"),
    ("stream_unary", "client_stream"),
    ("stream_stream", "bidi_stream"),
)


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
        self._trust: _TrustCollector | _TrustPublisher
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self._trust = _TrustPublisher(registry)
        else:
            self._trust = _TrustCollector()
            registry.register(self._trust)

    def watch_trust_material(self, current: Callable[[], TrustMaterial | None]) -> None:
        """Export sequence, age and expiry of whatever ``current()`` returns at each scrape.

        A callable rather than a value so that a refreshed (swapped) snapshot is what the
        next scrape reports. In Prometheus multiprocess mode (``server.workers`` > 1) the
        values are published every :data:`TRUST_PUBLISH_SECONDS` instead.
        """
        self._trust.watch(current)

    def interceptor(self) -> MetricsInterceptor:
        """The grpc.aio server interceptor feeding the ``grpc_server_*`` metrics."""
        return MetricsInterceptor(self)

    def observe_verification(
        self, *, method: str, decision: str, reason: str, seconds: float, replay_backend: str
    ) -> None:
        """Count one decision and observe its latency (called by the audit trail)."""
        self.verifications.labels(decision=decision, reason=reason, method=method).inc()
        self.verification_seconds.labels(method=method).observe(seconds)
        if reason == "REPLAY_UNAVAILABLE":
            self.replay_store_errors.labels(backend=replay_backend).inc()

    def observe_batch(self, size: int) -> None:
        """Record the size of one VerifyBatch call."""
        self.batch_size.observe(size)


#: name → (help, labels, multiprocess mode). In multiprocess mode the parent reports the
#: worst value over live workers: the oldest sequence and lists, the nearest expiry.
_TRUST_GAUGES: dict[str, tuple[str, tuple[str, ...], Literal["livemin", "livemax"]]] = {
    "apcv_trust_list_sequence": ("Sequence number of the trust list in use.", (), "livemin"),
    "apcv_trust_list_age_seconds": (
        "Seconds since the trust list in use was issued (iat).", (), "livemax",
    ),
    "apcv_trust_list_expiry_timestamp_seconds": (
        "Expiry (exp) of the trust list in use, as a Unix time.", (), "livemin",
    ),
    "apcv_status_list_age_seconds": (
        "Seconds since each status list in use was issued (iat).", ("uri",), "livemax",
    ),
    "apcv_status_list_expiry_timestamp_seconds": (
        "Expiry (exp) of each status list in use, as a Unix time.", ("uri",), "livemin",
    ),
}  # fmt: skip
#: How often a worker republishes its trust gauges in multiprocess mode (age resolution).
TRUST_PUBLISH_SECONDS = 1.0


def _trust_samples(
    material: TrustMaterial | None, now: float
) -> list[tuple[str, tuple[str, ...], float]]:
    """(metric, label values, value) of the trust gauges for ``material`` at ``now``."""
    if material is None:
        return []
    trust_list = material.trust_list
    samples: list[tuple[str, tuple[str, ...], float]] = [
        ("apcv_trust_list_sequence", (), trust_list.seq),
        ("apcv_trust_list_age_seconds", (), now - trust_list.issued_at),
        ("apcv_trust_list_expiry_timestamp_seconds", (), trust_list.expires_at),
    ]
    for status_list in material.status_lists:
        # The URI names a published list, not a person (docs/profile.md §6.5).
        uri = (status_list.uri,)
        samples.append(("apcv_status_list_age_seconds", uri, now - status_list.issued_at))
        samples.append(("apcv_status_list_expiry_timestamp_seconds", uri, status_list.expires_at))
    return samples


class _TrustCollector(Collector):
    """Trust-list and status-list gauges computed at scrape time from the loaded snapshot."""

    def __init__(self) -> None:
        self.current: Callable[[], TrustMaterial | None] = lambda: None

    def watch(self, current: Callable[[], TrustMaterial | None]) -> None:
        self.current = current

    def describe(self) -> list[GaugeMetricFamily]:
        return self._families(None, 0.0)

    def collect(self) -> list[GaugeMetricFamily]:
        return self._families(self.current(), time.time())

    def _families(self, material: TrustMaterial | None, now: float) -> list[GaugeMetricFamily]:
        families = {
            name: GaugeMetricFamily(name, help_text, labels=list(labels))
            for name, (help_text, labels, _) in _TRUST_GAUGES.items()
        }
        for name, label_values, value in _trust_samples(material, now):
            families[name].add_metric(list(label_values), value)
        return list(families.values())


class _TrustPublisher:
    """The same gauges in Prometheus multiprocess mode, where the parent process serving
    ``/metrics`` never sees a worker's snapshot: each worker writes them to the shared files
    every :data:`TRUST_PUBLISH_SECONDS` from a daemon thread."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.current: Callable[[], TrustMaterial | None] = lambda: None
        self._gauges = {
            name: Gauge(name, help_text, list(labels), multiprocess_mode=mode, registry=registry)
            for name, (help_text, labels, mode) in _TRUST_GAUGES.items()
        }
        self._thread: threading.Thread | None = None

    def watch(self, current: Callable[[], TrustMaterial | None]) -> None:
        self.current = current
        self.publish()
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="apcv-trust-metrics", daemon=True
            )
            self._thread.start()

    def publish(self) -> None:
        for name, label_values, value in _trust_samples(self.current(), time.time()):
            gauge = self._gauges[name]
            (gauge.labels(*label_values) if label_values else gauge).set(value)

    def _run(self) -> None:
        while True:
            time.sleep(TRUST_PUBLISH_SECONDS)
            try:
                self.publish()
            except Exception:  # a metric must never take a worker down; try again later
                log.exception("trust_metrics_publish_failed")


def _split_method(full_method: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` → (``pkg.Service``, ``Method``)."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method


#: How close to the server's own deadline a call cut short, or a stream that ends, counts as
#: ended by the deadline. The server computes its deadline when the request arrives, so it
#: falls a little after the client's: when the client's deadline cuts the call, the server
#: sees a cancel (or its request stream end) while its own clock still shows time left —
#: more so on a loaded host.
DEADLINE_SLACK_SECONDS = 0.25


def _final_code(
    context: grpc.aio.ServicerContext, error: BaseException | None, *, streaming: bool
) -> str:
    """The status the call ends with, as go-grpc-prometheus names it (``OK``, ``NOT_FOUND``)."""
    if isinstance(error, grpc.aio.AbortError):
        code = context.code()  # set by abort()
        return "UNKNOWN" if code is None else str(code.name)
    remaining = context.time_remaining()
    near_deadline = remaining is not None and remaining <= DEADLINE_SLACK_SECONDS
    # grpc.aio leaves cancelled() False after a client cancel (grpc/grpc#36193) and a
    # streaming handler may simply see its request stream end, so a cancelled stream
    # without a deadline can count as OK; a passed deadline is always seen.
    cut_short = context.cancelled() or isinstance(error, asyncio.CancelledError | GeneratorExit)
    if cut_short:
        return "DEADLINE_EXCEEDED" if near_deadline else "CANCELLED"
    deadline_passed = remaining is not None and remaining <= 0
    if error is None and (deadline_passed or (streaming and near_deadline)):
        return "DEADLINE_EXCEEDED"
    if error is None:
        code = context.code()  # set_code(); None means OK
        return "OK" if code is None else str(code.name)
    return "UNKNOWN"  # what grpc.aio answers for an unhandled exception


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """``grpc_server_started_total``, ``…_handled_total`` and ``…_handling_seconds`` per call.

    Put it first in the interceptor list so that codes set by inner interceptors (the
    exception-to-status mapping) are what it counts. Unknown methods are not counted (their
    names are caller-chosen: unbounded label values).
    """

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        service, method = _split_method(handler_call_details.method)
        found = [(a, t) for a, t in _GRPC_TYPES if getattr(handler, a) is not None]
        if not found:
            return handler
        ((attribute, grpc_type),) = found
        behaviour = getattr(handler, attribute)
        wrapped = self._wrap(behaviour, grpc_type, service, method)
        if wrapped is None:
            return handler  # a synchronous behaviour: not ours to time on the event loop
        factory = getattr(grpc, f"{attribute}_rpc_method_handler")
        return factory(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _wrap(
        self, behaviour: Callable[..., Any], grpc_type: str, service: str, method: str
    ) -> Callable[..., Any] | None:
        metrics = self._metrics
        labels = {"grpc_type": grpc_type, "grpc_service": service, "grpc_method": method}
        counts_as_stream = grpc_type != "unary" and service in metrics.stream_services

        def begin() -> float:
            metrics.grpc_started.labels(**labels).inc()
            if counts_as_stream:
                metrics.inflight_streams.inc()
            return time.perf_counter()

        streaming = grpc_type != "unary"

        def end(
            started: float, context: grpc.aio.ServicerContext, error: BaseException | None
        ) -> None:
            if counts_as_stream:
                metrics.inflight_streams.dec()
            code = _final_code(context, error, streaming=streaming)
            metrics.grpc_handled.labels(**labels, grpc_code=code).inc()
            metrics.grpc_handling_seconds.labels(**labels).observe(time.perf_counter() - started)

        if inspect.iscoroutinefunction(behaviour):

            async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started = begin()
                try:
                    response = await behaviour(request, context)
                except BaseException as error:
                    end(started, context, error)
                    raise
                end(started, context, None)
                return response

            return call

        if inspect.isasyncgenfunction(behaviour):

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                started = begin()
                try:
                    async for response in behaviour(request, context):
                        yield response
                except BaseException as error:
                    end(started, context, error)
                    raise
                end(started, context, None)

            return stream
        return None


def start_metrics_server(listen: str, registry: CollectorRegistry) -> WSGIServer:
    """Serve ``/metrics`` from ``registry`` on ``HOST:PORT`` in a daemon thread.

    Port 0 picks a free port (``server.server_port``). Stop with ``shutdown()``.
    """
    host, _, port = listen.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host.strip("[]"), registry=registry)
    return server
