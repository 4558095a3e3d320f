//! The inputs of a verification (docs/profile.md §7.1): the policy, the in-process replay
//! store and the scan.

use std::sync::Arc;

use apcv_core::replay;
use apcv_core::verify;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::errors::{NativeErr, NativeResult};

/// Verification policy.
#[pyclass(frozen, module = "apcv_verify._native")]
pub(crate) struct Policy {
    pub(crate) inner: verify::Policy,
}

#[pymethods]
impl Policy {
    #[new]
    #[pyo3(signature = (
        *,
        allow_test_identities = false,
        clock_skew = 60,
        status_grace = 0,
        max_scan_delay = 0
    ))]
    fn new(
        allow_test_identities: bool,
        clock_skew: i64,
        status_grace: i64,
        max_scan_delay: i64,
    ) -> NativeResult<Policy> {
        Ok(Policy {
            inner: verify::Policy::new(allow_test_identities, clock_skew, status_grace)?
                .with_max_scan_delay(max_scan_delay)?,
        })
    }

    #[getter]
    fn allow_test_identities(&self) -> bool {
        self.inner.allow_test_identities
    }

    #[getter]
    fn clock_skew(&self) -> i64 {
        self.inner.clock_skew
    }

    #[getter]
    fn status_grace(&self) -> i64 {
        self.inner.status_grace
    }

    #[getter]
    fn max_scan_delay(&self) -> i64 {
        self.inner.max_scan_delay
    }

    fn __repr__(&self) -> String {
        let p = &self.inner;
        format!(
            "Policy(allow_test_identities={}, clock_skew={}, status_grace={}, max_scan_delay={})",
            if p.allow_test_identities {
                "True"
            } else {
                "False"
            },
            p.clock_skew,
            p.status_grace,
            p.max_scan_delay
        )
    }
}

const _: () = assert!(apcv_core::limits::DEFAULT_MAX_REPLAY_ENTRIES == 1_000_000);

/// The in-process replay store; thread-safe and shared by every Verifier built with it.
#[pyclass(frozen, module = "apcv_verify._native")]
pub(crate) struct MemoryReplayStore {
    pub(crate) inner: Arc<replay::MemoryReplayStore>,
}

#[pymethods]
impl MemoryReplayStore {
    // The literal shows in the Python signature; the assertion above keeps it the core's.
    #[new]
    #[pyo3(signature = (max_entries = 1_000_000))]
    fn new(max_entries: usize) -> MemoryReplayStore {
        MemoryReplayStore {
            inner: Arc::new(replay::MemoryReplayStore::new(max_entries)),
        }
    }

    #[getter]
    fn max_entries(&self) -> usize {
        self.inner.max_entries()
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "<MemoryReplayStore len={} max_entries={}>",
            self.inner.len(),
            self.inner.max_entries()
        )
    }
}

/// One item to verify: QR text (str) or NFC bytes, with the reader's context.
#[pyclass(frozen, module = "apcv_verify._native")]
pub(crate) struct Scan {
    pub(crate) inner: Arc<verify::Scan>,
}

#[pymethods]
impl Scan {
    #[new]
    #[pyo3(signature = (data, reader_id, *, nonce = None, allowed_uses = None, scanned_at = None))]
    fn new(
        data: &Bound<'_, PyAny>,
        reader_id: String,
        nonce: Option<Vec<u8>>,
        allowed_uses: Option<Vec<String>>,
        scanned_at: Option<i64>,
    ) -> PyResult<Scan> {
        let data = if let Ok(s) = data.cast::<PyString>() {
            verify::ScanData::Qr(s.to_str()?.to_owned())
        } else if let Ok(b) = data.cast::<PyBytes>() {
            verify::ScanData::Nfc(b.as_bytes().to_vec())
        } else {
            return Err(PyTypeError::new_err(
                "data must be str (QR text) or bytes (NFC)",
            ));
        };
        let uses = match allowed_uses {
            None => None,
            Some(names) => Some(verify::parse_uses(&names).map_err(NativeErr)?),
        };
        Ok(Scan {
            inner: Arc::new(
                verify::Scan::new(data, reader_id, nonce, uses.as_deref())
                    .with_scanned_at(scanned_at),
            ),
        })
    }

    #[getter]
    fn reader_id(&self) -> &str {
        &self.inner.reader_id
    }

    /// When the reader scanned the code (delayed scan, docs/profile.md §7.5), or None.
    #[getter]
    fn scanned_at(&self) -> Option<i64> {
        self.inner.scanned_at
    }

    fn __repr__(&self) -> String {
        let kind = match self.inner.data {
            verify::ScanData::Qr(_) => "qr",
            verify::ScanData::Nfc(_) => "nfc",
        };
        // docs/profile.md §9.1: no reader-supplied text in anything that may reach a log line.
        format!("<Scan {kind}>")
    }
}
