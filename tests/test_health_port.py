"""``server.health_listen``: a plaintext port with the health service and nothing else.

Kubernetes gRPC probes speak no TLS, so with mTLS on the main port they need this port
(helm/apcv-verify uses it). It must report the main port's status and must not serve
verification or reflection in clear text.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2, verifier_pb2_grpc
from apcv_verify.config import ConfigError, load_config
from apcv_verify.issuer import DemoPKI, qr_text
from apcv_verify.service.limits import MAX_HEALTH_CALLS
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .conftest import ServerProcess, free_port, start_server, stop_server, write_config
from .test_contract import status_details
from .test_stream import serving
from .test_tls import CALLERS, CertificateAuthority


@dataclass
class HealthPortServer:
    server: ServerProcess
    health_address: str
    ca: CertificateAuthority


@pytest.fixture
def mtls_with_health_port(pki: DemoPKI, tmp_path: Path) -> Iterator[HealthPortServer]:
    ca = CertificateAuthority()
    server_cert = ca.issue("verifier.apcv.example", server=True)
    (tmp_path / "server.pem").write_bytes(server_cert.cert_pem)
    (tmp_path / "server.key").write_bytes(server_cert.key_pem)
    (tmp_path / "clients-ca.pem").write_bytes(ca.pem)
    health_address = f"127.0.0.1:{free_port()}"
    config = write_config(
        tmp_path / "tls.toml",
        f'[server]\nhealth_listen = "{health_address}"\n'
        '[tls]\nserver_cert = "server.pem"\nserver_key = "server.key"\n'
        'client_ca = "clients-ca.pem"\n' + CALLERS,
    )
    running = start_server(
        pki.directory,
        tmp_path / "server.log",
        "--allow-test-identities",
        "--config",
        str(config),
        credentials=ca.credentials(ca.issue("his-1")),
    )
    yield HealthPortServer(running, health_address, ca)
    stop_server(running)


def health_status(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(reply.status)


def test_the_health_port_answers_in_plaintext_beside_an_mtls_port(
    mtls_with_health_port: HealthPortServer,
) -> None:
    address = mtls_with_health_port.health_address
    assert health_status(address) == health_pb2.HealthCheckResponse.SERVING
    serving = health_pb2.HealthCheckResponse.SERVING
    assert health_status(address, "apcv.verify.v1.VerifierService") == serving
    # The main port still refuses a plaintext client (it is the mTLS one).
    with pytest.raises(grpc.RpcError) as refused:
        health_status(mtls_with_health_port.server.address)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_health_port_serves_neither_verification_nor_reflection(
    mtls_with_health_port: HealthPortServer, pki: DemoPKI, grpcurl: str, tmp_path: Path
) -> None:
    address = mtls_with_health_port.health_address
    scan = verifier_pb2.Scan(request_id="h-1", qr_text=qr_text(pki.present("alice")))
    scan.reader.reader_id = "desk-1"
    with grpc.insecure_channel(address) as channel:
        with pytest.raises(grpc.RpcError) as verify:
            verifier_pb2_grpc.VerifierServiceStub(channel).Verify(
                verifier_pb2.VerifyRequest(scan=scan), timeout=5
            )
        assert verify.value.code() == grpc.StatusCode.UNIMPLEMENTED
    # grpcurl, as an operator would try it. There is no reflection here, so it is given the
    # health service's descriptor (the one grpcio-health-checking was generated from).
    protoset = tmp_path / "health.protoset"
    protoset.write_bytes(
        descriptor_pb2.FileDescriptorSet(
            file=[
                descriptor_pb2.FileDescriptorProto.FromString(health_pb2.DESCRIPTOR.serialized_pb)
            ]
        ).SerializeToString()
    )
    health = subprocess.run(
        [grpcurl, "-plaintext", "-protoset", str(protoset), address, "grpc.health.v1.Health/Check"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert health.returncode == 0, health.stderr
    assert '"status": "SERVING"' in health.stdout
    listing = subprocess.run(
        [grpcurl, "-plaintext", address, "list"], capture_output=True, text=True, timeout=30
    )
    assert listing.returncode != 0
    assert "Unimplemented" in listing.stderr or "does not support the reflection" in listing.stderr


def test_the_health_port_reports_not_serving_while_draining(
    mtls_with_health_port: HealthPortServer, pki: DemoPKI
) -> None:
    # A stream held open keeps the server draining for its grace period after SIGTERM.
    running = mtls_with_health_port
    scan = verifier_pb2.Scan(request_id="d-1", qr_text=qr_text(pki.present("alice")))
    scan.reader.reader_id = "desk-1"
    release = threading.Event()

    def requests() -> Iterator[verifier_pb2.VerifyStreamRequest]:
        yield verifier_pb2.VerifyStreamRequest(scan=scan)
        release.wait(30)

    credentials = running.ca.credentials(running.ca.issue("his-1"))
    seen: set[int] = set()
    with grpc.secure_channel(running.server.address, credentials) as channel:
        stream = verifier_pb2_grpc.VerifierServiceStub(channel).VerifyStream(requests(), timeout=30)
        assert next(stream).verdict.request_id == "d-1"  # the stream is open on the server
        running.server.process.terminate()
        deadline = time.monotonic() + 5
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        while time.monotonic() < deadline and not_serving not in seen:
            seen.add(health_status(running.health_address))
            time.sleep(0.05)
        release.set()
        list(stream)
    assert health_pb2.HealthCheckResponse.NOT_SERVING in seen


def test_health_listen_is_checked(tmp_path: Path, pki: DemoPKI) -> None:
    base = {
        "trust.anchors": [str(pki.directory / "anchor.pem")],
        "trust.trust_list": str(pki.trust_list_path),
    }
    with pytest.raises(ConfigError, match=r"server\.health_listen: expected HOST:PORT"):
        load_config(None, environ={"APCV_SERVER_HEALTH_LISTEN": "50052"}, overrides=base)
    with pytest.raises(ConfigError, match=r"server\.health_listen: must differ"):
        load_config(
            None,
            environ={},
            overrides={
                **base,
                "server.listen": "0.0.0.0:50051",
                "server.health_listen": "0.0.0.0:50051",
            },
        )
    config = load_config(
        None, environ={"APCV_SERVER_HEALTH_LISTEN": "0.0.0.0:50052"}, overrides=base
    )
    assert config.server.health_listen == "0.0.0.0:50052"


def test_the_health_port_bounds_its_watches_and_the_main_port_still_answers(
    pki: DemoPKI,
) -> None:
    """Anyone reaching the plaintext port can open watches: at most MAX_HEALTH_CALLS at
    once; one more is refused TOO_MANY_CALLS (not held), the main port's probes have a count
    of their own, and a freed slot serves the next check."""

    async def scenario() -> None:
        async with serving(pki, health_listen=f"127.0.0.1:{free_port()}") as (running, _stub):
            health_address = f"127.0.0.1:{running.health_port}"
            channels = [grpc.aio.insecure_channel(health_address) for _ in range(2)]
            watches = []
            for index in range(MAX_HEALTH_CALLS):
                stub = health_pb2_grpc.HealthStub(channels[index % 2])
                watch = stub.Watch(health_pb2.HealthCheckRequest(), timeout=30)
                assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
                watches.append(watch)
            health_stub = health_pb2_grpc.HealthStub(channels[0])
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await health_stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            info, _violations = status_details(refused.value)
            assert (info.reason, info.metadata["setting"]) == ("TOO_MANY_CALLS", "health")
            # The main port's probes are not in that count.
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as main:
                reply = await health_pb2_grpc.HealthStub(main).Check(
                    health_pb2.HealthCheckRequest(), timeout=10
                )
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            watches.pop().cancel()
            for _ in range(50):  # the server sees the cancel a moment later
                try:
                    reply = await health_stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
                    break
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    await asyncio.sleep(0.05)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            assert running.metrics is not None
            refusals = running.metrics.registry.get_sample_value(
                "apcv_calls_refused_total", {"limit": "health"}
            )
            assert refusals is not None and refusals >= 1
            for watch in watches:
                watch.cancel()
            for channel in channels:
                await channel.close()

    asyncio.run(scenario())
