//! Hard limits of the profile, each a named constant with the reason it exists.
//!
//! Every limit is checked before the work it bounds (docs/profile.md §4.4: "checked before
//! any other work").

/// Prefix of the QR text form (docs/profile.md §4.1; version 1 of the profile).
pub const QR_PREFIX: &str = "APCV1:";

/// Largest QR text accepted: the alphanumeric capacity of a version 40-L QR code, so
/// nothing longer can come from a real QR scan.
pub const MAX_QR_CHARS: usize = 4_296;

/// Largest NFC payload accepted (bytes): the same budget as the inflated QR payload.
pub const MAX_NFC_BYTES: usize = 16_384;

/// Largest inflated QR payload (bytes); inflating stops at this cap + 1 byte, which defeats
/// zip bombs (docs/profile.md §4.4: inflated QR payload ≤ 16 KiB).
pub const MAX_INFLATED_BYTES: usize = 16_384;

/// Deepest CBOR nesting accepted (arrays, maps and tags each count one level). The profile's
/// deepest object needs 5; 16 leaves room while bounding recursion in every decoder.
pub const MAX_CBOR_DEPTH: usize = 16;

/// Largest inflated status list (bytes): 16 MiB holds 134 million 1-bit entries, far beyond
/// any issuer's population, and bounds memory per list (docs/profile.md §4.4, §6.5).
pub const MAX_STATUS_LIST_INFLATED_BYTES: usize = 16 * 1024 * 1024;

/// Largest signed status-list CWT accepted (bytes), bounding work before the signature check.
/// A zlib stream cannot be much larger than its inflated content, so cap + 1 MiB of slack.
pub const MAX_STATUS_LIST_BYTES: usize = MAX_STATUS_LIST_INFLATED_BYTES + 1024 * 1024;

/// Largest signed trust list accepted (bytes): about 20,000 keys, bounding work before the
/// signature check.
pub const MAX_TRUST_LIST_BYTES: usize = 4 * 1024 * 1024;

/// Largest COSE_Key accepted by the raw primitives (bytes): an EC2 P-256 key with every
/// optional parameter is under 200 bytes.
pub const MAX_COSE_KEY_BYTES: usize = 1_024;

/// Longest a presentation may live, `exp − iat`, in seconds (docs/profile.md §4.4, §7.3),
/// so that a screenshot of an old QR code is useless.
pub const MAX_PRESENTATION_LIFETIME: i64 = 300;

/// Length of a presentation id `cti` (docs/profile.md §2.5).
pub const CTI_LEN: usize = 16;

/// Length of a `kid`: the first 8 bytes of the RFC 9679 thumbprint (docs/profile.md §3.4).
pub const KID_LEN: usize = 8;

/// Default clock skew tolerated on every time check, in seconds (docs/profile.md §7.3).
pub const DEFAULT_CLOCK_SKEW: i64 = 60;

/// Default bound of the in-process replay store: about 100 MB at worst, and a day of scans
/// for a large region; fail closed beyond it (docs/profile.md §4.4, §7.4).
pub const DEFAULT_MAX_REPLAY_ENTRIES: usize = 1_000_000;

/// Default bound of the cache of verified issuer signatures (`sigcache`): 262,144 entries
/// of a 32-byte digest, about 20 MB at most with the cache's own overhead; a region's daily
/// distinct credentials at one verifier fit, and a miss only costs the signature check it saves.
pub const SIGNATURE_CACHE_ENTRIES: usize = 262_144;

/// Most AMC attestations one presentation may carry (docs/profile.md §2.7, §4.4); more is
/// MALFORMED. A person rarely has more than one or two complementary insurers; each attestation
/// costs a signature check, so the bound caps the work an accepted presentation can cause.
pub const MAX_AMC_ATTESTATIONS: usize = 8;
