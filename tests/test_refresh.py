"""Trust list and status lists fetched over HTTP from a real server on loopback and
refreshed in the background by a real ``apcv-verify serve`` process (trust/sources.py)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from apcv_verify import _native
from apcv_verify.config import ConfigError, load_config
from apcv_verify.issuer import (
    STATUS_INVALID,
    STATUS_ROLE,
    DemoPKI,
    make_status_list,
    make_trust_list,
    tamper_signature,
)
from apcv_verify.replay.memory import memory_replay_store
from apcv_verify.service.startup import build_verifiers
from apcv_verify.trust.sources import MAX_SOURCE_BYTES, TrustSource
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from .conftest import (
    REPO,
    ServerProcess,
    free_port,
    metric,
    reason,
    stop_server,
    system_executable,
    verify,
    wait_serving,
)
from .test_tls import CertificateAuthority

#: Refresh interval of the servers under test, and the bound of every wait for a refresh.
REFRESH = "0.3"
WAIT_SECONDS = 20.0
#: A dripping list server sends one byte this often: every read succeeds, the fetch never ends.
DRIP_SECONDS = 0.5


@functools.cache
def gzip_bomb() -> bytes:
    """256 MiB of zeros, gzip-coded: about 256 KiB on the wire, eight times MAX_SOURCE_BYTES."""
    coder = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: the gzip format
    block = bytes(1 << 20)
    return b"".join([*(coder.compress(block) for _ in range(256)), coder.flush()])


class ListServer:
    """A publisher of signed lists: serves files of a directory with a strong ETag,
    answers ``If-None-Match`` with 304, and counts what it was asked."""

    def __init__(self, root: Path, tls: ssl.SSLContext | None = None) -> None:
        self.root = root
        self.scheme = "https" if tls is not None else "http"
        self.available = True  # False: 503 for everything
        #: Paths answered with their headers, then one byte every DRIP_SECONDS, until closed.
        self.drip: set[str] = set()
        self.dripping = 0  # drips in progress
        self._closing = threading.Event()
        #: Paths answered with a gzip-coded bomb (gzip_bomb()) whatever the request asks for.
        self.coded: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []  # (path, If-None-Match)
        self.accept_encodings: list[str | None] = []
        self.via: list[str | None] = []  # each request's Via header: a proxy adds one
        self.not_modified = 0
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server name)
                owner._serve(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: Path) -> str:
        where = path.relative_to(self.root).as_posix()
        return f"{self.scheme}://127.0.0.1:{self.port}/{where}"

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        condition = handler.headers.get("If-None-Match")
        with self._lock:
            self.requests.append((handler.path, condition))
            self.accept_encodings.append(handler.headers.get("Accept-Encoding"))
            self.via.append(handler.headers.get("Via"))
        if not self.available:
            handler.send_error(503)
            return
        if handler.path in self.coded:
            handler.send_response(200)
            handler.send_header("Content-Type", "application/cose")
            handler.send_header("Content-Encoding", "gzip")
            handler.send_header("Content-Length", str(len(gzip_bomb())))
            handler.end_headers()
            with contextlib.suppress(OSError):  # the client may hang up at the headers
                handler.wfile.write(gzip_bomb())
            return
        path = self.root / handler.path.lstrip("/")
        if not path.is_file():
            handler.send_error(404)
            return
        body = path.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        if condition == etag:
            with self._lock:
                self.not_modified += 1
            handler.send_response(304)
            handler.send_header("ETag", etag)
            handler.end_headers()
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "application/cose")
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("ETag", etag)
        handler.end_headers()
        if handler.path in self.drip:
            self._drip(handler, body)
        else:
            handler.wfile.write(body)

    def _drip(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        """Each byte well within any read timeout, the whole body taking far longer."""
        with self._lock:
            self.dripping += 1
        try:
            for byte in body:
                if self._closing.wait(DRIP_SECONDS) or handler.path not in self.drip:
                    return
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
        except OSError:
            return  # the client gave up
        finally:
            with self._lock:
                self.dripping -= 1

    def close(self) -> None:
        self._closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=10)


@pytest.fixture
def lists(pki: DemoPKI) -> Iterator[ListServer]:
    publisher = ListServer(pki.directory)
    yield publisher
    publisher.close()


def launch(
    pki: DemoPKI, lists: ListServer, log_path: Path, metrics_port: int, **environ: str
) -> ServerProcess:
    """``apcv-verify serve`` with the trust list and status lists at their URLs (no wait);
    ``environ`` adds to or overrides its environment."""
    address = f"127.0.0.1:{free_port()}"
    status_urls = [lists.url(path) for path in pki.status_list_paths.values()]
    command = [
        sys.executable, "-m", "apcv_verify.cli", "serve",
        "--listen", address,
        "--anchor", str(pki.directory / "anchor.pem"),
        "--trust-list", lists.url(pki.trust_list_path),
        *[arg for url in status_urls for arg in ("--status-list", url)],
        "--allow-test-identities",
    ]  # fmt: skip
    env = {
        **os.environ,
        "APCV_TRUST_REFRESH_SECONDS": REFRESH,
        "APCV_TRUST_HTTP_TIMEOUT_SECONDS": "2",
        "APCV_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
        **environ,
    }
    log_file = log_path.open("w")
    process = subprocess.Popen(
        command, stdout=log_file, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env
    )
    return ServerProcess(process, address, log_path)


@dataclass
class Proxy:
    """A real forward HTTP proxy (tinyproxy) on loopback, as hospital networks put between
    their servers and the Internet."""

    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    executable = system_executable("tinyproxy")
    running = Proxy(free_port(), tmp_path / "tinyproxy.log")
    config = tmp_path / "tinyproxy.conf"
    config.write_text(
        f"Port {running.port}\nListen 127.0.0.1\nAllow 127.0.0.1\nTimeout 30\n"
        "MaxClients 20\nLogLevel Connect\n"
    )
    with running.log_path.open("w") as log:
        process = subprocess.Popen(
            [executable, "-d", "-c", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", running.port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"tinyproxy did not start:\n{running.log()}") from None
                time.sleep(0.05)
        yield running
    finally:
        process.kill()
        process.wait()


@pytest.fixture
def metrics_port() -> int:
    return free_port()


@pytest.fixture
def served(
    pki: DemoPKI, lists: ListServer, tmp_path: Path, metrics_port: int
) -> Iterator[ServerProcess]:
    running = launch(pki, lists, tmp_path / "server.log", metrics_port)
    try:
        wait_serving(running.address, running.process)
    except Exception:
        stop_server(running)
        raise RuntimeError(f"server did not start:\n{running.logs()}") from None
    yield running
    stop_server(running)


def wait_for(condition: Callable[[], bool], what: str, server: ServerProcess) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if condition():
            return
        assert server.process.poll() is None, f"server exited:\n{server.logs()}"
        time.sleep(0.1)
    raise AssertionError(f"not within {WAIT_SECONDS}s: {what}\n{server.logs()}")


def failures(port: int, source: str, why: str) -> float:
    return metric(port, "apcv_trust_refresh_failures_total", source=source, reason=why)


def test_lists_load_from_urls_and_refresh_with_conditional_requests(
    served: ServerProcess, pki: DemoPKI, lists: ListServer, metrics_port: int
) -> None:
    assert reason(verify(served, pki.present())) == "OK"
    assert reason(verify(served, pki.present("revoked"))) == "REVOKED"
    wait_for(lambda: lists.not_modified >= 4, "304 answers to If-None-Match", served)
    paths = {path for path, _ in lists.requests}
    assert "/trust-list.cose" in paths
    status_paths = {
        "/" + p.relative_to(pki.directory).as_posix() for p in pki.status_list_paths.values()
    }
    assert status_paths <= paths
    assert any(condition is not None for _, condition in lists.requests)
    assert metric(metrics_port, "apcv_trust_list_sequence") == pki.trust_list_seq
    assert metric(metrics_port, "apcv_trust_source_expired", source="trust_list") == 0
    # Unchanged lists are no swap: the first load only.
    assert metric(metrics_port, "apcv_trust_snapshot_swaps_total") == 1


def test_a_revocation_published_is_enforced_after_the_next_refresh(
    served: ServerProcess, pki: DemoPKI
) -> None:
    assert reason(verify(served, pki.present())) == "OK"
    alice = pki.holder("alice")
    pki.revoke(alice.status_index, uri=alice.status_uri, now=int(time.time()) + 1)
    wait_for(lambda: reason(verify(served, pki.present())) == "REVOKED", "alice revoked", served)


def test_lists_are_fetched_through_the_proxy_the_environment_names(
    pki: DemoPKI, lists: ListServer, proxy: Proxy, tmp_path: Path
) -> None:
    """``HTTP_PROXY`` (and ``HTTPS_PROXY``) route the fetches through the proxy, as curl
    would; a host in ``NO_PROXY`` is fetched directly."""
    # Both spellings: Python reads the lower-case ones last.
    via_proxy = {"HTTP_PROXY": proxy.url, "http_proxy": proxy.url, "NO_PROXY": "", "no_proxy": ""}
    serves_ok(pki, lists, tmp_path / "proxied.log", **via_proxy)
    assert lists.via and all(via is not None and "tinyproxy" in via for via in lists.via)
    assert f"GET {lists.url(pki.trust_list_path)} " in proxy.log()
    lists.via.clear()
    bypass = {**via_proxy, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    serves_ok(pki, lists, tmp_path / "direct.log", **bypass)
    assert lists.via and all(via is None for via in lists.via)


@dataclass
class Mirror:
    """An internal HTTPS mirror of the lists, its certificate issued by a private CA."""

    lists: ListServer
    tls: ssl.SSLContext  # the server's: mTLS is turned on by changing it
    ca: CertificateAuthority
    ca_path: Path


@pytest.fixture
def mirror(pki: DemoPKI, tmp_path: Path) -> Iterator[Mirror]:
    ca = CertificateAuthority("list mirror CA")
    issued = ca.issue("lists.internal", server=True)
    (tmp_path / "mirror.pem").write_bytes(issued.cert_pem + issued.key_pem)
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(tmp_path / "mirror.pem")
    served = Mirror(ListServer(pki.directory, tls), tls, ca, tmp_path / "ca.pem")
    yield served
    served.lists.close()


def serves_ok(pki: DemoPKI, lists: ListServer, log_path: Path, **environ: str) -> None:
    """A server started on ``lists`` loads them and accepts a presentation."""
    running = launch(pki, lists, log_path, free_port(), **environ)
    try:
        wait_serving(running.address, running.process, timeout=WAIT_SECONDS)
        assert reason(verify(running, pki.present())) == "OK"
    finally:
        stop_server(running)


def refused_certificate(
    pki: DemoPKI, lists: ListServer, log_path: Path, error: str, **environ: str
) -> None:
    """A server started on ``lists`` refuses the TLS connection with ``error`` (logged), and
    without a trust list stays NOT_SERVING."""
    running = launch(pki, lists, log_path, free_port(), **environ)
    try:
        wait_for(lambda: error in running.logs(), f"TLS refused: {error}", running)
        # The first fetch is logged before the port is bound: wait for the port, which must
        # then say NOT_SERVING (a single Check raced the bind under load).
        wait_serving(
            running.address,
            running.process,
            timeout=WAIT_SECONDS,
            status=health_pb2.HealthCheckResponse.NOT_SERVING,
        )
    finally:
        stop_server(running)


def test_an_https_list_server_under_a_private_ca_is_trusted_through_ssl_cert_file(
    pki: DemoPKI, mirror: Mirror, tmp_path: Path
) -> None:
    """An ``https://`` source must chain to the system's CAs; ``SSL_CERT_FILE`` names another
    bundle (a TLS-inspecting proxy's CA, an internal mirror's) for the whole process."""
    refused_certificate(pki, mirror.lists, tmp_path / "untrusted.log", "CERTIFICATE_VERIFY_FAILED")
    serves_ok(pki, mirror.lists, tmp_path / "trusted.log", SSL_CERT_FILE=str(mirror.ca_path))


def test_trust_http_tls_ca_names_the_ca_of_the_list_servers(
    pki: DemoPKI, mirror: Mirror, tmp_path: Path
) -> None:
    """``trust.http_tls_ca`` trusts the mirror's CA for the list fetches alone, and only it:
    a bundle without that CA is refused like the system's."""
    other = tmp_path / "other-ca.pem"
    other.write_bytes(CertificateAuthority("another CA").pem)
    refused_certificate(
        pki,
        mirror.lists,
        tmp_path / "other.log",
        "CERTIFICATE_VERIFY_FAILED",
        APCV_TRUST_HTTP_TLS_CA=str(other),
        SSL_CERT_FILE=str(mirror.ca_path),  # the setting, not the process's bundle, decides
    )
    serves_ok(
        pki, mirror.lists, tmp_path / "trusted.log", APCV_TRUST_HTTP_TLS_CA=str(mirror.ca_path)
    )


def test_a_list_server_that_requires_a_client_certificate_gets_http_tls_cert(
    pki: DemoPKI, mirror: Mirror, tmp_path: Path
) -> None:
    """A mirror that serves only known clients (mTLS): without ``trust.http_tls_cert`` the
    fetch is refused at the handshake; with it the lists load."""
    clients = CertificateAuthority("list clients CA")
    mirror.tls.load_verify_locations(cadata=clients.pem.decode())
    mirror.tls.verify_mode = ssl.CERT_REQUIRED
    client = clients.issue("apcv-verify")
    (tmp_path / "client.crt").write_bytes(client.cert_pem)
    (tmp_path / "client.key").write_bytes(client.key_pem)
    with_ca = {"APCV_TRUST_HTTP_TLS_CA": str(mirror.ca_path)}
    refused_certificate(
        pki, mirror.lists, tmp_path / "anonymous.log", "CERTIFICATE_REQUIRED", **with_ca
    )
    assert not any(path for path, _ in mirror.lists.requests)  # nothing served without one
    serves_ok(
        pki,
        mirror.lists,
        tmp_path / "known.log",
        **with_ca,
        APCV_TRUST_HTTP_TLS_CERT=str(tmp_path / "client.crt"),
        APCV_TRUST_HTTP_TLS_KEY=str(tmp_path / "client.key"),
    )


def test_list_tls_files_are_read_again_at_each_refresh(
    pki: DemoPKI, mirror: Mirror, tmp_path: Path
) -> None:
    """A CA bundle replaced on disk is used from the next refresh on; one that cannot be
    loaded is logged and the last good one kept, so the lists still refresh."""
    ca_file = tmp_path / "lists-ca.pem"
    ca_file.write_bytes(mirror.ca.pem)
    status_urls = [mirror.lists.url(path) for path in pki.status_list_paths.values()]
    source = _source(
        pki,
        APCV_TRUST_TRUST_LIST=mirror.lists.url(pki.trust_list_path),
        APCV_TRUST_STATUS_LISTS=",".join(status_urls),
        APCV_TRUST_HTTP_TLS_CA=str(ca_file),
    )

    async def scenario() -> None:
        await source.load_initial()
        assert source.current is not None
        alice = pki.holder("alice")
        ca_file.write_text("not a certificate\n")
        pki.revoke(alice.status_index, uri=alice.status_uri, now=int(time.time()) + 1)
        with capture_logs() as logs:
            assert await source.refresh()  # the revocation arrives over the kept context
        assert [e for e in logs if e["event"] == "trust_tls_reload_failed"]
        ca_file.write_bytes(CertificateAuthority("another CA").pem)
        pki.revoke(alice.status_index, uri=alice.status_uri, now=int(time.time()) + 2)
        with capture_logs() as logs:
            assert not await source.refresh()
        refused = [e for e in logs if e["event"] == "trust_refresh_failed"]
        assert refused and all("CERTIFICATE_VERIFY_FAILED" in e["detail"] for e in refused)

    asyncio.run(scenario())


def test_list_tls_files_that_cannot_be_loaded_are_a_configuration_error(
    pki: DemoPKI, mirror: Mirror, tmp_path: Path
) -> None:
    (tmp_path / "client.crt").write_bytes(mirror.ca.issue("apcv-verify").cert_pem)
    (tmp_path / "other.key").write_bytes(mirror.ca.issue("someone else").key_pem)
    urls = {"APCV_TRUST_TRUST_LIST": mirror.lists.url(pki.trust_list_path)}
    with pytest.raises(ConfigError, match="trust.http_tls_cert: cannot load with its key"):
        _source(
            pki,
            **urls,
            APCV_TRUST_HTTP_TLS_CERT=str(tmp_path / "client.crt"),
            APCV_TRUST_HTTP_TLS_KEY=str(tmp_path / "other.key"),
        )
    (tmp_path / "bad-ca.pem").write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="trust.http_tls_ca: cannot load"):
        _source(pki, **urls, APCV_TRUST_HTTP_TLS_CA=str(tmp_path / "bad-ca.pem"))


@pytest.mark.slow
def test_a_dripping_list_server_holds_back_no_revocation(
    served: ServerProcess, pki: DemoPKI, lists: ListServer, metrics_port: int
) -> None:
    """Every byte of the trust list arrives within the read timeout, the whole never does:
    the fetch is cut at its deadline, counted and logged, and the status list's revocation
    is enforced meanwhile."""
    assert reason(verify(served, pki.present())) == "OK"
    lists.drip.add("/" + pki.trust_list_path.relative_to(pki.directory).as_posix())
    pki.new_trust_list(pki.trust_list_seq + 1)  # a change, so the trust list is fetched whole
    wait_for(lambda: lists.dripping > 0, "a dripping fetch", served)
    alice = pki.holder("alice")
    pki.revoke(alice.status_index, uri=alice.status_uri, now=int(time.time()) + 1)
    wait_for(lambda: reason(verify(served, pki.present())) == "REVOKED", "alice revoked", served)
    wait_for(lambda: failures(metrics_port, "trust_list", "timeout") >= 1, "timeout", served)
    assert '"reason": "timeout"' in served.logs()
    with served.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING  # the last good list is kept


@pytest.mark.slow
def test_shutdown_does_not_wait_for_a_stuck_fetch(
    pki: DemoPKI, lists: ListServer, tmp_path: Path, metrics_port: int
) -> None:
    """SIGTERM while a list fetch drips, with a fetch deadline far beyond the grace: the
    server ends within its grace (Kubernetes would SIGKILL it after that)."""
    running = launch(
        pki,
        lists,
        tmp_path / "server.log",
        metrics_port,
        APCV_TRUST_HTTP_TIMEOUT_SECONDS="120",
        APCV_SERVER_GRACE_SECONDS="2",
    )
    try:
        wait_serving(running.address, running.process)
        (status_path,) = pki.status_list_paths.values()
        lists.drip.add("/" + status_path.relative_to(pki.directory).as_posix())
        alice = pki.holder("alice")
        pki.revoke(alice.status_index, uri=alice.status_uri, now=int(time.time()) + 1)
        wait_for(lambda: lists.dripping > 0, "a dripping fetch", running)
        started = time.monotonic()
        running.process.terminate()
        running.process.wait(timeout=30)
        assert time.monotonic() - started < 2 + 2.5, running.logs()
    finally:
        stop_server(running)


def test_a_trust_list_with_a_lower_seq_is_refused_and_the_old_one_kept(
    served: ServerProcess, pki: DemoPKI, metrics_port: int
) -> None:
    first = pki.trust_list_seq
    pki.new_trust_list(first + 5)
    wait_for(
        lambda: metric(metrics_port, "apcv_trust_list_sequence") == first + 5, "seq +5", served
    )
    pki.new_trust_list(first + 1)  # a rollback, validly signed by the anchor
    wait_for(lambda: failures(metrics_port, "trust_list", "rollback") >= 1, "rollback", served)
    assert metric(metrics_port, "apcv_trust_list_sequence") == first + 5
    assert reason(verify(served, pki.present())) == "OK"
    assert "trust_refresh_failed" in served.logs()


def test_a_bad_signature_is_refused_and_the_old_lists_kept(
    served: ServerProcess, pki: DemoPKI, metrics_port: int
) -> None:
    seq = pki.trust_list_seq
    now = int(time.time())
    # Signed here and written only tampered: DemoPKI.new_trust_list/revoke would first write
    # the valid lists, which a refresh could pick up before the tampered bytes replace them.
    newer = make_trust_list(
        pki.anchor, seq=seq + 1, iat=now, exp=now + 3600, entries=pki.trust_entries()
    )
    pki.trust_list_path.write_bytes(tamper_signature(newer, 3))
    (status_path,) = pki.status_list_paths.values()
    alice = pki.holder("alice")
    entry = pki.manifest["status_lists"][alice.status_uri]
    statuses = [0] * entry["size"]
    for index, status in entry["statuses"].items():
        statuses[int(index)] = status
    statuses[alice.status_index] = STATUS_INVALID
    revoked = make_status_list(
        pki.status_signer,
        uri=alice.status_uri,
        statuses=statuses,
        bits=entry["bits"],
        iat=now + 1,
        exp=now + 3600,
    )
    status_path.write_bytes(tamper_signature(revoked, 3))
    wait_for(lambda: failures(metrics_port, "trust_list", "refused") >= 1, "refused", served)
    wait_for(lambda: failures(metrics_port, "status_lists[0]", "refused") >= 1, "refused", served)
    assert metric(metrics_port, "apcv_trust_list_sequence") == seq
    assert reason(verify(served, pki.present())) == "OK"  # the tampered revocation is not used


def test_the_http_server_going_away_keeps_the_last_good_lists(
    served: ServerProcess, pki: DemoPKI, lists: ListServer, metrics_port: int
) -> None:
    lists.close()
    wait_for(lambda: failures(metrics_port, "trust_list", "fetch") >= 2, "fetch fails", served)
    wait_for(lambda: failures(metrics_port, "status_lists[0]", "fetch") >= 2, "fetch", served)
    assert reason(verify(served, pki.present())) == "OK"
    assert reason(verify(served, pki.present("revoked"))) == "REVOKED"
    assert metric(metrics_port, "apcv_trust_list_sequence") == pki.trust_list_seq
    with served.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_a_status_list_whose_signer_left_the_trust_list_is_dropped(
    served: ServerProcess, pki: DemoPKI, metrics_port: int
) -> None:
    assert reason(verify(served, pki.present())) == "OK"
    kept = [entry for entry in pki.trust_entries() if entry.role != STATUS_ROLE]
    pki.new_trust_list(pki.trust_list_seq + 1, entries=kept)
    wait_for(
        lambda: reason(verify(served, pki.present())) == "STATUS_UNAVAILABLE", "dropped", served
    )
    assert failures(metrics_port, "status_lists[0]", "untrusted") >= 1
    # The signer comes back in a later list: the status list is fetched and used again.
    pki.new_trust_list(pki.trust_list_seq + 1)
    wait_for(lambda: reason(verify(served, pki.present())) == "OK", "status list back", served)


def test_not_serving_and_unavailable_until_a_trust_list_is_loaded(
    pki: DemoPKI, lists: ListServer, tmp_path: Path, metrics_port: int
) -> None:
    lists.available = False
    running = launch(pki, lists, tmp_path / "server.log", metrics_port)
    try:
        with running.channel() as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + WAIT_SECONDS
            while True:
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    break
                except grpc.RpcError:
                    assert time.monotonic() < deadline, running.logs()
                    assert running.process.poll() is None, running.logs()
                    time.sleep(0.1)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as refused:
                verify(running, pki.present())
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert refused.value.details() == "no trust list loaded yet"
            lists.available = True
            wait_serving(running.address, running.process, timeout=WAIT_SECONDS)
            assert reason(verify(running, pki.present())) == "OK"
    finally:
        stop_server(running)


# -- in process: file sources and configuration --------------------------------------------------


def _source(pki: DemoPKI, **environ: str) -> TrustSource:
    config = load_config(
        environ={
            "APCV_TRUST_ANCHORS": str(pki.directory / "anchor.pem"),
            "APCV_TRUST_TRUST_LIST": str(pki.trust_list_path),
            "APCV_TRUST_STATUS_LISTS": ",".join(map(str, pki.status_list_paths.values())),
            "APCV_POLICY_ALLOW_TEST_IDENTITIES": "true",
            **environ,
        }
    )
    store = memory_replay_store(config.replay)
    return TrustSource(
        config,
        lambda material: build_verifiers(config, material, store),
        registry=CollectorRegistry(),
    )


def test_file_sources_are_read_again_only_when_they_change(pki: DemoPKI) -> None:
    source = _source(pki)
    asyncio.run(source.load_initial())
    first = source.current
    assert first is not None
    assert not asyncio.run(source.refresh())  # unchanged files: no swap
    assert source.current is first
    later = int(time.time()) + 2
    alice = pki.holder("alice")
    pki.revoke(alice.status_index, uri=alice.status_uri, now=later)
    assert asyncio.run(source.refresh())
    second = source.current
    assert second is not None and second is not first
    scan = _native.Scan(pki.present("alice"), "desk-1")
    # The first snapshot still answers as it did: a call that read it is not affected.
    assert first.verifiers[0].verify_batch([scan], later)[0].reason == "OK"
    assert second.verifiers[0].verify_batch([scan], later)[0].reason == "REVOKED"


def test_an_older_status_list_is_a_rollback(pki: DemoPKI) -> None:
    (status_path,) = pki.status_list_paths.values()
    old = status_path.read_bytes()
    pki.write_status_lists(now=int(time.time()) + 10)
    source = _source(pki)
    asyncio.run(source.load_initial())
    status_path.write_bytes(old)
    assert not asyncio.run(source.refresh())
    held = source.current
    assert held is not None
    assert (
        held.status_lists[0].issued_at
        > _native.StatusList.verify(old, held.trust_list, int(time.time())).issued_at
    )


def test_a_file_that_fails_at_start_is_an_error(pki: DemoPKI) -> None:
    pki.trust_list_path.write_bytes(tamper_signature(pki.trust_list, 3))
    with pytest.raises(_native.TrustListError):
        asyncio.run(_source(pki).load_initial())


def test_urls_are_kept_and_paths_made_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "anchor.pem").write_text("")
    (tmp_path / "local.cwt").write_text("")
    config_file = tmp_path / "apcv.toml"
    config_file.write_text(
        '[trust]\nanchors = ["anchor.pem"]\n'
        'trust_list = "https://lists.example/trust-list.cose"\n'
        'status_lists = ["http://lists.example/amo/1", "local.cwt"]\n'
        "refresh_seconds = 60\nhttp_timeout_seconds = 5\n"
    )
    trust = load_config(config_file, environ={}).trust
    assert trust.trust_list == "https://lists.example/trust-list.cose"
    assert trust.status_lists == ("http://lists.example/amo/1", str(tmp_path / "local.cwt"))
    assert (trust.refresh_seconds, trust.http_timeout_seconds) == (60, 5)
    assert load_config(config_file, environ={}).trust.anchors == (str(tmp_path / "anchor.pem"),)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("APCV_TRUST_REFRESH_SECONDS", "-1", "trust.refresh_seconds: must not be negative"),
        ("APCV_TRUST_HTTP_TIMEOUT_SECONDS", "0", "trust.http_timeout_seconds:"),
        ("APCV_TRUST_TRUST_LIST", "ftp://lists.example/tl", "trust.trust_list:"),
        ("APCV_TRUST_ANCHORS", "https://lists.example/anchor.pem", "trust.anchors:"),
    ],
)
def test_bad_refresh_settings_name_the_key(
    pki: DemoPKI, key: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _source(pki, **{key: value})


def test_the_response_cap_is_above_every_document_the_core_accepts() -> None:
    assert MAX_SOURCE_BYTES > 17 * 1024 * 1024


def test_a_list_sent_with_a_content_coding_is_refused_unread(
    pki: DemoPKI, lists: ListServer
) -> None:
    """Lists are asked for as published (``Accept-Encoding: identity``). A server that sends
    a gzip-coded body anyway, here 256 MiB of zeros in about 256 KiB, is refused at its
    headers: the last good list is kept, the failure is counted, and the fetch never holds
    anything like the inflated size (nor MAX_SOURCE_BYTES of it)."""
    (status_path,) = pki.status_list_paths.values()
    source = _source(
        pki,
        APCV_TRUST_TRUST_LIST=lists.url(pki.trust_list_path),
        APCV_TRUST_STATUS_LISTS=lists.url(status_path),
    )
    asyncio.run(source.load_initial())
    held = source.current
    assert held is not None and len(held.status_lists) == 1
    lists.coded.add("/" + status_path.relative_to(pki.directory).as_posix())
    gzip_bomb()  # made before the measurement
    tracemalloc.start()
    try:
        changed = asyncio.run(source.refresh())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not changed
    assert source.current is held
    (failures,) = source.metrics.refresh_failures.collect()
    assert [
        (sample.labels, sample.value)
        for sample in failures.samples
        if sample.name.endswith("_total")
    ] == [({"source": "status_lists[0]", "reason": "fetch"}, 1.0)]
    assert peak < 8 << 20, f"{peak} bytes held by a refused fetch"
    assert set(lists.accept_encodings) == {"identity"}


def test_a_stopped_source_fetches_nothing_more(pki: DemoPKI) -> None:
    source = _source(pki, APCV_TRUST_REFRESH_SECONDS="0.05")
    asyncio.run(source.load_initial())

    async def run_and_stop() -> None:
        source.start()
        await asyncio.sleep(0.2)
        await source.stop()

    asyncio.run(run_and_stop())
    held = source.current
    pki.new_trust_list(pki.trust_list_seq + 1)
    assert not asyncio.run(source.refresh())
    assert source.current is held
