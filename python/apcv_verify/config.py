"""Service configuration: one TOML file, every key overridable by an ``APCV_…`` variable.

Keys are ``section.key`` (``policy.clock_skew_seconds``); the matching environment
variable is ``APCV_`` + the upper-cased key with dots as underscores
(``APCV_POLICY_CLOCK_SKEW_SECONDS``). Precedence: defaults < file < environment < flags.
Everything is validated at start; a bad value raises :class:`ConfigError` naming the key.

The ``[[callers]]`` array of tables (the purpose policy, one entry per caller identity) is
the one key that is not ``section.key``: its environment override is ``APCV_CALLERS``, a
JSON array of the same tables. Without any ``[[callers]]`` entry, every caller gets the
``*`` entry :data:`DEFAULT_CALLER`: all uses, the default disclosure, no ``scanned_at``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ANY_CALLER",
    "ANONYMOUS_CALLER",
    "CALLER_PLACEHOLDER",
    "DEFAULT_CALLER",
    "DEFAULT_DISCLOSURE",
    "FIELD_GROUPS",
    "USES",
    "CallerPolicy",
    "ConfigError",
    "Config",
    "load_config",
    "redact_url",
]

ENV_PREFIX = "APCV_"

#: A shorter HMAC key for holder references could be guessed (docs/operations.md "Audit").
MIN_AUDIT_SECRET_CHARS = 16
#: Environment override of the ``[[callers]]`` table: a JSON array of caller tables.
CALLERS_ENV = "APCV_CALLERS"

#: The presentation uses of docs/profile.md §2.5.
USES = ("care", "dmp", "dp", "auth")
#: Field groups a response may disclose: the INS (and its identity qualification), identity
#: traits, AMO rights, AMC coverage.
FIELD_GROUPS = ("ins", "identity", "amo", "amc")
#: What each use discloses unless a caller's ``disclose`` says otherwise (README "Callers and
#: disclosure"): care and billing need traits, rights, complementary cover and the INS that
#: bills and files them; the shared medical record (DMP) and the pharmaceutical record (DP)
#: are indexed by the INS and need the traits to check it; logging in needs the INS only.
DEFAULT_DISCLOSURE: Mapping[str, tuple[str, ...]] = {
    "care": ("ins", "identity", "amo", "amc"),
    "dmp": ("ins", "identity"),
    "dp": ("ins", "identity"),
    "auth": ("ins",),
}
#: The caller id that matches every caller not listed by its own id.
ANY_CALLER = "*"
#: The caller id of a call without a client certificate (no TLS, or TLS without client auth).
ANONYMOUS_CALLER = "anonymous"
#: Caller ids are echoed in errors and logs; bound them.
MAX_CALLER_ID_LENGTH = 128
#: scanned_at older than a day is no "delayed scan" any more.
MAX_SCAN_DELAY_LIMIT = 86_400
#: A scan's ``reader_id`` is at most this many characters (the contract's limit).
MAX_READER_ID_LENGTH = 128
#: What stands for the caller's id (its certificate's CN) in a ``callers.readers`` entry.
CALLER_PLACEHOLDER = "{caller}"
#: Largest ``server.stream_window``: each request of one scan read ahead is at most 64 KiB
#: (server.MAX_REQUEST_BYTES); ``server.stream_memory_bytes`` bounds those of several.
MAX_STREAM_WINDOW = 10_000
#: Smallest ``server.stream_memory_bytes`` but 0: one request of one scan of the largest size
#: (service.decode.MAX_REQUEST_BYTES) must fit (a larger request of several scans waits for
#: the whole budget).
MIN_STREAM_MEMORY_BYTES = 64 * 1024
#: Largest keepalive and connection-age timer, in seconds (a week); gRPC takes int32 ms.
MAX_TIMER_SECONDS = 7 * 86_400
#: Largest ``server.max_message_bytes``: gRPC takes its limits as int32 and is let read
#: messages up to twice this setting (server.TRANSPORT_LIMIT_FACTOR).
MAX_MESSAGE_BYTES_LIMIT = 1024 * 1024 * 1024
#: ``replay.backend`` values.
REPLAY_BACKENDS = ("memory", "redis")
#: Longest ``replay.answer_retention_seconds``: a week.
MAX_ANSWER_RETENTION = 7 * 86_400
#: ``replay.redis_url`` schemes of Redis Sentinel and Redis Cluster (docs/operations.md).
REDIS_SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
REDIS_CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
#: Most ``server.workers``: one process per core is the point; more only adds contention.
MAX_WORKERS = 64
#: ``server.event_loop`` values.
EVENT_LOOPS = ("uvloop", "asyncio")
#: One name of ``server.grpc_experiments``: a gRPC experiment, ``-`` in front to turn it off.
GRPC_EXPERIMENT = re.compile(r"-?[a-z][a-z0-9_]*")


class ConfigError(ValueError):
    """A configuration key is missing, unknown or has an unusable value."""


@dataclass(frozen=True)
class ServerSection:
    #: host:port the gRPC server listens on.
    listen: str = "127.0.0.1:50051"
    #: host:port of a plaintext port that serves only the standard health service
    #: (grpc.health.v1), for probes that cannot speak mTLS (Kubernetes gRPC probes); "" = none.
    health_listen: str = ""
    #: Largest message accepted or sent, in bytes: a whole VerifyBatch must fit, so the
    #: default holds ``max_batch`` scans of about 2 kB (a QR code of 1,600 characters, the
    #: profile's design target, makes a scan of about 1.7 kB); so must a VerifyStream request
    #: of several scans. A request of one scan (Verify, a VerifyStream request with ``scan``)
    #: is bounded apart (server.MAX_REQUEST_BYTES), so a stream's read-ahead stays small.
    max_message_bytes: int = 2 * 1024 * 1024
    #: Seconds given to in-flight calls on shutdown.
    grace_seconds: float = 10.0
    #: Most scans in one VerifyBatch call (INVALID_ARGUMENT above it), in one VerifyStream
    #: request (each answered MALFORMED in place above it) and in a stream's micro-batch.
    max_batch: int = 1000
    #: VerifyStream: most requests read but not yet answered, per stream. When it is full the
    #: server stops reading that stream (HTTP/2 flow control then holds the client back), so
    #: one fast client cannot grow the server's memory (docs/operations.md "Streaming").
    stream_window: int = 256
    #: Most RPCs handled at once by this process; the next ones get RESOURCE_EXHAUSTED
    #: (TOO_MANY_CALLS). Health checks are counted apart (service.limits), so probes still
    #: answer when it is reached. 0 = no limit.
    max_concurrent_rpcs: int = 1000
    #: Most calls open at once on one HTTP/2 connection (streams included; health checks
    #: too); the next ones get RESOURCE_EXHAUSTED (TOO_MANY_CALLS), so one connection cannot
    #: fill ``max_concurrent_rpcs``. 0 = no limit.
    max_streams_per_connection: int = 100
    #: Most calls open at once for one caller: the client certificate's CN with mTLS, else the
    #: peer's IP address. 0 = no limit.
    max_streams_per_caller: int = 500
    #: Most calls gRPC holds for this process before a handler takes them: calls received
    #: while the process is busy wait there, in gRPC's core, and the service does not see
    #: them yet. Past it, gRPC ends each new call at once with CANCELLED (clients resend it:
    #: docs/integration.md) instead of queueing it behind calls the process cannot answer in
    #: time. Shorter waits and less memory past capacity, but more calls ended, each still
    #: read and ended by the server (docs/operations.md "Past capacity"). Under
    #: ``max_concurrent_rpcs`` it also ends part of a burst of more calls than it at once,
    #: calls the limits would otherwise have answered RESOURCE_EXHAUSTED. 0 = gRPC's own
    #: bound: from 1,000 waiting calls new ones are ended at random, all of them from 3,000.
    max_pending_calls: int = 0
    #: A VerifyStream whose client sends nothing for this many seconds while the server waits
    #: for a request is ended with UNAVAILABLE (STREAM_IDLE). 0 = never.
    stream_idle_seconds: float = 120.0
    #: Bytes of VerifyStream requests read and not yet answered, all streams together: beyond
    #: it streams stop reading (backpressure) and one that waits too long is ended with
    #: RESOURCE_EXHAUSTED (STREAM_MEMORY_EXHAUSTED). 0 = no budget.
    stream_memory_bytes: int = 64 * 1024 * 1024
    #: Seconds between the server's keepalive pings on a connection (detects dead peers
    #: behind NATs and load balancers): grpc.keepalive_time_ms.
    keepalive_time_seconds: float = 60.0
    #: Seconds to wait for a keepalive ping's answer before closing: grpc.keepalive_timeout_ms.
    keepalive_timeout_seconds: float = 20.0
    #: Clients pinging more often than this get GOAWAY ("too_many_pings"):
    #: grpc.http2.min_ping_interval_without_data_ms. Clients' keepalive_time must be above it.
    keepalive_min_ping_interval_seconds: float = 10.0
    #: Accept client keepalive pings on connections without calls (idle edge readers):
    #: grpc.keepalive_permit_without_calls.
    keepalive_permit_without_calls: bool = True
    #: A connection older than this is sent GOAWAY, so that clients reconnect and long
    #: streams rebalance across replicas: grpc.max_connection_age_ms. 0 = never.
    max_connection_age_seconds: float = 1800.0
    #: Seconds calls of a connection past its age get to finish before it is closed (open
    #: streams then end with UNAVAILABLE: resend unanswered requests):
    #: grpc.max_connection_age_grace_ms.
    max_connection_age_grace_seconds: float = 30.0
    #: Worker processes sharing server.listen (SO_REUSEPORT), forked before gRPC starts
    #: and supervised by the parent, which serves the metrics of all of them
    #: (docs/operations.md "Workers"). More than 1 needs replay.backend = "redis".
    workers: int = 1
    #: The asyncio event loop the server runs on: "uvloop" (libuv's, in C: less CPU per call
    #: and per stream message than the standard loop, docs/benchmarks.md "The event loop")
    #: or "asyncio" (the standard library's).
    event_loop: str = "uvloop"
    #: gRPC core experiments for the server process, as gRPC's GRPC_EXPERIMENTS variable
    #: (names separated by commas, ``-`` in front turns one off; "" = gRPC's defaults).
    #: The default turns off ``event_engine_listener``: accepted connections are then read
    #: and written by the thread that polls for calls, not handed to EventEngine's threads,
    #: so a call wakes fewer threads (docs/operations.md "gRPC's experiments"). Given to gRPC
    #: by ``apcv-verify serve`` before gRPC is loaded; a GRPC_EXPERIMENTS already in the
    #: environment is the operator's and is used instead.
    grpc_experiments: str = "-event_engine_listener"

    @property
    def grpc_experiments_variable(self) -> str:
        """``grpc_experiments`` as GRPC_EXPERIMENTS' value: the names, without spaces."""
        return ",".join(filter(None, (name.strip() for name in self.grpc_experiments.split(","))))


@dataclass(frozen=True)
class TlsSection:
    """TLS and mTLS. With ``client_ca``, the caller id is the client certificate's subject CN."""

    #: PEM server certificate (chain); TLS is on when this and ``server_key`` are set.
    server_cert: str = ""
    #: PEM private key of the server certificate.
    server_key: str = ""
    #: PEM CA bundle that client certificates must chain to (mTLS); the caller id is then
    #: the verified certificate's subject CN.
    client_ca: str = ""
    #: mTLS: true (the default) needs ``client_ca`` and refuses connections without a valid
    #: client certificate; false is TLS without client certificates (every caller is
    #: ``anonymous``). Optional client certificates are not offered: an unverified CN must
    #: never name a caller.
    require_client_auth: bool = True
    #: CRLs of the client CAs (PEM, one or more CRLs each, or DER), each signed by a CA of
    #: ``client_ca``: files, read again when they change, or http(s):// URLs (a CA's CRL
    #: distribution point), fetched every ``trust.refresh_seconds``. Every call's client
    #: certificate is refused when its CA's CRL lists it, is missing or is past its
    #: nextUpdate (README "TLS and mTLS"). Empty: no revocation is checked.
    client_crls: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.server_cert)


@dataclass(frozen=True)
class TrustSection:
    #: Trust anchors: PEM public keys or COSE_Key files (docs/profile.md §6.1: out of band).
    anchors: tuple[str, ...] = ()
    #: The signed trust list (COSE_Sign1): a file or an http(s):// URL.
    trust_list: str = ""
    #: Signed status-list CWTs (docs/profile.md §6.5): files or http(s):// URLs.
    status_lists: tuple[str, ...] = ()
    #: Seconds between refreshes of the trust list and status lists (files re-read when
    #: changed, URLs fetched with If-None-Match); 0 loads them once.
    refresh_seconds: float = 300.0
    #: Deadline of one HTTP(S) fetch of a list, in seconds, from connecting to the last byte.
    http_timeout_seconds: float = 10.0
    #: https:// sources: PEM file of the CA(s) the list servers' certificates chain to (an
    #: internal mirror's, a TLS-inspecting proxy's); empty: the system's CAs.
    http_tls_ca: str = ""
    #: https:// sources: this service's client certificate and its key (PEM files), for list
    #: servers that require one; both or neither.
    http_tls_cert: str = ""
    http_tls_key: str = ""
    #: How long a held trust list stays in use past its own expiry while no valid newer one
    #: arrives (docs/profile.md §6.3); after that the service fails closed: health
    #: NOT_SERVING and calls UNAVAILABLE (TRUST_LIST_EXPIRED) until a valid list is loaded.
    expired_grace_seconds: float = 86400.0


@dataclass(frozen=True)
class PolicySection:
    #: Accept INS test / demonstration OIDs (1.2.250.1.213.1.4.10 / .11). Never in production.
    allow_test_identities: bool = False
    #: Tolerated clock difference between phones and this server (docs/profile.md §7.3).
    clock_skew_seconds: int = 60
    #: How long past its expiry a status list is still used (0 = fail closed at expiry).
    status_grace_seconds: int = 0


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs and printed configurations)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


@dataclass(frozen=True)
class ReplaySection:
    """The replay store (docs/profile.md §7.4; docs/operations.md "Replay store")."""

    #: "memory": the in-process TTL set (one replica); "redis": a Redis server shared by
    #: every replica (SET NX with expiry).
    backend: str = "memory"
    #: Bound of the in-process store; beyond it verifications fail closed (REPLAY_UNAVAILABLE).
    max_entries: int = 1_000_000
    #: backend = "redis": redis://[[user]:password@]host:port/db, rediss://… (TLS) or
    #: unix:///path; Redis Sentinel: redis+sentinel://[[user]:password@]host:port[,host:port…]/
    #: <master name>[/db] (rediss+sentinel: TLS); Redis Cluster: redis+cluster://[[user]:password@]
    #: host:port[,host:port…] (rediss+cluster: TLS). A password in it is masked wherever the
    #: URL is shown (redact_url).
    redis_url: str = field(default="", repr=False, metadata={"secret": True, "redact": redact_url})
    #: Redis Sentinel: the sentinels' own password (their ``requirepass``), when they ask for
    #: one; the URL's password is the data nodes'. Empty: the sentinels are asked without one.
    redis_sentinel_password: str = field(default="", repr=False, metadata={"secret": True})
    #: Redis Sentinel: the ACL user that password is for, on sentinels with ACL users; empty:
    #: the sentinels' default user.
    redis_sentinel_username: str = ""
    #: TLS to Redis (a rediss URL): PEM file of the CA(s) the Redis servers' (and sentinels')
    #: certificates chain to; empty: the system's CAs. Relative to the config file.
    redis_tls_ca: str = ""
    #: This service's client certificate and its key (PEM files) for Redis servers that
    #: require one (Redis's own default with TLS: ``tls-auth-clients yes``); both or neither.
    redis_tls_cert: str = ""
    redis_tls_key: str = ""
    #: TLS to Redis: check that each server's certificate names the address it is reached at
    #: (the URL's host, or the address a Redis Cluster node or a sentinel announces). false:
    #: the chain is still checked against ``redis_tls_ca`` (required then), not the name —
    #: for Redis Cluster nodes announcing IP addresses their certificates do not carry.
    redis_tls_check_hostname: bool = True
    #: Prefix of the replay keys: the key of a presentation is prefix + hex(cti).
    key_prefix: str = "apcv:replay:"
    #: Seconds one Redis round trip (a whole batch) may take before the store counts as
    #: unavailable.
    timeout_seconds: float = 0.5
    #: When Redis cannot answer: "reject" (fail closed: REPLAY_UNAVAILABLE) or "accept"
    #: (fail open: accepted without a replay check, flagged in the response detail and the
    #: audit record). The in-process store always fails closed.
    on_store_error: str = "reject"
    #: Seconds the answer to a request is kept, so that a resend with the same caller,
    #: reader id and request id gets it back (answer recovery, docs/integration.md); 0: not
    #: kept (a resend is verified again).
    answer_retention_seconds: int = 86_400
    #: Bound of the in-process answer store (memory backend); when full, the oldest answer
    #: is dropped first (docs/operations.md "Answer recovery").
    answer_max_entries: int = 1_000_000
    #: Key of the keyed hashes answers are kept under (at least 16 characters). Empty: a
    #: random key per process (memory backend), or one drawn once and kept in Redis, shared
    #: by the replicas (redis backend).
    answer_secret: str = field(default="", repr=False, metadata={"secret": True})


@dataclass(frozen=True)
class CallerPolicy:
    """One ``[[callers]]`` entry: what a caller (client certificate CN) may do and see."""

    #: The client certificate's subject CN, ``anonymous`` (no certificate) or ``*`` (anyone else).
    id: str
    #: Presentation uses this caller may accept; any other use is PURPOSE_NOT_ALLOWED.
    uses: tuple[str, ...] = USES
    #: Field groups disclosed per use; a use missing here takes DEFAULT_DISCLOSURE.
    disclose: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: May send ``scanned_at`` (edge readers that queue scans); else PERMISSION_DENIED.
    may_send_scanned_at: bool = False
    #: How old ``scanned_at`` may be, in seconds (SCAN_TIME_INVALID beyond).
    max_scan_delay_seconds: int = 0
    #: The reader ids this caller may send: exact ids, or prefixes ending in ``*``
    #: (``ward-7-*``), where ``{caller}`` stands for the calling certificate's CN (so one
    #: ``*`` entry binds each reader's certificate to its own ids: ``["{caller}",
    #: "{caller}/*"]``). Empty: any (a scan's ``reader_id`` is declared by its caller, and
    #: replay judges a presentation per reader, so binding a caller to its readers keeps it
    #: from presenting as another caller's reader: docs/security.md). Another reader id is
    #: PERMISSION_DENIED (a stream item: answered in place), READER_NOT_ALLOWED.
    readers: tuple[str, ...] = ()

    @functools.cached_property
    def readers_name_the_caller(self) -> bool:
        """Whether :attr:`readers` holds :data:`CALLER_PLACEHOLDER`: its ids differ by caller."""
        return any(CALLER_PLACEHOLDER in reader for reader in self.readers)

    def disclosed(self, use: str) -> frozenset[str]:
        """The field groups a response for a presentation of ``use`` may carry."""
        return frozenset(self.disclose.get(use, DEFAULT_DISCLOSURE.get(use, ())))


#: The policy of every caller when no ``[[callers]]`` table is configured.
DEFAULT_CALLER = CallerPolicy(ANY_CALLER)


@dataclass(frozen=True)
class MetricsSection:
    #: host:port of the Prometheus ``/metrics`` HTTP endpoint; "" disables it.
    listen: str = "127.0.0.1:9464"


@dataclass(frozen=True)
class AuditSection:
    #: HMAC key of the pseudonymous ``holder_ref`` in audit records (docs/operations.md).
    #: Required in production: when empty a random per-process key is used, so references
    #: differ across restarts and replicas. Hidden from repr; ``metadata["secret"]`` tells
    #: any configuration printer to mask it.
    holder_ref_secret: str = field(default="", repr=False, metadata={"secret": True})
    #: File the audit records go to, apart from the operational logs (JSON lines, rotated
    #: by size); "" = stdout, mixed with the logs and told apart by ``"kind": "audit"``. With
    #: ``server.workers`` > 1 each worker writes its own file, ``<stem>.<worker><suffix>``.
    path: str = ""
    #: ``path``: rotate when the file would grow past this many bytes (0 = never rotate).
    max_bytes: int = 100 * 1024 * 1024
    #: ``path``: rotated files kept (``<path>.1`` the newest); 0 = the file is truncated.
    backup_count: int = 10


@dataclass(frozen=True)
class TracingSection:
    #: OpenTelemetry tracing (docs/operations.md "Tracing"): spans of each call and core call,
    #: trace ids in the logs, exported over OTLP as the standard ``OTEL_*`` variables say.
    #: Needs the ``tracing`` extra (``pip install 'apcv-verify[tracing]'``).
    enabled: bool = False


#: Default base of the FHIR extensions and naming systems this service defines where fr-core has
#: none (docs/fhir.md "Canonical base"): fixed across releases. The ``.invalid`` top-level domain
#: never resolves (RFC 6761 §6.4), so nobody else can own these URLs and no consumer mistakes
#: them for a published definition; operators who publish the definitions set their own base.
DEFAULT_FHIR_CANONICAL_BASE = "https://apcv-verify.invalid/fhir"


@dataclass(frozen=True)
class FhirSection:
    #: Base URL of this service's own FHIR extensions and naming systems (docs/fhir.md).
    canonical_base: str = DEFAULT_FHIR_CANONICAL_BASE


@dataclass(frozen=True)
class Config:
    server: ServerSection = field(default_factory=ServerSection)
    trust: TrustSection = field(default_factory=TrustSection)
    policy: PolicySection = field(default_factory=PolicySection)
    replay: ReplaySection = field(default_factory=ReplaySection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    audit: AuditSection = field(default_factory=AuditSection)
    fhir: FhirSection = field(default_factory=FhirSection)
    tracing: TracingSection = field(default_factory=TracingSection)
    tls: TlsSection = field(default_factory=TlsSection)
    #: The purpose policy, by caller id; empty means every caller is DEFAULT_CALLER.
    callers: tuple[CallerPolicy, ...] = ()

    def caller(self, caller_id: str) -> CallerPolicy | None:
        """The policy of ``caller_id``: its own entry, else ``*``, else None (not allowed)."""
        if not self.callers:
            return DEFAULT_CALLER
        by_id = self._callers_by_id
        return by_id.get(caller_id, by_id.get(ANY_CALLER))

    @functools.cached_property
    def _callers_by_id(self) -> dict[str, CallerPolicy]:
        """``callers`` by id, built on the first call's look-up, not on every call's (the
        configuration is frozen: ``dataclasses.replace`` makes a new one, with its own)."""
        return {caller.id: caller for caller in self.callers}

    def validate(self) -> Config:
        host, sep, port = self.server.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError("server.listen: expected HOST:PORT, e.g. 127.0.0.1:50051")
        self._validate_health_listen()
        if not 4096 <= self.server.max_message_bytes <= MAX_MESSAGE_BYTES_LIMIT:
            raise ConfigError(
                f"server.max_message_bytes: must be between 4096 and {MAX_MESSAGE_BYTES_LIMIT}"
            )
        if self.server.grace_seconds < 0:
            raise ConfigError("server.grace_seconds: must not be negative")
        if not 1 <= self.server.max_batch <= 100_000:
            raise ConfigError("server.max_batch: must be between 1 and 100000")
        self._validate_server_limits()
        if not self.trust.anchors:
            raise ConfigError("trust.anchors: at least one trust anchor is required")
        if not self.trust.trust_list:
            raise ConfigError("trust.trust_list: a trust list file or URL is required")
        for key, paths in (
            ("trust.anchors", self.trust.anchors),
            ("trust.trust_list", (self.trust.trust_list,)),
            ("trust.status_lists", self.trust.status_lists),
        ):
            for path in paths:
                if _is_url(path) and key != "trust.anchors":
                    continue
                if "://" in path:
                    what = "http(s) URLs or files" if key != "trust.anchors" else "files"
                    raise ConfigError(f"{key}: {path!r}: only {what} are supported")
                if not Path(path).is_file():
                    raise ConfigError(f"{key}: file not found: {path}")
        if self.trust.refresh_seconds < 0:
            raise ConfigError("trust.refresh_seconds: must not be negative (0 = no refresh)")
        if not 0 < self.trust.http_timeout_seconds <= 300:
            raise ConfigError("trust.http_timeout_seconds: must be between 0 (excluded) and 300")
        self._validate_list_tls()
        if self.trust.expired_grace_seconds < 0:
            raise ConfigError("trust.expired_grace_seconds: must not be negative")
        if not 0 <= self.policy.clock_skew_seconds <= 3600:
            raise ConfigError("policy.clock_skew_seconds: must be between 0 and 3600")
        if self.policy.status_grace_seconds < 0:
            raise ConfigError("policy.status_grace_seconds: must not be negative")
        self._validate_replay()
        if self.metrics.listen:
            host, sep, port = self.metrics.listen.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
                raise ConfigError('metrics.listen: expected HOST:PORT, e.g. 127.0.0.1:9464, or ""')
        if 0 < len(self.audit.holder_ref_secret) < MIN_AUDIT_SECRET_CHARS:
            raise ConfigError(
                f"audit.holder_ref_secret: at least {MIN_AUDIT_SECRET_CHARS} characters"
                " (e.g. `openssl rand -hex 32`)"
            )
        self._validate_audit()
        self._validate_fhir()
        self._validate_tls()
        self._validate_workers()
        if self.server.event_loop not in EVENT_LOOPS:
            raise ConfigError(
                f"server.event_loop: unknown loop {self.server.event_loop!r}"
                f" ({', '.join(EVENT_LOOPS)})"
            )
        for name in filter(None, self.server.grpc_experiments_variable.split(",")):
            if not GRPC_EXPERIMENT.fullmatch(name):
                raise ConfigError(
                    f"server.grpc_experiments: {name!r} is not an experiment name"
                    ' (e.g. "-event_engine_listener"; "" for gRPC\'s defaults)'
                )
        seen: set[str] = set()
        for caller in self.callers:
            if caller.id in seen:
                raise ConfigError(f"callers: caller {caller.id!r} is listed twice")
            seen.add(caller.id)
        return self

    def _validate_audit(self) -> None:
        audit = self.audit
        if audit.max_bytes < 0:
            raise ConfigError("audit.max_bytes: must not be negative (0 = never rotate)")
        if audit.backup_count < 0:
            raise ConfigError("audit.backup_count: must not be negative")
        if audit.path:
            directory = Path(audit.path).parent
            if not directory.is_dir():
                raise ConfigError(f"audit.path: directory not found: {directory}")
            if Path(audit.path).is_dir():
                raise ConfigError(f"audit.path: is a directory: {audit.path}")

    def _validate_fhir(self) -> None:
        # A canonical URL: absolute http(s), no query, fragment or trailing slash, since the
        # definitions' URLs are the base + "/StructureDefinition/<id>" (docs/fhir.md).
        base = self.fhir.canonical_base
        parts = urllib.parse.urlsplit(base)
        if (
            parts.scheme not in ("http", "https")
            or not parts.netloc
            or parts.query
            or parts.fragment
            or base.endswith("/")
            or any(char.isspace() for char in base)
        ):
            raise ConfigError(
                "fhir.canonical_base: expected an http(s) URL without query, fragment or"
                " trailing slash, e.g. https://fhir.example.org/apcv"
            )

    def _validate_health_listen(self) -> None:
        health_listen = self.server.health_listen
        if not health_listen:
            return
        host, sep, port = health_listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError('server.health_listen: expected HOST:PORT, e.g. 0.0.0.0:50052, or ""')
        if health_listen == self.server.listen and int(port) != 0:
            raise ConfigError("server.health_listen: must differ from server.listen")
        if self.server.workers > 1 and int(port) == 0:
            raise ConfigError("server.health_listen: several workers need a fixed port")

    def _validate_server_limits(self) -> None:
        server = self.server
        if not 1 <= server.stream_window <= MAX_STREAM_WINDOW:
            raise ConfigError(f"server.stream_window: must be between 1 and {MAX_STREAM_WINDOW}")
        if server.max_concurrent_rpcs < 0:
            raise ConfigError("server.max_concurrent_rpcs: must not be negative (0 = no limit)")
        for key in ("max_streams_per_connection", "max_streams_per_caller"):
            if getattr(server, key) < 0:
                raise ConfigError(f"server.{key}: must not be negative (0 = no limit)")
        if server.max_pending_calls < 0:
            raise ConfigError(
                "server.max_pending_calls: must not be negative (0 = gRPC's own bound)"
            )
        if not 0 <= server.stream_idle_seconds <= MAX_TIMER_SECONDS:
            raise ConfigError(
                f"server.stream_idle_seconds: must be between 0 and {MAX_TIMER_SECONDS} seconds"
            )
        if server.stream_memory_bytes and server.stream_memory_bytes < MIN_STREAM_MEMORY_BYTES:
            raise ConfigError(
                f"server.stream_memory_bytes: must be at least {MIN_STREAM_MEMORY_BYTES}"
                " (one request of the largest size) or 0 = no budget"
            )
        for key, value, minimum in (
            ("keepalive_time_seconds", server.keepalive_time_seconds, 1.0),
            ("keepalive_timeout_seconds", server.keepalive_timeout_seconds, 1.0),
            ("keepalive_min_ping_interval_seconds", server.keepalive_min_ping_interval_seconds, 0),
        ):
            if not minimum <= value <= MAX_TIMER_SECONDS:
                raise ConfigError(
                    f"server.{key}: must be between {minimum:g} and {MAX_TIMER_SECONDS} seconds"
                )
        for key, value in (
            ("max_connection_age_seconds", server.max_connection_age_seconds),
            ("max_connection_age_grace_seconds", server.max_connection_age_grace_seconds),
        ):
            if not 0 <= value <= MAX_TIMER_SECONDS:
                raise ConfigError(
                    f"server.{key}: must be between 0 and {MAX_TIMER_SECONDS} seconds"
                )

    def _validate_replay(self) -> None:
        replay = self.replay
        if replay.backend not in REPLAY_BACKENDS:
            raise ConfigError(
                f"replay.backend: unknown backend {replay.backend!r} ({', '.join(REPLAY_BACKENDS)})"
            )
        if replay.max_entries < 1:
            raise ConfigError("replay.max_entries: must be at least 1")
        if replay.on_store_error not in ("reject", "accept"):
            raise ConfigError(
                f"replay.on_store_error: {replay.on_store_error!r}: expected reject or accept"
            )
        if not 0 < replay.timeout_seconds <= 60:
            raise ConfigError("replay.timeout_seconds: must be between 0 (excluded) and 60")
        if not 0 < len(replay.key_prefix) <= 64:
            raise ConfigError("replay.key_prefix: between 1 and 64 characters")
        if not 0 <= replay.answer_retention_seconds <= MAX_ANSWER_RETENTION:
            raise ConfigError(
                f"replay.answer_retention_seconds: between 0 and {MAX_ANSWER_RETENTION} (7 days)"
            )
        if replay.answer_max_entries < 1:
            raise ConfigError("replay.answer_max_entries: must be at least 1")
        if 0 < len(replay.answer_secret) < MIN_AUDIT_SECRET_CHARS:
            raise ConfigError(f"replay.answer_secret: at least {MIN_AUDIT_SECRET_CHARS} characters")
        if replay.backend != "redis":
            return
        if not replay.redis_url:
            raise ConfigError('replay.redis_url: required when replay.backend = "redis"')
        schemes = ("redis", "rediss", "unix") + REDIS_SENTINEL_SCHEMES + REDIS_CLUSTER_SCHEMES
        try:
            parts = urllib.parse.urlsplit(replay.redis_url)
            hosts = parts.netloc.rpartition("@")[2].split(",")
            for host in hosts:
                urllib.parse.urlsplit(f"//{host}").port  # noqa: B018 (ValueError: bad port)
        except ValueError:
            parts = None
        shown = redact_url(replay.redis_url) if parts is not None else "(unparsable URL)"
        if parts is None or parts.scheme not in schemes:
            raise ConfigError(
                f"replay.redis_url: {shown}: expected redis://, rediss://, unix://, "
                "redis+sentinel://, rediss+sentinel://, redis+cluster:// or rediss+cluster:// URL"
            )
        if parts.scheme != "unix" and not all(
            urllib.parse.urlsplit(f"//{h}").hostname for h in hosts
        ):
            raise ConfigError(f"replay.redis_url: {shown}: no host")
        if parts.scheme in REDIS_SENTINEL_SCHEMES and not parts.path.strip("/"):
            raise ConfigError(f"replay.redis_url: {shown}: no master name (…/<master name>[/db])")
        if replay.redis_sentinel_password and parts.scheme not in REDIS_SENTINEL_SCHEMES:
            raise ConfigError(
                "replay.redis_sentinel_password: needs a Redis Sentinel replay.redis_url "
                "(redis+sentinel://, rediss+sentinel://)"
            )
        if replay.redis_sentinel_username and not replay.redis_sentinel_password:
            raise ConfigError(
                "replay.redis_sentinel_username: needs replay.redis_sentinel_password (the "
                "user's password)"
            )
        self._validate_redis_tls(parts.scheme.startswith("rediss"))

    def _validate_list_tls(self) -> None:
        trust = self.trust
        https = any(
            location.lower().startswith("https://")
            for location in (trust.trust_list, *trust.status_lists)
        )
        _check_tls_files(
            "trust.http_tls_",
            (trust.http_tls_ca, trust.http_tls_cert, trust.http_tls_key),
            None if https else "an https:// trust list or status list",
        )

    def _validate_redis_tls(self, tls: bool) -> None:
        replay = self.replay
        _check_tls_files(
            "replay.redis_tls_",
            (replay.redis_tls_ca, replay.redis_tls_cert, replay.redis_tls_key),
            None if tls else "a TLS replay.redis_url (rediss://, rediss+…://)",
        )
        if not replay.redis_tls_check_hostname and not (tls and replay.redis_tls_ca):
            # Without a CA of its own, any certificate of the system's public CAs would do.
            raise ConfigError(
                "replay.redis_tls_check_hostname: false needs a TLS replay.redis_url and the "
                "Redis servers' own CA in replay.redis_tls_ca"
            )

    def _validate_workers(self) -> None:
        workers = self.server.workers
        if not 1 <= workers <= MAX_WORKERS:
            raise ConfigError(f"server.workers: must be between 1 and {MAX_WORKERS}")
        if workers == 1:
            return
        if self.replay.backend == "memory":
            # The in-process replay store is per worker: a presentation replayed to another
            # worker would be accepted again (docs/profile.md §7.4).
            raise ConfigError(
                'server.workers: more than one worker needs replay.backend = "redis" '
                "(the memory store is per process: a replay across workers would go unseen)"
            )
        if self.server.listen.rpartition(":")[2] == "0":
            raise ConfigError("server.workers: several workers need a fixed port in server.listen")

    def _validate_tls(self) -> None:
        tls = self.tls
        if bool(tls.server_cert) != bool(tls.server_key):
            raise ConfigError("tls.server_cert: server_cert and server_key go together")
        if tls.client_ca and not tls.server_cert:
            raise ConfigError("tls.client_ca: needs tls.server_cert and tls.server_key")
        if tls.server_cert and tls.require_client_auth and not tls.client_ca:
            raise ConfigError(
                "tls.client_ca: required while tls.require_client_auth is true "
                "(set require_client_auth = false for TLS without client certificates)"
            )
        if tls.client_ca and not tls.require_client_auth:
            # gRPC Python can only request an optional client certificate without verifying
            # it, and an unverified CN must never name a caller.
            raise ConfigError(
                "tls.client_ca: client certificates are always required when a client CA is set;"
                " remove tls.require_client_auth = false"
            )
        if tls.client_crls and not tls.client_ca:
            raise ConfigError("tls.client_crls: needs tls.client_ca (the CAs that sign them)")
        for key, path in (
            ("tls.server_cert", tls.server_cert),
            ("tls.server_key", tls.server_key),
            ("tls.client_ca", tls.client_ca),
            *(("tls.client_crls", crl) for crl in tls.client_crls if not _is_url(crl)),
        ):
            if key == "tls.client_crls" and "://" in path:
                raise ConfigError(f"{key}: {path!r}: only http(s) URLs or files are supported")
            if path and not Path(path).is_file():
                raise ConfigError(f"{key}: file not found: {path}")


def _check_tls_files(prefix: str, files: tuple[str, str, str], missing: str | None) -> None:
    """The ``ca``, ``cert`` and ``key`` files of the settings ``prefix…``: each set one exists,
    the certificate and key go together, and none is set while ``missing`` names what they
    would need (None: nothing is missing)."""
    for name, path in zip(("ca", "cert", "key"), files, strict=True):
        if path and missing is not None:
            raise ConfigError(f"{prefix}{name}: needs {missing}")
        if path and not Path(path).is_file():
            raise ConfigError(f"{prefix}{name}: file not found: {path}")
    short = prefix.rpartition(".")[2]
    if bool(files[1]) != bool(files[2]):
        raise ConfigError(f"{prefix}cert: {short}cert and {short}key go together")


def _convert(key: str, annotation: str, raw: Any, *, from_env: bool) -> Any:
    """Coerce one value to the field's type, naming the key on failure."""
    try:
        if annotation == "bool":
            if from_env:
                lowered = str(raw).strip().lower()
                if lowered in ("1", "true", "yes", "on"):
                    return True
                if lowered in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            if not isinstance(raw, bool):
                raise ValueError
            return raw
        if annotation == "int":
            if isinstance(raw, bool):
                raise ValueError
            return int(raw)
        if annotation == "float":
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        if annotation == "str":
            if not isinstance(raw, str):
                raise ValueError
            return raw
        if annotation == "tuple[str, ...]":
            if from_env and isinstance(raw, str):
                return tuple(part.strip() for part in raw.split(",") if part.strip())
            if not isinstance(raw, list | tuple) or not all(isinstance(p, str) for p in raw):
                raise ValueError
            return tuple(raw)
    except ValueError:
        pass
    raise ConfigError(f"{key}: expected {annotation.replace('tuple[str, ...]', 'list of strings')}")


def _is_url(value: str) -> bool:
    return value.lower().startswith(("http://", "https://"))


def _relative_to(base: Path, value: str | tuple[str, ...]) -> str | tuple[str, ...]:
    """Paths in a config file are relative to that file, as a user reading it expects;
    URLs are kept as they are — any scheme, so that validation names one it does not take
    (joined to a path, ``ldap://x`` would read as a missing file ``ldap:/x``)."""
    if isinstance(value, str):
        return str(base / value) if value and "://" not in value else value
    return tuple(item if "://" in item else str(base / item) for item in value)


def _sections() -> dict[str, type]:
    return {
        f.name: f.default_factory  # type: ignore[misc]
        for f in dataclasses.fields(Config)
        if f.name != "callers"
    }


def _string_list(key: str, raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise ConfigError(f"{key}: expected list of strings")
    return tuple(raw)


def _caller(index: int, raw: Any) -> CallerPolicy:
    """One ``[[callers]]`` table, checked key by key (errors name ``callers[i].key``)."""
    where = f"callers[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table")
    given = dict(raw)
    caller_id = given.pop("id", None)
    if not isinstance(caller_id, str) or not caller_id:
        raise ConfigError(f"{where}.id: a non-empty string is required")
    if len(caller_id) > MAX_CALLER_ID_LENGTH:
        raise ConfigError(f"{where}.id: at most {MAX_CALLER_ID_LENGTH} characters")
    values: dict[str, Any] = {"id": caller_id}
    if "uses" in given:
        uses = _string_list(f"{where}.uses", given.pop("uses"))
        for use in uses:
            if use not in USES:
                raise ConfigError(f"{where}.uses: unknown use {use!r} ({', '.join(USES)})")
        values["uses"] = uses
    if "disclose" in given:
        disclose = given.pop("disclose")
        if not isinstance(disclose, dict):
            raise ConfigError(f"{where}.disclose: expected a table of use = [field groups]")
        checked: dict[str, tuple[str, ...]] = {}
        for use, groups in disclose.items():
            if use not in USES:
                raise ConfigError(f"{where}.disclose: unknown use {use!r} ({', '.join(USES)})")
            checked[use] = _string_list(f"{where}.disclose.{use}", groups)
            for group in checked[use]:
                if group not in FIELD_GROUPS:
                    raise ConfigError(
                        f"{where}.disclose.{use}: unknown field group {group!r} "
                        f"({', '.join(FIELD_GROUPS)})"
                    )
        values["disclose"] = checked
    if "may_send_scanned_at" in given:
        values["may_send_scanned_at"] = _convert(
            f"{where}.may_send_scanned_at", "bool", given.pop("may_send_scanned_at"), from_env=False
        )
    if "max_scan_delay_seconds" in given:
        delay = _convert(
            f"{where}.max_scan_delay_seconds",
            "int",
            given.pop("max_scan_delay_seconds"),
            from_env=False,
        )
        if not 0 <= delay <= MAX_SCAN_DELAY_LIMIT:
            raise ConfigError(
                f"{where}.max_scan_delay_seconds: must be between 0 and {MAX_SCAN_DELAY_LIMIT}"
            )
        values["max_scan_delay_seconds"] = delay
    if "readers" in given:
        values["readers"] = _readers(f"{where}.readers", given.pop("readers"))
    for unknown in given:
        raise ConfigError(f"{where}.{unknown}: unknown key")
    return CallerPolicy(**values)


def _readers(key: str, raw: Any) -> tuple[str, ...]:
    """A caller's reader ids: each an exact id or a prefix with one final ``*``, in which
    :data:`CALLER_PLACEHOLDER` stands for the caller's id."""
    readers = _string_list(key, raw)
    for reader in readers:
        stem = reader.removesuffix("*")
        if "*" in stem:
            raise ConfigError(f"{key}: {reader!r}: '*' may only end a reader id prefix")
        if not reader:
            raise ConfigError(f"{key}: empty reader id")
        if {"{", "}"} & set(stem.replace(CALLER_PLACEHOLDER, "")):
            # A misspelt placeholder ("{cn}") would silently be a literal reader id.
            raise ConfigError(f"{key}: {reader!r}: {CALLER_PLACEHOLDER} is the only name in braces")
        if len(stem) > MAX_READER_ID_LENGTH:
            raise ConfigError(f"{key}: {reader!r}: at most {MAX_READER_ID_LENGTH} characters")
    return readers


def _callers(document: dict[str, Any], environ: Mapping[str, str]) -> tuple[CallerPolicy, ...]:
    raw: Any = document.pop("callers", [])
    if CALLERS_ENV in environ:
        try:
            raw = json.loads(environ[CALLERS_ENV])
        except json.JSONDecodeError as error:
            raise ConfigError(f"callers: {CALLERS_ENV} is not valid JSON: {error}") from None
    if not isinstance(raw, list):
        raise ConfigError("callers: expected an array of tables ([[callers]])")
    return tuple(_caller(index, entry) for index, entry in enumerate(raw))


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the effective configuration and validate it.

    ``overrides`` maps ``section.key`` to a value (command-line flags); ``None`` values are
    skipped so unset flags do not mask the file or the environment.
    """
    environ = os.environ if environ is None else environ
    document: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as handle:
                document = tomllib.load(handle)
        except OSError as error:
            raise ConfigError(f"config file {path}: {error.strerror}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"config file {path}: invalid TOML: {error}") from None

    sections: dict[str, Any] = {"callers": _callers(document, environ)}
    for section_name, section_type in _sections().items():
        given = document.pop(section_name, {})
        if not isinstance(given, dict):
            raise ConfigError(f"{section_name}: expected a table")
        values: dict[str, Any] = {}
        for item in dataclasses.fields(section_type):
            key = f"{section_name}.{item.name}"
            annotation = str(item.type)
            if item.name in given:
                value = _convert(key, annotation, given.pop(item.name), from_env=False)
                relative = annotation in ("str", "tuple[str, ...]")
                in_files = (
                    section_name in ("trust", "tls")
                    or key == "audit.path"
                    or key.startswith("replay.redis_tls_")
                )
                if in_files and relative and path is not None:
                    value = _relative_to(Path(path).parent, value)
                values[item.name] = value
            env_name = ENV_PREFIX + key.replace(".", "_").upper()
            if env_name in environ:
                values[item.name] = _convert(key, annotation, environ[env_name], from_env=True)
            if overrides is not None and overrides.get(key) is not None:
                values[item.name] = _convert(key, annotation, overrides[key], from_env=False)
        for unknown in given:
            raise ConfigError(f"{section_name}.{unknown}: unknown key")
        sections[section_name] = section_type(**values)
    for unknown in document:
        raise ConfigError(f"{unknown}: unknown section")
    return Config(**sections).validate()
