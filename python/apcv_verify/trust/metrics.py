"""Every metric of the trust material, in one place: refresh failures and snapshot swaps
(counters), and the gauges of what is in use — sequence, age and expiry of the trust list and
of each status list, and ``apcv_trust_source_expired`` per source (docs/operations.md
"Metrics").

The gauges are computed from the :class:`~apcv_verify.trust.sources.TrustSource` at scrape
time. In Prometheus multiprocess mode (``server.workers`` > 1) the parent process that serves
``/metrics`` never sees a worker's snapshot, so each worker publishes them instead, at each
swap and every :data:`TRUST_PUBLISH_SECONDS`; the parent reports the worst value over live
workers (the oldest sequence and lists, the nearest expiry, any expired source).

Label values are config keys (``trust_list``, ``status_lists[i]``) and status-list URIs from
the signed trust material: a small closed set, never request data (docs/profile.md §9).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Literal, Protocol

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .. import _native
from .material import TRUST_LIST_SOURCE, TrustMaterial

__all__ = ["TRUST_PUBLISH_SECONDS", "TrustMetrics", "TrustView"]

log = structlog.get_logger("apcv_verify.trust.metrics")

#: How often a worker republishes its trust gauges in multiprocess mode (age resolution).
TRUST_PUBLISH_SECONDS = 1.0

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
    "apcv_trust_list_refused": (
        "1 while the trust list in use is past its expiry plus trust.expired_grace_seconds: "
        "the service is NOT_SERVING and answers UNAVAILABLE until a valid list is loaded.",
        (),
        "livemax",
    ),
    "apcv_status_lists_loaded": (
        "Status lists in use. With none the service reports NOT_SERVING: every presentation "
        "would be rejected STATUS_UNAVAILABLE.",
        (),
        "livemin",
    ),
    "apcv_serving": (
        "1 while the trust material is usable (a trust list loaded and not refused, at least "
        "one status list) and health reports SERVING; 0 otherwise.",
        (),
        "livemin",
    ),
    "apcv_trust_source_expired": (
        "1 while the list held for a source is past its expiry (status lists: plus "
        "policy.status_grace_seconds), so verifications that need it are refused.",
        ("source",),
        "livemax",
    ),
}  # fmt: skip

Sample = tuple[str, tuple[str, ...], float]


class TrustView(Protocol):
    """What the trust metrics read from the holder of the trust material."""

    status_grace_seconds: int
    expired_grace_seconds: float

    @property
    def material(self) -> TrustMaterial | None: ...

    def held_status_lists(self) -> dict[str, _native.StatusList]: ...


def _samples(view: TrustView, now: float) -> list[Sample]:
    """(metric, label values, value) of the trust gauges of what ``view`` holds at ``now``."""
    material = view.material
    if material is None:
        return [("apcv_status_lists_loaded", (), 0.0), ("apcv_serving", (), 0.0)]
    trust_list = material.trust_list
    refused = now > trust_list.expires_at + view.expired_grace_seconds
    samples: list[Sample] = [
        ("apcv_status_lists_loaded", (), float(len(material.status_lists))),
        ("apcv_serving", (), float(not refused and bool(material.status_lists))),
        ("apcv_trust_list_sequence", (), trust_list.seq),
        ("apcv_trust_list_age_seconds", (), now - trust_list.issued_at),
        ("apcv_trust_list_expiry_timestamp_seconds", (), trust_list.expires_at),
        ("apcv_trust_source_expired", (TRUST_LIST_SOURCE,), float(now > trust_list.expires_at)),
        ("apcv_trust_list_refused", (), float(refused)),
    ]
    for status_list in material.status_lists:
        # The URI names a published list, not a person (docs/profile.md §6.5).
        uri = (status_list.uri,)
        samples.append(("apcv_status_list_age_seconds", uri, now - status_list.issued_at))
        samples.append(("apcv_status_list_expiry_timestamp_seconds", uri, status_list.expires_at))
    grace = view.status_grace_seconds
    for name, held in view.held_status_lists().items():
        expired = float(now > held.expires_at + grace)
        samples.append(("apcv_trust_source_expired", (name,), expired))
    return samples


class _TrustCollector(Collector):
    """The trust gauges computed at scrape time from what the holder has in use."""

    def __init__(self, view: TrustView) -> None:
        self._view = view

    def describe(self) -> list[GaugeMetricFamily]:
        return self._families([])

    def collect(self) -> list[GaugeMetricFamily]:
        return self._families(_samples(self._view, time.time()))

    @staticmethod
    def _families(samples: list[Sample]) -> list[GaugeMetricFamily]:
        families = {
            name: GaugeMetricFamily(name, help_text, labels=list(labels))
            for name, (help_text, labels, _) in _TRUST_GAUGES.items()
        }
        for name, label_values, value in samples:
            families[name].add_metric(list(label_values), value)
        return list(families.values())


class _TrustPublisher:
    """The same gauges in Prometheus multiprocess mode: written to the shared files at each
    swap and every :data:`TRUST_PUBLISH_SECONDS` from a daemon thread."""

    def __init__(self, view: TrustView, registry: CollectorRegistry) -> None:
        self._view = view
        self._gauges = {
            name: Gauge(name, help_text, list(labels), multiprocess_mode=mode, registry=registry)
            for name, (help_text, labels, mode) in _TRUST_GAUGES.items()
        }
        self._thread = threading.Thread(target=self._run, name="apcv-trust-metrics", daemon=True)
        self._thread.start()

    def publish(self) -> None:
        for name, label_values, value in _samples(self._view, time.time()):
            gauge = self._gauges[name]
            (gauge.labels(*label_values) if label_values else gauge).set(value)

    def _run(self) -> None:
        while True:
            time.sleep(TRUST_PUBLISH_SECONDS)
            try:
                self.publish()
            except Exception:  # a metric must never take a worker down; try again later
                log.exception("trust_metrics_publish_failed")


class TrustMetrics:
    """The trust metrics of one holder (``view``), registered in ``registry``."""

    def __init__(self, view: TrustView, registry: CollectorRegistry) -> None:
        self.refresh_failures = Counter(
            "apcv_trust_refresh_failures_total",
            "Refreshes of a trust-list or status-list source that kept the last good list: "
            "reason fetch (unreachable, HTTP error, oversize or content-coded body), timeout "
            "(no complete answer within trust.http_timeout_seconds), refused (verification "
            "failed), rollback (older than the list held), untrusted (signer not in a new trust "
            "list).",
            ["source", "reason"],
            registry=registry,
        )
        self.snapshot_swaps = Counter(
            "apcv_trust_snapshot_swaps_total",
            "Verified trust material taken into use (first load included).",
            registry=registry,
        )
        self._publisher: _TrustPublisher | None = None
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self._publisher = _TrustPublisher(view, registry)
        else:
            registry.register(_TrustCollector(view))

    def swapped(self) -> None:
        """Count a swap of the material in use (and publish it at once in multiprocess mode)."""
        self.snapshot_swaps.inc()
        if self._publisher is not None:
            self._publisher.publish()
