"""Several worker processes on one port: ``serve --workers 2`` forks two
servers sharing the port (SO_REUSEPORT) and a Redis replay store; the parent supervises them
and serves their metrics summed (Prometheus multiprocess mode)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import grpc
import pytest
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2, verifier_pb2_grpc
from apcv_verify.config import ConfigError, load_config
from apcv_verify.issuer import DemoPKI
from apcv_verify.observe.received import PUBLISH_SECONDS
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from .conftest import RedisServer, ServerProcess, free_port, scrape, start_server, value

CONNECTIONS = 24


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


def log_events(server: ServerProcess, event: str) -> list[dict[str, object]]:
    found = []
    for line in server.logs().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == event:
                found.append(record)
    return found


def wait_for(predicate: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def start_workers(
    pki: DemoPKI, log: Path, redis_url: str, metrics_port: int
) -> tuple[ServerProcess, list[int], str]:
    env = {
        "APCV_REPLAY_BACKEND": "redis",
        "APCV_REPLAY_REDIS_URL": redis_url,
        "APCV_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
    }
    server = start_server(pki.directory, log, "--allow-test-identities", "--workers", "2", env=env)
    wait_for(lambda: len(log_events(server, "serving")) == 2, "both workers serving")
    (started,) = log_events(server, "workers_started")
    pids = started["pids"]
    assert isinstance(pids, list) and len(pids) == 2
    return server, [int(pid) for pid in pids], str(started["metrics_dir"])


def verify_on_own_connection(
    address: str, presentation: bytes, reader_id: str
) -> verifier_pb2.Verdict:
    # A local subchannel pool: a new TCP connection per channel, so the kernel picks a
    # worker for each (channels to one target otherwise share their connection).
    with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
        scan = verifier_pb2.Scan(
            request_id=reader_id,
            nfc_bytes=presentation,
            reader=verifier_pb2.ReaderContext(reader_id=reader_id),
        )
        stub = verifier_pb2_grpc.VerifierServiceStub(ch)
        return stub.Verify(verifier_pb2.VerifyRequest(scan=scan), timeout=10).verdict


def handled_by(metrics_dir: str, pid: int, scratch: Path) -> float:
    """Verify calls answered by the worker ``pid``, from its own multiprocess files."""
    scratch.mkdir()
    for file in Path(metrics_dir).glob(f"*_{pid}.db"):
        shutil.copy(file, scratch / file.name)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(scratch))
    return sum(
        sample.value
        for family in registry.collect()
        if family.name == "grpc_server_handled"
        for sample in family.samples
        if sample.name == "grpc_server_handled_total" and sample.labels["grpc_method"] == "Verify"
    )


def test_two_workers_share_the_port_the_replay_store_and_the_metrics(
    pki: DemoPKI, tmp_path: Path, redis_url: str
) -> None:
    metrics_port = free_port()
    server, pids, metrics_dir = start_workers(pki, tmp_path / "w.log", redis_url, metrics_port)
    try:
        presentation = pki.present()
        replies = [
            verify_on_own_connection(server.address, presentation, f"reader-{i}")
            for i in range(CONNECTIONS)
        ]
        # Accepted once; every other reader's scan is a replay, whichever worker got it.
        outcomes = [(r.decision, r.reason) for r in replies]
        assert outcomes[0] == (verifier_pb2.DECISION_ACCEPTED, verifier_pb2.REASON_OK)
        assert set(outcomes[1:]) == {(verifier_pb2.DECISION_REJECTED, verifier_pb2.REASON_REPLAYED)}
        # Both workers answered (the kernel hashes each new connection to one of them).
        per_worker = [handled_by(metrics_dir, pid, tmp_path / str(pid)) for pid in pids]
        assert all(count > 0 for count in per_worker), per_worker
        assert sum(per_worker) == CONNECTIONS
        # The parent's /metrics: the sum over both workers.
        found = scrape(metrics_port)
        verify_ok = value(
            found,
            "grpc_server_handled_total",
            grpc_code="OK",
            grpc_method="Verify",
            grpc_service="apcv.verify.v1.VerifierService",
            grpc_type="unary",
        )
        assert verify_ok == CONNECTIONS
        replayed = value(
            found,
            "apcv_verifications_total",
            decision="REJECTED",
            method="Verify",
            reason="REPLAYED",
        )
        assert replayed == CONNECTIONS - 1
        # An error status, counted by its reason in the worker that ended the call.
        with pytest.raises(grpc.RpcError) as refused:
            verify_on_own_connection(server.address, presentation, "")
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        missing = value(
            scrape(metrics_port),
            "apcv_call_errors_total",
            grpc_code="INVALID_ARGUMENT",
            grpc_method="Verify",
            grpc_service="apcv.verify.v1.VerifierService",
            reason="REQUEST_ID_MISSING",
        )
        assert missing == 1

        # gRPC's count of the calls it received reaches the parent as each worker publishes
        # it: every call here was taken by a handler, the start's health checks included.
        def received_all() -> bool:
            found = scrape(metrics_port)
            taken = sum(n for (name, _), n in found.items() if name == "grpc_server_started_total")
            return value(found, "apcv_grpc_calls_received_total") == taken >= CONNECTIONS

        wait_for(received_all, "received calls published", timeout=PUBLISH_SECONDS * 3)
    finally:
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=60)
    assert server.process.returncode == 0
    exited = log_events(server, "worker_exited")
    assert sorted((e["pid"], e["status"]) for e in exited) == sorted((pid, 0) for pid in pids)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not Path(metrics_dir).exists()


def test_a_worker_that_dies_stops_the_others_and_the_parent_reports_it(
    pki: DemoPKI, tmp_path: Path, redis_url: str
) -> None:
    server, pids, _ = start_workers(pki, tmp_path / "w.log", redis_url, free_port())
    try:
        os.kill(pids[0], signal.SIGKILL)
        server.process.wait(timeout=60)
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
    assert server.process.returncode == 128 + signal.SIGKILL
    statuses = {e["pid"]: e["status"] for e in log_events(server, "worker_exited")}
    assert statuses == {pids[0]: 128 + signal.SIGKILL, pids[1]: 0}  # the other one drained


def test_several_workers_need_the_redis_replay_store_and_a_fixed_port(tmp_path: Path) -> None:
    for name in ("anchor.pem", "trust-list.cose"):
        (tmp_path / name).write_bytes(b"x")
    base = {
        "APCV_TRUST_ANCHORS": str(tmp_path / "anchor.pem"),
        "APCV_TRUST_TRUST_LIST": str(tmp_path / "trust-list.cose"),
        "APCV_SERVER_WORKERS": "2",
    }
    with pytest.raises(
        ConfigError, match=r'server\.workers: more than one worker needs replay\.backend = "redis"'
    ):
        load_config(environ=base)
    redis = {**base, "APCV_REPLAY_BACKEND": "redis", "APCV_REPLAY_REDIS_URL": "redis://h:6379/0"}
    assert load_config(environ=redis).server.workers == 2
    with pytest.raises(ConfigError, match=r"server\.workers: several workers need a fixed port"):
        load_config(environ={**redis, "APCV_SERVER_LISTEN": "127.0.0.1:0"})
    with pytest.raises(ConfigError, match=r"server\.workers: must be between 1 and 64"):
        load_config(environ={**redis, "APCV_SERVER_WORKERS": "0"})
