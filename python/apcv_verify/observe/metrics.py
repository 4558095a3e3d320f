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

import bisect
import functools
import itertools
import math
import os
import platform
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .. import _native

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

__all__ = [
    "BATCH_SIZE_BUCKETS",
    "GRPC_SECONDS_BUCKETS",
    "GrpcCallCollector",
    "GrpcCallCounts",
    "VERIFICATION_SECONDS_BUCKETS",
    "BuildInfoCollector",
    "ServiceMetrics",
    "VerificationCollector",
    "WorkerProcessCollector",
    "build_info",
    "observe_many",
    "start_metrics_server",
]

# No ``*_created`` series: one more series per counter and histogram child that no dashboard
# or alert reads (Prometheus derives resets from the counters themselves).
disable_created_metrics()

#: A verification takes tens of microseconds in the core, and a batch item's share of its
#: batch a few: buckets start at 5 µs so the histogram resolves both; 1 s is already far
#: beyond any useful answer at a reception desk.
VERIFICATION_SECONDS_BUCKETS = (
    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
#: A unary call is answered in well under a millisecond on loopback: the Prometheus default
#: buckets (from 5 ms) put nearly every call in the first one. From 100 µs to 10 s (a stream
#: lasts as long as its client keeps it open: its duration lands in +Inf).
GRPC_SECONDS_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip
#: The labels and help of the per-call gRPC metrics (go-grpc-prometheus').
GRPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")
GRPC_STARTED_HELP = "Total number of RPCs started on the server."
GRPC_HANDLED_HELP = (
    "Total number of RPCs completed on the server, regardless of success or failure."
)
GRPC_HANDLING_SECONDS_HELP = (
    "Histogram of response latency (seconds) of gRPC that had been application-level "
    "handled by the server."
)
#: The help of ``apcv_verifications_total`` and ``apcv_verification_seconds``.
VERIFICATIONS_HELP = "Verification decisions, by decision, reason code and RPC method."
VERIFICATION_SECONDS_HELP = (
    "Time of the core call (and replay settlement) per verified presentation: a batch "
    "or a stream's micro-batch of n items observes its time divided by n, n times."
)
#: The help of ``apcv_call_errors_total``.
CALL_ERRORS_HELP = (
    "Calls the service ended with an error status, by gRPC service, method, status code "
    "and ErrorInfo reason (the reason grpc_server_handled_total does not have)."
)
#: The help of ``apcv_refused_items_total``.
REFUSED_ITEMS_HELP = (
    "VerifyBatch and VerifyStream items answered REJECTED / MALFORMED in place without being "
    "verified (unusable, refused by the caller's policy, or a reused request id), by RPC "
    "method and reason code."
)
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
        # dashboards and alerts work unchanged. With one process, the per-call three are kept
        # in plain Python (``grpc_calls``: a few integer and float updates per call instead
        # of three prometheus_client updates, each behind its lock) and exported by
        # :class:`GrpcCallCollector` under the same names, help, types, labels and buckets;
        # with several worker processes (``PROMETHEUS_MULTIPROC_DIR``), prometheus_client's
        # metrics, whose files the parent sums, as before.
        self.grpc_calls: GrpcCallCounts | None = None
        self.grpc_started: Counter | None = None
        self.grpc_handled: Counter | None = None
        self.grpc_handling_seconds: Histogram | None = None
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self.grpc_started = Counter(
                "grpc_server_started_total",
                GRPC_STARTED_HELP,
                list(GRPC_LABELS),
                registry=registry,
            )
            self.grpc_handled = Counter(
                "grpc_server_handled_total",
                GRPC_HANDLED_HELP,
                [*GRPC_LABELS, "grpc_code"],
                registry=registry,
            )
            self.grpc_handling_seconds = Histogram(
                "grpc_server_handling_seconds",
                GRPC_HANDLING_SECONDS_HELP,
                list(GRPC_LABELS),
                buckets=GRPC_SECONDS_BUCKETS,
                registry=registry,
            )
        else:
            self.grpc_calls = GrpcCallCounts(GRPC_SECONDS_BUCKETS)
            registry.register(GrpcCallCollector(self.grpc_calls))
        # Per message of a streaming call (go-grpc-prometheus counts every call kind; unary
        # calls are one message each way, already in started/handled, so only streams here).
        self.grpc_msg_received = Counter(
            "grpc_server_msg_received_total",
            "Total number of RPC stream messages received on the server.",
            ["grpc_type", "grpc_service", "grpc_method"],
            registry=registry,
        )
        self.grpc_msg_sent = Counter(
            "grpc_server_msg_sent_total",
            "Total number of gRPC stream messages sent by the server.",
            ["grpc_type", "grpc_service", "grpc_method"],
            registry=registry,
        )
        #: With one process, the verification counts are kept in the core
        #: (``_native.VerificationCounts``), where the audit's one binding call per core call
        #: updates them (``WireBatch.audit``), and exported by :class:`VerificationCollector`
        #: under the same names, types and labels; with several worker processes
        #: (``PROMETHEUS_MULTIPROC_DIR``), prometheus_client's metrics, whose files the parent
        #: sums, as before.
        self.verification_counts: _native.VerificationCounts | None = None
        self.verifications: Counter | None = None
        self.verification_seconds: Histogram | None = None
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self.verifications = Counter(
                "apcv_verifications_total",
                VERIFICATIONS_HELP,
                ["decision", "reason", "method"],
                registry=registry,
            )
            self.verification_seconds = Histogram(
                "apcv_verification_seconds",
                VERIFICATION_SECONDS_HELP,
                ["method"],
                buckets=VERIFICATION_SECONDS_BUCKETS,
                registry=registry,
            )
        else:
            self.verification_counts = _native.VerificationCounts(
                list(VERIFICATION_SECONDS_BUCKETS)
            )
            registry.register(VerificationCollector(self.verification_counts))
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
        self.refused_items = Counter(
            "apcv_refused_items_total",
            REFUSED_ITEMS_HELP,
            ["method", "reason"],
            registry=registry,
        )
        self._verification_children: dict[tuple[str, str, str], Any] = {}
        self._refused_children: dict[tuple[str, str], Any] = {}
        self.call_errors = Counter(
            "apcv_call_errors_total",
            CALL_ERRORS_HELP,
            ["grpc_service", "grpc_method", "grpc_code", "reason"],
            registry=registry,
        )
        self._call_error_children: dict[tuple[str, str, str, str], Any] = {}
        self._seconds_children: dict[str, Any] = {}
        registry.register(BuildInfoCollector())
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # CPU, memory, file descriptors and the interpreter of this process, as the
            # default registry has them. With several workers the parent serves the same
            # series for each worker instead (WorkerProcessCollector).
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)

    def observe_verification(
        self,
        *,
        method: str,
        decision: str,
        reason: str,
        replay_backend: str,
        count: int = 1,
        counted: bool = False,
    ) -> None:
        """Count ``count`` decisions of one kind (called by the audit trail: for each decision,
        or for a batch's decisions by kind); ``counted``: already counted in
        ``verification_counts`` (``WireBatch.audit``), so only the replay store's errors."""
        if counted:
            pass
        elif self.verification_counts is not None:
            self.verification_counts.count(decision, reason, method, count)
        else:
            assert self.verifications is not None
            # The label children, looked up once per label set (small closed sets, see above).
            key = (decision, reason, method)
            counter = self._verification_children.get(key)
            if counter is None:
                counter = self.verifications.labels(decision=decision, reason=reason, method=method)
                self._verification_children[key] = counter
            counter.inc(count)
        if reason == "REPLAY_UNAVAILABLE":
            self.replay_store_errors.labels(backend=replay_backend).inc(count)

    def observe_latency(self, *, method: str, seconds: float, count: int) -> None:
        """Observe ``count`` verifications that took ``seconds`` together: each one's share,
        ``seconds / count``, ``count`` times, in one update (:func:`observe_many`)."""
        if self.verification_counts is not None:
            if count > 0:
                self.verification_counts.observe(method, seconds / count, count)
            return
        histogram = self._seconds_children.get(method)
        if histogram is None:
            assert self.verification_seconds is not None
            histogram = self._seconds_children[method] = self.verification_seconds.labels(
                method=method
            )
        observe_many(histogram, seconds / count, count)

    def observe_refused(self, method: str, counts: Iterable[tuple[str, int]]) -> None:
        """Count the items of one batch or micro-batch answered in place, ``(reason,
        count)`` by reason (``WireBatch.refusal_counts``: codes of a closed set)."""
        for reason, count in counts:
            key = (method, reason)
            counter = self._refused_children.get(key)
            if counter is None:
                counter = self.refused_items.labels(method=method, reason=reason)
                self._refused_children[key] = counter
            counter.inc(count)

    def observe_call_error(self, service: str, method: str, code: str, reason: str) -> None:
        """Count one call that ended ``code`` with the ``ErrorInfo`` ``reason`` (labels of a
        closed set: the registered methods, gRPC's codes, the service's reasons)."""
        key = (service, method, code, reason)
        counter = self._call_error_children.get(key)
        if counter is None:
            counter = self.call_errors.labels(
                grpc_service=service, grpc_method=method, grpc_code=code, reason=reason
            )
            self._call_error_children[key] = counter
        counter.inc()

    def observe_batch(self, size: int) -> None:
        """Record the size of one VerifyBatch call."""
        self.batch_size.observe(size)


def observe_many(histogram: Histogram, amount: float, count: int) -> None:
    """``histogram.observe(amount)`` ``count`` times, in one update of its bucket and sum.

    prometheus_client has no counted observation; this updates the same values its
    ``observe`` does (the sum, and the first bucket whose bound holds ``amount``: buckets are
    kept per bucket and made cumulative on export), in memory and in multiprocess files alike.
    tests/test_metrics.py checks it against ``observe`` for the installed version."""
    if count <= 0:
        return
    histogram._raise_if_not_observable()
    histogram._sum.inc(amount * count)
    index = bisect.bisect_left(histogram._upper_bounds, amount)
    histogram._buckets[index].inc(count)


def build_info() -> dict[str, str]:
    """The labels of ``apcv_build_info``: package, core and Python versions and how the core
    was compiled (``_native.BUILD``; never a host name or a path)."""
    try:
        version = metadata.version("apcv-verify")
    except metadata.PackageNotFoundError:  # run from a source tree without installing
        version = "unknown"
    return {
        "version": version,
        "core_version": _native.CORE_VERSION,
        "core_build": _native.BUILD,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
    }


class GrpcMethodCounts:
    """The per-call gRPC counts of one method (one ``grpc_type``, service and method): calls
    started, calls handled by code, and the handling time's histogram (per bucket, made
    cumulative on export, and its sum), as prometheus_client's children of the same labels
    keep them. Updated by the event loop's thread only (the call wrappers), read by the
    metrics endpoint's thread (:class:`GrpcCallCollector`)."""

    __slots__ = ("buckets", "handled", "labels", "seconds", "started")

    def __init__(self, labels: tuple[str, str, str], size: int) -> None:
        self.labels = labels
        self.started = 0
        #: code → a one-element list, its count (also in :attr:`GrpcCallCounts.handled`).
        self.handled: dict[str, list[int]] = {}
        self.buckets = [0] * size
        self.seconds = 0.0


class GrpcCallCounts:
    """``grpc_server_started_total``, ``…_handled_total`` and ``…_handling_seconds`` of one
    process, kept in plain Python (:class:`GrpcMethodCounts` per method)."""

    def __init__(self, bounds: Iterable[float]) -> None:
        #: The buckets' upper bounds, +Inf last: ``bisect_left`` finds the first bucket whose
        #: bound holds an amount, the bucket prometheus_client's ``observe`` updates.
        self.bounds = (*bounds, math.inf)
        self._methods: dict[tuple[str, str, str], GrpcMethodCounts] = {}
        #: Every method's handled counts, in the order they first occurred (the order of
        #: prometheus_client's children: the exposition's order).
        self.handled: dict[tuple[str, str, str, str], list[int]] = {}

    def method(self, grpc_type: str, service: str, name: str) -> GrpcMethodCounts:
        """The counts of one method, made on first use (as ``labels()`` makes a child)."""
        labels = (grpc_type, service, name)
        counts = self._methods.get(labels)
        if counts is None:
            counts = self._methods[labels] = GrpcMethodCounts(labels, len(self.bounds))
        return counts

    def handled_cell(self, counts: GrpcMethodCounts, code: str) -> list[int]:
        """The count of ``counts``' calls that ended with ``code``, made on first use."""
        cell = counts.handled.get(code)
        if cell is None:
            cell = counts.handled[code] = self.handled[(*counts.labels, code)] = [0]
        return cell

    def methods(self) -> list[GrpcMethodCounts]:
        return list(self._methods.values())


class GrpcCallCollector(Collector):
    """The per-call gRPC metrics from :class:`GrpcCallCounts`: the samples prometheus_client's
    ``Counter``, ``Counter`` and ``Histogram`` of the same names, help, labels and buckets
    export (no ``_created``), in the same order."""

    def __init__(self, counts: GrpcCallCounts) -> None:
        self._counts = counts
        self._bounds = [floatToGoString(b) for b in counts.bounds]

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> list[Metric]:
        started, handled, seconds = self._families()
        for method in self._counts.methods():
            started.add_metric(list(method.labels), method.started)
        for labels, cell in list(self._counts.handled.items()):
            handled.add_metric(list(labels), cell[0])
        for method in self._counts.methods():
            amount = method.seconds
            cumulative = list(itertools.accumulate(method.buckets))
            seconds.add_metric(
                list(method.labels), list(zip(self._bounds, cumulative, strict=True)), amount
            )
        return [started, handled, seconds]

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, CounterMetricFamily, HistogramMetricFamily]:
        return (
            CounterMetricFamily(
                "grpc_server_started_total", GRPC_STARTED_HELP, labels=list(GRPC_LABELS)
            ),
            CounterMetricFamily(
                "grpc_server_handled_total",
                GRPC_HANDLED_HELP,
                labels=[*GRPC_LABELS, "grpc_code"],
            ),
            HistogramMetricFamily(
                "grpc_server_handling_seconds",
                GRPC_HANDLING_SECONDS_HELP,
                labels=list(GRPC_LABELS),
            ),
        )


class VerificationCollector(Collector):
    """``apcv_verifications_total{decision, reason, method}`` and the
    ``apcv_verification_seconds{method}`` histogram from the counts the core keeps
    (``_native.VerificationCounts``): the samples prometheus_client's ``Counter`` and
    ``Histogram`` of the same name, help, labels and buckets export (no ``_created``)."""

    def __init__(self, counts: _native.VerificationCounts) -> None:
        self._counts = counts
        self._bounds = [floatToGoString(b) for b in (*VERIFICATION_SECONDS_BUCKETS, math.inf)]

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> list[Metric]:
        decisions, histograms = self._counts.snapshot()
        total, seconds = self._families()
        for decision, reason, method, count in decisions:
            total.add_metric([decision, reason, method], count)
        for method, cumulative, amount in histograms:
            seconds.add_metric([method], list(zip(self._bounds, cumulative, strict=True)), amount)
        return [total, seconds]

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, HistogramMetricFamily]:
        total = CounterMetricFamily(
            "apcv_verifications_total", VERIFICATIONS_HELP, labels=["decision", "reason", "method"]
        )
        seconds = HistogramMetricFamily(
            "apcv_verification_seconds", VERIFICATION_SECONDS_HELP, labels=["method"]
        )
        return total, seconds


class BuildInfoCollector(Collector):
    """``apcv_build_info`` = 1, labelled with :func:`build_info` (join it on to tell which
    version each target runs, e.g. during a rollout)."""

    def __init__(self) -> None:
        self._labels = build_info()

    def collect(self) -> list[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "apcv_build_info",
            "Always 1: the versions of this server (package, Rust core, Python) as labels.",
            labels=list(self._labels),
        )
        family.add_metric(list(self._labels.values()), 1)
        return [family]


class WorkerProcessCollector(Collector):
    """The ``process_*`` series (CPU, memory, file descriptors, start time) of several
    processes, one series per process labelled ``worker``: what prometheus_client's
    :class:`~prometheus_client.ProcessCollector` reads from ``/proc`` for one pid, for each of
    ``processes()`` (label value → pid). The supervisor of ``server.workers`` serves it for
    itself (``worker="parent"``) and each live worker (``worker="0"``, ``"1"``, …)."""

    def __init__(self, processes: Callable[[], Mapping[str, int | str]]) -> None:
        self._processes = processes

    def collect(self) -> list[Metric]:
        merged: dict[str, Metric] = {}
        for worker, pid in self._processes().items():
            # A worker that just ended has no /proc entry: ProcessCollector yields nothing.
            collector = ProcessCollector(pid=functools.partial(_pid, pid), registry=None)
            for family in collector.collect():
                target = merged.get(family.name)
                if target is None:
                    target = merged[family.name] = Metric(
                        family.name, family.documentation, family.type
                    )
                for sample in family.samples:
                    target.add_sample(
                        sample.name, {**sample.labels, "worker": worker}, sample.value
                    )
        return list(merged.values())


def _pid(pid: int | str) -> int | str:
    return pid


def start_metrics_server(listen: str, registry: CollectorRegistry) -> WSGIServer:
    """Serve ``/metrics`` from ``registry`` on ``HOST:PORT`` in a daemon thread.

    Port 0 picks a free port (``server.server_port``). Stop with ``shutdown()``.
    """
    host, _, port = listen.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host.strip("[]"), registry=registry)
    return server
