"""The in-process replay store (``replay.backend = "memory"``): the Rust core's own
(:class:`apcv_verify.MemoryReplayStore`), one per process, shared by its verifiers, and its
size for the metrics."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from .. import _native
from ..config import ReplaySection


def memory_replay_store(config: ReplaySection) -> _native.MemoryReplayStore | None:
    """The store every verifier of this process shares, bounded by ``replay.max_entries``;
    None with ``replay.backend = "redis"`` (step 9 is then settled on Redis)."""
    if config.backend == "redis":
        return None
    return _native.MemoryReplayStore(max_entries=config.max_entries)


def register_replay_store_metrics(
    store: _native.MemoryReplayStore, registry: CollectorRegistry
) -> None:
    """``apcv_replay_store_entries`` and ``apcv_replay_store_max_entries`` of ``store``, read at
    each scrape: the store fails closed when the first reaches the second with every entry
    live, so an alert on their ratio comes before ``REPLAY_UNAVAILABLE`` does."""
    registry.register(_MemoryReplayCollector(store))


class _MemoryReplayCollector(Collector):
    def __init__(self, store: _native.MemoryReplayStore) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "apcv_replay_store_entries",
            "Presentation ids held by the in-process replay store, expired ones included until "
            "swept (replay.max_entries bounds it).",
            value=len(self._store),
        )
        yield GaugeMetricFamily(
            "apcv_replay_store_max_entries",
            "The in-process replay store's bound (replay.max_entries): full of live ids, it "
            "answers REPLAY_UNAVAILABLE.",
            value=self._store.max_entries,
        )
