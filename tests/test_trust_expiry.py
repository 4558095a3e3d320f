"""A trust list that expires while held (docs/profile.md §6.3): used for
``trust.expired_grace_seconds`` past its expiry, then refused — health NOT_SERVING, calls
UNAVAILABLE with the reason TRUST_LIST_EXPIRED — until a valid list is loaded."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from apcv_verify.config import ConfigError
from apcv_verify.issuer import DemoPKI, make_trust_list
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from .conftest import ServerProcess, pki_config, reason, start_server, stop_server, verify

#: Lifetime of the short-lived trust list under test, and the grace after it. The server must
#: start and answer within the lifetime: on two loaded cores a start can take several seconds.
LIFETIME_SECONDS = 12
GRACE_SECONDS = 2


def health(server: ServerProcess) -> int:
    with server.channel() as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    return int(reply.status)


def wait_until(condition: Callable[[], bool], what: str, server: ServerProcess) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within 20 s: {what}\n{server.logs()}")


def error_reason(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert any(detail.Unpack(info) for detail in status.details)
    return info.reason


def test_an_expired_trust_list_is_refused_after_its_grace(pki: DemoPKI, tmp_path: Path) -> None:
    now = int(time.time())
    short_lived = make_trust_list(
        pki.anchor,
        seq=pki.trust_list_seq + 1,
        iat=now,
        exp=now + LIFETIME_SECONDS,
        entries=pki.trust_entries(),
    )
    pki.trust_list_path.write_bytes(short_lived)
    server = start_server(
        pki.directory,
        tmp_path / "server.log",
        "--allow-test-identities",
        env={
            "APCV_TRUST_EXPIRED_GRACE_SECONDS": str(GRACE_SECONDS),
            "APCV_TRUST_REFRESH_SECONDS": "0.5",
        },
    )
    try:
        assert reason(verify(server, pki.present("alice"), request_id="before")) == "OK"
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        wait_until(lambda: health(server) == not_serving, "NOT_SERVING", server)
        assert time.time() > now + LIFETIME_SECONDS + GRACE_SECONDS  # not before the grace
        with pytest.raises(grpc.RpcError) as refused:
            verify(server, pki.present("alice"), request_id="during")
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error_reason(refused.value) == "TRUST_LIST_EXPIRED"
        assert '"event": "trust_list_refused"' in server.logs()
        # A valid list published: taken at the next refresh, and the service serves again.
        pki.new_trust_list(pki.trust_list_seq + 2)
        serving = health_pb2.HealthCheckResponse.SERVING
        wait_until(lambda: health(server) == serving, "SERVING again", server)
        assert reason(verify(server, pki.present("alice"), request_id="after")) == "OK"
    finally:
        stop_server(server)


def test_the_grace_is_a_config_key(pki: DemoPKI) -> None:
    assert pki_config(pki).trust.expired_grace_seconds == 86_400
    assert pki_config(pki, {"trust.expired_grace_seconds": 0}).trust.expired_grace_seconds == 0
    with pytest.raises(ConfigError, match="trust.expired_grace_seconds: must not be negative"):
        pki_config(pki, {"trust.expired_grace_seconds": -1})
