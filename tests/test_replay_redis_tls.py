"""The shared replay store over TLS: a real ``redis-server`` listening only on a TLS port,
with its own CA and, as Redis does by default, client certificates required
(``tls-auth-clients yes``), shared by real ``apcv-verify serve`` processes
(``replay.redis_tls_ca``, ``redis_tls_cert``, ``redis_tls_key``)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from apcv_verify.issuer import DemoPKI
from apcv_verify.replay.redis import make_client

from .conftest import free_port, stop_server, system_executable, wait_redis
from .test_replay_redis import (
    ACCEPTED,
    REPLAYED,
    UNAVAILABLE,
    Replica,
    log_events,
    outcome,
    start_redis_replica,
    verify,
)
from .test_tls import CertificateAuthority


@dataclass
class TlsFiles:
    """PEM files of one party: its CA's certificate, its certificate and key."""

    ca: Path
    cert: Path
    key: Path


def write_party(ca: CertificateAuthority, name: str, directory: Path, *, server: bool) -> TlsFiles:
    issued = ca.issue(name, server=server)
    files = TlsFiles(
        directory / f"{name}-ca.pem", directory / f"{name}.pem", directory / f"{name}.key"
    )
    files.ca.write_bytes(ca.pem)
    files.cert.write_bytes(issued.cert_pem)
    files.key.write_bytes(issued.key_pem)
    return files


@dataclass
class TlsRedis:
    port: int
    #: This service's files: the CA of the server's certificate, a client certificate and key.
    client: TlsFiles

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0"

    def connect(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            ssl=True,
            ssl_ca_certs=str(self.client.ca),
            ssl_certfile=str(self.client.cert),
            ssl_keyfile=str(self.client.key),
            socket_timeout=2,
        )


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    executable = system_executable("redis-server")
    ca = CertificateAuthority("redis test CA")
    server = write_party(ca, "redis", tmp_path, server=True)
    running = TlsRedis(free_port(), write_party(ca, "apcv-verify", tmp_path, server=False))
    process = subprocess.Popen(
        # 127.0.0.2 too: an address its certificate does not name (tests below).
        [executable, "--bind", "127.0.0.1", "127.0.0.2", "--port", "0",
         "--tls-port", str(running.port),
         "--tls-cert-file", str(server.cert), "--tls-key-file", str(server.key),
         "--tls-ca-cert-file", str(server.ca), "--tls-auth-clients", "yes",
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_redis(running.connect(), process)
        yield running
    finally:
        process.kill()
        process.wait()


def start_tls_replica(pki: DemoPKI, log: Path, tls_redis: TlsRedis, **files: Path) -> Replica:
    """A replica on ``tls_redis``; ``files`` sets ``replay.redis_tls_<name>``."""
    environ = {f"APCV_REPLAY_REDIS_TLS_{name.upper()}": str(path) for name, path in files.items()}
    return start_redis_replica(pki, log, tls_redis.url, **environ)


def test_replicas_share_a_redis_over_tls_with_a_private_ca_and_client_certificates(
    pki: DemoPKI, tls_redis: TlsRedis, tmp_path: Path
) -> None:
    mine = tls_redis.client
    a = start_tls_replica(
        pki, tmp_path / "a.log", tls_redis, ca=mine.ca, cert=mine.cert, key=mine.key
    )
    b = start_tls_replica(
        pki, tmp_path / "b.log", tls_redis, ca=mine.ca, cert=mine.cert, key=mine.key
    )
    try:
        presentation = pki.present("alice")
        assert outcome(verify(a, presentation, "reader-1")) == ACCEPTED
        assert outcome(verify(b, presentation, "reader-2")) == REPLAYED
        assert tls_redis.connect().keys("apcv:replay:*")
        up = [e for e in log_events(a) if e.get("event") == "replay_store"]
        assert up and up[0]["up"] is True
    finally:
        stop_server(a.server)
        stop_server(b.server)


def test_without_the_client_certificate_or_the_ca_the_store_fails_closed(
    pki: DemoPKI, tls_redis: TlsRedis, tmp_path: Path
) -> None:
    """Redis refuses a client without a certificate, and a server certificate from an
    unknown CA is refused by the service: either way no presentation is accepted unchecked."""
    other = write_party(CertificateAuthority("another CA"), "stranger", tmp_path, server=False)
    mine = tls_redis.client
    no_certificate = start_tls_replica(pki, tmp_path / "n.log", tls_redis, ca=mine.ca)
    wrong_ca = start_tls_replica(
        pki, tmp_path / "w.log", tls_redis, ca=other.ca, cert=mine.cert, key=mine.key
    )
    try:
        for replica in (no_certificate, wrong_ca):
            assert outcome(verify(replica, pki.present("alice"), "reader-1")) == UNAVAILABLE
            down = [e for e in log_events(replica) if e.get("event") == "replay_store"]
            assert down and down[0]["up"] is False
        assert not tls_redis.connect().keys("apcv:replay:*")
    finally:
        stop_server(no_certificate.server)
        stop_server(wrong_ca.server)


def test_a_certificate_not_naming_the_address_needs_the_name_check_off(
    pki: DemoPKI, tls_redis: TlsRedis, tmp_path: Path
) -> None:
    """Redis reached at an address its certificate does not name (127.0.0.2 here; a Redis
    Cluster node announcing its pod IP in a cluster): refused by default, the store failing
    closed; served with ``replay.redis_tls_check_hostname = false``, whose chain is still
    checked — a certificate from another CA is refused even then."""
    mine = tls_redis.client
    url = tls_redis.url.replace("127.0.0.1", "127.0.0.2")
    files = {
        "APCV_REPLAY_REDIS_TLS_CA": str(mine.ca),
        "APCV_REPLAY_REDIS_TLS_CERT": str(mine.cert),
        "APCV_REPLAY_REDIS_TLS_KEY": str(mine.key),
    }
    other = write_party(CertificateAuthority("another CA"), "stranger", tmp_path, server=False)
    no_check = {"APCV_REPLAY_REDIS_TLS_CHECK_HOSTNAME": "false"}
    checked = start_redis_replica(pki, tmp_path / "c.log", url, **files)
    unchecked = start_redis_replica(pki, tmp_path / "u.log", url, **files, **no_check)
    another_ca = {**files, **no_check, "APCV_REPLAY_REDIS_TLS_CA": str(other.ca)}
    wrong_ca = start_redis_replica(pki, tmp_path / "w.log", url, **another_ca)
    try:
        presentation = pki.present("alice")
        assert outcome(verify(checked, presentation, "reader-1")) == UNAVAILABLE
        assert outcome(verify(wrong_ca, presentation, "reader-1")) == UNAVAILABLE
        assert outcome(verify(unchecked, presentation, "reader-1")) == ACCEPTED
        assert outcome(verify(unchecked, presentation, "reader-2")) == REPLAYED
    finally:
        for replica in (checked, unchecked, wrong_ca):
            stop_server(replica.server)


@pytest.mark.parametrize(
    "url", ["rediss://cache:6380/0", "rediss+sentinel://s1:26379/apcv", "rediss+cluster://c1:6379"]
)
def test_every_topology_hands_the_tls_files_to_its_connections(url: str) -> None:
    """The files and the name check reach the connections of each kind of client (to the
    servers, and to the sentinels, which speak TLS too); a plain URL gets none."""
    files = {
        "ssl_ca_certs": "/ca.pem",
        "ssl_certfile": "/client.pem",
        "ssl_keyfile": "/client.key",
        "ssl_check_hostname": False,
    }
    client = make_client(url, 1.0, files)
    if url.startswith("rediss+cluster"):
        kwargs = [client.connection_kwargs]
    else:
        kwargs = [client.connection_pool.connection_kwargs]
        if url.startswith("rediss+sentinel"):
            for sentinel in client.connection_pool.sentinel_manager.sentinels:
                kwargs.append(sentinel.connection_pool.connection_kwargs)
    for given in kwargs:
        assert {name: given.get(name) for name in files} == files
    plain = make_client("redis://cache:6379/0", 1.0, files)
    assert "ssl_ca_certs" not in plain.connection_pool.connection_kwargs
