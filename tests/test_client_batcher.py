"""apcv_verify.client.EdgeBatcher against a real ``apcv-verify serve`` process: every scan one
final answer, grouping by size and time, the spool across a restart, metrics hooks, and the
errors that stop it."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from apcv_verify._proto.apcv.verify.v1.verifier_pb2 import VerifyStreamRequest
from apcv_verify.client import (
    MAX_REQUEST_BYTES,
    Answer,
    DuplicateScanError,
    EdgeBatcher,
    MessageTooLargeError,
    PermissionDeniedError,
    Reason,
    RetryPolicy,
    SpoolBusyError,
    TLSConfig,
)
from apcv_verify.client.spool import Spool
from apcv_verify.issuer import DemoPKI, qr_text

from .conftest import ServerProcess, free_port, metric, start_server, stop_server
from .test_client import serve_on
from .test_tls import (
    SHORT_CONNECTIONS,
    CertificateAuthority,
    ClientFiles,
    rotate_client_ca,
    serve_tls,
)

#: Real server processes (and, for some, their restarts): over about 3 s each.
pytestmark = pytest.mark.slow

FAST = RetryPolicy(initial_backoff=0.05, max_backoff=0.5)


class Recorder:
    """A metrics hook that keeps what it is told."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.gauges: dict[str, float] = {}

    def count(self, name: str, value: int = 1) -> None:
        self.counts[name] += value

    def gauge(self, name: str, value: float) -> None:
        self.gauges[name] = value


def reason(answer: Answer) -> str:
    return Reason.Name(answer.verdict.reason).removeprefix("REASON_")


async def summaries(path: Path) -> list[tuple[str, str, int | None, bool | None]]:
    spool = await Spool.open(path)
    try:
        return [
            (row.request_id, row.state, row.reason, row.duplicate)
            for row in await spool.summaries()
        ]
    finally:
        await spool.close()


def send_all(
    address: str, spool: Path, presentations: dict[str, str], **options: Any
) -> tuple[list[Answer], Recorder]:
    """Every presentation submitted under its request id to a new batcher (``options``: its
    settings) and drained: the answers delivered, and what its metrics hook was told."""
    delivered: list[Answer] = []
    metrics = Recorder()

    async def scenario() -> None:
        async with EdgeBatcher(
            address,
            spool=spool,
            reader_id="edge-1",
            on_answer=delivered.append,
            metrics=metrics,
            retry=FAST,
            **options,
        ) as batcher:
            for request_id, presentation in presentations.items():
                await batcher.submit(presentation, request_id=request_id)
            await batcher.drain(timeout=30)

    asyncio.run(scenario())
    return delivered, metrics


def test_every_scan_gets_one_final_answer_stored_then_delivered(
    server: ServerProcess, pki: DemoPKI, tmp_path: Path
) -> None:
    samples = pki.samples()
    presentations: dict[str, str | bytes] = {
        **{f"ok-{i}": qr_text(pki.present("alice")) for i in range(12)},
        "expired": qr_text(samples["expired"]),
        "revoked": qr_text(samples["revoked"]),
        "nfc": pki.present("alice"),  # NFC bytes
    }
    spool_path = tmp_path / "reader.spool"
    delivered: list[Answer] = []
    metrics = Recorder()

    async def scenario() -> None:
        async with EdgeBatcher(
            server.address,
            spool=spool_path,
            reader_id="edge-1",
            on_answer=delivered.append,
            metrics=metrics,
            max_batch=4,
            retry=FAST,
        ) as batcher:
            for request_id, presentation in presentations.items():
                assert await batcher.submit(presentation, request_id=request_id) == request_id
            with pytest.raises(DuplicateScanError):
                await batcher.submit(presentations["expired"], request_id="expired")
            await batcher.drain(timeout=30)
            assert batcher.pending == 0
            assert await batcher.state("ok-0") == "delivered"
            assert await batcher.state("never") is None

    asyncio.run(scenario())
    assert sorted(answer.request_id for answer in delivered) == sorted(presentations)
    by_id = {answer.request_id: answer for answer in delivered}
    assert reason(by_id["expired"]) == "CREDENTIAL_EXPIRED"
    assert reason(by_id["revoked"]) == "REVOKED"
    assert all(reason(by_id[f"ok-{i}"]) == "OK" for i in range(12)) and reason(by_id["nfc"]) == "OK"
    assert not any(answer.redelivered or answer.verdict.duplicate for answer in delivered)
    assert by_id["ok-0"].verdict.person.identity.birth_name  # the answer as the server gave it
    assert metrics.counts["scans_submitted"] == metrics.counts["answers_stored"] == 15
    assert metrics.counts["answers_delivered"] == metrics.counts["scans_sent"] == 15
    assert metrics.counts["streams_opened"] == 1 and metrics.counts["stream_errors"] == 0
    assert metrics.gauges["scans_pending"] == metrics.gauges["answers_undelivered"] == 0
    rows = asyncio.run(summaries(spool_path))
    assert {row[1] for row in rows} == {"delivered"} and len(rows) == 15
    # What stays after delivery: ids and outcomes, no scan and no verdict (no person).
    with contextlib.closing(sqlite3.connect(spool_path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        kept = db.execute(
            "SELECT COUNT(*) FROM scans WHERE request IS NOT NULL OR verdict IS NOT NULL"
        )
        assert kept.fetchone()[0] == 0
    assert spool_path.stat().st_mode & 0o077 == 0  # the owner's only


def test_a_group_goes_as_one_request_split_only_by_max_message_bytes(
    pki: DemoPKI, tmp_path: Path
) -> None:
    """100 scans of about 900 bytes, grouped by 100: two requests of several scans (their
    64 KiB ``max_message_bytes`` splits them), not 100 messages; every scan answered."""
    metrics_port = free_port()
    server = start_server(
        pki.directory,
        tmp_path / "server.log",
        "--allow-test-identities",
        env={"APCV_METRICS_LISTEN": f"127.0.0.1:{metrics_port}"},
    )
    presentations = {f"g-{i}": qr_text(pki.present("alice")) for i in range(100)}
    try:
        delivered, metrics = send_all(
            server.address,
            tmp_path / "reader.spool",
            presentations,
            max_batch=100,
            max_delay=30.0,  # the group goes when all 100 wait
            max_message_bytes=MAX_REQUEST_BYTES,
        )
        labels = {
            "grpc_type": "bidi_stream",
            "grpc_service": "apcv.verify.v1.VerifierService",
            "grpc_method": "VerifyStream",
        }
        assert metric(metrics_port, "grpc_server_msg_received_total", **labels) == 2
    finally:
        stop_server(server)
    assert sorted(answer.request_id for answer in delivered) == sorted(presentations)
    assert {reason(answer) for answer in delivered} == {"OK"}
    assert all(a.verdict.request_id == a.request_id for a in delivered)
    assert metrics.counts["scans_sent"] == metrics.counts["answers_stored"] == 100


def test_a_group_over_the_servers_max_batch_is_sent_again_within_it(
    pki: DemoPKI, tmp_path: Path
) -> None:
    """A batcher grouping by 10 against a server taking at most 4 scans per request: the
    first group is answered in place, unverified; the batcher lowers its ``max_batch`` to 4
    and sends those scans again, so every scan gets its real answer, none MALFORMED."""
    metrics_port = free_port()
    server = start_server(
        pki.directory,
        tmp_path / "server.log",
        "--allow-test-identities",
        env={"APCV_METRICS_LISTEN": f"127.0.0.1:{metrics_port}", "APCV_SERVER_MAX_BATCH": "4"},
    )
    presentations = {f"m-{i}": qr_text(pki.present("alice")) for i in range(10)}
    try:
        delivered, metrics = send_all(
            server.address,
            tmp_path / "reader.spool",
            presentations,
            max_batch=10,
            max_delay=30.0,  # the first group goes when all 10 wait
        )
        accepted = {"decision": "ACCEPTED", "reason": "OK", "method": "VerifyStream"}
        verified = metric(metrics_port, "apcv_verifications_total", **accepted)
    finally:
        stop_server(server)
    assert sorted(answer.request_id for answer in delivered) == sorted(presentations)
    assert [reason(answer) for answer in delivered] == ["OK"] * 10
    assert not any(answer.verdict.duplicate or answer.verdict.resent for answer in delivered)
    assert verified == 10  # each scan verified once: the refused group was not
    assert metrics.counts["max_batch_lowered"] == 1
    assert metrics.counts["scans_sent"] == 20 and metrics.counts["scans_resent"] == 10
    assert metrics.counts["answers_stored"] == 10


def test_a_group_waits_for_its_window_or_its_size(
    server: ServerProcess, pki: DemoPKI, tmp_path: Path
) -> None:
    async def first_answer_after(max_batch: int, max_delay: float, count: int) -> float:
        async with EdgeBatcher(
            server.address,
            spool=tmp_path / f"group-{max_batch}.spool",
            reader_id="edge-1",
            max_batch=max_batch,
            max_delay=max_delay,
        ) as batcher:
            answers = batcher.answers()
            begin = time.monotonic()
            for _ in range(count):
                await batcher.submit(qr_text(pki.present("alice")))
            first = await anext(answers)
            elapsed = time.monotonic() - begin
            assert reason(first) == "OK"
            for _ in range(count - 1):
                await anext(answers)
            await batcher.drain(timeout=30)
            return elapsed

    # 3 scans, a group of 5: they wait for the 1.5 s window.
    assert asyncio.run(first_answer_after(5, 1.5, 3)) >= 1.5
    # 3 scans, a group of 3: sent as soon as the third is in, long before the 60 s window.
    assert asyncio.run(first_answer_after(3, 60.0, 3)) < 30


def test_a_new_batcher_on_the_spool_resends_the_pending_and_redelivers_the_answered(
    pki: DemoPKI, tmp_path: Path
) -> None:
    """Scans spooled while the server is down wait in the spool; a new batcher sends them.
    Answers stored but not consumed are delivered again, marked ``redelivered``."""
    address = f"127.0.0.1:{free_port()}"
    spool_path = tmp_path / "reader.spool"
    codes = [qr_text(pki.present("alice")) for _ in range(4)]
    started: list[ServerProcess] = []

    async def offline() -> None:
        async with EdgeBatcher(address, spool=spool_path, reader_id="edge-1", retry=FAST) as b:
            for i, code in enumerate(codes[:2]):
                await b.submit(code, request_id=f"off-{i}")
            with pytest.raises(SpoolBusyError):
                await EdgeBatcher(address, spool=spool_path, reader_id="edge-1").start()
            await asyncio.sleep(0.5)  # nobody answers: they stay pending
            assert b.pending == 2

    async def online_without_consuming() -> None:
        async with EdgeBatcher(address, spool=spool_path, reader_id="edge-1", retry=FAST) as b:
            for i, code in enumerate(codes[2:], 2):
                await b.submit(code, request_id=f"off-{i}")
            for _ in range(300):  # until all four are answered and stored
                states = [await b.state(f"off-{i}") for i in range(4)]
                if states == ["answered"] * 4:
                    break
                await asyncio.sleep(0.05)
            assert states == ["answered"] * 4

    async def consume() -> list[Answer]:
        got: list[Answer] = []
        async with EdgeBatcher(address, spool=spool_path, reader_id="edge-1", retry=FAST) as b:

            async def read() -> None:
                async for answer in b.answers():  # ends when the batcher closes
                    got.append(answer)

            reader = asyncio.ensure_future(read())
            await b.drain(timeout=10)  # all four handed out
            for _ in range(200):  # marked delivered when the loop asks for the next one
                if await b.state("off-3") == "delivered":
                    break
                await asyncio.sleep(0.02)
        await asyncio.wait_for(reader, 10)
        return got

    asyncio.run(offline())
    assert [row[1] for row in asyncio.run(summaries(spool_path))] == ["pending"] * 2
    started.append(serve_on(pki, address, tmp_path / "server.log"))
    try:
        asyncio.run(online_without_consuming())
        answers = asyncio.run(consume())
    finally:
        stop_server(started[0])
    assert [answer.request_id for answer in answers] == [f"off-{i}" for i in range(4)]
    assert all(answer.redelivered and reason(answer) == "OK" for answer in answers)
    assert [row[1] for row in asyncio.run(summaries(spool_path))] == ["delivered"] * 4


def test_permission_denied_stops_the_batcher_and_keeps_the_scans(
    pki: DemoPKI, tmp_path: Path
) -> None:
    """A caller the server does not allow: resending would fail the same way, so the batcher
    stops with the typed error, and the scan stays pending in the spool."""
    running = start_server(
        pki.directory,
        tmp_path / "server.log",
        "--allow-test-identities",
        env={"APCV_CALLERS": '[{"id": "his-1", "uses": ["care"]}]'},
    )
    spool_path = tmp_path / "reader.spool"

    async def scenario() -> PermissionDeniedError:
        async with EdgeBatcher(
            running.address, spool=spool_path, reader_id="edge-1", retry=FAST
        ) as batcher:
            await batcher.submit(qr_text(pki.present("alice")), request_id="denied-1")
            with pytest.raises(PermissionDeniedError) as denied:
                await batcher.drain(timeout=30)
            with pytest.raises(PermissionDeniedError):
                async for _ in batcher.answers():
                    pass
            return denied.value

    try:
        denied = asyncio.run(scenario())
    finally:
        stop_server(running)
    assert denied.reason == "CALLER_NOT_ALLOWED"
    assert asyncio.run(summaries(spool_path)) == [("denied-1", "pending", None, None)]


def test_a_request_grpc_refuses_as_too_large_stops_the_batcher_and_keeps_the_scans(
    pki: DemoPKI, tmp_path: Path
) -> None:
    """A batcher allowed larger requests than the server takes: past twice the server's
    ``server.max_message_bytes`` gRPC itself refuses the request, without details. Sent
    again it would be refused again, so the batcher stops with the typed error (not the
    retried "server busy" of gRPC's other RESOURCE_EXHAUSTED) and keeps the scans."""
    running = start_server(
        pki.directory,
        tmp_path / "server.log",
        "--allow-test-identities",
        env={"APCV_SERVER_MAX_MESSAGE_BYTES": "4096"},  # gRPC refuses past 8,192 bytes
    )
    spool_path = tmp_path / "reader.spool"
    presentations = {f"big-{i}": qr_text(pki.present("alice")) for i in range(20)}

    async def scenario() -> MessageTooLargeError:
        async with EdgeBatcher(
            running.address,
            spool=spool_path,
            reader_id="edge-1",
            retry=FAST,
            max_batch=20,
            max_delay=30.0,  # the group goes when all 20 wait: one request of ~14 KB
        ) as batcher:
            for request_id, presentation in presentations.items():
                await batcher.submit(presentation, request_id=request_id)
            with pytest.raises(MessageTooLargeError) as refused:
                await batcher.drain(timeout=30)
            return refused.value

    try:
        refused = asyncio.run(scenario())
    finally:
        stop_server(running)
    assert refused.reason == ""  # gRPC's own refusal: no ErrorInfo
    assert refused.metadata["limit"] == "8192"
    assert int(refused.metadata["size"]) > 8192
    assert {row[1] for row in asyncio.run(summaries(spool_path))} == {"pending"}


class FlakyLink:
    """A TCP relay on loopback in front of the server that can swallow what the server sends
    (its verdicts are lost on the way) and cut every connection, as a network failure does."""

    def __init__(self, upstream: str) -> None:
        self.host, port = upstream.rsplit(":", 1)
        self.port = int(port)
        self.swallow = False
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        self.writers += [writer, up_writer]

        async def pump(
            source: asyncio.StreamReader, sink: asyncio.StreamWriter, down: bool
        ) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await source.read(65536):
                    if not (down and self.swallow):
                        sink.write(data)
                        await sink.drain()
            sink.close()

        await asyncio.gather(pump(reader, up_writer, False), pump(up_reader, writer, True))

    def cut(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def test_verdicts_lost_on_the_way_are_recovered_even_after_the_presentations_expired(
    pki: DemoPKI, tmp_path: Path
) -> None:
    """The server verifies five scans but their verdicts never arrive; the connection breaks
    and stays down until the presentations have expired. The batcher reopens the stream and
    resends them with their ids: each gets its original answer back (accepted, ``resent``),
    neither REPLAYED nor PRESENTATION_EXPIRED, and still has exactly one final answer."""
    server = start_server(
        pki.directory,
        tmp_path / "server.log",
        "--allow-test-identities",
        env={"APCV_POLICY_CLOCK_SKEW_SECONDS": "1"},
    )
    metrics = Recorder()
    delivered: list[Answer] = []

    def audited(request_id: str) -> int:
        return server.logs().count(f'"request_id": "{request_id}"')

    async def scenario() -> None:
        link = FlakyLink(server.address)
        address = await link.start()
        try:
            async with EdgeBatcher(
                address,
                spool=tmp_path / "reader.spool",
                reader_id="edge-1",
                on_answer=delivered.append,
                metrics=metrics,
                retry=FAST,
            ) as batcher:
                for i in range(3):
                    await batcher.submit(qr_text(pki.present("alice")), request_id=f"kept-{i}")
                await batcher.drain(timeout=30)
                link.swallow = True
                now = int(time.time())
                for i in range(5):
                    short_lived = pki.present("alice", iat=now, exp=now + 2)
                    await batcher.submit(qr_text(short_lived), request_id=f"lost-{i}")
                for _ in range(500):  # until the server has verified all five
                    if all(audited(f"lost-{i}") for i in range(5)):
                        break
                    await asyncio.sleep(0.02)
                assert all(audited(f"lost-{i}") == 1 for i in range(5))
                assert batcher.pending == 5 and len(delivered) == 3
                await asyncio.sleep(max(0.0, now + 2 + 1 + 1.5 - time.time()))  # exp + skew
                link.swallow = False
                link.cut()
                await batcher.drain(timeout=30)
        finally:
            await link.close()

    try:
        asyncio.run(scenario())
    finally:
        stop_server(server)
    by_id = {answer.request_id: answer for answer in delivered}
    assert len(delivered) == len(by_id) == 8
    for i in range(5):
        verdict = by_id[f"lost-{i}"].verdict
        assert (reason(by_id[f"lost-{i}"]), verdict.resent, verdict.duplicate) == (
            "OK",
            True,
            False,
        )
    assert not any(by_id[f"kept-{i}"].verdict.resent for i in range(3))
    assert not any(by_id[f"kept-{i}"].verdict.duplicate for i in range(3))
    assert metrics.counts["scans_resent"] == 5 and metrics.counts["reconnects"] >= 1
    assert metrics.counts["answers_stored"] == 8


def test_a_stream_ended_by_connection_age_is_reopened_and_nothing_is_lost(
    pki: DemoPKI, tmp_path: Path
) -> None:
    """The server ends connections older than 1 s (GOAWAY, then UNAVAILABLE after a 1 s
    grace): a reader scanning for longer reopens its stream and every scan is answered once."""
    running = start_server(
        pki.directory,
        tmp_path / "server.log",
        "--allow-test-identities",
        env={
            "APCV_SERVER_MAX_CONNECTION_AGE_SECONDS": "1",
            "APCV_SERVER_MAX_CONNECTION_AGE_GRACE_SECONDS": "1",
        },
    )
    metrics = Recorder()
    delivered: list[Answer] = []

    async def scenario() -> None:
        async with EdgeBatcher(
            running.address,
            spool=tmp_path / "reader.spool",
            reader_id="edge-1",
            on_answer=delivered.append,
            metrics=metrics,
            retry=FAST,
        ) as batcher:
            for i in range(40):  # about 4 s of scanning on one stream
                await batcher.submit(qr_text(pki.present("alice")), request_id=f"age-{i}")
                await asyncio.sleep(0.1)
            await batcher.drain(timeout=30)

    try:
        asyncio.run(scenario())
    finally:
        stop_server(running)
    assert sorted(answer.request_id for answer in delivered) == sorted(
        f"age-{i}" for i in range(40)
    )
    assert all(reason(answer) == "OK" for answer in delivered)
    assert metrics.counts["streams_opened"] >= 2 and metrics.counts["stream_errors"] >= 1
    assert metrics.counts["answers_stored"] == 40


def test_a_batcher_over_mtls_is_served_as_its_certificate_s_caller(
    pki: DemoPKI, tmp_path: Path
) -> None:
    ca = CertificateAuthority()
    running = serve_tls(pki, tmp_path, ca)
    client = ca.issue("his-1")
    tls = TLSConfig(ca.pem, client.cert_pem, client.key_pem)
    delivered: list[Answer] = []

    async def scenario() -> None:
        async with EdgeBatcher(
            running.address,
            spool=tmp_path / "reader.spool",
            reader_id="edge-1",
            tls=tls,
            on_answer=delivered.append,
            retry=FAST,
        ) as batcher:
            for i in range(3):
                await batcher.submit(qr_text(pki.present("alice")), request_id=f"tls-{i}")
            await batcher.drain(timeout=30)

    try:
        asyncio.run(scenario())
    finally:
        stop_server(running)
    assert sorted((answer.request_id, reason(answer)) for answer in delivered) == [
        (f"tls-{i}", "OK") for i in range(3)
    ]
    assert "his-1" in running.logs()  # the audit records name the certificate's caller


def test_a_batcher_on_tls_files_reconnects_with_its_renewed_certificate(
    pki: DemoPKI, tmp_path: Path
) -> None:
    """An edge reader up longer than its client certificate: the certificate is renewed on
    disk by a new CA, which alone the server admits from then on; once the server has ended
    the connection made with the old one (its connection age), the batcher connects with the
    renewed files, and every scan is answered."""
    ca = CertificateAuthority()
    running = serve_tls(pki, tmp_path, ca, server=SHORT_CONNECTIONS)
    (tmp_path / "reader").mkdir()
    files = ClientFiles(tmp_path / "reader")
    files.write(ca, ca.issue("his-1"))
    delivered: list[Answer] = []

    async def scenario() -> None:
        async with EdgeBatcher(
            running.address,
            spool=tmp_path / "reader.spool",
            reader_id="edge-1",
            tls=files.tls(),
            on_answer=delivered.append,
            retry=FAST,
            idle_close=0.2,
        ) as batcher:
            await batcher.submit(qr_text(pki.present("alice")), request_id="before")
            await batcher.drain(timeout=20)
            rotate_client_ca(tmp_path, files, ca)
            await asyncio.sleep(2.5)  # past the connection age: the old connection is gone
            await batcher.submit(qr_text(pki.present("alice")), request_id="after")
            await batcher.drain(timeout=20)

    try:
        asyncio.run(scenario())
    finally:
        stop_server(running)
    assert [(answer.request_id, reason(answer)) for answer in delivered] == [
        ("before", "OK"),
        ("after", "OK"),
    ]


def test_scanned_at_is_the_submission_time_and_survives_a_restart(
    pki: DemoPKI, tmp_path: Path
) -> None:
    """A reader allowed to send scanned_at queues a scan while the server is down; the scan
    keeps the time it was made, and is verified at that time once resent by a new batcher."""
    address = f"127.0.0.1:{free_port()}"
    spool_path = tmp_path / "reader.spool"
    code = qr_text(pki.present("alice"))
    options: dict[str, Any] = {
        "spool": spool_path,
        "reader_id": "edge-1",
        "send_scanned_at": True,
        "retry": FAST,
    }

    async def offline() -> float:
        async with EdgeBatcher(address, **options) as batcher:
            before = time.time()
            await batcher.submit(code, request_id="queued-1")
            return before

    async def online() -> list[Answer]:
        delivered: list[Answer] = []
        async with EdgeBatcher(address, on_answer=delivered.append, **options) as batcher:
            await batcher.drain(timeout=30)
        return delivered

    before = asyncio.run(offline())
    with contextlib.closing(sqlite3.connect(spool_path)) as db:
        (request,) = db.execute("SELECT request FROM scans").fetchone()
    spooled = VerifyStreamRequest.FromString(request)
    assert abs(spooled.scan.scanned_at.seconds - before) <= 1
    callers = (
        '[{"id": "*", "uses": ["care"], "may_send_scanned_at": true,'
        ' "max_scan_delay_seconds": 3600}]'
    )
    running = serve_on(pki, address, tmp_path / "server.log", {"APCV_CALLERS": callers})
    try:
        (answer,) = asyncio.run(online())
    finally:
        stop_server(running)
    assert (answer.request_id, reason(answer), answer.redelivered) == ("queued-1", "OK", False)
    assert abs(answer.scanned_at - before) <= 1
