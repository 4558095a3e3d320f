//! The raw primitives: signature checks, COSE_Sign1, COSE_Key thumbprints and status-list
//! decoding, each with the GIL released where it does real work.

use apcv_core::cose::{self, PublicKey};
use apcv_core::status;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::{NativeErr, NativeResult};
use crate::lists::StatusBits;

/// Raw signature primitive: alg -7 (ES256, r‖s) or -8 (EdDSA).
#[pyfunction]
pub(crate) fn verify_signature(
    py: Python<'_>,
    alg: i64,
    cose_key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> NativeResult<bool> {
    py.detach(|| cose::verify_signature(alg, cose_key, message, signature))
        .map_err(NativeErr)
}

/// Strict COSE_Sign1 parse + verify with the protected alg; returns the payload.
#[pyfunction]
#[pyo3(signature = (cose_sign1, cose_key, external_aad = b"".as_slice()))]
pub(crate) fn verify_sign1<'py>(
    py: Python<'py>,
    cose_sign1: &[u8],
    cose_key: &[u8],
    external_aad: &[u8],
) -> NativeResult<Bound<'py, PyBytes>> {
    let payload = py.detach(|| {
        let key = PublicKey::from_bytes(cose_key)?;
        cose::verify_sign1(cose_sign1, &key, external_aad)
    })?;
    Ok(PyBytes::new(py, &payload))
}

/// RFC 9679 thumbprint (SHA-256, 32 bytes) of a COSE_Key.
#[pyfunction]
pub(crate) fn cose_key_thumbprint<'py>(
    py: Python<'py>,
    cose_key: &[u8],
) -> NativeResult<Bound<'py, PyBytes>> {
    let key = PublicKey::from_bytes(cose_key)?;
    Ok(PyBytes::new(py, &key.thumbprint()))
}

/// Decodes a CBOR `{"bits", "lst"}` status-list map (Token Status List draft §4.3).
#[pyfunction]
pub(crate) fn decode_status_list(
    py: Python<'_>,
    status_list_map: &[u8],
) -> NativeResult<StatusBits> {
    let inner = py.detach(|| status::StatusBits::from_cbor(status_list_map))?;
    Ok(StatusBits { inner })
}
