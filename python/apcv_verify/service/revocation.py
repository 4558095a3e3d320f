"""Client certificates checked against their CAs' revocation lists (``tls.client_crls``).

A client certificate compromised or withdrawn (a stolen reader, a hospital leaving the
service) is revoked by its CA, which publishes the serial number in its CRL (RFC 5280 §5).
gRPC Python's server credentials take no CRL, so the check is made where each call is
admitted, on the certificate the handshake verified (the auth context's ``x509_pem_cert``):
the CRL of the certificate's issuer must be there, and current, and must not list its serial.
The leaf certificate is checked, as OpenSSL's ``crl_check`` does (not ``crl_check_all``).

Fail closed, as OpenSSL, nginx and Apache do by default: a certificate whose issuer has no CRL
among the files is refused (``CLIENT_CRL_MISSING``), and so are certificates of an issuer whose
CRL is past its ``nextUpdate`` (``CLIENT_CRL_EXPIRED``, UNAVAILABLE: retried, while the
operator publishes the new CRL; :data:`NEXT_UPDATE_METRIC` and its alert warn before).

The files are looked at every :data:`LOOK_SECONDS` (in a thread: a large CRL takes a moment
to read) and read again when they, or ``tls.client_ca``, change; a new reading is taken only
when every CRL is whole and signed by a CA of ``tls.client_ca``, else the last good one stays
(:class:`~apcv_verify.tls_files.RenewedFiles`). Calls already open — a stream — are not
ended by a revocation: each new call is checked.
"""

from __future__ import annotations

import asyncio
import datetime
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc
import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from prometheus_client import CollectorRegistry, Gauge

from ..config import ConfigError, TlsSection
from ..tls_files import RenewedFiles
from .policy import CertificateRefused, caller_id

__all__ = ["LOOK_SECONDS", "NEXT_UPDATE_METRIC", "ClientRevocation", "IssuerCrl", "read_crls"]

log = structlog.get_logger("apcv_verify.service.revocation")

#: How often the CRL files are looked at for a change (a ``stat`` of each, in a thread).
#: Kubernetes takes up to a minute to update a mounted ConfigMap or Secret anyway.
LOOK_SECONDS = 5.0
#: The metric an alert watches: the earliest ``nextUpdate`` of the CRLs in use.
NEXT_UPDATE_METRIC = "apcv_tls_client_crl_next_update_timestamp_seconds"
#: Client certificates whose issuer and serial are kept, by PEM: the clients of a service are
#: a few hundred systems; past this the table starts again (each entry ≈ 2 KiB).
_KNOWN_CERTIFICATES = 4096
#: The auth-context property gRPC fills with the verified client certificate, in PEM.
_PEM_PROPERTY = "x509_pem_cert"
# cryptography reads one PEM CRL at a time (``load_pem_x509_crl``); a file may hold several
# (nginx's ``ssl_crl`` and OpenSSL's ``CRLfile`` take such bundles).
_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)


#: How each refusal ends the call: UNAUTHENTICATED is the certificate's own (resending with it
#: cannot help), UNAVAILABLE the server's (another replica, or the next CRL, may answer).
_REFUSALS = {
    "CLIENT_CRL_MISSING": (
        grpc.StatusCode.UNAUTHENTICATED,
        "the server has no revocation list of the client certificate's CA "
        "(tls.client_crls): its certificates are refused",
    ),
    "CERTIFICATE_REVOKED": (
        grpc.StatusCode.UNAUTHENTICATED,
        "the client certificate is revoked by its CA: use a new one",
    ),
    "CLIENT_CRL_EXPIRED": (
        grpc.StatusCode.UNAVAILABLE,
        "the server's revocation list of the client certificate's CA is past its next "
        "update: retry later or on another replica",
    ),
}


@dataclass(frozen=True)
class IssuerCrl:
    """What the CRLs of one CA say: the serial numbers it revoked, and until when that is
    current (the earliest ``nextUpdate`` of its CRLs, as a Unix time; inf without one)."""

    revoked: frozenset[int]
    next_update: float


def read_crls(files: Sequence[tuple[str, bytes]], client_ca: bytes) -> Mapping[str, IssuerCrl]:
    """The CRLs of ``files`` (name, content: PEM, one or more CRLs, or one DER CRL) by issuer
    (its RFC 4514 name), each checked against the CAs of ``client_ca``. Raises ValueError,
    naming the file, for a CRL that does not parse, is not signed by a CA of ``client_ca``,
    or is a kind this check would read wrongly: a delta CRL (its base's entries missing), an
    indirect CRL (entries of other CAs) or one scoped to some reasons or to CA certificates.
    Several CRLs of one CA (a partitioned CRL) are read as one: give all of them."""
    authorities = x509.load_pem_x509_certificates(client_ca)
    revoked: dict[str, set[int]] = {}
    next_update: dict[str, float] = {}
    for name, content in files:
        for crl in _parse(name, content):
            issuer = crl.issuer.rfc4514_string()
            _check_scope(name, crl)
            if not any(_signed_by(crl, authority) for authority in authorities):
                raise ValueError(f"{name}: the CRL of {issuer} is not signed by a tls.client_ca CA")
            serials = revoked.setdefault(issuer, set())
            serials.update(entry.serial_number for entry in crl)
            until = crl.next_update_utc
            next_update[issuer] = min(
                next_update.get(issuer, math.inf), math.inf if until is None else until.timestamp()
            )
    return {
        issuer: IssuerCrl(frozenset(serials), next_update[issuer])
        for issuer, serials in revoked.items()
    }


def _parse(name: str, content: bytes) -> list[x509.CertificateRevocationList]:
    try:
        if content.lstrip().startswith(b"-----BEGIN"):
            blocks = _PEM_CRL.findall(content)
            if not blocks:
                raise ValueError("no X509 CRL block")
            return [x509.load_pem_x509_crl(block) for block in blocks]
        return [x509.load_der_x509_crl(content)]
    except ValueError as error:
        raise ValueError(f"{name}: not a PEM or DER CRL ({error})") from None


def _check_scope(name: str, crl: x509.CertificateRevocationList) -> None:
    """ValueError for a CRL that does not list every revoked end-entity certificate of its
    issuer by itself (RFC 5280 §5.2.4, §5.2.5)."""
    extensions = crl.extensions
    if any(isinstance(ext.value, x509.DeltaCRLIndicator) for ext in extensions):
        raise ValueError(f"{name}: a delta CRL is not read (give the full CRL)")
    for ext in extensions:
        point = ext.value
        if not isinstance(point, x509.IssuingDistributionPoint):
            continue
        if point.indirect_crl or point.only_contains_ca_certs or point.only_some_reasons:
            raise ValueError(
                f"{name}: an indirect CRL, or one scoped to CA certificates or to some "
                "reasons, is not read (give the CA's full CRL)"
            )
        if point.only_contains_attribute_certs:
            raise ValueError(f"{name}: a CRL of attribute certificates is not read")


#: The keys a CA can sign a CRL with (cryptography's ``CertificateIssuerPublicKeyTypes``).
_SIGNING_KEYS = (
    dsa.DSAPublicKey,
    ec.EllipticCurvePublicKey,
    ed25519.Ed25519PublicKey,
    ed448.Ed448PublicKey,
    rsa.RSAPublicKey,
)


def _signed_by(crl: x509.CertificateRevocationList, authority: x509.Certificate) -> bool:
    key = authority.public_key()
    return (
        authority.subject == crl.issuer
        and isinstance(key, _SIGNING_KEYS)
        and crl.is_signature_valid(key)
    )


class ClientRevocation:
    """The ``tls.client_crls`` in use, and the check of each call's client certificate
    against them (see the module docstring). Raises :class:`ConfigError` at start when the
    files cannot be read or a CRL is not one it takes."""

    def __init__(self, tls: TlsSection, registry: CollectorRegistry | None = None) -> None:
        self._tls = tls
        try:
            self._files = RenewedFiles([*tls.client_crls, tls.client_ca], self._read, self._refused)
        except OSError as error:
            raise ConfigError(f"tls: cannot read {error.filename}: {error.strerror}") from None
        except ValueError as error:
            raise ConfigError(f"tls.client_crls: {error}") from None
        #: Issuer and serial of the client certificates seen, by their PEM.
        self._known: dict[bytes, tuple[str, int]] = {}
        #: The refusals logged (:meth:`_tell`).
        self._told: set[tuple[int, str, str, int]] = set()
        self._next_update = Gauge(
            NEXT_UPDATE_METRIC,
            "Earliest nextUpdate of the client certificate CRLs in use, as a Unix time: past "
            "it, the clients of that CA are refused until a new CRL is read.",
            multiprocess_mode="livemin",
            registry=registry,
        )
        self._show(self._files.current)

    def caller_id(self, auth_context: Mapping[str, Sequence[bytes]]) -> str:
        """The caller id (:func:`~apcv_verify.service.policy.caller_id`) once the client
        certificate passed its CA's CRL; :class:`CertificateRefused` otherwise."""
        pem = auth_context.get(_PEM_PROPERTY)
        if pem:
            self._check(pem[0])
        return caller_id(auth_context)

    def _check(self, pem: bytes) -> None:
        known = self._known.get(pem)
        if known is None:
            known = self._learn(pem)
        issuer, serial = known
        reason = self._refusal(issuer, serial)
        if reason is not None:
            self._tell(reason, issuer, serial)
            code, message = _REFUSALS[reason]
            raise CertificateRefused(code, reason, message)

    def _refusal(self, issuer: str, serial: int) -> str | None:
        """Why the certificate ``serial`` of ``issuer`` may not call, or None."""
        crl = self._files.current.get(issuer)
        if crl is None:
            return "CLIENT_CRL_MISSING"
        if serial in crl.revoked:
            return "CERTIFICATE_REVOKED"
        if time.time() >= crl.next_update:
            return "CLIENT_CRL_EXPIRED"
        return None

    def _tell(self, reason: str, issuer: str, serial: int) -> None:
        """Log a refusal once per certificate and reason while the same CRLs are in use (a
        refused client may call again and again)."""
        told = (self._files.generation, reason, issuer, serial)
        if told in self._told:
            return
        if len(self._told) >= _KNOWN_CERTIFICATES:
            self._told.clear()
        self._told.add(told)
        log.warning(
            "client_certificate_refused", reason=reason, issuer=issuer, serial=f"{serial:x}"
        )

    def _learn(self, pem: bytes) -> tuple[str, int]:
        # Parsed once per certificate: gRPC verified it in the handshake, so it parses.
        certificate = x509.load_pem_x509_certificate(pem)
        if len(self._known) >= _KNOWN_CERTIFICATES:
            self._known.clear()
        known = self._known[pem] = (
            certificate.issuer.rfc4514_string(),
            certificate.serial_number,
        )
        return known

    async def watch(self) -> None:
        """Look at the files every :data:`LOOK_SECONDS` and take a renewed set, until
        cancelled (the server's stop)."""
        while True:
            await asyncio.sleep(LOOK_SECONDS)
            renewed = await asyncio.to_thread(self._files.renew)
            if renewed is not None:
                self._show(renewed)
                log.info(
                    "client_crls_reloaded",
                    issuers=len(renewed),
                    revoked=sum(len(crl.revoked) for crl in renewed.values()),
                    next_update=_iso(min(crl.next_update for crl in renewed.values())),
                )

    def _show(self, crls: Mapping[str, IssuerCrl]) -> None:
        self._next_update.set(min(crl.next_update for crl in crls.values()))

    def _read(self) -> Mapping[str, IssuerCrl]:
        files = []
        for path in self._tls.client_crls:
            with open(path, "rb") as crl_file:
                files.append((path, crl_file.read()))
        with open(self._tls.client_ca, "rb") as ca_file:
            client_ca = ca_file.read()
        crls = read_crls(files, client_ca)
        if not crls:
            raise ValueError("no CRL in the files")
        return crls

    @staticmethod
    def _refused(error: Exception) -> None:
        log.warning("client_crls_reload_failed", detail=str(error), kept_last_good=True)


def _iso(timestamp: float) -> str | None:
    if math.isinf(timestamp):
        return None
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat()
