"""What both clients share: TLS and mTLS settings, the channel, and the retry backoff."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509

from ..tls_files import RenewedFiles, pair_certificate

__all__ = ["ChannelOption", "RetryPolicy", "TLSConfig", "TLSFiles", "open_channel", "tls_settings"]

log = logging.getLogger("apcv_verify.client")

#: A gRPC channel argument, e.g. ``("grpc.max_receive_message_length", 8 << 20)``.
ChannelOption = tuple[str, Any]


@dataclass(frozen=True)
class TLSConfig:
    """TLS to the verifier, and mTLS when a client certificate is given.

    ``root_certificates`` is the PEM of the CA that signed the server's certificate (``None``:
    the system's roots); ``certificate_chain`` and ``private_key`` (PEM, both or neither) are
    the client certificate whose subject CN the server takes as the caller id (README
    "Callers and disclosure"); ``server_name`` overrides the name checked in the server's
    certificate when the target address does not carry it.
    """

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = field(default=None, repr=False)
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("mTLS needs both certificate_chain and private_key, or neither")

    @classmethod
    def from_files(
        cls,
        *,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        server_name: str | None = None,
    ) -> TLSConfig:
        """The same settings read from PEM files."""

        def read(path: str | Path | None) -> bytes | None:
            return None if path is None else Path(path).read_bytes()

        return cls(read(ca), read(cert), read(key), server_name)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )


class TLSFiles:
    """TLS and mTLS settings kept in PEM files and read again when they change, for a client
    that runs longer than its certificate lives (an edge reader up for months, a client
    certificate renewed on disk by an agent or cert-manager).

    Give it where a :class:`TLSConfig` goes: the clients look at the files' modification
    times and sizes before they connect (:class:`~apcv_verify.client.EdgeBatcher`: before each
    stream; :class:`~apcv_verify.client.VerifierClient`: before each call) and, when they
    changed, read them again and connect with them; calls in progress finish on the previous
    connection. A set that is not whole — a certificate whose key is not written yet, a file
    that does not parse — is logged and the previous set kept until the files change again.
    The arguments are those of :meth:`TLSConfig.from_files`; the files are read once at once,
    so a wrong path or an unusable set raises here.
    """

    def __init__(
        self,
        *,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        server_name: str | None = None,
    ) -> None:
        if (cert is None) != (key is None):
            raise ValueError("mTLS needs both cert and key, or neither")
        self._files = {"ca": ca, "cert": cert, "key": key}
        self._server_name = server_name
        paths = [path for path in self._files.values() if path is not None]
        self._renewed = RenewedFiles(paths, self._read, _log_refused)

    def current(self) -> tuple[TLSConfig, int]:
        """The settings to connect with, and their generation: 0 as first read, one more at
        each renewal taken. A client remembers the generation its channel was made with, so
        several clients can share one :class:`TLSFiles`."""
        if self._renewed.renew() is not None:
            log.info("TLS files changed: the next connections use them")
        return self._renewed.current, self._renewed.generation

    def _read(self) -> TLSConfig:
        config = TLSConfig.from_files(**self._files, server_name=self._server_name)
        if config.certificate_chain is not None and config.private_key is not None:
            pair_certificate(config.certificate_chain, config.private_key)
        if config.root_certificates is not None:
            x509.load_pem_x509_certificates(config.root_certificates)
        return config


def _log_refused(error: Exception) -> None:
    log.warning("TLS files not taken (%s); the previous ones are kept", error)


def tls_settings(tls: TLSConfig | TLSFiles | None) -> tuple[TLSConfig | None, int]:
    """The settings of ``tls`` to connect with now, and their generation
    (:meth:`TLSFiles.current`; always 0 for fixed settings)."""
    if isinstance(tls, TLSFiles):
        return tls.current()
    return tls, 0


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded: the ``n``-th wait (from 0) is drawn
    uniformly from ``[c/2, c]`` with ``c = min(max_backoff, initial_backoff * multiplier**n)``
    seconds, so many clients retrying after one outage spread out. ``max_attempts`` bounds the
    attempts of one unary call (1 = no retry); an :class:`~apcv_verify.client.EdgeBatcher`
    retries without bound, as its scans wait in the spool."""

    max_attempts: int = 5
    initial_backoff: float = 0.2
    max_backoff: float = 10.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 < self.initial_backoff <= self.max_backoff:
            raise ValueError("need 0 < initial_backoff <= max_backoff")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")

    def ceiling(self, retry: int) -> float:
        """The upper bound of the ``retry``-th wait (0-based)."""
        # min() before the power would overflow for a long outage: cap the exponent.
        exponent = min(retry, 64)
        return min(self.max_backoff, self.initial_backoff * self.multiplier**exponent)

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """The ``retry``-th wait in seconds, jittered."""
        ceiling = self.ceiling(retry)
        return (rng or random).uniform(ceiling / 2, ceiling)


def channel_options(
    tls: TLSConfig | None, retry: RetryPolicy, extra: Sequence[ChannelOption]
) -> list[ChannelOption]:
    """Keepalive on open calls (every 30 s, above the server's default 10 s minimum, so a
    vanished server is noticed on an idle stream), and the channel's own reconnection backoff
    no longer than ``retry``'s (gRPC's default grows to 120 s); ``extra`` last, so it wins.
    ``grpc.min_reconnect_backoff_ms`` is left alone: gRPC uses it as the connection attempt's
    timeout (20 s), which a slow TLS handshake may need."""
    options: list[ChannelOption] = [
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", int(retry.initial_backoff * 1000)),
        ("grpc.max_reconnect_backoff_ms", int(retry.max_backoff * 1000)),
    ]
    if tls is not None and tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return [*options, *extra]


def open_channel(
    target: str,
    tls: TLSConfig | None,
    retry: RetryPolicy,
    extra: Sequence[ChannelOption] = (),
) -> grpc.aio.Channel:
    """An asyncio channel to ``target`` (``host:port``); plaintext when ``tls`` is None."""
    options = channel_options(tls, retry, extra)
    if tls is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, tls.credentials(), options=options)
