//! PyO3 binding of apcv-core: the private module `apcv_verify._native`.
//!
//! Thin by design (pyca/cryptography style): it only converts. Arguments become core values,
//! core errors become exceptions (`errors`), core decisions become frozen result classes
//! (`results`). All verification logic, the replay settlement rules included, lives in
//! apcv-core; `Verifier.verify_batch` runs it with the GIL released. `WireBatch` (`wire`) takes
//! the service's batch and stream requests as protobuf bytes and answers them encoded.

mod answers;
mod audit;
mod counts;
mod errors;
mod inputs;
mod lists;
mod primitives;
mod results;
mod verdicts;
mod verifier;
mod wire;

use pyo3::prelude::*;

use crate::answers::{AnswerKeys, MemoryAnswerStore};
use crate::audit::{AuditQueue, HolderRefKey};
use crate::counts::VerificationCounts;
use crate::errors::{
    cose_key_error, malformed_error, InvalidSignature, NativeError, StatusListError, TrustListError,
};
use crate::inputs::{MemoryReplayStore, Policy, Scan};
use crate::lists::{StatusBits, StatusList, TrustList};
use crate::primitives::{cose_key_thumbprint, decode_status_list, verify_sign1, verify_signature};
use crate::results::{AmcCoverage, AmoRights, Person, VerificationResult};
use crate::verifier::Verifier;
use crate::wire::{CallerView, ReaderIds, WireBatch};

/// How this module was compiled, for benchmark reports and the `apcv_build_info` metric:
/// "debug", "release", or as `make dev` names it in APCV_NATIVE_BUILD, "instrumented" (the build
/// that records a profile of the service's work) and "profile-guided" (the release built from
/// that profile). rustc tracks the variable, so a change of it rebuilds this crate.
const BUILD: &str = match option_env!("APCV_NATIVE_BUILD") {
    Some(build) => build,
    None if cfg!(debug_assertions) => "debug",
    None => "release",
};

/// apcv_verify._native: the compiled verification core.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("CORE_VERSION", apcv_core::VERSION)?;
    m.add("BUILD", BUILD)?;
    m.add("NativeError", py.get_type::<NativeError>())?;
    m.add("TrustListError", py.get_type::<TrustListError>())?;
    m.add("StatusListError", py.get_type::<StatusListError>())?;
    m.add("CoseKeyError", cose_key_error(py)?)?;
    m.add("MalformedError", malformed_error(py)?)?;
    m.add("InvalidSignature", py.get_type::<InvalidSignature>())?;
    m.add_function(wrap_pyfunction!(verify_signature, m)?)?;
    m.add_function(wrap_pyfunction!(verify_sign1, m)?)?;
    m.add_function(wrap_pyfunction!(cose_key_thumbprint, m)?)?;
    m.add_function(wrap_pyfunction!(decode_status_list, m)?)?;
    m.add_class::<StatusBits>()?;
    m.add_class::<AnswerKeys>()?;
    m.add_class::<MemoryAnswerStore>()?;
    m.add_class::<TrustList>()?;
    m.add_class::<StatusList>()?;
    m.add_class::<Policy>()?;
    m.add_class::<MemoryReplayStore>()?;
    m.add_class::<Scan>()?;
    m.add_class::<AmoRights>()?;
    m.add_class::<Person>()?;
    m.add_class::<AmcCoverage>()?;
    m.add_class::<VerificationResult>()?;
    m.add_class::<Verifier>()?;
    m.add_class::<WireBatch>()?;
    m.add_class::<CallerView>()?;
    m.add_class::<ReaderIds>()?;
    m.add_class::<HolderRefKey>()?;
    m.add_class::<AuditQueue>()?;
    m.add_class::<VerificationCounts>()?;
    Ok(())
}
