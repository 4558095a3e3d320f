//! apcv-core: the verification core of the open ApCV presentation profile.
//!
//! Pure Rust, no Python: strict decoders (CBOR, COSE_Sign1, COSE_Key, base45 + zlib),
//! trust-list and status-list verification, claims checks, replay detection and the
//! verification pipeline, which turns every presentation into a decision value.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
// No panics on any input (docs/profile.md §12): the lint-checked part of that promise;
// times are compared in i128 so that no claim value can overflow them.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod answers;
pub mod cbor;
pub mod claims;
pub mod cose;
pub mod decision;
pub mod encoding;
pub mod error;
pub mod inputs;
pub mod limits;
mod pipeline;
pub mod replay;
pub mod settle;
pub mod sigcache;
pub mod status;
pub mod trust;
pub mod verify;

pub use error::{Error, Result};

/// The version of this crate (`apcv_build_info`'s `core_version` label on the service side).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(test)]
mod amc_tests;
#[cfg(test)]
mod delegation_tests;
#[cfg(test)]
mod robustness_tests;
#[cfg(test)]
mod scan_time_tests;
#[cfg(test)]
mod testutil;
#[cfg(test)]
mod verify_tests;
