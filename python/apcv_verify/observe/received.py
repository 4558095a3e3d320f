"""``apcv_grpc_calls_received_total``: the calls gRPC received on the service's port, from
gRPC's own count of them (channelz, read through grpcio-channelz).

The service's gRPC metrics (``grpc_server_started_total``, …) count the calls a handler took.
gRPC ends some calls before any handler takes them, and the service never sees those: past the
process's capacity, the calls that find gRPC's queue of waiting calls full, ended
``CANCELLED`` (docs/operations.md "Past capacity"), and calls of a method the server does not
have, answered ``UNIMPLEMENTED``. gRPC's own count is where they show:
``apcv_grpc_calls_received_total`` less ``grpc_server_started_total`` summed over methods is
those calls, plus the calls waiting at that moment.

One series per process, without labels. With one process it is read when ``/metrics`` is
scraped (:class:`_ReceivedCollector`). In Prometheus multiprocess mode (``server.workers`` >
1) the parent that serves ``/metrics`` has no gRPC server of its own, so each worker adds what
its count grew by to a counter in the shared files (:class:`_ReceivedPublisher`), every
:data:`PUBLISH_SECONDS` and when it stops, as the trust gauges are published
(:mod:`apcv_verify.trust.metrics`). A read costs about a millisecond (gRPC renders the server's
channelz entry as JSON, grpcio-channelz parses it): once per scrape, or per worker every few
seconds, never per call.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import structlog
from grpc_channelz.v1 import channelz_pb2
from grpc_channelz.v1.channelz import ChannelzServicer
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

__all__ = ["PUBLISH_SECONDS", "ReceivedCalls", "server_ids"]

log = structlog.get_logger("apcv_verify.observe.received")

#: How often a worker adds its received calls to the shared files in multiprocess mode.
PUBLISH_SECONDS = 5.0
#: The counter's name, without prometheus_client's ``_total`` suffix.
NAME = "apcv_grpc_calls_received"
HELP = (
    "Calls gRPC received on the service's port, taken by a handler or not (gRPC's channelz "
    "calls started). Beyond grpc_server_started_total, summed over methods, are the calls "
    "gRPC ended before the service saw them: past capacity (CANCELLED), or of a method the "
    "server does not have (UNIMPLEMENTED)."
)


class _Failure:
    """The context grpcio-channelz's servicer reports a failed read to: it sets a code (an
    unknown server id: NOT_FOUND) and returns None instead of raising."""

    def __init__(self) -> None:
        self.code: Any = None

    def set_code(self, code: Any) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        pass


def server_ids() -> set[int]:
    """The channelz ids of this process's gRPC servers, created and not yet stopped."""
    ids: set[int] = set()
    start = 0
    while True:
        page = ChannelzServicer.GetServers(
            channelz_pb2.GetServersRequest(start_server_id=start), _Failure()
        )
        if page is None:
            return ids
        ids.update(server.ref.server_id for server in page.server)
        if page.end or not page.server:
            return ids
        start = max(ids) + 1


def _calls_started(server_id: int) -> int | None:
    """gRPC's count of the calls server ``server_id`` received; None once it has stopped."""
    answer = ChannelzServicer.GetServer(
        channelz_pb2.GetServerRequest(server_id=server_id), _Failure()
    )
    return None if answer is None else int(answer.server.data.calls_started)


class ReceivedCalls:
    """``apcv_grpc_calls_received_total`` of one gRPC server, registered in ``registry``."""

    def __init__(self, server_id: int, registry: CollectorRegistry) -> None:
        self._publisher: _ReceivedPublisher | None = None
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self._publisher = _ReceivedPublisher(server_id, registry)
        else:
            registry.register(_ReceivedCollector(server_id))

    @classmethod
    def of_new_server(cls, known: set[int], registry: CollectorRegistry) -> ReceivedCalls | None:
        """The counter of the one server created since ``known`` (:func:`server_ids`) was read.
        None, with a warning logged, if there is not exactly one: channelz turned off, or
        another thread created a server meanwhile. The service runs without the metric then."""
        created = server_ids() - known
        if len(created) != 1:
            log.warning("calls_received_unavailable", servers_created=len(created))
            return None
        return cls(created.pop(), registry)

    def before_stop(self) -> None:
        """Called before the server stops (its channelz entry goes with it): in multiprocess
        mode, the last calls counted and the publishing thread stopped."""
        if self._publisher is not None:
            self._publisher.stop()


class _ReceivedCollector(Collector):
    """The count read at scrape time; after the server stopped, the last one read."""

    def __init__(self, server_id: int) -> None:
        self._server_id = server_id
        self._last = 0

    def describe(self) -> list[CounterMetricFamily]:
        return [CounterMetricFamily(NAME, HELP)]

    def collect(self) -> list[CounterMetricFamily]:
        started = _calls_started(self._server_id)
        if started is not None:
            self._last = started
        return [CounterMetricFamily(NAME, HELP, value=self._last)]


class _ReceivedPublisher:
    """The count in Prometheus multiprocess mode: what it grew by added to a counter in the
    shared files every :data:`PUBLISH_SECONDS` from a daemon thread, and at :meth:`stop`."""

    def __init__(self, server_id: int, registry: CollectorRegistry) -> None:
        self._server_id = server_id
        self._counter = Counter(NAME, HELP, registry=registry)
        self._published = 0
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="apcv-received-calls", daemon=True)
        self._thread.start()

    def publish(self) -> None:
        with self._lock:  # the thread and stop() alike: each call counted once
            started = _calls_started(self._server_id)
            if started is not None and started > self._published:
                self._counter.inc(started - self._published)
                self._published = started

    def stop(self) -> None:
        self._stopped.set()
        self.publish()

    def _run(self) -> None:
        while not self._stopped.wait(PUBLISH_SECONDS):
            try:
                self.publish()
            except Exception:  # a metric must never take a worker down; try again later
                log.exception("calls_received_publish_failed")
