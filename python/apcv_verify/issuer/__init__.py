"""Issuer toolkit for the open ApCV profile v1, by concern: keys (:mod:`.keys`), COSE_Sign1
(:mod:`.cose`), claims — identity data, credentials, presentations, delegation, AMC
(:mod:`.claims`) —, trust list and status lists (:mod:`.lists`), the demonstration PKI
(:mod:`.pki`) and load-test corpora (:mod:`.corpus`). Every public name is importable from
``apcv_verify.issuer``.

Keys, credentials, presentations, QR text, trust lists and status lists, plus a ready-made
demonstration PKI. Used by the tests, the demo, load-test corpora and integrators' test benches.
Pure Python on purpose (``cryptography`` + ``cbor2`` + ``base45``): it must never depend on the
native verifier it is used to test.

The toolkit does not police claim values (a wrong NIR key, an unknown ``use``, a lifetime over 300 s
are all emitted as given) so that test benches can build every kind of invalid object; the verifier
is the judge. It only refuses what it cannot encode or sign.

Section references (§N) are to ``docs/profile.md``, which pins the wire format byte for byte.
"""

# The production form (trust anchors); the toolkit's own keys encode alike.
from ..trust.anchors import cose_key_from_public_pem
from .claims import (
    CTI_LENGTH,
    DEFAULT_PRESENTATION_LIFETIME,
    INS_DEMO_OID,
    INS_NIA_OID,
    INS_NIR_OID,
    INS_TEST_OID,
    PROFILE_VERSION,
    QR_PREFIX,
    AmoRights,
    Beneficiary,
    Identity,
    Person,
    issue_credential,
    make_amc_attestation,
    make_delegation,
    make_presentation,
    matricule,
    nir_key,
    nir_key_is_valid,
    presentation_from_qr_text,
    qr_text,
)
from .corpus import (
    DEFAULT_MIX,
    CorpusError,
    CorpusSummary,
    make_corpus,
    parse_mix,
    read_scans,
)
from .cose import (
    Sign1,
    parse_sign1,
    sign1,
    tamper_signature,
    verify_sign1,
)
from .keys import (
    KID_LENGTH,
    Alg,
    SigningKey,
    VerifyingKey,
    deterministic_cbor,
    thumbprint,
)
from .lists import (
    AMC_ROLE,
    AMO_ROLE,
    STATUS_INVALID,
    STATUS_LIST_TYP,
    STATUS_ROLE,
    STATUS_SUSPENDED,
    STATUS_VALID,
    StatusListBuilder,
    TrustEntry,
    make_status_list,
    make_trust_list,
)
from .pki import (
    DEMO_AMC_DOMAINS,
    DEMO_AMC_ISS,
    DEMO_AMC_NUMBER,
    DEMO_AMO_ISS,
    DEMO_CREDENTIAL_VALIDITY,
    DEMO_DELEGATION_VALIDITY,
    DEMO_KEY_VALIDITY,
    DEMO_LIST_VALIDITY,
    DEMO_SAMPLE_NAMES,
    DEMO_STATUS_BITS,
    DEMO_STATUS_ISS,
    DEMO_STATUS_LIST_SIZE,
    DEMO_STATUS_TTL,
    DEMO_STATUS_URI,
    DemoHolder,
    DemoPKI,
)

__all__ = [
    "AMC_ROLE",
    "AMO_ROLE",
    "CTI_LENGTH",
    "DEFAULT_PRESENTATION_LIFETIME",
    "DEFAULT_MIX",
    "DEMO_AMC_DOMAINS",
    "DEMO_AMC_ISS",
    "DEMO_AMC_NUMBER",
    "DEMO_AMO_ISS",
    "DEMO_CREDENTIAL_VALIDITY",
    "DEMO_DELEGATION_VALIDITY",
    "DEMO_KEY_VALIDITY",
    "DEMO_LIST_VALIDITY",
    "DEMO_SAMPLE_NAMES",
    "DEMO_STATUS_BITS",
    "DEMO_STATUS_ISS",
    "DEMO_STATUS_LIST_SIZE",
    "DEMO_STATUS_TTL",
    "DEMO_STATUS_URI",
    "INS_DEMO_OID",
    "INS_NIA_OID",
    "INS_NIR_OID",
    "INS_TEST_OID",
    "KID_LENGTH",
    "PROFILE_VERSION",
    "QR_PREFIX",
    "STATUS_INVALID",
    "STATUS_LIST_TYP",
    "STATUS_ROLE",
    "STATUS_SUSPENDED",
    "STATUS_VALID",
    "Alg",
    "AmoRights",
    "Beneficiary",
    "CorpusError",
    "CorpusSummary",
    "DemoHolder",
    "DemoPKI",
    "Identity",
    "Person",
    "Sign1",
    "SigningKey",
    "StatusListBuilder",
    "TrustEntry",
    "VerifyingKey",
    "cose_key_from_public_pem",
    "deterministic_cbor",
    "issue_credential",
    "make_amc_attestation",
    "make_corpus",
    "make_delegation",
    "make_presentation",
    "make_status_list",
    "make_trust_list",
    "matricule",
    "nir_key",
    "nir_key_is_valid",
    "parse_mix",
    "parse_sign1",
    "presentation_from_qr_text",
    "qr_text",
    "read_scans",
    "sign1",
    "tamper_signature",
    "thumbprint",
    "verify_sign1",
]
