//! Trust and status lists: verified, immutable Python views of the core's lists.

use std::sync::Arc;

use apcv_core::cose::PublicKey;
use apcv_core::error::Error as CoreError;
use apcv_core::status;
use apcv_core::trust;
use pyo3::exceptions::PyOverflowError;
use pyo3::prelude::*;
use pyo3::types::PyInt;

use crate::errors::{NativeErr, NativeResult};

fn to_len(n: u64) -> PyResult<usize> {
    usize::try_from(n).map_err(|_| PyOverflowError::new_err("length does not fit"))
}

/// Any Python int outside the list (negative, or beyond u64) is an IndexError, as for a
/// sequence; a non-int is a TypeError.
fn status_at(bits: &status::StatusBits, index: &Bound<'_, PyAny>) -> PyResult<u8> {
    let index: Option<u64> = match index.extract::<u64>() {
        Ok(i) => Some(i),
        Err(_) if index.cast::<PyInt>().is_ok() => None,
        Err(e) => return Err(e),
    };
    index
        .and_then(|i| bits.get(i))
        .ok_or_else(|| NativeErr(CoreError::IndexOutOfRange).into())
}

/// Decoded status entries (bits per entry, LSB first).
#[pyclass(frozen, module = "apcv_verify._native")]
pub(crate) struct StatusBits {
    pub(crate) inner: status::StatusBits,
}

#[pymethods]
impl StatusBits {
    #[getter]
    fn bits(&self) -> u8 {
        self.inner.bits()
    }

    fn __len__(&self) -> PyResult<usize> {
        to_len(self.inner.len())
    }

    /// Status of entry `index`; IndexError outside the list.
    fn status(&self, index: &Bound<'_, PyAny>) -> PyResult<u8> {
        status_at(&self.inner, index)
    }

    fn __repr__(&self) -> String {
        format!(
            "<StatusBits bits={} len={}>",
            self.inner.bits(),
            self.inner.len()
        )
    }
}

/// A verified trust list (immutable).
#[pyclass(frozen, module = "apcv_verify._native")]
pub(crate) struct TrustList {
    pub(crate) inner: Arc<trust::TrustList>,
}

#[pymethods]
impl TrustList {
    /// Verifies a signed trust list against the anchors (COSE_Key bytes); TrustListError
    /// names the problem.
    #[staticmethod]
    #[pyo3(signature = (data, anchors, now, held_seq = None))]
    fn verify(
        py: Python<'_>,
        data: &[u8],
        anchors: Vec<Vec<u8>>,
        now: i64,
        held_seq: Option<u64>,
    ) -> NativeResult<TrustList> {
        let inner = py.detach(|| -> apcv_core::Result<trust::TrustList> {
            let anchors = anchors
                .iter()
                .map(|a| PublicKey::from_bytes(a))
                .collect::<apcv_core::Result<Vec<_>>>()?;
            trust::TrustList::verify(data, &anchors, now, held_seq)
        })?;
        Ok(TrustList {
            inner: Arc::new(inner),
        })
    }

    #[getter]
    fn seq(&self) -> u64 {
        self.inner.seq
    }

    #[getter]
    fn issued_at(&self) -> i64 {
        self.inner.issued_at
    }

    #[getter]
    fn expires_at(&self) -> i64 {
        self.inner.expires_at
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "<TrustList seq={} keys={} expires_at={}>",
            self.inner.seq,
            self.inner.len(),
            self.inner.expires_at
        )
    }
}

/// A verified status list (immutable).
#[pyclass(frozen, module = "apcv_verify._native")]
pub(crate) struct StatusList {
    pub(crate) inner: Arc<status::StatusList>,
}

#[pymethods]
impl StatusList {
    /// Verifies a signed status-list CWT with a trust-list key of role "status";
    /// StatusListError names the problem.
    #[staticmethod]
    fn verify(
        py: Python<'_>,
        data: &[u8],
        trust_list: &Bound<'_, TrustList>,
        now: i64,
    ) -> NativeResult<StatusList> {
        let tl = trust_list.get().inner.clone();
        let inner = py.detach(|| status::StatusList::verify(data, &tl, now))?;
        Ok(StatusList {
            inner: Arc::new(inner),
        })
    }

    #[getter]
    fn uri(&self) -> &str {
        &self.inner.uri
    }

    #[getter]
    fn bits(&self) -> u8 {
        self.inner.bits.bits()
    }

    #[getter]
    fn issued_at(&self) -> i64 {
        self.inner.issued_at
    }

    #[getter]
    fn expires_at(&self) -> i64 {
        self.inner.expires_at
    }

    #[getter]
    fn ttl(&self) -> Option<u64> {
        self.inner.ttl
    }

    fn __len__(&self) -> PyResult<usize> {
        to_len(self.inner.bits.len())
    }

    /// Status of entry `index`; IndexError outside the list.
    fn status(&self, index: &Bound<'_, PyAny>) -> PyResult<u8> {
        status_at(&self.inner.bits, index)
    }

    fn __repr__(&self) -> String {
        format!(
            "<StatusList uri={:?} bits={} len={} expires_at={}>",
            self.inner.uri,
            self.inner.bits.bits(),
            self.inner.bits.len(),
            self.inner.expires_at
        )
    }
}
