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
docs/operations.md "Replay store" for why. A round trip that fails on a dead connection (a
pooled connection to a Redis that restarted) is tried once more on fresh connections.

**A store that lost its entries** (Redis restarted empty, or failed over to a server without
them) would let a presentation accepted just before be accepted again. Every round trip starts
with ``SET <key_prefix>store-epoch <epoch> NX GET`` in the same pipeline: the marker holds a
random epoch and the time a loss was noticed (0 for none). A replica that finds the marker gone
or replaced since it last saw it has noticed a loss; it records the time in the marker, so that
every replica knows it, logs ``replay_store_lost_entries`` and counts it in
``apcv_replay_store_losses_total``. Until one maximum presentation lifetime plus twice the skew
plus the longest allowed scan delay has passed since then, a presentation issued (``iat``)
before the loss was noticed (plus the skew a reader's clock may be ahead) is refused with
``REPLAY_UNAVAILABLE`` whatever the policy, since no store can vouch for it; fresh ones are
checked as usual.

Topologies, by URL scheme: ``redis://``, ``rediss://`` (TLS), ``unix://`` (one server);
``redis+sentinel://`` / ``rediss+sentinel://`` ``[[user]:password@]host:port[,host:port…]/<master
name>[/db]`` (Redis Sentinel: the master is looked up on the sentinels at each new connection);
``redis+cluster://`` / ``rediss+cluster://`` ``[[user]:password@]host:port[,host:port…]`` (Redis
Cluster: the pipeline is split by slot across the masters). Over TLS the servers' and
sentinels' certificates are checked against ``replay.redis_tls_ca`` (else the system's CAs),
and ``replay.redis_tls_cert``/``redis_tls_key`` are presented to servers that require a client
certificate (:func:`tls_options`). ``SET … NX GET`` needs Redis 7:
an older server is logged as an error (``replay_store_unsupported``) and every pending item
fails closed.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import redis.asyncio as aioredis
import structlog
from prometheus_client import Counter
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, RedisError

from .. import _native
from ..config import REDIS_CLUSTER_SCHEMES as CLUSTER_SCHEMES
from ..config import REDIS_SENTINEL_SCHEMES as SENTINEL_SCHEMES
from ..config import ReplaySection, redact_url

try:
    import hiredis
except ImportError:  # installed without it (a dependency): redis-py's own packer and parser
    hiredis = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from ..observe.metrics import ServiceMetrics

__all__ = ["RedisReplayStore"]

log = structlog.get_logger("apcv_verify.replay.redis")

Outcome = Literal["new", "same_reader", "other_reader", "unavailable", "unchecked"]

#: The longest presentation lifetime the core accepts (``exp - iat``, docs/profile.md §7.2).
MAX_PRESENTATION_LIFETIME = 300
#: The oldest Redis that has ``SET … NX GET``.
MINIMUM_REDIS_VERSION = (7, 0)
#: Suffix of the marker key (not hexadecimal: it cannot collide with a replay key).
EPOCH_KEY = "store-epoch"


def _hosts(netloc: str, default_port: int) -> tuple[str | None, str | None, list[tuple[str, int]]]:
    """The username (a Redis ACL user), the password and the ``host:port`` list of a sentinel
    or cluster URL's netloc (``[[user]:password@]host[:port][,host[:port]…]``)."""
    username = password = None
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        user, colon, secret = userinfo.partition(":")
        if not colon:  # "password@host": a password alone, as before ACL users
            user, secret = "", userinfo
        username = urllib.parse.unquote(user) or None
        password = urllib.parse.unquote(secret) or None
    hosts = []
    for item in netloc.split(","):
        host, _, port = item.rpartition(":")
        if not port.isdigit():  # no port: the item is the host
            host, port = item, str(default_port)
        hosts.append((host.strip("[]"), int(port)))
    return username, password, hosts


#: Ports of a sentinel or cluster URL's hosts that give none.
SENTINEL_PORT = 26379
REDIS_PORT = 6379


class _PackedInC:
    """Packs each command with hiredis' C packer (``hiredis.pack_command``), as redis-py's
    synchronous client does when hiredis is installed; its asyncio client packs in Python,
    which was a third of the store's CPU per item (docs/benchmarks.md "Redis: the cost of
    answer recovery"). The commands sent are the same bytes: every argument the store sends
    is a str (UTF-8), bytes or int."""

    def pack_command(self, *args: Any) -> list[bytes]:
        # A command name of several words ("CLIENT SETINFO") goes as several arguments.
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError as error:  # what redis-py's packer raises for an unusable argument
            raise DataError(str(error)) from error


def _packed_in_c(client: Any) -> Any:
    """``client`` with its pool's connections packing in C (:class:`_PackedInC`). Not for
    Redis Cluster, whose client makes its connections itself: it keeps redis-py's packer."""
    pool = client.connection_pool
    if hiredis is not None and not issubclass(pool.connection_class, _PackedInC):
        pool.connection_class = type(
            pool.connection_class.__name__, (_PackedInC, pool.connection_class), {}
        )
    return client


def tls_options(config: ReplaySection) -> dict[str, Any]:
    """redis-py's TLS arguments of ``config`` (``replay.redis_tls_*``), for a rediss URL:
    the CA and client certificate files set, and the host name check when it is turned off
    (redis-py checks it by default)."""
    files = {
        "ssl_ca_certs": config.redis_tls_ca,
        "ssl_certfile": config.redis_tls_cert,
        "ssl_keyfile": config.redis_tls_key,
    }
    options: dict[str, Any] = {name: path for name, path in files.items() if path}
    if not config.redis_tls_check_hostname:
        options["ssl_check_hostname"] = False
    return options


def make_client(
    url: str,
    timeout: float,
    tls_files: Mapping[str, Any] | None = None,
    sentinel_password: str = "",
    sentinel_username: str = "",
) -> Any:
    """The client for ``url`` (see the module docstring for the schemes): one attempt per
    command (the store retries a dead connection itself), ``timeout`` to connect;
    ``tls_files`` (:func:`tls_options`) for the TLS connections of a rediss URL, to the
    servers and to the sentinels; ``sentinel_password`` for sentinels that ask for one (for
    their ACL user ``sentinel_username``, else their default user).

    No timeout per socket operation on the data connections: every use of the client is
    within the store's own ``asyncio.timeout`` of one round trip (``timeout_seconds``), which
    ends it at the same time or earlier, and redis-py's own cost a task per send and a timer
    per reply. A round trip ended by that timeout, or by the call's cancellation, closes the
    connection it was using (redis-py drops a connection interrupted while sending or
    reading), so no late reply is read by a later command."""
    options: dict[str, Any] = {
        "socket_timeout": None,  # not redis-py's default (5 s in recent versions)
        "socket_connect_timeout": timeout,
    }
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.startswith("rediss"):
        options.update(tls_files or {})
    if parts.scheme in SENTINEL_SCHEMES:
        username, password, sentinels = _hosts(parts.netloc, SENTINEL_PORT)
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ValueError("a sentinel URL needs the master's name as its path")
        tls = parts.scheme.startswith("rediss")
        sentinel = Sentinel(
            sentinels,
            # The sentinels are asked at each new connection, within the round trip's timeout
            # too; their own timeout per operation stays.
            sentinel_kwargs={
                **options,
                "socket_timeout": timeout,
                "ssl": tls,
                "username": sentinel_username or None,
                "password": sentinel_password or None,
            },
            ssl=tls,
            db=int(path[1]) if len(path) > 1 else 0,
            retry=Retry(NoBackoff(), 0),
            # The data nodes' user (the sentinels': sentinel_password).
            username=username,
            password=password,
            **options,
        )
        return _packed_in_c(sentinel.master_for(path[0]))
    if parts.scheme in CLUSTER_SCHEMES:
        username, password, nodes = _hosts(parts.netloc, REDIS_PORT)
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in nodes],
            username=username,
            password=password,
            ssl=parts.scheme.startswith("rediss"),
            **options,
        )
    return _packed_in_c(
        aioredis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), retry_on_timeout=False, **options)
    )


def parse_version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:2] if part.isdigit())


class RedisReplayStore:
    """Settles the pending results of a batch against Redis (see the module docstring)."""

    backend = "redis"

    def __init__(
        self,
        config: ReplaySection,
        metrics: ServiceMetrics | None = None,
        *,
        client: aioredis.Redis | None = None,
        clock_skew: int = 60,
        max_scan_delay: int = 0,
    ) -> None:
        self._prefix = config.key_prefix
        self._timeout = config.timeout_seconds
        self._fail_open = config.on_store_error == "accept"
        self._metrics = metrics
        #: Where Redis is, for logs: the URL with any password masked.
        self.location = redact_url(config.redis_url)
        # One attempt per command: the batch's caller is waiting; only a dead connection is
        # retried, once (settle).
        self._client = client or make_client(
            config.redis_url,
            config.timeout_seconds,
            tls_options(config),
            config.redis_sentinel_password,
            config.redis_sentinel_username,
        )
        #: False from a failed round trip until one succeeds (None before the first).
        self.available: bool | None = None
        self._marker = self._prefix + EPOCH_KEY
        self._skew = clock_skew
        #: How long after a noticed loss presentations issued before it are refused.
        self.loss_window = MAX_PRESENTATION_LIFETIME + 2 * clock_skew + max_scan_delay
        #: The marker's epoch last seen, and when (None before the first contact).
        self._epoch: str | None = None
        self._epoch_seen_at = 0
        #: When the last loss was noticed (0: none).
        self.loss_noticed_at = 0
        #: The server's version, once known: below MINIMUM_REDIS_VERSION everything fails closed.
        self.version: tuple[int, ...] | None = None
        self._losses: Counter | None = None
        if metrics is not None:
            self._losses = Counter(
                "apcv_replay_store_losses_total",
                "Times the shared replay store was found to have lost its entries (restarted "
                "empty or failed over without them).",
                ["backend"],
                registry=metrics.registry,
            )
            self._losses.labels(backend=self.backend)  # exported from 0 for increase()

    def __repr__(self) -> str:
        return f"RedisReplayStore({self.location!r})"

    @property
    def client(self) -> Any:
        """The Redis client (shared with the answer store, :mod:`.answers`)."""
        return self._client

    async def ping(self) -> bool:
        """One PING and the server's version within the timeout; logs and records the answer
        (used at start)."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._client.ping()
                await self._check_version()
                if self.supported:
                    # Learn the store's epoch now, so that a loss before the first
                    # verification is noticed too.
                    answers = await self._round_trip([], int(time.time()))
                    if isinstance(answers[0], BaseException):
                        raise answers[0]
        except (RedisError, OSError, TimeoutError) as error:
            self._failed(error, items=0)
            return False
        self._answered()
        return self.supported

    @property
    def supported(self) -> bool:
        """False once the server is known to be older than Redis 7 (no ``SET … NX GET``)."""
        return self.version is None or self.version >= MINIMUM_REDIS_VERSION

    async def _check_version(self) -> None:
        if self.version is not None:
            return
        info = await self._client.info("server")
        # A cluster answers per node: the oldest one counts.
        answers = info.values() if info and "redis_version" not in info else [info]
        versions = [
            parse_version(str(a.get("redis_version", "0"))) for a in answers if isinstance(a, dict)
        ]
        self.version = min(versions) if versions else (0,)
        if not self.supported:
            log.error(
                "replay_store_unsupported",
                backend=self.backend,
                location=self.location,
                version=".".join(map(str, self.version)),
                required="7.0",
                detail="SET NX GET needs Redis 7: pending verifications are refused with "
                "REPLAY_UNAVAILABLE (fail closed)",
            )

    async def _round_trip(self, commands: Sequence[tuple[str, str, int]], now: int) -> list[Any]:
        """One pipelined round trip: the marker, then ``SET key reader NX GET EX ttl`` per
        command. A dead connection (a restarted server) is retried once on fresh ones."""
        noticed = now if self._epoch is not None else 0
        candidate = f"{secrets.token_hex(8)}:{noticed}"
        for attempt in (1, 2):
            pipe = self._client.pipeline(transaction=False)
            add = pipe.execute_command
            add("SET", self._marker, candidate, "NX", "GET", get=True)
            for key, reader, ttl in commands:
                # What pipe.set(key, reader, nx=True, get=True, ex=ttl) sends, without its
                # per-call argument checks.
                add("SET", key, reader, "NX", "GET", "EX", ttl, get=True)
            try:
                answers: list[Any] = await pipe.execute(raise_on_error=False)
            except RedisConnectionError:
                if attempt == 2:
                    raise
                await self._reset_connections()
                continue
            if attempt == 1 and any(isinstance(a, RedisConnectionError) for a in answers):
                await self._reset_connections()
                continue
            answers[0] = await self._epoch_answer(answers[0], candidate, now)
            return answers
        raise AssertionError("unreachable")

    async def _reset_connections(self) -> None:
        pool = getattr(self._client, "connection_pool", None)
        if pool is not None:
            await pool.disconnect()

    async def _epoch_answer(self, answer: object, candidate: str, now: int) -> object:
        """Reads the marker's answer, notices a loss; returns the error if the marker failed."""
        if isinstance(answer, BaseException):
            return answer
        text = candidate if answer is None else _text(answer)
        epoch, _, noticed_text = text.partition(":")
        noticed = int(noticed_text) if noticed_text.isdigit() else 0
        lost = self._epoch is not None and (
            # We created the marker (our candidate records the loss), or another replica
            # replaced it without recording one (its first contact with an empty store).
            text == candidate or (epoch != self._epoch and noticed < self._epoch_seen_at)
        )
        if lost:
            if text != candidate:
                noticed = now
                await self._client.set(self._marker, f"{epoch}:{now}")
            log.error(
                "replay_store_lost_entries",
                backend=self.backend,
                location=self.location,
                refused_until=now + self.loss_window,
                detail="the replay store lost its entries (restarted empty or failed over "
                "without them): presentations issued before now are refused with "
                "REPLAY_UNAVAILABLE until refused_until",
            )
            if self._losses is not None:
                self._losses.labels(backend=self.backend).inc()
        elif epoch != self._epoch and noticed and self._epoch is not None:
            log.warning(
                "replay_store_loss_noticed_elsewhere", backend=self.backend, noticed_at=noticed
            )
        self._epoch, self._epoch_seen_at = epoch, now
        self.loss_noticed_at = max(self.loss_noticed_at, noticed)
        return None

    def _lost_for(self, issued_at: int | None, now: int) -> bool:
        """True for a presentation no store can vouch for: issued before the loss noticed."""
        noticed = self.loss_noticed_at
        if not noticed or now >= noticed + self.loss_window:
            return False
        return issued_at is None or issued_at < noticed + self._skew

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
        tickets = []
        for index in pending:
            result = results[index]
            key, keep_until = result.replay_key, result.replay_expires_at
            assert key is not None and keep_until is not None  # set while pending
            tickets.append((key, scans[index].reader_id, keep_until, result.replay_issued_at))
        outcomes = await self._outcomes(tickets, now)
        settled = list(results)
        for index, outcome in zip(pending, outcomes, strict=True):
            settled[index] = results[index].with_replay_outcome(outcome)
        return settled

    async def settle_wire(self, batch: _native.WireBatch, now: int) -> None:
        """:meth:`settle` of a verified :class:`~apcv_verify._native.WireBatch`, in place."""
        pending = batch.pending()
        if pending:
            outcomes = await self._outcomes([ticket[1:] for ticket in pending], now)
            batch.settle([(ticket[0], o) for ticket, o in zip(pending, outcomes, strict=True)])

    async def _outcomes(
        self, tickets: Sequence[tuple[bytes, str, int, int | None]], now: int
    ) -> list[Outcome]:
        """The store's answer for each pending presentation, ``(key, reader_id, keep_until,
        issued_at)``, in one round trip and in order."""
        commands = [
            (self._prefix + key.hex(), reader_id, max(1, keep_until - now + 1))
            for key, reader_id, keep_until, _issued_at in tickets
        ]
        answers: list[object] | None
        try:
            async with asyncio.timeout(self._timeout):
                await self._check_version()
                answers = await self._round_trip(commands, now) if self.supported else None
        except (RedisError, OSError, TimeoutError) as error:
            self._failed(error, items=len(tickets))
            answers = None
        if not self.supported:
            return ["unavailable"] * len(tickets)
        if answers is not None and isinstance(answers[0], BaseException):
            # No epoch, no vouching: the whole batch fails as if Redis had not answered.
            self._failed(answers[0], items=len(tickets))
            answers = None
        if answers is not None:
            answers = answers[1:]
            failed = sum(isinstance(answer, BaseException) for answer in answers)
            if failed:
                first = next(a for a in answers if isinstance(a, BaseException))
                self._failed(first, items=failed)
            else:
                self._answered()
        outcomes: list[Outcome] = []
        for position, (_key, reader_id, _keep_until, issued_at) in enumerate(tickets):
            answer = None if answers is None else answers[position]
            outcome = self._outcome(answer, reader_id, failed=answers is None)
            if answers is not None and self._lost_for(issued_at, now):
                outcome = "unavailable"  # whatever the policy: the store cannot vouch
            outcomes.append(outcome)
        return outcomes

    def _outcome(self, answer: object, reader_id: str, *, failed: bool) -> Outcome:
        if failed or isinstance(answer, BaseException):
            return "unchecked" if self._fail_open else "unavailable"
        if answer is None:
            return "new"
        return "same_reader" if _text(answer) == reader_id else "other_reader"

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


def _text(answer: object) -> str:
    return answer.decode("utf-8", "replace") if isinstance(answer, bytes) else str(answer)
