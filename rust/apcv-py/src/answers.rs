//! Answer recovery (`apcv_core::answers`): the keyed hashes, the compact record of an answer
//! and its rebuilding for a resent scan, and the in-process store of those records.

use apcv_core::answers::{self, AnswerRecord, HASH_LEN};
use apcv_core::claims::Use;
use apcv_core::verify::{self, AmcReason, Reason, ScanData};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::inputs::Scan;
use crate::results::{result_with_details, VerificationResult};

fn hash(bytes: &[u8]) -> PyResult<[u8; HASH_LEN]> {
    <[u8; HASH_LEN]>::try_from(bytes)
        .map_err(|_| PyValueError::new_err("an answer key is 16 bytes"))
}

pub(crate) fn presentation_bytes(scan: &verify::Scan) -> &[u8] {
    match &scan.data {
        ScanData::Qr(text) => text.as_bytes(),
        ScanData::Nfc(bytes) => bytes,
    }
}

/// The keyed hashes of answer recovery (HMAC-SHA256 under ``secret``, 16 bytes), and the
/// record of an answer: what is kept of it, without personal data.
#[pyclass(frozen, module = "apcv_verify._native")]
pub(crate) struct AnswerKeys {
    pub(crate) inner: answers::AnswerKeys,
}

#[pymethods]
impl AnswerKeys {
    #[new]
    fn new(secret: &[u8]) -> AnswerKeys {
        AnswerKeys {
            inner: answers::AnswerKeys::new(secret),
        }
    }

    /// The 16-byte key of a request: (caller, reader id, request id), keyed.
    fn key<'py>(
        &self,
        py: Python<'py>,
        caller: &str,
        reader_id: &str,
        request_id: &str,
    ) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.key(caller, reader_id, request_id))
    }

    /// The record of ``result`` (final, not pending) for ``scan``, decided at
    /// ``verified_at``: the presentation's keyed digest and the decision without the person.
    fn record<'py>(
        &self,
        py: Python<'py>,
        scan: &Bound<'py, Scan>,
        result: &Bound<'py, VerificationResult>,
        verified_at: i64,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let r = result.get();
        if r.is_pending() {
            return Err(PyValueError::new_err(
                "result is pending a replay check: settle it first",
            ));
        }
        let reason = Reason::ALL
            .into_iter()
            .find(|x| x.as_str() == r.reason)
            .ok_or_else(|| PyValueError::new_err("unknown reason"))?;
        let amc = r
            .amc
            .iter()
            .map(|a| {
                let a = a.get();
                let reason = AmcReason::ALL.into_iter().find(|x| x.as_str() == a.reason);
                reason
                    .map(|x| (x, a.detail.to_string()))
                    .ok_or_else(|| PyValueError::new_err("unknown AMC reason"))
            })
            .collect::<PyResult<Vec<_>>>()?;
        let record = AnswerRecord {
            digest: self.inner.digest(presentation_bytes(&scan.get().inner)),
            reason,
            detail: r.detail.to_string(),
            use_: r.use_.and_then(Use::parse),
            duplicate: r.duplicate,
            replay_unchecked: r.replay_unchecked,
            verified_at,
            amc,
        };
        Ok(PyBytes::new(py, &record.encode()))
    }

    /// The answer kept in ``record`` given again for the resent ``scan`` (``resent`` set,
    /// decided at ``verified_at``): the person and coverage rebuilt by decoding the
    /// presentation, nothing judged again. None when ``record`` is another presentation's
    /// (the request id was used for another one); ValueError when it cannot be read.
    fn recover(
        &self,
        py: Python<'_>,
        scan: &Bound<'_, Scan>,
        record: &[u8],
    ) -> PyResult<Option<VerificationResult>> {
        let record = AnswerRecord::decode(record)
            .ok_or_else(|| PyValueError::new_err("unreadable answer record"))?;
        let scan = &scan.get().inner;
        if self.inner.digest(presentation_bytes(scan)) != record.digest {
            return Ok(None);
        }
        let decision = py.detach(|| verify::Verifier::recover(scan, &record));
        let amc_details = record.amc.iter().map(|(_, d)| d.clone()).collect();
        let mut result = result_with_details(py, decision, Some(record.detail), amc_details)?;
        result.resent = true;
        result.verified_at = Some(record.verified_at);
        Ok(Some(result))
    }

    fn __repr__(&self) -> &'static str {
        "<AnswerKeys>"
    }
}

/// The in-process store of answer records: at most ``max_entries``, each kept until its
/// expiry; when full, the oldest is dropped (``evicted`` counts them).
#[pyclass(frozen, module = "apcv_verify._native")]
pub(crate) struct MemoryAnswerStore {
    pub(crate) inner: answers::MemoryAnswerStore,
}

#[pymethods]
impl MemoryAnswerStore {
    #[new]
    #[pyo3(signature = (max_entries))]
    fn new(max_entries: usize) -> MemoryAnswerStore {
        MemoryAnswerStore {
            inner: answers::MemoryAnswerStore::new(max_entries),
        }
    }

    /// The records kept under ``keys`` and live at ``now`` (None where there is none).
    fn get_many<'py>(
        &self,
        py: Python<'py>,
        keys: Vec<Vec<u8>>,
        now: i64,
    ) -> PyResult<Vec<Option<Bound<'py, PyBytes>>>> {
        keys.iter()
            .map(|k| {
                let found = self.inner.get(&hash(k)?, now);
                Ok(found.map(|r| PyBytes::new(py, &r)))
            })
            .collect()
    }

    /// Keeps ``record`` under ``key`` until ``expires_at`` unless a live record is already
    /// there: that one is returned then (the first answer stays), else None.
    fn insert_or_get<'py>(
        &self,
        py: Python<'py>,
        key: &[u8],
        record: &[u8],
        expires_at: i64,
        now: i64,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let kept = self
            .inner
            .insert_or_get(&hash(key)?, record, expires_at, now);
        Ok(kept.map(|r| PyBytes::new(py, &r)))
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    #[getter]
    fn max_entries(&self) -> usize {
        self.inner.max_entries()
    }

    /// Live answers dropped so far to make room for newer ones.
    #[getter]
    fn evicted(&self) -> u64 {
        self.inner.evicted()
    }

    fn __repr__(&self) -> String {
        format!(
            "<MemoryAnswerStore len={} max_entries={}>",
            self.inner.len(),
            self.inner.max_entries()
        )
    }
}
