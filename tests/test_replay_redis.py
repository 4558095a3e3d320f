"""The shared replay store (docs/profile.md §7.4): a real ``redis-server`` on loopback
(installed by ``make system-deps``) and real ``apcv-verify serve`` processes sharing it."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2, verifier_pb2_grpc
from apcv_verify.issuer import DemoPKI, parse_sign1, tamper_signature
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .conftest import (
    REPO,
    RedisServer,
    ServerProcess,
    free_port,
    pki_config,
    start_server,
    stop_server,
)

PREFIX = "apcv:replay:"
ANSWERS = b"apcv:replay:answer"
#: The replicas' clock skew: small, so that a presentation issued after a noticed loss (at
#: least this much later) can be shown accepted without waiting a minute.
SKEW = 2


@dataclass
class Replica:
    server: ServerProcess
    metrics_port: int


def start_replica(
    pki: DemoPKI, log: Path, redis_server: RedisServer, on_store_error: str = "reject"
) -> Replica:
    # A password in the URL is never logged (redact_url); this server needs none.
    return start_redis_replica(
        pki,
        log,
        redis_server.url,
        APCV_REPLAY_ON_STORE_ERROR=on_store_error,
        APCV_POLICY_CLOCK_SKEW_SECONDS=str(SKEW),
    )


def start_redis_replica(pki: DemoPKI, log: Path, url: str, **environ: str) -> Replica:
    """``apcv-verify serve`` on the Redis at ``url``, its metrics on a port of its own;
    ``environ`` adds settings."""
    metrics_port = free_port()
    env = {
        "APCV_REPLAY_BACKEND": "redis",
        "APCV_REPLAY_REDIS_URL": url,
        "APCV_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
        **environ,
    }
    return Replica(
        start_server(pki.directory, log, "--allow-test-identities", env=env), metrics_port
    )


@pytest.fixture
def replicas(
    pki: DemoPKI, tmp_path: Path, redis_server: RedisServer
) -> Iterator[tuple[Replica, Replica]]:
    a = start_replica(pki, tmp_path / "a.log", redis_server)
    b = start_replica(pki, tmp_path / "b.log", redis_server)
    yield a, b
    stop_server(a.server)
    stop_server(b.server)


def request(
    presentation: bytes, reader_id: str, request_id: str | None = None
) -> verifier_pb2.Scan:
    """A scan; each a new request (its own id) unless ``request_id`` is given: a resend of
    a request gets the answer kept for it instead of a replay check (answer recovery)."""
    return verifier_pb2.Scan(
        request_id=request_id or f"r-{uuid.uuid4().hex[:12]}",
        nfc_bytes=presentation,
        reader=verifier_pb2.ReaderContext(reader_id=reader_id),
    )


def verify(replica: Replica, presentation: bytes, reader_id: str) -> verifier_pb2.Verdict:
    with replica.server.channel() as channel:
        stub = verifier_pb2_grpc.VerifierServiceStub(channel)
        scan = request(presentation, reader_id)
        return stub.Verify(verifier_pb2.VerifyRequest(scan=scan), timeout=10).verdict


def verify_batch(replica: Replica, items: list[tuple[bytes, str]]) -> list[verifier_pb2.Verdict]:
    """One VerifyBatch; its items' request ids are ``b-<index>-<a token new for each call>``."""
    token = uuid.uuid4().hex[:8]
    batch = verifier_pb2.VerifyBatchRequest(
        scans=[request(p, reader, f"b-{i}-{token}") for i, (p, reader) in enumerate(items)]
    )
    with replica.server.channel() as channel:
        reply = verifier_pb2_grpc.VerifierServiceStub(channel).VerifyBatch(batch, timeout=10)
    return list(reply.verdicts)


def replay_keys(client: Any) -> set[bytes]:
    """The replay entries (and the store's marker) in Redis, without the kept answers."""
    return {key for key in client.keys(PREFIX + "*") if not key.startswith(ANSWERS)}


def outcome(response: verifier_pb2.Verdict) -> tuple[str, str, bool]:
    return (
        verifier_pb2.Decision.Name(response.decision).removeprefix("DECISION_"),
        verifier_pb2.Reason.Name(response.reason).removeprefix("REASON_"),
        response.duplicate,
    )


ACCEPTED = ("ACCEPTED", "OK", False)
DUPLICATE = ("ACCEPTED", "OK", True)
REPLAYED = ("REJECTED", "REPLAYED", False)
UNAVAILABLE = ("REJECTED", "REPLAY_UNAVAILABLE", False)


def cti(presentation: bytes) -> bytes:
    value = parse_sign1(presentation).claims()[7]
    assert isinstance(value, bytes) and len(value) == 16
    return value


def metrics_text(replica: Replica) -> str:
    url = f"http://127.0.0.1:{replica.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.read().decode()


def replay_errors(replica: Replica, name: str = "apcv_replay_store_errors_total") -> float:
    text = metrics_text(replica)
    for line in text.splitlines():
        if line.startswith(name + '{backend="redis"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def log_events(replica: Replica) -> list[dict[str, object]]:
    events = []
    for line in replica.server.logs().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def audit_events(replica: Replica, timeout: float = 10.0) -> list[dict[str, object]]:
    """The audit records written so far, waiting for a first one: audit lines are buffered
    for up to 50 ms (docs/operations.md "The audit record")."""
    deadline = time.monotonic() + timeout
    while True:
        audit = [e for e in log_events(replica) if e.get("event") == "verification"]
        if audit or time.monotonic() > deadline:
            return audit
        time.sleep(0.02)


def health(replica: Replica) -> str:
    with replica.server.channel() as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def test_two_servers_sharing_redis_reject_a_presentation_replayed_across_them(
    replicas: tuple[Replica, Replica], pki: DemoPKI, redis_server: RedisServer
) -> None:
    a, b = replicas
    presentation = pki.present("alice")
    assert outcome(verify(a, presentation, "reader-1")) == ACCEPTED
    # Server B has never seen it, but Redis has: another reader is a replay...
    replayed = verify(b, presentation, "reader-2")
    assert outcome(replayed) == REPLAYED
    assert replayed.detail == "presentation already used at another reader"
    assert not replayed.HasField("person")
    # ...and a retry by the first reader, on either server, a flagged duplicate.
    retry = verify(b, presentation, "reader-1")
    assert outcome(retry) == DUPLICATE
    assert retry.person.ins.matricule  # accepted again with the person
    assert outcome(verify(a, presentation, "reader-1")) == DUPLICATE
    # The entry: SET NX with the first reader, expiring with the presentation (exp + skew).
    client = redis_server.client()
    key = PREFIX + cti(presentation).hex()
    assert client.get(key) == b"reader-1"
    assert 0 < client.ttl(key) <= 120 + 60 + 1  # exp = iat + 120 (issuer default), skew 60
    # A presentation refused by steps 1-8 never reaches the store (only its answer is
    # kept, for a resend: docs/operations.md "Answer recovery").
    keys = replay_keys(client)
    assert outcome(verify(b, tamper_signature(pki.present("alice")), "reader-1"))[1] == (
        "BAD_DEVICE_SIGNATURE"
    )
    assert replay_keys(client) == keys
    assert replay_errors(a) == replay_errors(b) == 0
    # The in-process store's gauges are the memory backend's: no such store here.
    assert "apcv_replay_store_entries" not in metrics_text(a)


def test_verify_batch_across_replicas_keeps_batch_order(
    replicas: tuple[Replica, Replica], pki: DemoPKI
) -> None:
    a, b = replicas
    first, second, third = (pki.present("alice") for _ in range(3))
    assert outcome(verify(a, first, "reader-1")) == ACCEPTED
    responses = verify_batch(
        b,
        [
            (second, "reader-3"),  # new
            (second, "reader-4"),  # the earlier item of the batch wins
            (first, "reader-1"),  # accepted on A for the same reader: duplicate
            (first, "reader-3"),  # accepted on A for another reader
            (second, "reader-3"),  # the batch's own first item again: duplicate
            (b"\x00junk", "reader-3"),  # rejected before the store
            (third, "reader-5"),
        ],
    )
    assert [outcome(r) for r in responses] == [
        ACCEPTED,
        REPLAYED,
        DUPLICATE,
        REPLAYED,
        DUPLICATE,
        ("REJECTED", "MALFORMED", False),
        ACCEPTED,
    ]
    assert [r.request_id.rsplit("-", 1)[0] for r in responses] == [f"b-{i}" for i in range(7)]
    # And back on A: what B's batch recorded holds there too.
    assert [outcome(r) for r in verify_batch(a, [(third, "reader-6"), (third, "reader-5")])] == [
        REPLAYED,
        DUPLICATE,
    ]


def test_redis_down_fails_closed_by_default_and_recovers(
    replicas: tuple[Replica, Replica], pki: DemoPKI, redis_server: RedisServer
) -> None:
    a, _ = replicas
    assert outcome(verify(a, pki.present("alice"), "reader-1")) == ACCEPTED
    redis_server.stop()
    refused = verify(a, pki.present("alice"), "reader-1")
    assert outcome(refused) == UNAVAILABLE
    assert refused.detail == "replay store unavailable"
    assert not refused.HasField("person")
    # Decided per item: a presentation refused by steps 1-8 keeps its own reason, and the
    # service stays SERVING (docs/operations.md "Replay store": all replicas share Redis).
    assert outcome(verify(a, b"\x00junk", "reader-1"))[1] == "MALFORMED"
    assert health(a) == "SERVING"
    batch = verify_batch(a, [(pki.present("alice"), "reader-1"), (pki.present("alice"), "r-2")])
    assert [outcome(r) for r in batch] == [UNAVAILABLE, UNAVAILABLE]
    assert replay_errors(a) == 3
    events = log_events(a)
    down = [e for e in events if e.get("event") == "replay_store_unavailable"]
    assert len(down) == 1 and down[0]["on_store_error"] == "reject"  # once per outage
    # Redis back, but empty (no persistence): it lost its entries, so a presentation issued
    # before that was noticed is still refused (test_a_redis_restarted_empty_...)...
    redis_server.start()
    assert outcome(verify(a, pki.present("alice"), "reader-1")) == UNAVAILABLE
    assert any(e.get("event") == "replay_store_available" for e in log_events(a))
    assert replay_errors(a) == 4
    # ...and the next one issued after it is checked again.
    time.sleep(SKEW + 1)
    assert outcome(verify(a, pki.present("alice"), "reader-1")) == ACCEPTED
    assert replay_errors(a) == 4


def test_a_redis_restarted_empty_refuses_presentations_issued_before_the_loss(
    replicas: tuple[Replica, Replica], pki: DemoPKI, redis_server: RedisServer
) -> None:
    """Redis restarted without its entries: a presentation accepted just before must not be
    accepted again at another reader; the loss is noticed by the marker key, recorded there for
    every replica, logged and counted; fresh presentations are accepted."""
    a, b = replicas
    presentation = pki.present("alice")
    assert outcome(verify(a, presentation, "reader-1")) == ACCEPTED
    client = redis_server.client()
    epoch = client.get(PREFIX + "store-epoch")
    assert isinstance(epoch, bytes) and epoch.endswith(b":0")  # written at first contact, no loss
    redis_server.stop()
    redis_server.start()  # empty: no persistence
    assert redis_server.client().dbsize() == 0
    started = time.time()
    # Without the marker, Redis would answer "new" here: a double acceptance.
    assert outcome(verify(b, presentation, "reader-2")) == UNAVAILABLE
    # The loss is recorded in the marker, so the other replica knows it as well, even for
    # the reader that presented it first.
    marker = redis_server.client().get(PREFIX + "store-epoch")
    assert isinstance(marker, bytes)
    noticed = int(marker.split(b":")[1])
    assert started - 1 <= noticed <= time.time() + 1
    assert outcome(verify(a, presentation, "reader-1")) == UNAVAILABLE
    assert outcome(verify(a, presentation, "reader-3")) == UNAVAILABLE
    # Once noticed, it stays refused on retries (the store now holds reader-2 for it).
    assert outcome(verify(b, presentation, "reader-2")) == UNAVAILABLE
    assert replay_errors(b, "apcv_replay_store_losses_total") == 1
    assert replay_errors(a, "apcv_replay_store_losses_total") == 0  # noticed once, by B
    lost = [e for e in log_events(b) if e.get("event") == "replay_store_lost_entries"]
    assert len(lost) == 1 and lost[0]["refused_until"] == noticed + 300 + 2 * SKEW
    # A restart is not an outage: the stale pooled connections of A were retried on fresh
    # ones instead of failing the call.
    assert not [e for e in log_events(a) if e.get("event") == "replay_store_unavailable"]
    # A presentation issued after the loss was noticed (beyond the skew) is checked as usual.
    time.sleep(max(0.0, noticed + SKEW + 1 - time.time()))
    fresh = pki.present("alice")
    assert outcome(verify(b, fresh, "reader-2")) == ACCEPTED
    assert outcome(verify(a, fresh, "reader-1")) == REPLAYED
    assert outcome(verify(a, fresh, "reader-2")) == DUPLICATE


def test_the_first_verification_after_a_restart_uses_a_fresh_connection(
    replicas: tuple[Replica, Replica], pki: DemoPKI, redis_server: RedisServer
) -> None:
    """Pooled connections to a Redis that restarted are dead: the call is tried once more
    on a fresh connection rather than failing while Redis is back."""
    a, _ = replicas
    for _ in range(3):
        assert outcome(verify(a, pki.present("alice"), "reader-1")) == ACCEPTED
    redis_server.stop()
    redis_server.start()
    # Redis answered (through a fresh connection): the loss is noticed, not an outage.
    assert outcome(verify(a, pki.present("alice"), "reader-1")) == UNAVAILABLE
    events = [e.get("event") for e in log_events(a)]
    assert "replay_store_lost_entries" in events and "replay_store_unavailable" not in events
    time.sleep(SKEW + 1)
    for _ in range(3):
        assert outcome(verify(a, pki.present("alice"), "reader-1")) == ACCEPTED
    assert replay_errors(a) == 1


@pytest.mark.slow
def test_redis_down_with_on_store_error_accept_fails_open_and_flags_it(
    pki: DemoPKI, tmp_path: Path, redis_server: RedisServer
) -> None:
    replica = start_replica(pki, tmp_path / "open.log", redis_server, on_store_error="accept")
    try:
        redis_server.stop()
        presentation = pki.present("alice")
        response = verify(replica, presentation, "reader-1")
        assert outcome(response) == ACCEPTED
        assert response.detail == "accepted without replay check: replay store unavailable"
        assert response.person.ins.matricule
        assert replay_errors(replica) == 1
        audit = audit_events(replica)
        assert audit[-1]["replay_unchecked"] is True and audit[-1]["decision"] == "ACCEPTED"
        down = [e for e in log_events(replica) if e.get("event") == "replay_store_unavailable"]
        assert down[0]["on_store_error"] == "accept"
        # Nothing was recorded, so nothing can be known: an unchecked presentation may pass
        # again elsewhere while Redis is down. That is the operator's explicit choice.
        assert outcome(verify(replica, presentation, "reader-2")) == ACCEPTED
        assert replay_errors(replica) == 2
    finally:
        stop_server(replica.server)


def test_start_with_redis_unreachable_serves_and_masks_the_password(
    pki: DemoPKI, tmp_path: Path
) -> None:
    metrics_port = free_port()
    env = {
        "APCV_REPLAY_BACKEND": "redis",
        "APCV_REPLAY_REDIS_URL": f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0",
        "APCV_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
    }
    server = start_server(pki.directory, tmp_path / "s.log", "--allow-test-identities", env=env)
    replica = Replica(server, metrics_port)
    try:
        assert health(replica) == "SERVING"
        assert outcome(verify(replica, pki.present("alice"), "reader-1")) == UNAVAILABLE
        logs = server.logs()
        assert "hunter2-secret" not in logs
        started = [e for e in log_events(replica) if e.get("event") == "replay_store"]
        assert started[0]["up"] is False and started[0]["location"] == (
            env["APCV_REPLAY_REDIS_URL"].replace("hunter2-secret", "***")
        )
    finally:
        stop_server(server)


def test_memory_backend_is_unchanged_and_per_process(pki: DemoPKI, tmp_path: Path) -> None:
    """Without Redis each process has its own store: the cross-replica replay is not seen
    (why several replicas need ``replay.backend = "redis"``)."""
    a = start_server(pki.directory, tmp_path / "m1.log", "--allow-test-identities",
                     env={"APCV_METRICS_LISTEN": ""})  # fmt: skip
    b = start_server(pki.directory, tmp_path / "m2.log", "--allow-test-identities",
                     env={"APCV_METRICS_LISTEN": ""})  # fmt: skip
    try:
        presentation = pki.present("alice")
        ra, rb = Replica(a, 0), Replica(b, 0)
        assert outcome(verify(ra, presentation, "reader-1")) == ACCEPTED
        assert outcome(verify(ra, presentation, "reader-2")) == REPLAYED
        assert outcome(verify(rb, presentation, "reader-2")) == ACCEPTED
    finally:
        stop_server(a)
        stop_server(b)


@pytest.mark.slow
def test_an_error_reply_for_one_item_fails_only_that_item_closed(
    replicas: tuple[Replica, Replica], pki: DemoPKI, redis_server: RedisServer
) -> None:
    """Redis answers the round trip but refuses one command (here: the key holds a list, so
    SET … GET is WRONGTYPE): that item is REPLAY_UNAVAILABLE, the others are decided."""
    a, _ = replicas
    blocked = bytes(range(16))
    redis_server.client().lpush(PREFIX + blocked.hex(), "not a reader")
    responses = verify_batch(
        a,
        [(pki.present("alice"), "reader-1"), (pki.present("alice", cti=blocked), "reader-1")],
    )
    assert [outcome(r) for r in responses] == [ACCEPTED, UNAVAILABLE]
    assert replay_errors(a) == 1
    assert any(
        e.get("event") == "replay_store_unavailable" and e.get("error") == "ResponseError"
        for e in log_events(a)
    )


def test_a_silent_redis_times_out_within_timeout_seconds(pki: DemoPKI) -> None:
    """A Redis that accepts connections but never answers (overloaded, a blackholed port)
    costs one call at most ``replay.timeout_seconds``, then the policy decides."""
    from apcv_verify import _native
    from apcv_verify.replay.redis import RedisReplayStore
    from apcv_verify.service.startup import build_verifiers
    from apcv_verify.trust.material import load_trust_material

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        config = pki_config(
            pki,
            {
                "replay.backend": "redis",
                "replay.redis_url": f"redis://127.0.0.1:{silent.getsockname()[1]}/0",
                "replay.timeout_seconds": 0.3,
            },
        )
        verifier = build_verifiers(config, load_trust_material(config), None)[0]
        assert verifier.external_replay
        now = int(time.time())
        scans = [_native.Scan(pki.present("alice"), "reader-1"), _native.Scan(b"junk", "r")]
        results = verifier.verify_batch(scans, now)
        assert [r.replay_pending for r in results] == [True, False]

        async def settle() -> tuple[list[_native.VerificationResult], float]:
            store = RedisReplayStore(config.replay)
            started = time.monotonic()
            try:
                return await store.settle(scans, results, now), time.monotonic() - started
            finally:
                await store.close()

        settled, elapsed = asyncio.run(settle())
    assert [r.reason for r in settled] == ["REPLAY_UNAVAILABLE", "MALFORMED"]
    assert not settled[0].replay_pending and settled[1] is results[1]
    assert 0.2 < elapsed < 2.0


def test_a_round_trip_that_timed_out_leaves_no_late_reply_for_the_next_one(
    pki: DemoPKI, redis_server: RedisServer
) -> None:
    """Redis stalls (``CLIENT PAUSE``) past ``replay.timeout_seconds``: that round trip fails
    closed, and its replies, sent once Redis resumes, are never read as the answers of the
    next round trip (the store bounds each round trip itself; the connection it was using is
    closed, not reused)."""
    from apcv_verify import _native
    from apcv_verify.replay.redis import RedisReplayStore
    from apcv_verify.service.startup import build_verifiers
    from apcv_verify.trust.material import load_trust_material

    config = pki_config(
        pki,
        {
            "replay.backend": "redis",
            "replay.redis_url": redis_server.url,
            "replay.timeout_seconds": 0.3,
        },
    )
    verifier = build_verifiers(config, load_trust_material(config), None)[0]
    stalled, taken = pki.present("alice"), pki.present("alice")

    async def run() -> list[str]:
        store = RedisReplayStore(config.replay)
        try:
            assert await store.ping()
            reasons = []
            for presentation, reader, pause in (
                (taken, "reader-2", False),  # accepted for reader-2
                (stalled, "reader-1", True),  # Redis stalls: fails closed
                (taken, "reader-1", False),  # REPLAYED, read from Redis, not a late reply
            ):
                if pause:
                    redis_server.client().execute_command("CLIENT", "PAUSE", 700, "ALL")
                now = int(time.time())
                scans = [_native.Scan(presentation, reader)]
                started = time.monotonic()
                settled = await store.settle(scans, verifier.verify_batch(scans, now), now)
                assert time.monotonic() - started < 0.6
                reasons.append(settled[0].reason)
                if pause:
                    await asyncio.sleep(0.8)  # Redis answers the stalled round trip now
            return reasons
        finally:
            await store.close()

    assert asyncio.run(run()) == ["OK", "REPLAY_UNAVAILABLE", "REPLAYED"]


@pytest.mark.slow
def test_verify_stream_shares_redis_with_unary_calls_on_another_replica(
    replicas: tuple[Replica, Replica], pki: DemoPKI
) -> None:
    a, b = replicas
    first, second = pki.present("alice"), pki.present("alice")
    assert outcome(verify(a, first, "reader-1")) == ACCEPTED
    scans = [
        request(first, "reader-2", "s-0"),  # accepted on A for another reader
        request(second, "reader-2", "s-1"),
        request(first, "reader-1", "s-2"),  # A's reader retrying: duplicate
        request(second, "reader-2", "s-3"),  # the stream's own earlier item: duplicate
    ]
    sent = [verifier_pb2.VerifyStreamRequest(scan=scan) for scan in scans]
    with b.server.channel() as channel:
        stub = verifier_pb2_grpc.VerifierServiceStub(channel)
        responses = [answer.verdict for answer in stub.VerifyStream(iter(sent), timeout=30)]
    assert [r.request_id for r in responses] == ["s-0", "s-1", "s-2", "s-3"]
    assert [outcome(r) for r in responses] == [REPLAYED, ACCEPTED, DUPLICATE, DUPLICATE]
    assert outcome(verify(a, second, "reader-9")) == REPLAYED


@pytest.mark.parametrize("parser", ["hiredis", "Python"])
def test_the_redis_cost_measure_runs_each_round_trip(
    redis_server: RedisServer, parser: str
) -> None:
    """loadtest/redis_cost.py (docs/benchmarks.md "Redis: the cost of answer recovery") keeps
    working with either reply parser: each round trip answers every item (no timing
    asserted)."""
    run = subprocess.run(
        [sys.executable, str(REPO / "loadtest" / "redis_cost.py"), "--url", redis_server.url,
         "--items", "40", "--sizes", "1,7", *(["--no-hiredis"] if parser == "Python" else [])],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert lines[0] == f"reply parser: {parser}"
    assert [line.split()[:2] for line in lines[1:]] == [
        [kind, size] for size in ("1", "7") for kind in ("lookup", "settle", "keep")
    ]


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:6390/0", "rediss://127.0.0.1:6390/0", "unix:///tmp/redis.sock",
     "redis+sentinel://127.0.0.1:26390/apcv"],
)  # fmt: skip
def test_commands_packed_in_c_are_the_bytes_redis_py_packs(url: str) -> None:
    """The store's clients (one server, TLS, a socket, Sentinel) pack with hiredis' C packer,
    and every command the store sends is the same bytes as redis-py's own packer makes."""
    import redis.asyncio.connection
    from apcv_verify.replay.redis import _PackedInC, make_client

    client = make_client(url, 0.5)
    made = client.connection_pool.make_connection()
    assert isinstance(made, _PackedInC)
    python = redis.asyncio.connection.Connection()
    commands = [
        ("SET", PREFIX + "store-epoch", "0f1e2d3c4b5a6978:0", "NX", "GET"),
        ("SET", PREFIX + bytes(range(16)).hex(), "reader-é", "NX", "GET", "EX", 181),
        ("SET", PREFIX + "answer:" + "ab" * 16, bytes(range(26)), "NX", "GET", "EX", 86400),
        ("MGET", *(PREFIX + "answer:" + f"{i:032x}" for i in range(3))),
        ("GET", PREFIX + "answer-secret"),
        ("INFO", "server"),
        ("PING",),
        ("CLIENT SETINFO", "LIB-NAME", "redis-py"),
        (b"CLIENT SETINFO", "LIB-VER", "8.1.0"),
    ]
    for command in commands:
        assert b"".join(made.pack_command(*command)) == b"".join(python.pack_command(*command))
    with pytest.raises(redis.DataError):
        made.pack_command("SET", "key", None)
