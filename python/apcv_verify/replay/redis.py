"""The shared replay store: step 9 of docs/profile.md §7.4 on a Redis server used by every replica.

With ``replay.backend = "redis"`` the core verifiers are built without a replay store
(``_native.Verifier(..., replay_store=None)``): a presentation that passed steps 1–8 comes
back *pending*, carrying its replay key (``cti``) and how long to keep it. This module asks
Redis about every pending item of a batch in **one pipelined round trip**, one command per
item, in batch order (so the earlier item of a batch wins, as with the in-process store)::

    SET <key_prefix><hex cti> <reader id> NX GET EX <ttl>

``NX GET`` (Redis ≥ 7) records the reader when the key is new and answers the reader already
recorded otherwise, atomically, so two replicas cannot both accept the same presentation:

* nil → the key is new: **accepted**;
* the same reader id → a retry by that reader: **accepted**, ``duplicate = true``;
* another reader id → ``REPLAYED`` (the entry is not changed).

The entry expires at the presentation's ``exp + skew + max_scan_delay`` (``ttl`` is counted
from the verification time), after which the presentation itself is refused anyway.

When Redis cannot answer within ``replay.timeout_seconds`` (down, unreachable, slow, an
error reply), ``replay.on_store_error`` decides: ``"reject"`` (default, fail closed) settles
every pending item as ``REPLAY_UNAVAILABLE``; ``"accept"`` (fail open) accepts them with
``replay_unchecked`` set, which the response detail and the audit record show. Either way the
failure is logged (once per outage, and again when Redis answers again) and counted in
``apcv_replay_store_errors_total{backend="redis"}``. Health stays SERVING: see
docs/operations.md "Replay store" for why.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .. import _native
from ..config import ReplaySection, redact_url

if TYPE_CHECKING:
    from ..observe.metrics import ServiceMetrics

__all__ = ["RedisReplayStore"]

log = structlog.get_logger("apcv_verify.replay.redis")

Outcome = Literal["new", "same_reader", "other_reader", "unavailable", "unchecked"]


class RedisReplayStore:
    """Settles the pending results of a batch against Redis (see the module docstring)."""

    backend = "redis"

    def __init__(
        self,
        config: ReplaySection,
        metrics: ServiceMetrics | None = None,
        *,
        client: aioredis.Redis | None = None,
    ) -> None:
        self._prefix = config.key_prefix
        self._timeout = config.timeout_seconds
        self._fail_open = config.on_store_error == "accept"
        self._metrics = metrics
        #: Where Redis is, for logs: the URL with any password masked.
        self.location = redact_url(config.redis_url)
        self._client = client or aioredis.Redis.from_url(
            config.redis_url,
            socket_timeout=config.timeout_seconds,
            socket_connect_timeout=config.timeout_seconds,
            # One attempt per batch: the batch's caller is waiting, and the next batch tries
            # again anyway.
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
        )
        #: False from a failed round trip until one succeeds (None before the first).
        self.available: bool | None = None

    def __repr__(self) -> str:
        return f"RedisReplayStore({self.location!r})"

    async def ping(self) -> bool:
        """One PING within the timeout; logs and records the answer (used at start)."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._client.ping()
        except (RedisError, OSError, TimeoutError) as error:
            self._failed(error, items=0)
            return False
        self._answered()
        return True

    async def settle(
        self,
        scans: Sequence[_native.Scan],
        results: Sequence[_native.VerificationResult],
        now: int,
    ) -> list[_native.VerificationResult]:
        """The final results of a batch: each pending one settled by Redis (one round trip
        for the whole batch, in batch order), the others unchanged. ``now`` is the
        verification time the results were computed at."""
        pending = [index for index, result in enumerate(results) if result.replay_pending]
        if not pending:
            return list(results)
        pipe = self._client.pipeline(transaction=False)
        for index in pending:
            result = results[index]
            key, keep_until = result.replay_key, result.replay_expires_at
            assert key is not None and keep_until is not None  # set while pending
            pipe.set(
                self._prefix + key.hex(),
                scans[index].reader_id,
                nx=True,
                get=True,
                ex=max(1, keep_until - now + 1),
            )
        answers: list[object] | None
        try:
            async with asyncio.timeout(self._timeout):
                answers = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError, TimeoutError) as error:
            self._failed(error, items=len(pending))
            answers = None
        if answers is not None:
            failed = sum(isinstance(answer, BaseException) for answer in answers)
            if failed:
                first = next(a for a in answers if isinstance(a, BaseException))
                self._failed(first, items=failed)
            else:
                self._answered()
        settled = list(results)
        for position, index in enumerate(pending):
            answer = None if answers is None else answers[position]
            outcome = self._outcome(answer, scans[index].reader_id, failed=answers is None)
            settled[index] = results[index].with_replay_outcome(outcome)
        return settled

    def _outcome(self, answer: object, reader_id: str, *, failed: bool) -> Outcome:
        if failed or isinstance(answer, BaseException):
            return "unchecked" if self._fail_open else "unavailable"
        if answer is None:
            return "new"
        held = answer.decode("utf-8", "replace") if isinstance(answer, bytes) else str(answer)
        return "same_reader" if held == reader_id else "other_reader"

    def _failed(self, error: BaseException, *, items: int) -> None:
        if self.available is not False:
            log.error(
                "replay_store_unavailable",
                backend=self.backend,
                location=self.location,
                error=type(error).__name__,
                message=str(error)[:200],
                on_store_error="accept" if self._fail_open else "reject",
                detail="pending verifications are "
                + (
                    "accepted without a replay check (fail open)"
                    if self._fail_open
                    else "refused with REPLAY_UNAVAILABLE (fail closed)"
                ),
            )
        self.available = False
        # Fail closed: every item is decided REPLAY_UNAVAILABLE and the audit trail counts it
        # (metrics.observe_verification). Fail open: the items are accepted, so count here.
        if self._fail_open and items and self._metrics is not None:
            self._metrics.replay_store_errors.labels(backend=self.backend).inc(items)

    def _answered(self) -> None:
        if self.available is False:
            log.info("replay_store_available", backend=self.backend, location=self.location)
        self.available = True

    async def close(self) -> None:
        await self._client.aclose()
