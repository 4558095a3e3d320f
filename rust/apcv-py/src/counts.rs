//! The counts behind the verification metrics (`apcv_verifications_total{decision, reason,
//! method}` and the `apcv_verification_seconds{method}` histogram), kept here so that the call
//! that renders a batch's audit lines also counts its decisions (`WireBatch.audit`): one
//! crossing for a call's whole audit work. The service exports them with the same names,
//! types and labels through a collector (python/apcv_verify/observe/metrics.py); with several
//! worker processes it keeps prometheus_client's own metrics instead (multiprocess files).

use std::sync::{Mutex, MutexGuard};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// One histogram: per bucket (the bounds', then +Inf) the observations that fell in it (not
/// cumulative, as prometheus_client keeps them), and their sum.
struct Histogram {
    method: String,
    buckets: Vec<u64>,
    sum: f64,
}

#[derive(Default)]
struct State {
    /// `(decision, reason, method, count)` in the order first met (the export's order).
    decisions: Vec<(&'static str, String, String, u64)>,
    histograms: Vec<Histogram>,
}

/// Verification counts and latency histograms (see the module). Updated under one lock: the
/// event loop's thread writes, the metrics endpoint's thread reads.
#[pyclass(frozen, module = "apcv_verify._native")]
pub(crate) struct VerificationCounts {
    /// The histogram's upper bounds, ascending (`VERIFICATION_SECONDS_BUCKETS`).
    bounds: Vec<f64>,
    state: Mutex<State>,
}

/// A decision's label value.
fn decision_of(accepted: bool) -> &'static str {
    if accepted {
        "ACCEPTED"
    } else {
        "REJECTED"
    }
}

impl VerificationCounts {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the counts half-updated in a way that
        // matters more than losing the metrics: keep counting.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Count `count` decisions of one kind.
    pub(crate) fn add(&self, accepted: bool, reason: &str, method: &str, count: u64) {
        let decision = decision_of(accepted);
        let mut state = self.lock();
        match state
            .decisions
            .iter_mut()
            .find(|d| d.0 == decision && d.1 == reason && d.2 == method)
        {
            Some(entry) => entry.3 += count,
            None => state
                .decisions
                .push((decision, reason.to_owned(), method.to_owned(), count)),
        }
    }

    /// Observe `amount` `count` times in `method`'s histogram: the first bucket whose bound
    /// holds it (Python's `bisect_left` on the bounds, as prometheus_client's `observe`).
    pub(crate) fn observe_many(&self, method: &str, amount: f64, count: u64) {
        if count == 0 {
            return;
        }
        let index = self.bounds.partition_point(|bound| *bound < amount);
        let mut state = self.lock();
        let position = match state.histograms.iter().position(|h| h.method == method) {
            Some(position) => position,
            None => {
                state.histograms.push(Histogram {
                    method: method.to_owned(),
                    buckets: vec![0; self.bounds.len() + 1],
                    sum: 0.0,
                });
                state.histograms.len() - 1
            }
        };
        let histogram = &mut state.histograms[position];
        histogram.buckets[index] += count;
        histogram.sum += amount * count as f64;
    }
}

#[pymethods]
impl VerificationCounts {
    #[new]
    fn new(bounds: Vec<f64>) -> PyResult<VerificationCounts> {
        if bounds.windows(2).any(|pair| pair[0] >= pair[1]) || bounds.iter().any(|b| b.is_nan()) {
            return Err(PyValueError::new_err("bucket bounds must be ascending"));
        }
        Ok(VerificationCounts {
            bounds,
            state: Mutex::new(State::default()),
        })
    }

    /// Count ``count`` decisions (``decision``: "ACCEPTED" or "REJECTED").
    fn count(&self, decision: &str, reason: &str, method: &str, count: u64) -> PyResult<()> {
        let accepted = match decision {
            "ACCEPTED" => true,
            "REJECTED" => false,
            _ => return Err(PyValueError::new_err("decision: ACCEPTED or REJECTED")),
        };
        self.add(accepted, reason, method, count);
        Ok(())
    }

    /// Observe ``amount`` seconds ``count`` times in ``method``'s histogram.
    fn observe(&self, method: &str, amount: f64, count: u64) {
        self.observe_many(method, amount, count);
    }

    /// ``(decisions, histograms)``: ``(decision, reason, method, count)`` and ``(method,
    /// cumulative bucket counts (the bounds', then +Inf), sum)``, in the order first met.
    #[allow(clippy::type_complexity)]
    fn snapshot(
        &self,
    ) -> (
        Vec<(&'static str, String, String, u64)>,
        Vec<(String, Vec<u64>, f64)>,
    ) {
        let state = self.lock();
        let histograms = state
            .histograms
            .iter()
            .map(|h| {
                let mut total = 0;
                let cumulative = h
                    .buckets
                    .iter()
                    .map(|n| {
                        total += n;
                        total
                    })
                    .collect();
                (h.method.clone(), cumulative, h.sum)
            })
            .collect();
        (state.decisions.clone(), histograms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_kind_and_buckets_as_bisect_left() {
        let counts = VerificationCounts::new(vec![0.001, 0.01, 1.0]).expect("ascending");
        counts.add(true, "OK", "Verify", 1);
        counts.add(false, "REPLAYED", "Verify", 2);
        counts.add(true, "OK", "Verify", 3);
        counts.observe_many("Verify", 0.001, 2); // on a bound: that bucket
        counts.observe_many("Verify", 5.0, 1); // +Inf
        counts.observe_many("Verify", 0.5, 0); // nothing
        let (decisions, histograms) = counts.snapshot();
        assert_eq!(
            decisions,
            vec![
                ("ACCEPTED", "OK".to_owned(), "Verify".to_owned(), 4),
                ("REJECTED", "REPLAYED".to_owned(), "Verify".to_owned(), 2),
            ]
        );
        assert_eq!(histograms.len(), 1);
        assert_eq!(histograms[0].1, vec![2, 2, 2, 3]);
        assert!((histograms[0].2 - 5.002).abs() < 1e-12);
        assert!(VerificationCounts::new(vec![1.0, 0.5]).is_err());
    }
}
