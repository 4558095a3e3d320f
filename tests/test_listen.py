"""The ports on any address family: ``[::]`` (IPv6, and IPv4 too where the kernel maps it,
as on Linux by default) for IPv6-only and dual-stack networks, as the chart's
``listenAddress: "::"`` sets them; and a client spreading its calls over several addresses,
as a headless Service gives them."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from pathlib import Path

import grpc
import pytest
from apcv_verify.client import Reason, VerifierClient, make_scan
from apcv_verify.issuer import DemoPKI, qr_text
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .conftest import ServerProcess, free_port, metric, reason, stop_server, verify
from .test_client import serve_on


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(
    not ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)"
)


@needs_ipv6
def test_ports_bound_to_any_ipv6_address_answer_on_both_families(
    pki: DemoPKI, tmp_path: Path
) -> None:
    port, health, metrics = free_port(), free_port(), free_port()
    environ = {
        "APCV_SERVER_HEALTH_LISTEN": f"[::]:{health}",
        "APCV_METRICS_LISTEN": f"[::]:{metrics}",
    }
    server = serve_on(pki, f"[::]:{port}", tmp_path / "server.log", environ)
    try:
        for host in ("[::1]", "127.0.0.1"):
            reached = ServerProcess(server.process, f"{host}:{port}", server.log_path)
            assert reason(verify(reached, pki.present())) == "OK"
            with grpc.insecure_channel(f"{host}:{health}") as channel:
                check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert check.status == health_pb2.HealthCheckResponse.SERVING
            with urllib.request.urlopen(f"http://{host}:{metrics}/metrics", timeout=10) as reply:
                assert b"apcv_verifications_total" in reply.read()
    finally:
        stop_server(server)


def test_round_robin_spreads_a_clients_calls_over_every_address(
    pki: DemoPKI, tmp_path: Path
) -> None:
    """What a headless Service gives a client (docs/deploy.md "Spreading calls over the
    pods"): one address per server behind one target. Here two servers, on 127.0.0.1 and
    127.0.0.2, as gRPC's ``ipv4:`` target lists them (a headless name resolves to such a
    list); the client SDK with gRPC's round_robin sends its calls to both in turn, on one
    channel."""
    port = free_port()
    servers: list[tuple[ServerProcess, int]] = []
    try:
        for host in ("127.0.0.1", "127.0.0.2"):
            metrics = free_port()
            environ = {"APCV_METRICS_LISTEN": f"127.0.0.1:{metrics}"}
            log_path = tmp_path / f"server-{metrics}.log"
            servers.append((serve_on(pki, f"{host}:{port}", log_path, environ), metrics))
        round_robin = [("grpc.lb_policy_name", "round_robin")]

        async def scenario() -> set[str]:
            async with VerifierClient(
                f"ipv4:127.0.0.1:{port},127.0.0.2:{port}",
                reader_id="desk-1",
                channel_options=round_robin,
            ) as client:
                scans = [make_scan(qr_text(pki.present()), reader_id="desk-1") for _ in range(20)]
                return {Reason.Name((await client.verify(scan)).reason) for scan in scans}

        assert asyncio.run(scenario()) == {"REASON_OK"}
        accepted = {"decision": "ACCEPTED", "reason": "OK", "method": "Verify"}
        calls = [metric(port, "apcv_verifications_total", **accepted) for _, port in servers]
    finally:
        for server, _ in servers:
            stop_server(server)
    assert sum(calls) == 20 and min(calls) >= 5, calls
