"""Shared fixtures: a demo PKI on disk and a real ``apcv-verify serve`` process on loopback."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from apcv_verify._proto.apcv.verify.v1 import verifier_pb2, verifier_pb2_grpc
from apcv_verify.config import Config, load_config
from apcv_verify.issuer import DemoPKI, nir_key_is_valid
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
# Every server the tests start listens on loopback, and the list fetches and gRPC's clients
# honour the proxy the environment names: never send their traffic through one.
for _name in ("no_proxy", "NO_PROXY"):
    os.environ[_name] = ",".join(filter(None, (os.environ.get(_name), "127.0.0.1", "localhost")))
#: Log files of the servers started by the current test, scanned after it for personal data.
SERVER_LOGS: list[Path] = []
#: A 15-character NIR/NIA candidate (docs/profile.md §5.3): 13 characters, digits except a
#: Corsican département ``2A``/``2B`` at characters 6-7, then a 2-digit key. It must not touch
#: another digit or a decimal point (a ``.`` next to a digit): the fraction of a float such as
#: ``0.250685691833496`` is not an identifier.
_NIR_CANDIDATE = re.compile(r"(?<!\d)(?<!\d\.)(\d{5}(?:\d\d|2[AB])\d{8})(?!\d)(?!\.\d)")
#: A lowercase hexadecimal identifier of 16 characters or more with a letter in it, standing
#: alone (a holder reference, a trace or span id, a digest): its digits are not an identifier
#: even where 15 of them in a row happen to carry a valid key (about one random holder
#: reference in 30,000 does), so it is set aside before the search.
_HEX_IDENTIFIER = re.compile(r"(?<![0-9A-Za-z])(?=[0-9a-f]*[a-f])[0-9a-f]{16,}(?![0-9A-Za-z])")


def nir_numbers(text: str) -> list[str]:
    """The real NIR/NIA numbers in ``text``: candidates whose key is ``97 − (number mod 97)``
    (with the Corsica rule), so that floats, timestamps and ids are not mistaken for one, and
    none inside a hexadecimal identifier."""
    text = _HEX_IDENTIFIER.sub(" ", text)
    return [found for found in _NIR_CANDIDATE.findall(text) if nir_key_is_valid(found)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pki_config(
    pki: DemoPKI,
    overrides: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """An in-process server's configuration for ``pki``: loopback on a free port, no metrics
    endpoint, demonstration identities allowed; ``overrides`` maps ``section.key`` to values,
    ``environ`` is the environment it is read with (``APCV_CALLERS``: a callers table)."""
    return load_config(
        None,
        environ=environ or {},
        overrides={
            "server.listen": "127.0.0.1:0",
            "metrics.listen": "",
            "trust.anchors": [str(pki.directory / "anchor.pem")],
            "trust.trust_list": str(pki.trust_list_path),
            "trust.status_lists": [str(path) for path in pki.status_list_paths.values()],
            "policy.allow_test_identities": True,
            **(overrides or {}),
        },
    )


@dataclass
class ServerProcess:
    """An ``apcv-verify serve`` child process and how to reach it."""

    process: subprocess.Popen[str]
    address: str
    log_path: Path
    #: Client credentials when the server runs TLS (tests/test_tls.py), else plaintext.
    credentials: grpc.ChannelCredentials | None = None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def channel(self) -> grpc.Channel:
        return open_channel(self.address, self.credentials)


def open_channel(address: str, credentials: grpc.ChannelCredentials | None = None) -> grpc.Channel:
    if credentials is None:
        return grpc.insecure_channel(address)
    return grpc.secure_channel(address, credentials)


def reason(verdict: verifier_pb2.Verdict) -> str:
    """The verdict's reason code without its enum prefix (``OK``, ``REVOKED``)."""
    return verifier_pb2.Reason.Name(verdict.reason).removeprefix("REASON_")


def verify(
    server: ServerProcess,
    presentation: str | bytes,
    reader_id: str = "desk-1",
    *,
    request_id: str | None = None,
    include_fhir: bool = False,
    scanned_at: int | None = None,
    **reader: bytes,
) -> verifier_pb2.Verdict:
    """One unary Verify of ``presentation`` over gRPC: QR text (a str) or NFC bytes. Each
    call is a new request (a new ``request_id``) unless ``request_id`` is given: a resend of
    the same request gets the answer kept for it (answer recovery)."""
    if request_id is None:
        request_id = f"r-{uuid.uuid4().hex[:12]}"
    scan = verifier_pb2.Scan(request_id=request_id, include_fhir=include_fhir)
    if isinstance(presentation, str):
        scan.qr_text = presentation
    else:
        scan.nfc_bytes = presentation
    scan.reader.CopyFrom(verifier_pb2.ReaderContext(reader_id=reader_id, **reader))
    if scanned_at is not None:
        scan.scanned_at.FromSeconds(scanned_at)
    with server.channel() as channel:
        stub = verifier_pb2_grpc.VerifierServiceStub(channel)
        return stub.Verify(verifier_pb2.VerifyRequest(scan=scan), timeout=10).verdict


#: Samples of a Prometheus exposition, by (metric name, labels).
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape_text(port: int) -> str:
    """The ``/metrics`` exposition served on loopback ``port``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert reply.status == 200
        return str(reply.read().decode())


def samples(text: str) -> Samples:
    """Every sample of the exposition, by (name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(port: int) -> Samples:
    """Every sample served on ``port``'s ``/metrics``."""
    return samples(scrape_text(port))


def value(found: Samples, name: str, **labels: str) -> float:
    """The sample ``name{labels}``; 0 when absent (a counter not yet incremented)."""
    return found.get((name, frozenset(labels.items())), 0.0)


def metric(port: int, name: str, **labels: str) -> float:
    """The sample ``name{labels}`` served on ``port`` now (0 when absent)."""
    return value(scrape(port), name, **labels)


def write_config(path: Path, text: str) -> Path:
    """A TOML config file for ``serve --config`` (flags still give listen and trust files)."""
    path.write_text(text)
    return path


def wait_serving(
    address: str,
    process: subprocess.Popen[str] | subprocess.Popen[bytes],
    timeout: float = 30.0,
    credentials: grpc.ChannelCredentials | None = None,
    status: int = health_pb2.HealthCheckResponse.SERVING,
) -> None:
    """Poll the standard health service until SERVING, or ``status`` (or fail with the
    process output)."""
    deadline = time.monotonic() + timeout
    with open_channel(address, credentials) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == status:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    raise TimeoutError(f"server at {address} not {name} after {timeout}s")


def start_server(
    pki_dir: Path,
    log_path: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    status_lists: bool = True,
    credentials: grpc.ChannelCredentials | None = None,
) -> ServerProcess:
    """Start ``apcv-verify serve`` on a free port; ``env`` adds APCV_… variables;
    ``status_lists=False`` serves without any status list (health NOT_SERVING, and
    STATUS_UNAVAILABLE to whoever calls anyway)."""
    address = f"127.0.0.1:{free_port()}"
    found = sorted((pki_dir / "status").glob("*.cwt")) if status_lists else []
    command = [
        sys.executable, "-m", "apcv_verify.cli", "serve",
        "--listen", address,
        "--anchor", str(pki_dir / "anchor.pem"),
        "--trust-list", str(pki_dir / "trust-list.cose"),
        *[arg for path in found for arg in ("--status-list", str(path))],
        *extra,
    ]  # fmt: skip
    log_file = log_path.open("w")
    SERVER_LOGS.append(log_path)
    process = subprocess.Popen(
        command,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    try:
        expected = health_pb2.HealthCheckResponse.SERVING
        if not status_lists:
            expected = health_pb2.HealthCheckResponse.NOT_SERVING
        wait_serving(address, process, credentials=credentials, status=expected)
    except Exception:
        process.kill()
        process.wait()
        raise RuntimeError(f"server did not start:\n{log_path.read_text()}") from None
    return ServerProcess(process, address, log_path, credentials)


def stop_server(server: ServerProcess) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


def personal_values(pki: DemoPKI) -> list[str]:
    """Names, INS matricules and birth dates of every demo person: never in a log line."""
    from apcv_verify.issuer import parse_sign1

    values: list[str] = []
    for holder in pki.holders.values():
        profile = parse_sign1(holder.credential).claims()["apcv"]
        for person in [profile, *profile.get("ben", [])]:
            values += [person["ins"]["m"], person["id"]["bn"], person["id"]["dob"]]
            values += person["id"]["gn"].split()
    return values


@pytest.fixture(autouse=True)
def server_logs_carry_no_personal_data(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every line logged by every server of every test (audit and operational logs): no name,
    INS/NIR or birth date of the test's demo people, no NIR-shaped number."""
    SERVER_LOGS.clear()
    # Taken now: a fixture requested here is torn down after this one. A module may define
    # its own ``pki`` (tests/test_native.py): only a DemoPKI has demo people.
    pki = request.getfixturevalue("pki") if "pki" in request.fixturenames else None
    yield
    if not SERVER_LOGS:
        return
    personal = personal_values(pki) if isinstance(pki, DemoPKI) else []  # incl. added holders
    for path in SERVER_LOGS:
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        for number, line in enumerate(lines, 1):
            leaked = [value for value in personal if value in line]
            assert not leaked, f"{path.name}:{number}: personal data in a log line: {line}"
            assert not nir_numbers(line), f"{path.name}:{number}: a NIR/NIA number: {line}"


@pytest.fixture
def pki(tmp_path: Path) -> DemoPKI:
    return DemoPKI.create(tmp_path / "pki", now=int(time.time()))


@pytest.fixture
def server(pki: DemoPKI, tmp_path: Path) -> Iterator[ServerProcess]:
    """A verifier with the demo PKI; the demo identities use the INS demonstration OID."""
    running = start_server(pki.directory, tmp_path / "server.log", "--allow-test-identities")
    yield running
    stop_server(running)


@pytest.fixture(scope="session")
def grpcurl() -> str:
    """The real grpcurl client installed by `make tools`."""
    local = REPO / ".tools" / "bin" / "grpcurl"
    found = str(local) if local.exists() else shutil.which("grpcurl")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("grpcurl is missing: `make tools` installs it")
        pytest.skip("grpcurl not installed; run `make tools`")
    return found


@pytest.fixture(scope="session")
def ghz() -> Path:
    """The ghz load generator installed by `make tools` (the benchmarks' own copy)."""
    local = REPO / ".tools" / "bin" / "ghz"
    if not local.exists():
        if os.environ.get("CI"):
            pytest.fail("ghz is missing: `make tools` installs it")
        pytest.skip("ghz is missing; run `make tools`")
    return local


@dataclass
class RedisServer:
    """A throw-away ``redis-server`` (no persistence) that a test may stop and start again."""

    executable: str
    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.executable, "--bind", "127.0.0.1", "--port", str(self.port),
             "--save", "", "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_redis(self.client(), self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)


def wait_redis(client: redis.Redis, process: subprocess.Popen[bytes]) -> None:
    """Returns once the redis-server ``process`` answers ``client``'s PING (10 s at most)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)


def system_executable(name: str) -> str:
    """The path of a program ``make system-deps`` installs (redis-server, tinyproxy…): the
    test is skipped without it, and fails under CI, where it must be there."""
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing: `make system-deps` installs it")
        pytest.skip(f"{name} not installed; run `make system-deps`")
    return found


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(system_executable("redis-server"), free_port(), tmp_path)
    server.start()
    yield server
    server.stop()
