"""What both clients share: TLS and mTLS settings, the channel, and the retry backoff."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

__all__ = ["ChannelOption", "RetryPolicy", "TLSConfig", "open_channel"]

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
