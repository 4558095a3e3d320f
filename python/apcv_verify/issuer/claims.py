"""Identity data, credentials, presentations, delegations and AMC attestations
(docs/profile.md §2.4-§2.7), and the QR text encoding of a presentation."""

from __future__ import annotations

import secrets
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import base45  # type: ignore[import-untyped]  # no stubs or py.typed upstream

from .cose import sign1
from .keys import Alg, SigningKey, VerifyingKey, _as_verifying_key

#: INS object identifiers (profile §2.4 "ins"). Test and demonstration OIDs are accepted by a
#: verifier only when its policy allows test identities.
INS_NIR_OID = "1.2.250.1.213.1.4.8"
INS_NIA_OID = "1.2.250.1.213.1.4.9"
INS_TEST_OID = "1.2.250.1.213.1.4.10"
INS_DEMO_OID = "1.2.250.1.213.1.4.11"

#: QR payload prefix (profile "Encodings"): ``"APCV1:" + base45(zlib(presentation))``.
QR_PREFIX = "APCV1:"

#: Default presentation lifetime; the verifier rejects anything over 300 s (profile §2.5).
DEFAULT_PRESENTATION_LIFETIME = 120

#: Length of ``cti``, the presentation id and replay key (profile §2.5).
CTI_LENGTH = 16

#: Profile data version carried in ``"apcv": {"v": 1}`` (profile §2.4).
PROFILE_VERSION = 1

# CWT claim keys (RFC 8392 §4; 8 = cnf RFC 8747; 65535 = status, 65533/65534 Token Status List).
_CLAIM_ISS = 1
_CLAIM_SUB = 2
_CLAIM_AUD = 3
_CLAIM_EXP = 4
_CLAIM_NBF = 5
_CLAIM_IAT = 6
_CLAIM_CTI = 7
_CLAIM_CNF = 8
_CNF_COSE_KEY = 1  # RFC 8747 §3.1
_CLAIM_STATUS = 65535
_CLAIM_STATUS_LIST = 65533
_CLAIM_TTL = 65534

# --- Identity data (profile §2.4 "apcv") ----------------------------------------------------------

_CORSICA_SUBSTITUTES = {"2A": "19", "2B": "18"}  # RG_BS603 (CNAM billing rules)


def nir_key(number13: str) -> str:
    """The 2-digit NIR/NIA key: ``97 − (number mod 97)`` (profile §5.2, RG_BS603).

    Characters 6–7 (the département) may be ``2A``/``2B`` (Corsica): they count as ``19``/``18``.
    """
    if len(number13) != 13:
        raise ValueError("an NIR/NIA number has 13 characters")
    departement = number13[5:7]
    digits = number13[:5] + _CORSICA_SUBSTITUTES.get(departement, departement) + number13[7:]
    if not digits.isascii() or not digits.isdigit():
        raise ValueError("an NIR/NIA number is digits, except 2A/2B as département")
    return f"{97 - int(digits) % 97:02d}"


def matricule(number13: str) -> str:
    """The 15-character matricule: the 13-character number followed by its key (profile §5.1)."""
    return number13 + nir_key(number13)


def nir_key_is_valid(matricule15: str) -> bool:
    """True when the last two characters of a 15-character matricule are the right key."""
    if len(matricule15) != 15:
        return False
    try:
        return nir_key(matricule15[:13]) == matricule15[13:]
    except ValueError:
        return False


@dataclass(frozen=True)
class AmoRights:
    """Open rights with the mandatory scheme (profile §2.4 ``"amo"``): codes are digit strings."""

    regime: str  # 2 digits
    caisse: str  # 3 digits
    centre: str  # 4 digits
    open_from: str  # YYYY-MM-DD
    open_to: str  # YYYY-MM-DD

    def to_claims(self) -> dict[str, str]:
        return {
            "reg": self.regime,
            "caisse": self.caisse,
            "centre": self.centre,
            "from": self.open_from,
            "to": self.open_to,
        }

    def __repr__(self) -> str:  # keep identity data out of logs and tracebacks
        return "AmoRights(...)"


@dataclass(frozen=True)
class Identity:
    """INS identity traits (profile §2.4 ``"id"``); lunar dates (``1957-00-00``) are valid as is."""

    birth_name: str
    given_names: str  # space-separated, INS order
    sex: str  # "M" | "F"
    birth_date: str  # YYYY-MM-DD, possibly lunar
    birth_place: str  # 5-character INSEE code (99xxx: born abroad)

    def to_claims(self) -> dict[str, str]:
        return {
            "bn": self.birth_name,
            "gn": self.given_names,
            "sex": self.sex,
            "dob": self.birth_date,
            "pob": self.birth_place,
        }

    def __repr__(self) -> str:
        return "Identity(...)"


@dataclass(frozen=True)
class Person:
    """A covered person: INS (15-char matricule + OID), identity and AMO rights (profile §2.4)."""

    ins: str  # matricule, see matricule()
    ins_oid: str  # INS_NIR_OID, INS_NIA_OID, INS_TEST_OID or INS_DEMO_OID
    identity: Identity
    amo: AmoRights

    def to_claims(self) -> dict[str, Any]:
        return {
            "ins": {"m": self.ins, "oid": self.ins_oid},
            "id": self.identity.to_claims(),
            "amo": self.amo.to_claims(),
        }

    def __repr__(self) -> str:
        return "Person(...)"


@dataclass(frozen=True)
class Beneficiary:
    """A person attached to the holder (profile §2.4 ``"ben"``); rank ≥ 1, the holder is rank 0."""

    rank: int
    person: Person

    def to_claims(self) -> dict[str, Any]:
        return {"rank": self.rank, **self.person.to_claims()}


# --- Credential and presentation (profile §2.4, §2.5) ---------------------------------------------


def issue_credential(
    issuer_key: SigningKey,
    *,
    iss: str,
    sub: str,
    device_key: SigningKey | VerifyingKey,
    holder: Person,
    beneficiaries: Sequence[Beneficiary] = (),
    status_uri: str,
    status_index: int,
    iat: int,
    nbf: int,
    exp: int,
    version: int = PROFILE_VERSION,
) -> bytes:
    """Issue a credential CWT (profile §2.4) signed by an AMO issuer key; tagged COSE_Sign1 bytes.

    ``device_key`` is the holder's phone key (only its public half is used) and goes into ``cnf``
    (RFC 8747 §3.1) without ``alg``, as the profile shows it. ``"ben"`` is left out when empty (the
    verifier defaults it to ``[]``). ``version`` other than 1 makes an UNSUPPORTED_VERSION sample.
    """
    apcv: dict[str, Any] = {"v": version, **holder.to_claims()}
    if beneficiaries:
        apcv["ben"] = [beneficiary.to_claims() for beneficiary in beneficiaries]
    return sign1(
        issuer_key,
        _bound_claims(iss, sub, device_key, status_uri, status_index, iat, nbf, exp, apcv),
    )


def _bound_claims(
    iss: str,
    sub: str,
    phone_key: SigningKey | VerifyingKey,
    status_uri: str,
    status_index: int,
    iat: int,
    nbf: int,
    exp: int,
    apcv: dict[str, Any],
) -> dict[Any, Any]:
    """The claims an issuer signs for a phone (a credential, §2.4, or a delegation, §2.6):
    the phone's key in ``cnf`` without ``alg`` (RFC 8747 §3.1), the entry in a status list
    (``status``) and the document's own ``apcv`` map."""
    return {
        _CLAIM_ISS: iss,
        _CLAIM_SUB: sub,
        _CLAIM_EXP: exp,
        _CLAIM_NBF: nbf,
        _CLAIM_IAT: iat,
        _CLAIM_CNF: {_CNF_COSE_KEY: _as_verifying_key(phone_key).cose_key(include_alg=False)},
        _CLAIM_STATUS: {"status_list": {"idx": status_index, "uri": status_uri}},
        "apcv": apcv,
    }


def make_presentation(
    device_key: SigningKey,
    credential: bytes,
    *,
    ben: int = 0,
    use: str = "care",
    iat: int,
    exp: int | None = None,
    cti: bytes | None = None,
    aud: str | None = None,
    nonce: bytes | None = None,
    amc: Sequence[bytes] | None = None,
    dlg: bytes | None = None,
) -> bytes:
    """Make a presentation (§2.5) signed by the device key; protected header ``{1: -7}`` only.

    ``exp`` defaults to ``iat + 120``; ``cti`` to 16 random bytes (the replay key). ``amc`` and
    ``dlg`` take ready-made attestation / delegation bytes (:func:`make_amc_attestation`,
    :func:`make_delegation`); with ``dlg``, ``device_key`` is the delegate's phone key.
    """
    if device_key.alg is not Alg.ES256:
        raise ValueError("device keys are ES256 (P-256) only (profile §2.5)")
    claims: dict[Any, Any] = {
        _CLAIM_IAT: iat,
        _CLAIM_EXP: iat + DEFAULT_PRESENTATION_LIFETIME if exp is None else exp,
        _CLAIM_CTI: secrets.token_bytes(CTI_LENGTH) if cti is None else cti,
        "cred": credential,
        "ben": ben,
        "use": use,
    }
    if aud is not None:
        claims[_CLAIM_AUD] = aud
    if nonce is not None:
        claims["nonce"] = nonce
    if amc is not None:
        claims["amc"] = list(amc)
    if dlg is not None:
        claims["dlg"] = dlg
    return sign1(device_key, claims, kid=False)


# --- Delegation and AMC attestation (profile §2.6, §2.7) ------------------------------------------


def make_delegation(
    issuer_key: SigningKey,
    *,
    iss: str,
    sub: str,
    delegate_key: SigningKey | VerifyingKey,
    for_credential: str,
    ben: Sequence[int],
    use: Sequence[str],
    who: str | None = None,
    status_uri: str,
    status_index: int,
    iat: int,
    nbf: int,
    exp: int,
) -> bytes:
    """A delegation (profile §2.6) signed by an AMO issuer key; tagged COSE_Sign1 bytes.

    ``delegate_key`` is the delegate's phone key (only its public half is used; ``cnf`` without
    ``alg``); ``for_credential`` the ``sub`` of the holder's credential; ``ben`` the ranks and
    ``use`` the uses the delegate may present. ``who`` (a display label) is left out when None.
    The presentation that carries it must be signed by ``delegate_key``.
    """
    apcv: dict[str, Any] = {
        "v": PROFILE_VERSION,
        "for": for_credential,
        "ben": list(ben),
        "use": list(use),
    }
    if who is not None:
        apcv["who"] = who
    return sign1(
        issuer_key,
        _bound_claims(iss, sub, delegate_key, status_uri, status_index, iat, nbf, exp, apcv),
    )


def make_amc_attestation(
    amc_key: SigningKey,
    *,
    iss: str,
    sub: str,
    covered: Sequence[str],
    amc_number: str,
    third_party_payment: bool,
    domains: Sequence[str],
    iat: int,
    nbf: int,
    exp: int,
    status_uri: str | None = None,
    status_index: int | None = None,
) -> bytes:
    """An AMC attestation (profile §2.7) signed by a complementary insurer's key (role ``amc``).

    ``iss`` is the AMC organisation id, ``sub`` the contract id, ``covered`` the INS matricules
    it applies to, ``amc_number`` the organisation number (text: leading zeros matter). The
    ``status`` claim is optional: give both ``status_uri`` and ``status_index``, or neither.
    """
    if (status_uri is None) != (status_index is None):
        raise ValueError("give both status_uri and status_index, or neither")
    claims: dict[Any, Any] = {
        _CLAIM_ISS: iss,
        _CLAIM_SUB: sub,
        _CLAIM_EXP: exp,
        _CLAIM_NBF: nbf,
        _CLAIM_IAT: iat,
        "apcv": {
            "v": PROFILE_VERSION,
            "for": list(covered),
            "amc": amc_number,
            "tp": third_party_payment,
            "dom": list(domains),
        },
    }
    if status_uri is not None:
        claims[_CLAIM_STATUS] = {"status_list": {"idx": status_index, "uri": status_uri}}
    return sign1(amc_key, claims)


def qr_text(presentation: bytes) -> str:
    """QR payload ``"APCV1:" + base45(zlib(presentation))`` (profile "Encodings", RFC 9285)."""
    return QR_PREFIX + base45.b45encode(zlib.compress(presentation, 9)).decode("ascii")


def presentation_from_qr_text(text: str) -> bytes:
    """Inverse of :func:`qr_text` (no size limits: a test helper, not the verifier's decoder)."""
    if not text.startswith(QR_PREFIX):
        raise ValueError("QR text does not start with APCV1:")
    return zlib.decompress(base45.b45decode(text[len(QR_PREFIX) :]))
