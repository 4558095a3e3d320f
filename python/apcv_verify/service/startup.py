"""Starting and stopping the server: the grpc.aio server with the verifier service, health,
reflection, its interceptors, the ``/metrics`` endpoint, the trust refresh and the replay store.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from .. import _native
from ..config import Config, ConfigError, ServerSection
from ..observe.audit import AuditTrail
from ..observe.logs import configure_audit_file, flush_audit
from ..observe.metrics import ServiceMetrics, start_metrics_server
from ..observe.received import ReceivedCalls, server_ids
from ..observe.tracing import configure_tracing, current_tracing, shutdown_tracing
from ..replay.answers import AnswerRecovery
from ..replay.memory import memory_replay_store, register_replay_store_metrics
from ..replay.redis import RedisReplayStore
from ..trust.material import TrustMaterial
from ..trust.sources import TrustSource
from .certificates import ServerCertificates
from .interceptors import (
    CallInterceptor,
    ErrorInterceptor,
    MetricsInterceptor,
    TracingInterceptor,
)
from .limits import LimitMetrics, LimitsInterceptor
from .policy import caller_id
from .revocation import ClientRevocation
from .servicer import SERVICE_NAME, VerifierService, add_verifier_service

if TYPE_CHECKING:
    from collections.abc import Callable
    from wsgiref.simple_server import WSGIServer

__all__ = [
    "TRANSPORT_LIMIT_FACTOR",
    "ServerHandle",
    "build_verifiers",
    "serve",
    "server_options",
    "start_server",
]

log = structlog.get_logger("apcv_verify.service.startup")

#: gRPC's own receive limit is this many times ``server.max_message_bytes``: a message up to
#: it is read and refused by the service with a message naming the setting to raise (gRPC's
#: refusal names none, and carries no details); only a larger one is refused by gRPC before it
#: is read whole.
TRANSPORT_LIMIT_FACTOR = 2
#: How often health is brought in line with the trust material (a trust list that reaches its
#: expiry plus grace turns it NOT_SERVING within this).
HEALTH_FOLLOW_SECONDS = 1.0


def build_verifiers(
    config: Config, material: TrustMaterial, store: _native.MemoryReplayStore | None
) -> dict[int, _native.Verifier]:
    """One core verifier per distinct ``max_scan_delay`` of the callers table, by delay.

    They share one replay store, ``store`` (:func:`memory_replay_store`), so a presentation
    accepted for one caller is a replay for every other (docs/profile.md §7.4); only the
    scan-delay bound of the policy differs. With ``replay.backend = "redis"`` they have none
    (``store`` None): accepted results come back pending and the service settles them with
    :class:`~apcv_verify.replay.redis.RedisReplayStore`.
    """
    delays = {0} | {caller.max_scan_delay_seconds for caller in config.callers}
    verifiers = {}
    for delay in sorted(delays):
        policy = _native.Policy(
            allow_test_identities=config.policy.allow_test_identities,
            clock_skew=config.policy.clock_skew_seconds,
            status_grace=config.policy.status_grace_seconds,
            max_scan_delay=delay,
        )
        verifiers[delay] = _native.Verifier(
            material.trust_list, material.status_lists, policy, store
        )
    return verifiers


@dataclass
class ServerHandle:
    """A started server (:func:`start_server`), the port it bound, its health service and its
    metrics; :meth:`stop` shuts it down."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    metrics: ServiceMetrics | None = None
    #: The ``/metrics`` HTTP server (None when ``metrics.listen`` is "" or could not bind).
    metrics_http: WSGIServer | None = None
    #: The trust material holder and its background refresh.
    trust: TrustSource | None = None
    #: The shared replay store client (replay.backend = "redis").
    replay: RedisReplayStore | None = None
    #: The plaintext health-only server of ``server.health_listen`` (None when unset).
    health_server: grpc.aio.Server | None = None
    #: The port ``health_server`` bound.
    health_port: int | None = None
    #: The task that keeps health in line with the trust material (:func:`_follow_trust`).
    health_follower: asyncio.Task[None] | None = None
    #: ``apcv_grpc_calls_received_total`` of ``server`` (None if channelz could not say).
    received: ReceivedCalls | None = None
    #: The task that takes renewed ``tls.client_crls`` (None without them).
    crl_watch: asyncio.Task[None] | None = None

    async def stop(self, grace_seconds: float) -> None:
        """Report NOT_SERVING first, then let in-flight calls finish within the grace period."""
        await self.health.enter_graceful_shutdown()
        if self.health_follower is not None:
            self.health_follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.health_follower
        if self.trust is not None:
            await self.trust.stop()
        if self.received is not None:
            self.received.before_stop()  # gRPC's count goes with the server
        await self.server.stop(grace_seconds)
        if self.crl_watch is not None:
            self.crl_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.crl_watch
        if self.health_server is not None:
            # Last, so that probes see NOT_SERVING for the whole drain.
            await self.health_server.stop(None)
        if self.replay is not None:
            await self.replay.close()
        if self.metrics_http is not None:
            self.metrics_http.shutdown()
            self.metrics_http.server_close()
        flush_audit()  # the audit records of the last calls


def server_options(server: ServerSection) -> list[tuple[str, int]]:
    """The gRPC channel arguments of ``[server]``: message size, keepalive, connection age,
    calls waiting for the process (docs/operations.md "Limits"); timers in seconds become
    gRPC's milliseconds."""

    def ms(seconds: float) -> int:
        return round(seconds * 1000)

    options = [
        # The service refuses messages over max_message_bytes with a message naming it;
        # gRPC itself only those over TRANSPORT_LIMIT_FACTOR times it (see that constant).
        ("grpc.max_receive_message_length", TRANSPORT_LIMIT_FACTOR * server.max_message_bytes),
        ("grpc.max_send_message_length", server.max_message_bytes),
        ("grpc.keepalive_time_ms", ms(server.keepalive_time_seconds)),
        ("grpc.keepalive_timeout_ms", ms(server.keepalive_timeout_seconds)),
        (
            "grpc.http2.min_ping_interval_without_data_ms",
            ms(server.keepalive_min_ping_interval_seconds),
        ),
        ("grpc.keepalive_permit_without_calls", int(server.keepalive_permit_without_calls)),
    ]
    if server.max_connection_age_seconds > 0:
        options += [
            ("grpc.max_connection_age_ms", ms(server.max_connection_age_seconds)),
            ("grpc.max_connection_age_grace_ms", ms(server.max_connection_age_grace_seconds)),
        ]
    # server.workers > 1: every worker binds the same port and the kernel spreads the
    # connections over them (apcv_verify.cli.workers). One worker: a port already in use is an
    # error, not a silent share with whatever holds it.
    options.append(("grpc.so_reuseport", int(server.workers > 1)))
    # No BDP probing: with it gRPC grows each stream's receive window far beyond 64 KiB, and
    # streams whose clients write faster than the service reads made the process hold about
    # 7 MiB each in its transport buffers (200 such streams: 1.5 GB of RSS; without it: 57 MB,
    # docs/operations.md "Streams that hold memory"). The requests read ahead are bounded
    # apart, by server.stream_memory_bytes (service.limits).
    options.append(("grpc.http2.bdp_probe", 0))
    if server.max_pending_calls:
        # gRPC ends new calls at random between its soft and hard bounds; equal bounds make
        # the setting exact: every call past it is ended, none before.
        options += [
            ("grpc.server.max_pending_requests", server.max_pending_calls),
            ("grpc.server.max_pending_requests_hard_limit", server.max_pending_calls),
        ]
    return options


async def start_server(config: Config, material: TrustMaterial | None = None) -> ServerHandle:
    """Start serving; ``server.listen`` may use port 0 to pick a free port.

    Without ``material`` the trust list and status lists are loaded from their sources
    (a failing file raises; a failing URL leaves the server NOT_SERVING until a refresh
    loads it). Either way they are refreshed every ``trust.refresh_seconds``.
    """
    metrics = ServiceMetrics(stream_services=(SERVICE_NAME,))
    store = memory_replay_store(config.replay)
    if store is not None:
        register_replay_store_metrics(store, metrics.registry)
    trust = TrustSource(
        config, lambda loaded: build_verifiers(config, loaded, store), registry=metrics.registry
    )
    if material is not None:
        trust.seed(material)
    else:
        await trust.load_initial()
    # Metrics first, so that they see the status the error mapping sets and the calls the
    # limits refuse (tracing, when on, before them for the same reason). The limits are the
    # service's own, not grpc's maximum_concurrent_rpcs: that one counts health checks too
    # and refuses without details (service.limits). The three as one wrapper per method,
    # made when the services are registered (``calls.registration``), not as a server
    # interceptor that grpc.aio would run at every call.
    limit_metrics = LimitMetrics(metrics.registry)
    # tls.client_crls: each call's client certificate checked against its CA's CRL, as the
    # caller is named (gRPC Python's server credentials take no CRL).
    revocation = None
    if config.tls.client_crls:
        revocation = ClientRevocation(config.tls, config.trust, metrics.registry)
        await revocation.load()
    calls = CallInterceptor(
        MetricsInterceptor(metrics),
        ErrorInterceptor(),
        LimitsInterceptor(
            config.server,
            limit_metrics,
            stream_services=(SERVICE_NAME,),
            identify=caller_id if revocation is None else revocation.caller_id,
        ),
        # Without a client CA no client certificate is verified: every caller is anonymous.
        client_certificates=bool(config.tls.client_ca),
    )
    tracing = current_tracing()
    known_servers = server_ids()
    server = grpc.aio.server(
        # tracing.enabled (configure_tracing, in serve): a span around every call, outside
        # the wrappers, so that it ends with the status they set.
        interceptors=None if tracing is None else [TracingInterceptor(tracing)],
        options=server_options(config.server),
    )
    # gRPC's own count of the calls it received, beside the handlers' (observe.received).
    received = ReceivedCalls.of_new_server(known_servers, metrics.registry)
    registration = calls.registration(server)
    replay = (
        RedisReplayStore(
            config.replay,
            metrics,
            clock_skew=config.policy.clock_skew_seconds,
            max_scan_delay=max([0] + [c.max_scan_delay_seconds for c in config.callers]),
        )
        if config.replay.backend == "redis"
        else None
    )
    if replay is not None:
        # Logged either way; an unreachable Redis does not stop the start (docs/profile.md §7.4: the
        # verifications that need it fail closed, or open by policy, until it answers).
        log.info("replay_store", backend="redis", location=replay.location, up=await replay.ping())
    # Answers kept for resends where the replay entries are (memory, or the same Redis).
    recovery = AnswerRecovery.from_config(config.replay, metrics, replay)
    add_verifier_service(
        VerifierService(
            trust, config, AuditTrail.from_config(config, metrics), replay, recovery, revocation
        ),
        registration,
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, registration)
    # grpc.reflection.v1alpha: grpcio-reflection has no grpc.reflection.v1 service yet; clients
    # such as grpcurl try v1 first and fall back to v1alpha. Its asyncio servicer, as
    # reflection.enable_server_reflection picks for a grpc.aio server, registered through
    # the wrappers as the others.
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
        ),
        registration,
    )
    port = (
        server.add_secure_port(
            config.server.listen, ServerCertificates(config.tls, metrics.registry).credentials()
        )
        if config.tls.enabled
        else server.add_insecure_port(config.server.listen)
    )
    if port == 0:
        raise OSError(f"cannot listen on {config.server.listen}")
    await server.start()
    health_server, health_port = await _start_health_server(
        config.server, health_servicer, limit_metrics
    )
    metrics_http = _start_metrics_http(config.metrics.listen, metrics)

    loaded = trust.material
    trust_changed = asyncio.Event()

    async def loaded_now() -> None:
        trust_changed.set()

    serving = _trust_usable(trust)
    await _set_health(health_servicer, serving)
    if loaded is not None and not serving and not loaded.status_lists:
        _log_no_status_list(trust, loaded.trust_list.seq)
    follower = asyncio.get_running_loop().create_task(
        _follow_trust(trust, health_servicer, trust_changed, serving)
    )
    trust.start(on_loaded=loaded_now)
    crl_watch = (
        None if revocation is None else asyncio.get_running_loop().create_task(revocation.watch())
    )
    log.info(
        "serving" if loaded is not None else "waiting_for_trust_list",
        listen=config.server.listen,
        port=port,
        tls=config.tls.enabled,
        client_auth=bool(config.tls.client_ca),
        client_crls=len(config.tls.client_crls),
        trust_list_seq=None if loaded is None else loaded.trust_list.seq,
        status_lists=0 if loaded is None else len(loaded.status_lists),
        refresh_seconds=config.trust.refresh_seconds,
        metrics_port=None if metrics_http is None else metrics_http.server_port,
        health_port=health_port,
        event_loop=_loop_name(asyncio.get_running_loop()),
        # What gRPC was started with (server.grpc_experiments, or the environment's own).
        grpc_experiments=os.environ.get("GRPC_EXPERIMENTS", ""),
    )
    return ServerHandle(
        server,
        port,
        health_servicer,
        metrics,
        metrics_http,
        trust,
        replay,
        health_server=health_server,
        health_port=health_port,
        health_follower=follower,
        received=received,
        crl_watch=crl_watch,
    )


async def _start_health_server(
    server_config: ServerSection,
    health_servicer: health.aio.HealthServicer,
    limit_metrics: LimitMetrics,
) -> tuple[grpc.aio.Server | None, int | None]:
    """The plaintext port of ``server.health_listen``: the health service and nothing else.

    Kubernetes gRPC probes speak neither TLS nor mTLS; this port lets them see the status the
    main port reports (the same servicer: NOT_SERVING until a trust list is loaded and while
    draining) without offering any verification or reflection in clear text. Anyone who can
    reach it can call it, so its calls are bounded as the main port's health calls are
    (``MAX_HEALTH_CALLS`` at once, counted apart from the main port's): a flood of watches
    cannot hold memory without end nor keep the main port's probes from being answered.
    """
    if not server_config.health_listen:
        return None, None
    health_server = grpc.aio.server(
        interceptors=[LimitsInterceptor(server_config, limit_metrics)],
        # server.workers > 1: every worker binds it, as server.listen (server_options).
        options=[("grpc.so_reuseport", int(server_config.workers > 1))],
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
    port = health_server.add_insecure_port(server_config.health_listen)
    if port == 0:
        raise OSError(f"cannot listen on {server_config.health_listen}")
    await health_server.start()
    return health_server, port


def _loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """The event loop's library, as ``server.event_loop`` names it ("uvloop", "asyncio")."""
    return type(loop).__module__.partition(".")[0]


def _trust_usable(trust: TrustSource) -> bool:
    """A trust list loaded and not refused for its age, and at least one status list: with
    none, every presentation would be rejected STATUS_UNAVAILABLE (docs/profile.md §6.6), so
    the replica reports NOT_SERVING and load balancers send the calls elsewhere
    (``apcv_serving`` in the metrics says the same)."""
    snapshot = trust.current
    return (
        snapshot is not None
        and bool(snapshot.status_lists)
        and not trust.refuses(snapshot, time.time())
    )


async def _set_health(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.NOT_SERVING
    if serving:
        status = health_pb2.HealthCheckResponse.SERVING
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, status)


async def _follow_trust(
    trust: TrustSource,
    health_servicer: health.aio.HealthServicer,
    changed: asyncio.Event,
    serving: bool,
) -> None:
    """Health follows the trust material: SERVING while a trust list is loaded and not refused
    for its age (docs/profile.md §6.3), NOT_SERVING otherwise. Checked every
    :data:`HEALTH_FOLLOW_SECONDS` and at once when ``changed`` is set; once a graceful shutdown
    began, the servicer ignores these updates and stays NOT_SERVING."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), HEALTH_FOLLOW_SECONDS)
        changed.clear()
        usable = _trust_usable(trust)
        if usable == serving:
            continue
        snapshot = trust.current
        seq = None if snapshot is None else snapshot.trust_list.seq
        if usable:
            log.info("trust_list_usable", trust_list_seq=seq)
        elif snapshot is not None and not snapshot.status_lists:
            _log_no_status_list(trust, seq)
        elif snapshot is not None:
            log.error(
                "trust_list_refused",
                trust_list_seq=seq,
                expired_at=snapshot.trust_list.expires_at,
                expired_grace_seconds=trust.expired_grace_seconds,
                detail="past its expiry and grace: NOT_SERVING until a valid list loads",
            )
        await _set_health(health_servicer, usable)
        serving = usable


def _log_no_status_list(trust: TrustSource, seq: int | None) -> None:
    log.error(
        "no_status_list_loaded",
        trust_list_seq=seq,
        status_lists_configured=trust.status_sources,
        detail="every presentation would be STATUS_UNAVAILABLE: NOT_SERVING until a status "
        "list loads (trust.status_lists)",
    )


def _start_metrics_http(listen: str, metrics: ServiceMetrics) -> WSGIServer | None:
    """The ``/metrics`` endpoint; a port already taken is logged, not fatal.

    Verification matters more than its metrics: a second server on a laptop, or a port
    clash, must not stop the service (docs/operations.md "Metrics").
    """
    if not listen:
        return None
    try:
        return start_metrics_server(listen, metrics.registry)
    except OSError as error:
        log.error("metrics_unavailable", listen=listen, error=error.strerror or str(error))
        return None


async def _serve_until_signalled(config: Config) -> None:
    running = await start_server(config)
    # What startup built (modules, configuration, the first trust material: ~70,000 objects)
    # lives as long as the process: frozen out of the collector's sight, a full collection
    # walks only what calls create (measured: 50-60 ms -> 0.03 ms on a loaded 2-core machine,
    # a pause of every call in flight). Full collections are rare (none in 3,000 unary calls),
    # so ghz's p99 over a few seconds did not move (docs/benchmarks.md "Service, third
    # pass"); kept for the pause it bounds. Startup's garbage is collected first, so nothing
    # is frozen uncollectable; a raised gen-0 threshold did not help (the collector costs
    # ~1.5 µs per unary call) and is not used.
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("stopping", grace_seconds=config.server.grace_seconds)
    await running.stop(config.server.grace_seconds)


def event_loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """How to make the event loop ``server.event_loop`` names: uvloop's, or the standard
    library's."""
    if name != "uvloop":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:  # not installed where uvloop does not run (Windows)
        raise ConfigError(
            'server.event_loop: uvloop is not installed here; set "asyncio"'
        ) from None
    return uvloop.new_event_loop


def serve(config: Config) -> None:
    """Load and verify the trust material, then serve (refreshing it) until SIGINT/SIGTERM,
    on the event loop ``server.event_loop`` names. The audit records go to ``audit.path``
    when it is set (docs/operations.md "The audit record"), spans to OTLP when
    ``tracing.enabled`` (docs/operations.md "Tracing")."""
    new_loop = event_loop_factory(config.server.event_loop)
    audit = config.audit
    configure_audit_file(audit.path, audit.max_bytes, audit.backup_count)
    configure_tracing(config.tracing.enabled)
    try:
        with asyncio.Runner(loop_factory=new_loop) as runner:
            runner.run(_serve_until_signalled(config))
    finally:
        shutdown_tracing()  # export the last spans
