"""The ``[tls]`` files of the gRPC port, taken up again when they change on disk.

Server certificates are renewed while the service runs (cert-manager renews a Secret at two
thirds of its life, and Kubernetes updates the mounted files in place): a server that read
them once would serve the old certificate until it expires, then refuse every connection.
gRPC calls :meth:`ServerCertificates.fetch` before each new connection's handshake
(``grpc.dynamic_ssl_server_credentials``); it compares the files' modification times and
sizes with those last read (three ``stat`` calls), and only when they differ reads them
again. A new set is taken only when it is whole — the key is the certificate's, every file
parses — so a renewal caught halfway (the certificate written, not yet its key) serves the
previous set until the files change again; it is logged (``tls_reload_failed``), never
raised into gRPC's handshake. Connections already open keep the certificate they were
made with.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import grpc
import structlog
from cryptography import x509
from prometheus_client import CollectorRegistry, Gauge

from ..config import ConfigError, TlsSection
from ..tls_files import KeyPairError, RenewedFiles, pair_certificate

__all__ = ["CertificateSet", "ServerCertificates"]

log = structlog.get_logger("apcv_verify.service.certificates")


@dataclass(frozen=True)
class CertificateSet:
    """One whole, checked reading of the ``[tls]`` files."""

    key: bytes
    chain: bytes
    client_ca: bytes | None
    #: The server certificate's expiry (its ``notAfter``), for logs and metrics.
    not_after: datetime.datetime

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(self.key, self.chain)], root_certificates=self.client_ca
        )


class ServerCertificates:
    """The ``[tls]`` files: the set read at start, then the fetcher gRPC asks before each
    handshake (see the module docstring). Raises :class:`ConfigError` at start when the files
    cannot be read or do not make a whole set."""

    def __init__(self, tls: TlsSection, registry: CollectorRegistry | None = None) -> None:
        self._tls = tls
        paths = [path for path in (tls.server_cert, tls.server_key, tls.client_ca) if path]
        try:
            self._files = RenewedFiles(paths, self._read, self._refused)
        except OSError as error:
            raise ConfigError(f"tls: cannot read {error.filename}: {error.strerror}") from None
        #: What an alert watches: a renewal that never reaches the server shows as this
        #: nearing (with several workers, the nearest of them).
        self._expiry = Gauge(
            "apcv_tls_certificate_expiry_timestamp_seconds",
            "Expiry (notAfter) of the server certificate new connections get, as a Unix time.",
            multiprocess_mode="livemin",
            registry=registry,
        )
        self._expiry.set(self.current.not_after.timestamp())

    @property
    def current(self) -> CertificateSet:
        """The set new connections get."""
        return self._files.current

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """The new configuration when the files changed into a whole set, else None (gRPC
        keeps the one it has). Never raises: an error here would fail every handshake."""
        renewed = self._files.renew()
        if renewed is None:
            return None
        self._expiry.set(renewed.not_after.timestamp())
        log.info("tls_certificate_reloaded", not_after=renewed.not_after.isoformat())
        return renewed.configuration()

    @staticmethod
    def _refused(error: Exception) -> None:
        log.warning("tls_reload_failed", detail=str(error), kept_last_good=True)

    def _read(self) -> CertificateSet:
        tls = self._tls
        with open(tls.server_cert, "rb") as cert_file, open(tls.server_key, "rb") as key_file:
            chain, key = cert_file.read(), key_file.read()
        client_ca = None
        if tls.client_ca:
            with open(tls.client_ca, "rb") as ca_file:
                client_ca = ca_file.read()
        try:
            certificate = pair_certificate(chain, key)
        except KeyPairError as error:
            setting = "tls.server_cert" if error.part == "certificate" else "tls.server_key"
            raise ConfigError(f"{setting}: {error}") from None
        if client_ca is not None:
            try:
                x509.load_pem_x509_certificates(client_ca)
            except ValueError as error:
                raise ConfigError(f"tls.client_ca: not PEM certificates ({error})") from None
        return CertificateSet(key, chain, client_ca, certificate.not_valid_after_utc)

    def credentials(self) -> grpc.ServerCredentials:
        """gRPC's credentials that ask :meth:`fetch` before each handshake. With
        ``client_ca``, every client must present a certificate that chains to it, and its
        subject CN names the caller (policy.caller_id)."""
        return grpc.dynamic_ssl_server_credentials(
            self.current.configuration(),
            self.fetch,
            # Config.validate: client_ca is set exactly when client certificates are required.
            require_client_authentication=self.current.client_ca is not None,
        )
