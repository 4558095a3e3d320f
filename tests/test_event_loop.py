"""The server's event loop (``server.event_loop``): uvloop by default, the standard library's
when set, and a clear error for anything else."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2, verifier_pb2_grpc
from apcv_verify.config import ConfigError
from apcv_verify.issuer import DemoPKI, qr_text
from apcv_verify.service.startup import event_loop_factory

from .conftest import ServerProcess, pki_config, start_server, stop_server


def served_on(server: ServerProcess) -> str:
    """The event loop the ``serving`` line names."""
    lines = [json.loads(line) for line in server.logs().splitlines() if '"serving"' in line]
    assert len(lines) == 1
    return str(lines[0]["event_loop"])


def answers(server: ServerProcess, pki: DemoPKI) -> list[str]:
    """The reasons of a unary call and of a two-request stream to ``server``."""
    scans = [
        verifier_pb2.Scan(request_id=f"r-{i}", qr_text=qr_text(pki.present("alice")))
        for i in range(3)
    ]
    for scan in scans:
        scan.reader.reader_id = "desk-1"
    with server.channel() as channel:
        stub = verifier_pb2_grpc.VerifierServiceStub(channel)
        unary = stub.Verify(verifier_pb2.VerifyRequest(scan=scans[0]), timeout=10).verdict
        stream = stub.VerifyStream(
            iter([verifier_pb2.VerifyStreamRequest(scan=scan) for scan in scans[1:]]), timeout=10
        )
        verdicts = [unary, *(response.verdict for response in stream)]
    return [verifier_pb2.Reason.Name(verdict.reason) for verdict in verdicts]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("env", "expected"), [({}, "uvloop"), ({"APCV_SERVER_EVENT_LOOP": "asyncio"}, "asyncio")]
)
def test_the_server_runs_on_the_loop_it_is_set_to(
    pki: DemoPKI, tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    server = start_server(
        pki.directory, tmp_path / "server.log", "--allow-test-identities", env=env
    )
    try:
        assert answers(server, pki) == ["REASON_OK"] * 3
    finally:
        stop_server(server)
    assert served_on(server) == expected
    assert server.process.returncode == 0  # stopped by SIGTERM, drained on that loop


def test_an_unknown_loop_names_the_key_and_the_choices(pki: DemoPKI) -> None:
    with pytest.raises(
        ConfigError, match=r"server\.event_loop: unknown loop 'trio' \(uvloop, asyncio\)"
    ):
        pki_config(pki, {"server.event_loop": "trio"})


def test_each_name_makes_its_loop() -> None:
    for name, module in (("uvloop", "uvloop"), ("asyncio", "asyncio")):
        loop = event_loop_factory(name)()
        try:
            assert type(loop).__module__.partition(".")[0] == module
            assert loop.run_until_complete(asyncio.sleep(0, "ran")) == "ran"
        finally:
            loop.close()


def test_without_uvloop_installed_the_error_says_what_to_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as where it is not installed
    with pytest.raises(
        ConfigError, match='server.event_loop: uvloop is not installed here; set "asyncio"'
    ):
        event_loop_factory("uvloop")
    assert event_loop_factory("asyncio") is asyncio.new_event_loop
