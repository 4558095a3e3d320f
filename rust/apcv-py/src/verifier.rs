//! The verifier: an immutable snapshot whose batches run with the GIL released.

use std::sync::Arc;

use apcv_core::replay;
use apcv_core::status;
use apcv_core::verify;
use pyo3::prelude::*;

use crate::inputs::{MemoryReplayStore, Policy, Scan};
use crate::lists::{StatusList, TrustList};
use crate::results::{deferred_to_py, result_to_py, VerificationResult};
use crate::wire::WireBatch;

// The default of `signature_cache_entries` is written out for the signature text.
const _: () = assert!(apcv_core::limits::SIGNATURE_CACHE_ENTRIES == 262_144);

/// An immutable verification snapshot (trust list, status lists, policy, replay store).
#[pyclass(frozen, module = "apcv_verify._native")]
pub(crate) struct Verifier {
    pub(crate) inner: verify::Verifier,
    /// Step 9 is left to the caller (replay_store=None): results that pass steps 1–8 come
    /// back pending.
    pub(crate) external_replay: bool,
}

fn status_arcs(lists: &[Bound<'_, StatusList>]) -> Vec<Arc<status::StatusList>> {
    lists.iter().map(|l| l.get().inner.clone()).collect()
}

#[pymethods]
impl Verifier {
    /// ``replay_store=None``: an external store (step 9 done by the caller, see
    /// ``VerificationResult.with_replay_outcome``). ``signature_cache_entries``: the bound of
    /// the cache of verified issuer signatures (0: none).
    #[new]
    #[pyo3(signature = (
        trust_list, status_lists, policy, replay_store,
        signature_cache_entries = 262_144
    ))]
    fn new(
        trust_list: &Bound<'_, TrustList>,
        status_lists: Vec<Bound<'_, StatusList>>,
        policy: &Bound<'_, Policy>,
        replay_store: Option<&Bound<'_, MemoryReplayStore>>,
        signature_cache_entries: usize,
    ) -> Verifier {
        let store: Arc<dyn replay::ReplayStore> = match replay_store {
            Some(s) => s.get().inner.clone(),
            None => Arc::new(replay::ExternalReplayStore),
        };
        Verifier {
            inner: verify::Verifier::new(
                trust_list.get().inner.clone(),
                status_arcs(&status_lists),
                policy.get().inner,
                store,
            )
            .with_signature_cache(signature_cache_entries),
            external_replay: replay_store.is_none(),
        }
    }

    /// True when built without a replay store: accepted results come back pending.
    #[getter]
    fn external_replay(&self) -> bool {
        self.external_replay
    }

    /// Issuer signatures held by the cache of this snapshot's trust list.
    #[getter]
    fn signature_cache_len(&self) -> usize {
        self.inner.signature_cache().len()
    }

    /// A new snapshot with another trust list (same status lists, policy and store); the
    /// cache of verified issuer signatures starts empty unless it is the same trust list.
    fn with_trust_list(&self, trust_list: &Bound<'_, TrustList>) -> Verifier {
        Verifier {
            inner: self.inner.with_trust_list(trust_list.get().inner.clone()),
            external_replay: self.external_replay,
        }
    }

    /// A new snapshot with another set of status lists.
    fn with_status_lists(&self, status_lists: Vec<Bound<'_, StatusList>>) -> Verifier {
        Verifier {
            inner: self.inner.with_status_lists(status_arcs(&status_lists)),
            external_replay: self.external_replay,
        }
    }

    /// Verifies every scan with the GIL released (rayon-parallel); results in input order.
    /// With an external replay store, results that passed steps 1–8 come back pending.
    fn verify_batch(
        &self,
        py: Python<'_>,
        scans: Vec<Bound<'_, Scan>>,
        now: i64,
    ) -> PyResult<Vec<VerificationResult>> {
        let items: Vec<Arc<verify::Scan>> = scans.iter().map(|s| s.get().inner.clone()).collect();
        let inner = &self.inner;
        if self.external_replay {
            let deferred = py.detach(|| inner.verify_batch_deferred(&items, now));
            return deferred
                .into_iter()
                .map(|d| deferred_to_py(py, d))
                .collect();
        }
        let decisions = py.detach(|| inner.verify_batch(&items, now));
        decisions.into_iter().map(|d| result_to_py(py, d)).collect()
    }

    /// Verifies the usable items of ``batch`` (a `WireBatch`) in one core call at ``now``
    /// with the GIL released, each allowing ``uses``; once per batch.
    fn verify_wire(
        &self,
        py: Python<'_>,
        batch: &Bound<'_, WireBatch>,
        uses: Vec<String>,
        now: i64,
    ) -> PyResult<()> {
        batch.borrow_mut().verify(py, self, &uses, now)
    }

    fn __repr__(&self) -> String {
        format!(
            "<Verifier trust_seq={}{}>",
            self.inner.trust_list().seq,
            if self.external_replay {
                " replay=external"
            } else {
                ""
            }
        )
    }
}
