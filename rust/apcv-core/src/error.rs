//! The one error-kind enum of the core (pyca `ValidationErrorKind` style).
//!
//! Errors are for misuse and for refused configuration inputs (trust lists, status lists,
//! keys). A bad presentation is never an error: it is a `Decision` with a `Reason` (the
//! `decision` module, docs/profile.md §7.6, §8).

/// Everything that can go wrong outside the verification decision itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Bytes that are not a strict CBOR / COSE_Sign1 structure (docs/profile.md §4.3).
    #[error("malformed: {0}")]
    Malformed(&'static str),
    /// A signature that does not verify under the given key.
    #[error("signature does not verify")]
    InvalidSignature,
    /// A COSE_Key that cannot be used, or an algorithm the profile does not allow.
    #[error("unusable COSE_Key: {0}")]
    CoseKey(&'static str),
    /// The trust list names an anchor that is not configured (docs/profile.md §6.2 check 2).
    #[error("unknown trust anchor")]
    UnknownTrustAnchor,
    /// The trust list's alg does not fit its anchor, or its signature does not verify under it
    /// (docs/profile.md §6.2 check 3).
    #[error("bad trust list signature")]
    BadTrustListSignature,
    /// The trust list is older than the one held (docs/profile.md §6.3: rollback).
    #[error("rollback: sequence {seq} is lower than held {held}")]
    TrustListRollback {
        /// Sequence number of the refused list.
        seq: u64,
        /// Sequence number of the list already held.
        held: u64,
    },
    /// A trust-list key whose kid is not its thumbprint prefix (docs/profile.md §6.2 check 7,
    /// RFC 9679).
    #[error("key {0}: kid is not the RFC 9679 thumbprint prefix")]
    TrustListBadKid(usize),
    /// A trust list that is not well formed.
    #[error("malformed trust list: {0}")]
    MalformedTrustList(&'static str),
    /// A trust list past its `exp`.
    #[error("trust list expired")]
    TrustListExpired,
    /// The status list's kid selects no usable key of role "status" (docs/profile.md §6.5 check 2).
    #[error("unknown status list signer")]
    UnknownStatusListSigner,
    /// The status list's alg is not its key's, or its signature does not verify (docs/profile.md
    /// §6.5 check 3).
    #[error("bad status list signature")]
    BadStatusListSignature,
    /// A status list that is not well formed.
    #[error("malformed status list: {0}")]
    MalformedStatusList(&'static str),
    /// A status list past its `exp`.
    #[error("status list expired")]
    StatusListExpired,
    /// A status-list index beyond the end of the list.
    #[error("status index out of range")]
    IndexOutOfRange,
    /// A caller argument outside its domain (e.g. an unknown use, a negative skew).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
}

/// Result alias of the core.
pub type Result<T> = std::result::Result<T, Error>;
