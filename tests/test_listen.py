"""The ports on any address family: ``[::]`` (IPv6, and IPv4 too where the kernel maps it,
as on Linux by default) for IPv6-only and dual-stack networks, as the chart's
``listenAddress: "::"`` sets them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from apcv_verify.issuer import DemoPKI
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .conftest import REPO, ServerProcess, free_port, reason, stop_server, verify, wait_serving


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
def test_ports_bound_to_any_ipv6_address_answer_on_both_families(
    pki: DemoPKI, tmp_path: Path
) -> None:
    port, health, metrics = free_port(), free_port(), free_port()
    command = [
        sys.executable, "-m", "apcv_verify.cli", "serve",
        "--listen", f"[::]:{port}",
        "--anchor", str(pki.directory / "anchor.pem"),
        "--trust-list", str(pki.trust_list_path),
        *[arg for path in pki.status_list_paths.values() for arg in ("--status-list", str(path))],
        "--allow-test-identities",
    ]  # fmt: skip
    environ = {
        "APCV_SERVER_HEALTH_LISTEN": f"[::]:{health}",
        "APCV_METRICS_LISTEN": f"[::]:{metrics}",
    }
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=REPO,
            env={**os.environ, **environ},
        )  # fmt: skip
    servers = [
        ServerProcess(process, f"{host}:{port}", log_path) for host in ("[::1]", "127.0.0.1")
    ]
    try:
        for server in servers:
            wait_serving(server.address, process)
            assert reason(verify(server, pki.present())) == "OK"
            host = server.address.rpartition(":")[0]
            with grpc.insecure_channel(f"{host}:{health}") as channel:
                check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert check.status == health_pb2.HealthCheckResponse.SERVING
            with urllib.request.urlopen(f"http://{host}:{metrics}/metrics", timeout=10) as reply:
                assert b"apcv_verifications_total" in reply.read()
    finally:
        stop_server(servers[0])
