"""The in-process replay store (``replay.backend = "memory"``): the Rust core's own
(:class:`apcv_verify.MemoryReplayStore`), one per process, shared by its verifiers, and its
size for the metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge

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
    """``apcv_replay_store_entries`` (read at each scrape) and ``apcv_replay_store_max_entries``
    of ``store``: the store fails closed when the first reaches the second with every entry
    live, so an alert on their ratio comes before ``REPLAY_UNAVAILABLE`` does. (The memory
    store is one process's: ``server.workers`` > 1 needs Redis, so no multiprocess mode.)"""
    Gauge(
        "apcv_replay_store_entries",
        "Presentation ids held by the in-process replay store, expired ones included until "
        "swept (replay.max_entries bounds it).",
        registry=registry,
    ).set_function(lambda: len(store))
    Gauge(
        "apcv_replay_store_max_entries",
        "The in-process replay store's bound (replay.max_entries): full of live ids, it "
        "answers REPLAY_UNAVAILABLE.",
        registry=registry,
    ).set(store.max_entries)
