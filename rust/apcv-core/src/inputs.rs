//! The inputs of one verification (docs/profile.md §7.1): the scan with its reader's context,
//! and the policy of the snapshot it is judged with.

use crate::claims::Use;
use crate::error::{Error, Result};
use crate::limits::DEFAULT_CLOCK_SKEW;

/// Verification policy (docs/profile.md §7.1): the test/demo identity rule (§5.3), the
/// clock skew (§7.3), the status grace (§6.8) and the allowed scan delay (§7.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Accept the test and demonstration INS OIDs.
    pub allow_test_identities: bool,
    /// Tolerated clock skew in seconds.
    pub clock_skew: i64,
    /// How long past its `exp` a held status list is still used, in seconds.
    pub status_grace: i64,
    /// How old a scan's `scanned_at` may be, in seconds (docs/profile.md §7.5); 0 by default.
    pub max_scan_delay: i64,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            allow_test_identities: false,
            clock_skew: DEFAULT_CLOCK_SKEW,
            status_grace: 0,
            max_scan_delay: 0,
        }
    }
}

impl Policy {
    /// A policy; negative durations are refused.
    pub fn new(allow_test_identities: bool, clock_skew: i64, status_grace: i64) -> Result<Policy> {
        if clock_skew < 0 {
            return Err(Error::InvalidArgument("clock_skew must be >= 0"));
        }
        if status_grace < 0 {
            return Err(Error::InvalidArgument("status_grace must be >= 0"));
        }
        Ok(Policy {
            allow_test_identities,
            clock_skew,
            status_grace,
            max_scan_delay: 0,
        })
    }

    /// The same policy with another `max_scan_delay` (docs/profile.md §7.5); negative is refused.
    pub fn with_max_scan_delay(self, max_scan_delay: i64) -> Result<Policy> {
        if max_scan_delay < 0 {
            return Err(Error::InvalidArgument("max_scan_delay must be >= 0"));
        }
        Ok(Policy {
            max_scan_delay,
            ..self
        })
    }
}

/// The bytes of one scan as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanData {
    /// QR text `"APCV1:" + base45(zlib(presentation))`.
    Qr(String),
    /// NFC: the presentation bytes.
    Nfc(Vec<u8>),
}

/// One item to verify, with the reader's context.
#[derive(Clone, Debug)]
pub struct Scan {
    /// What was scanned.
    pub data: ScanData,
    /// Who scanned it (the replay owner and the expected `aud`).
    pub reader_id: String,
    /// The reader's challenge, if it sent one (NFC).
    pub nonce: Option<Vec<u8>>,
    /// When the reader scanned the code, if it reports a delayed scan (docs/profile.md §7.5).
    pub scanned_at: Option<i64>,
    allowed_uses: u8,
}

impl Scan {
    /// A scan; `allowed_uses = None` allows all four uses.
    pub fn new(
        data: ScanData,
        reader_id: String,
        nonce: Option<Vec<u8>>,
        allowed_uses: Option<&[Use]>,
    ) -> Scan {
        let allowed_uses = match allowed_uses {
            None => Use::ALL.iter().fold(0, |acc, u| acc | u.bit()),
            Some(us) => us.iter().fold(0, |acc, u| acc | u.bit()),
        };
        Scan {
            data,
            reader_id,
            nonce,
            scanned_at: None,
            allowed_uses,
        }
    }

    /// The same scan with a reported scan time (docs/profile.md §7.5).
    pub fn with_scanned_at(self, scanned_at: Option<i64>) -> Scan {
        Scan { scanned_at, ..self }
    }

    /// Whether this request allows `u`.
    pub fn allows(&self, u: Use) -> bool {
        self.allowed_uses & u.bit() != 0
    }
}

/// Parses wire use names for [`Scan::new`]; an unknown name is a caller error.
pub fn parse_uses<S: AsRef<str>>(names: &[S]) -> Result<Vec<Use>> {
    names
        .iter()
        .map(|n| Use::parse(n.as_ref()).ok_or(Error::InvalidArgument("unknown use")))
        .collect()
}
