"""Answer recovery: a resend gets the answer given the first time (docs/integration.md
"Answer recovery", docs/operations.md "Answer recovery").

A request is known by its caller (the client certificate's CN), its ``reader_id`` and its
``request_id``. The answer to it is kept for ``replay.answer_retention_seconds`` (default
24 h) where the replay entries are — the in-process store of the Rust core
(:class:`~apcv_verify._native.MemoryAnswerStore`) or Redis — so that a resend of the same
request gets that answer back, marked ``resent``, **whatever the time**: even once the
presentation has expired, or the trust or status lists have changed, it is not judged again.

What is kept has no personal data (``apcv_core::answers``): the key is a keyed hash
(HMAC-SHA256, 16 bytes) of (caller, reader id, request id); the value is a keyed hash of the
exact presentation bytes and the decision without the person — reason, fixed phrase, use,
flags, verification time and each AMC attestation's outcome (about 30 bytes accepted).
The person, the issuer, the delegation's label and the AMC coverage are rebuilt by decoding
the resent presentation again: a resend carries the same bytes.

A resend carrying **another presentation** under a request id already answered is refused,
never answered over the first (:data:`REUSED`): ``ALREADY_EXISTS`` (``REQUEST_ID_REUSED``)
for ``Verify``, answered in place for a batch or stream item.

Not kept: answers ``REPLAY_UNAVAILABLE`` (the store could not vouch: a resend is verified
again), and requests refused before verification (an unusable scan, a call error).

In Redis, each batch costs one more round trip before verification (one ``MGET`` of its
keys; on Redis Cluster one per hash slot, pipelined by master) and one pipelined round trip
after (``SET key record NX GET EX retention`` per answer: the first answer stays; a
concurrent request that lost the race gets the winner's answer, or :data:`REUSED`). When
Redis cannot answer, nothing is recovered or kept and the batch is verified as usual (the
replay store's ``on_store_error`` then decides): answer recovery never fails a call. While
the replay store counts Redis as unavailable, recovery does not try it (no added wait).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Final, Protocol

import structlog
from prometheus_client import Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from .. import _native
from ..config import ReplaySection

if TYPE_CHECKING:
    from ..observe.audit import UnaryAudit
    from ..observe.metrics import ServiceMetrics
    from .redis import RedisReplayStore

__all__ = ["REUSED", "AnswerRecovery", "MemoryAnswers", "RedisAnswers", "Reused"]

log = structlog.get_logger("apcv_verify.replay.answers")


class Reused:
    """The answer to a request whose request id (same caller and reader) was already
    answered for another presentation."""

    reason: Final = "REQUEST_ID_REUSED"
    description: Final = "already used for another presentation by this caller and reader"

    def __repr__(self) -> str:
        return "REUSED"


REUSED: Final = Reused()

#: What :meth:`AnswerRecovery.answer` gives for each scan.
Answer = _native.VerificationResult | Reused

#: Redis key suffixes (not hexadecimal, so no clash with a replay key ``prefix + hex(cti)``).
ANSWER_KEY = "answer:"
SECRET_KEY = "answer-secret"


class AnswerBackend(Protocol):
    backend: str

    async def keys(self) -> _native.AnswerKeys | None: ...

    async def lookup(self, keys: Sequence[bytes], now: int) -> list[bytes | None] | None: ...

    async def keep(
        self, items: Sequence[tuple[bytes, bytes]], expires_at: int, now: int
    ) -> list[bytes | None] | None: ...


class MemoryAnswers:
    """The in-process answer store (bounded, oldest dropped first) under a random key."""

    backend = "memory"

    def __init__(self, max_entries: int, secret: str = "") -> None:
        self.store = _native.MemoryAnswerStore(max_entries)
        #: Fixed for the store's life: what :meth:`keys` returns, readable without an await.
        self.answer_keys = _native.AnswerKeys(
            secret.encode() if secret else secrets.token_bytes(32)
        )

    async def keys(self) -> _native.AnswerKeys:
        return self.answer_keys

    async def lookup(self, keys: Sequence[bytes], now: int) -> list[bytes | None]:
        return self.store.get_many(list(keys), now)

    async def keep(
        self, items: Sequence[tuple[bytes, bytes]], expires_at: int, now: int
    ) -> list[bytes | None]:
        insert = self.store.insert_or_get
        return [insert(key, record, expires_at, now) for key, record in items]


class RedisAnswers:
    """Answers kept in the replay store's Redis (``<key_prefix>answer:<hex key>``), with the
    key of the hashes from ``replay.answer_secret`` or, when empty, drawn once and kept in
    Redis (``<key_prefix>answer-secret``), shared by every replica and read again after
    the store lost its entries."""

    backend = "redis"

    def __init__(self, store: RedisReplayStore, config: ReplaySection) -> None:
        self._store = store
        self._prefix = config.key_prefix
        self._timeout = config.timeout_seconds
        self._fixed = bool(config.answer_secret)
        self._keys: _native.AnswerKeys | None = (
            _native.AnswerKeys(config.answer_secret.encode()) if self._fixed else None
        )
        #: The store's loss time when the key was read (a loss drops the kept key too).
        self._read_at_loss = 0

    async def keys(self) -> _native.AnswerKeys | None:
        if self._store.available is False:
            # Redis did not answer the replay store's last round trip: do not wait for it
            # twice more per batch; recovery resumes once the replay store reaches it again.
            return None
        if self._fixed:
            return self._keys
        if self._keys is not None and self._read_at_loss == self._store.loss_noticed_at:
            return self._keys
        loss = self._store.loss_noticed_at
        try:
            async with asyncio.timeout(self._timeout):
                kept = await self._store.client.set(
                    self._prefix + SECRET_KEY, secrets.token_hex(32), nx=True, get=True
                )
                if kept is None:
                    kept = await self._store.client.get(self._prefix + SECRET_KEY)
        except (RedisError, OSError, TimeoutError) as error:
            self._failed(error)
            return None
        if kept is None:
            return None
        self._keys = _native.AnswerKeys(kept if isinstance(kept, bytes) else kept.encode())
        self._read_at_loss = loss
        return self._keys

    async def lookup(self, keys: Sequence[bytes], now: int) -> list[bytes | None] | None:
        """One ``MGET`` of the batch's keys (Redis Cluster: one per hash slot, sent as one
        pipeline split by master, ``mget_nonatomic``): a single reply to read, where a
        ``GET`` per key cost one each."""
        if not keys:
            return []
        client = self._store.client
        names = [self._prefix + ANSWER_KEY + key.hex() for key in keys]
        try:
            async with asyncio.timeout(self._timeout):
                if isinstance(client, RedisCluster):
                    found: list[bytes | None] = await client.mget_nonatomic(names)
                else:
                    found = await client.mget(names)
        except (RedisError, OSError, TimeoutError) as error:
            self._failed(error)
            return None
        return found

    async def keep(
        self, items: Sequence[tuple[bytes, bytes]], expires_at: int, now: int
    ) -> list[bytes | None] | None:
        pipe = self._store.client.pipeline(transaction=False)
        add, prefix, ttl = pipe.execute_command, self._prefix + ANSWER_KEY, max(1, expires_at - now)
        for key, record in items:
            # pipe.set(…, nx=True, get=True, ex=ttl) without its per-call argument checks
            add("SET", prefix + key.hex(), record, "NX", "GET", "EX", ttl, get=True)
        return await self._run(pipe)

    async def _run(self, pipe: object) -> list[bytes | None] | None:
        try:
            async with asyncio.timeout(self._timeout):
                answers = await pipe.execute(raise_on_error=False)  # type: ignore[attr-defined]
        except (RedisError, OSError, TimeoutError) as error:
            self._failed(error)
            return None
        errors = [a for a in answers if isinstance(a, BaseException)]
        if errors:
            self._failed(errors[0])
        return [None if isinstance(a, BaseException) else a for a in answers]

    def _failed(self, error: BaseException) -> None:
        log.warning(
            "answer_store_unavailable",
            backend=self.backend,
            location=self._store.location,
            error=type(error).__name__,
            detail="answers are neither recovered nor kept until Redis answers",
        )


class _MemoryStoreCollector(Collector):
    """The in-process answer store's size and evictions, read at each scrape."""

    def __init__(self, store: _native.MemoryAnswerStore) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "apcv_answer_store_entries",
            "Answers kept in the in-process answer store (replay.answer_max_entries bounds it).",
            value=len(self._store),
        )
        yield CounterMetricFamily(
            "apcv_answer_store_evicted",
            "Answers dropped from the full in-process answer store before their retention "
            "ended (replay.answer_max_entries).",
            value=self._store.evicted,
        )


class AnswerRecovery:
    """Looks a batch's requests up before it is verified and keeps their answers after."""

    def __init__(
        self,
        backend: AnswerBackend,
        retention_seconds: int,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.backend = backend
        self.retention = retention_seconds
        self._resent: Counter | None = None
        self._reused: Counter | None = None
        if metrics is not None:
            self._resent = Counter(
                "apcv_answers_resent_total",
                "Requests answered with the answer kept for an earlier request with the same "
                "caller, reader id and request id (answer recovery).",
                registry=metrics.registry,
            )
            self._reused = Counter(
                "apcv_request_id_reused_total",
                "Requests refused because their request id was already answered for another "
                "presentation (same caller and reader).",
                registry=metrics.registry,
            )
            if isinstance(backend, MemoryAnswers):
                metrics.registry.register(_MemoryStoreCollector(backend.store))

    @classmethod
    def from_config(
        cls,
        config: ReplaySection,
        metrics: ServiceMetrics | None = None,
        redis: RedisReplayStore | None = None,
    ) -> AnswerRecovery | None:
        """The recovery of ``config``, None when answers are not kept (retention 0)."""
        if config.answer_retention_seconds == 0:
            return None
        backend: AnswerBackend = (
            RedisAnswers(redis, config)
            if redis is not None
            else MemoryAnswers(config.answer_max_entries, config.answer_secret)
        )
        return cls(backend, config.answer_retention_seconds, metrics)

    async def answer(
        self,
        scans: Sequence[_native.Scan],
        requests: Sequence[tuple[str, str, str]],
        now: int,
        verify: Callable[[list[_native.Scan]], Awaitable[list[_native.VerificationResult]]],
    ) -> list[Answer]:
        """The answers to ``scans`` (``requests``: each one's caller, reader id and request
        id), in order: the kept answer of a resend, :data:`REUSED` for another presentation
        under a request id already answered, else the result of ``verify`` (called once,
        on the others, in order), which is then kept."""
        keys_of = await self.backend.keys()
        if keys_of is None:  # the store cannot answer: verify as if nothing were kept
            return list(await verify(list(scans)))
        keys = [keys_of.key(*request) for request in requests]
        found = await self.backend.lookup(keys, now)
        answers: list[Answer | None] = [None] * len(scans)
        if found is not None:
            for index, record in enumerate(found):
                if record is not None:
                    answers[index] = self._recovered(keys_of, scans[index], record)
        fresh = [index for index, answer in enumerate(answers) if answer is None]
        if fresh:
            results = await verify([scans[index] for index in fresh])
            kept = [
                (index, result)
                for index, result in zip(fresh, results, strict=True)
                if result.reason != "REPLAY_UNAVAILABLE"
            ]
            for index, result in zip(fresh, results, strict=True):
                answers[index] = result
            if kept:
                items = [
                    (keys[index], keys_of.record(scans[index], result, now))
                    for index, result in kept
                ]
                earlier = await self.backend.keep(items, now + self.retention, now)
                # A request answered meanwhile (a concurrent resend, or the same request
                # twice in this batch): the first answer stays, and is this one's too.
                for (index, result), record in zip(kept, earlier or (), strict=False):
                    if record is not None:
                        recovered = self._recovered(keys_of, scans[index], record)
                        answers[index] = result if recovered is None else recovered
        done = [answer for answer in answers if answer is not None]
        assert len(done) == len(scans)
        self._count(
            sum(isinstance(a, _native.VerificationResult) and a.resent for a in done),
            sum(answer is REUSED for answer in done),
        )
        return done

    async def answer_wire(
        self, batch: _native.WireBatch, caller: str, now: int, verify: Callable[[], Awaitable[None]]
    ) -> None:
        """:meth:`answer` of the usable items of ``batch`` (a ``VerifyBatch`` request or a
        ``VerifyStream`` micro-batch as bytes), answered in the batch: the kept answer of a
        resend, REQUEST_ID_REUSED in place for another presentation under a request id
        already answered; ``verify`` (called at most once) verifies the others, whose answers
        are then kept."""
        if isinstance(self.backend, MemoryAnswers):
            await self._answer_memory(self.backend, batch, caller, now, verify)
            return
        keys_of = await self.backend.keys()
        if keys_of is None:  # the store cannot answer: verify as if nothing were kept
            await verify()
            return
        found = await self.backend.lookup(batch.answer_keys(keys_of, caller), now)
        if found is not None:
            self._unreadable(batch.recover(keys_of, found))
        if batch.fresh:
            await verify()
            items = batch.records(keys_of, now)
            if items:
                earlier = await self.backend.keep(items, now + self.retention, now)
                # A request answered meanwhile (a concurrent resend, or the same request
                # twice in this batch): the first answer stays, and is this one's too.
                self._unreadable(batch.keep_earlier(keys_of, earlier or []))
        self._count(*batch.recovery_counts())

    async def _answer_memory(
        self,
        memory: MemoryAnswers,
        batch: _native.WireBatch,
        caller: str,
        now: int,
        verify: Callable[[], Awaitable[None]],
    ) -> None:
        """:meth:`answer_wire` on the in-process store: the same steps, each one call into the
        binding for the whole batch (no Python object per item)."""
        keys_of = memory.answer_keys
        self._unreadable(batch.recover_from(memory.store, keys_of, caller, now))
        if batch.fresh:
            await verify()
            # A request answered meanwhile (the same request twice in this batch, or a
            # concurrent one): the first answer stays, and is this one's too.
            self._unreadable(batch.keep_in(memory.store, keys_of, now, now + self.retention))
        self._count(*batch.recovery_counts())

    @property
    def in_process(self) -> bool:
        """Whether the answers are kept in the in-process store (:meth:`answer_unary`)."""
        return isinstance(self.backend, MemoryAnswers)

    def answer_unary(
        self,
        call: _native.WireBatch,
        verifier: _native.Verifier,
        view: _native.CallerView,
        caller: str,
        now: int,
        audit: UnaryAudit | None = None,
    ) -> tuple[bytes | None, int, int, int]:
        """:meth:`answer_wire` of a unary call's usable scan on the in-process store, with its
        verification, response and (with ``audit``) audit in the same binding call
        (:meth:`~apcv_verify._native.WireBatch.answer_unary`): the response (None when FHIR
        JSON is wanted or the request id was reused), whether it was reused, about the bytes
        of the audit lines waiting in the queue (0 when none was queued) and the number of
        REPLAY_UNAVAILABLE decisions among the queued ones."""
        memory = self.backend
        assert isinstance(memory, MemoryAnswers)
        unreadable, resent, reused, reply, queued, unavailable = call.answer_unary(
            verifier,
            view,
            now,
            memory.store,
            memory.answer_keys,
            caller,
            now + self.retention,
            audit,
        )
        if unreadable or resent or reused:  # rare: a call less each on the usual way
            self._unreadable(unreadable)
            self._count(resent, reused)
        return reply, reused, queued, unavailable

    def _recovered(
        self, keys: _native.AnswerKeys, scan: _native.Scan, record: bytes
    ) -> Answer | None:
        try:
            result = keys.recover(scan, record)
        except ValueError:
            self._unreadable(1)
            return None
        return REUSED if result is None else result

    def _unreadable(self, count: int) -> None:
        """Log ``count`` kept records that could not be read (their requests are verified,
        or keep the answer just given)."""
        for _ in range(count):
            log.warning("answer_record_unreadable", backend=self.backend.backend)

    def _count(self, resent: int, reused: int) -> None:
        if self._resent is None or self._reused is None:
            return
        if reused:
            self._reused.inc(reused)
        if resent:
            self._resent.inc(resent)
