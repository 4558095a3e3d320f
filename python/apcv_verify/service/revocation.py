"""Client certificates checked against their CAs' revocation lists (``tls.client_crls``).

A client certificate compromised or withdrawn (a stolen reader, a hospital leaving the
service) is revoked by its CA, which publishes the serial number in its CRL (RFC 5280 §5).
gRPC Python's server credentials take no CRL, so the check is made where each call is
admitted, on the certificate the handshake verified (the auth context's ``x509_pem_cert``):
the CRL of the certificate's issuer must be there, and current, and must not list its serial.
The leaf certificate is checked, as OpenSSL's ``crl_check`` does (not ``crl_check_all``).

Fail closed, as OpenSSL, nginx and Apache do by default: a certificate whose issuer has no CRL
here is refused (``CLIENT_CRL_MISSING``), and so are certificates of an issuer whose CRL is
past its ``nextUpdate`` (``CLIENT_CRL_EXPIRED``, UNAVAILABLE: retried, while the operator or
the CA publishes the next CRL; :data:`NEXT_UPDATE_METRIC` and its alert warn before).

The sources are files, looked at every :data:`LOOK_SECONDS` and read again when they change,
and http(s):// URLs (a CA's CRL distribution point), fetched as the trust lists are
(``trust.refresh_seconds``, conditional requests, the environment's proxy, the same size cap
and timeout). Each source's new content is read in a thread (a large CRL takes a moment) and
taken only when all its CRLs are whole and signed by a CA of ``tls.client_ca`` (read again
when it changes); otherwise that source's last good CRLs stay. A call already open is
checked again where it goes on: a ``VerifyStream`` before each group of requests it verifies
(:meth:`ClientRevocation.check`), so a revoked reader's stream ends at its next scan rather
than when its connection ages out.
"""

from __future__ import annotations

import asyncio
import datetime
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import aiohttp
import grpc
import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from prometheus_client import CollectorRegistry, Gauge

from ..config import ConfigError, TlsSection, TrustSection
from ..tls_files import RenewedFiles
from ..trust.sources import INITIAL_RETRY_SECONDS, Source, SourceError, fetch_session
from .policy import CertificateRefused, caller_id

__all__ = [
    "CRL_MEDIA_TYPE",
    "LOOK_SECONDS",
    "NEXT_UPDATE_METRIC",
    "ClientRevocation",
    "IssuerCrl",
    "certificate_pem",
    "merge_crls",
    "read_crls",
]

log = structlog.get_logger("apcv_verify.service.revocation")

#: How often the CRL files are looked at for a change (a ``stat`` of each, in a thread).
#: Kubernetes takes up to a minute to update a mounted ConfigMap or Secret anyway.
LOOK_SECONDS = 5.0
#: The metric an alert watches: the earliest ``nextUpdate`` of the CRLs in use.
NEXT_UPDATE_METRIC = "apcv_tls_client_crl_next_update_timestamp_seconds"
#: Client certificates whose issuer and serial are kept, by PEM: the clients of a service are
#: a few hundred systems; past this the table starts again (each entry ≈ 2 KiB).
_KNOWN_CERTIFICATES = 4096
#: The media type of a DER CRL (RFC 2585), asked for first: PEM is taken too.
CRL_MEDIA_TYPE = "application/pkix-crl, */*"
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
    read: list[tuple[str, IssuerCrl]] = []
    for name, content in files:
        for crl in _parse(name, content):
            issuer = crl.issuer.rfc4514_string()
            _check_scope(name, crl)
            if not any(_signed_by(crl, authority) for authority in authorities):
                raise ValueError(f"{name}: the CRL of {issuer} is not signed by a tls.client_ca CA")
            until = crl.next_update_utc
            revoked = frozenset(entry.serial_number for entry in crl)
            read.append(
                (issuer, IssuerCrl(revoked, math.inf if until is None else until.timestamp()))
            )
    return merge_crls(read)


def merge_crls(crls: Iterable[tuple[str, IssuerCrl]]) -> dict[str, IssuerCrl]:
    """One :class:`IssuerCrl` per issuer of ``crls`` (issuer, CRL): the revoked serials of
    all of them, current until the earliest ``nextUpdate`` — a partitioned CRL's parts, or
    one CA's CRLs from several sources, read as one."""
    merged: dict[str, IssuerCrl] = {}
    for issuer, crl in crls:
        held = merged.get(issuer)
        merged[issuer] = (
            crl
            if held is None
            else IssuerCrl(held.revoked | crl.revoked, min(held.next_update, crl.next_update))
        )
    return merged


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
    issuer by itself (RFC 5280 §5.2.4; RFC 5280 §5.2.5)."""
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
    against them (see the module docstring). :meth:`load` reads them at start; :meth:`watch`
    keeps them current."""

    def __init__(
        self, tls: TlsSection, trust: TrustSection, registry: CollectorRegistry | None = None
    ) -> None:
        self._client_ca = tls.client_ca
        self._sources = [
            Source(f"tls.client_crls[{index}]", location, trust.http_timeout_seconds,
                   accept=CRL_MEDIA_TYPE)
            for index, location in enumerate(tls.client_crls)
        ]  # fmt: skip
        self._refresh_seconds = trust.refresh_seconds
        #: What each source last gave that was taken: its bytes, and its CRLs by issuer.
        self._taken: dict[str, tuple[bytes, Mapping[str, IssuerCrl]]] = {}
        #: The client CA bundle the CRLs are checked with, read again when it changes.
        try:
            self._authorities = RenewedFiles([tls.client_ca], self._read_authorities, _ca_refused)
        except (OSError, ValueError) as error:
            raise ConfigError(f"tls.client_ca: cannot be read: {error}") from None
        #: When each URL source is fetched next (loop time); files are looked at each time.
        self._due: dict[str, float] = {}
        #: The last failure logged per source (logged again only when it changes).
        self._failing: dict[str, str] = {}
        #: The CRLs of every source together, by issuer, and how many times they changed.
        self.current: Mapping[str, IssuerCrl] = {}
        self.generation = 0
        #: Issuer and serial of the client certificates seen, by their PEM.
        self._known: dict[bytes, tuple[str, int]] = {}
        #: The refusals logged (:meth:`_tell`).
        self._told: set[tuple[int, str, str, int]] = set()
        self._next_update = Gauge(
            NEXT_UPDATE_METRIC,
            "Earliest nextUpdate of the client certificate CRLs in use, as a Unix time (0 while "
            "a source has given none): past it, the clients of that CA are refused until a "
            "new CRL is read.",
            multiprocess_mode="livemin",
            registry=registry,
        )

    # -- the check of each call ------------------------------------------------------------

    def caller_id(self, auth_context: Mapping[str, Sequence[bytes]]) -> str:
        """The caller id (:func:`~apcv_verify.service.policy.caller_id`) once the client
        certificate passed its CA's CRL; :class:`CertificateRefused` otherwise."""
        pem = certificate_pem(auth_context)
        if pem is not None:
            self.check(pem)
        return caller_id(auth_context)

    def check(self, pem: bytes) -> None:
        """:class:`CertificateRefused` unless the client certificate ``pem`` (as
        :func:`certificate_pem` gives it) may call with the CRLs in use now."""
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
        crl = self.current.get(issuer)
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
        told = (self.generation, reason, issuer, serial)
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

    # -- reading the CRLs ------------------------------------------------------------------

    async def load(self) -> None:
        """Read every source once, at start. A file that cannot be read, or whose CRLs are
        not taken, raises :class:`ConfigError`; a URL that cannot be fetched is logged and
        tried again every few seconds (:meth:`watch`): until then its CA's clients are
        refused (``CLIENT_CRL_MISSING``)."""
        await self._look(strict=True)

    async def refresh(self) -> None:
        """One look: the files that changed read again, the URLs that are due fetched, what
        they give taken if it reads (see the module docstring)."""
        await self._look(strict=False)

    async def watch(self) -> None:
        """:meth:`refresh` every :data:`LOOK_SECONDS`, until cancelled (the server's stop).
        Never raises otherwise: the last good CRLs stay in use."""
        while True:
            await asyncio.sleep(LOOK_SECONDS)
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 (the CRLs in use stay; logged with its trace)
                log.exception("client_crls_look_error")

    async def _look(self, *, strict: bool) -> None:
        now = asyncio.get_running_loop().time()
        changed = await asyncio.to_thread(self._renew_authorities)
        due = [source for source in self._sources if self._due.get(source.location, 0) <= now]
        if any(source.is_url for source in due):
            async with fetch_session() as session:
                fetched = await asyncio.gather(
                    *(self._fetch(source, session, strict) for source in due)
                )
        else:
            fetched = [await self._fetch(source, None, strict) for source in due]
        for source, reading in zip(due, fetched, strict=True):
            if reading is not None:
                changed |= await asyncio.to_thread(self._take, source, *reading, strict)
            if source.is_url:
                self._due[source.location] = now + self._fetch_interval(source)
        if changed:
            self._install()

    async def _fetch(
        self, source: Source, session: aiohttp.ClientSession | None, strict: bool
    ) -> tuple[bytes, object] | None:
        """What ``source`` gives when it changed, else None; a failure is logged (raised at
        start for a file)."""
        try:
            return await source.fetch(session)
        except SourceError as error:
            if strict and not source.is_url:
                raise ConfigError(f"{source.name}: {error}") from None
            self._failed(source, str(error))
            return None

    def _fetch_interval(self, source: Source) -> float:
        """Seconds until a URL source is fetched again: soon while it never gave CRLs that
        were taken, else ``trust.refresh_seconds`` (0: never again)."""
        if source.location not in self._taken:
            return INITIAL_RETRY_SECONDS
        return self._refresh_seconds if self._refresh_seconds > 0 else math.inf

    def _take(self, source: Source, data: bytes, validator: object, strict: bool) -> bool:
        """Read ``source``'s new content (in a thread); True when it was taken."""
        # Remembered either way: a content that is refused is not read again until it changes.
        source.accept(validator)
        try:
            crls = read_crls([(source.display, data)], self._authorities.current)
        except ValueError as error:
            if strict:
                raise ConfigError(f"tls.client_crls: {error}") from None
            self._failed(source, str(error))
            return False
        self._taken[source.location] = (data, crls)
        if self._failing.pop(source.location, None) is not None:
            log.info("client_crl_source_recovered", source=source.name)
        return True

    def _renew_authorities(self) -> bool:
        """Take ``tls.client_ca`` again when it changed (in a thread), and check the CRLs
        taken against it again; True when there were any."""
        authorities = self._authorities.renew()
        if authorities is None:
            return False
        checked_again = bool(self._taken)
        for source in self._sources:
            taken = self._taken.get(source.location)
            if taken is None:
                continue
            try:
                self._taken[source.location] = (
                    taken[0],
                    read_crls([(source.display, taken[0])], authorities),
                )
            except ValueError as error:  # its CA left the bundle: its clients cannot connect
                del self._taken[source.location]
                self._failed(source, str(error))
        for source in self._sources:
            if source.location not in self._taken:
                source.forget()  # what was refused may read under this bundle: again
        return checked_again

    def _read_authorities(self) -> bytes:
        with open(self._client_ca, "rb") as ca_file:
            authorities = ca_file.read()
        x509.load_pem_x509_certificates(authorities)  # ValueError: not taken
        return authorities

    def _failed(self, source: Source, detail: str) -> None:
        if self._failing.get(source.location) == detail:
            return
        self._failing[source.location] = detail
        log.warning(
            "client_crls_reload_failed",
            source=source.name,
            location=source.display,
            detail=detail,
            kept_last_good=source.location in self._taken,
        )

    def _install(self) -> None:
        """The CRLs of every source, together, in use from the next call."""
        merged = merge_crls(item for _, crls in self._taken.values() for item in crls.items())
        self.current, self.generation = merged, self.generation + 1
        earliest = min((crl.next_update for crl in merged.values()), default=math.inf)
        # A source that never gave CRLs (a distribution point down since the start) leaves
        # its CA's clients refused: shown as a next update already past, for the alert.
        missing = any(source.location not in self._taken for source in self._sources)
        self._next_update.set(0.0 if missing else earliest)
        log.info(
            "client_crls_reloaded",
            issuers=len(merged),
            revoked=sum(len(crl.revoked) for crl in merged.values()),
            next_update=_iso(earliest),
        )


def certificate_pem(auth_context: Mapping[str, Sequence[bytes]]) -> bytes | None:
    """The client certificate the handshake verified (PEM), or None without one."""
    pem = auth_context.get(_PEM_PROPERTY)
    return pem[0] if pem else None


def _ca_refused(error: Exception) -> None:
    log.warning("client_crls_reload_failed", detail=f"tls.client_ca: {error}")


def _iso(timestamp: float) -> str | None:
    if math.isinf(timestamp):
        return None
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat()
