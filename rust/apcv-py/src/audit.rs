//! The audit records of a `WireBatch` as JSON lines, written exactly as the service's audit
//! trail writes them (python/apcv_verify/observe/audit.py and logs.py: the record's keys, then
//! the common ones, rendered as Python's `json.dumps` does), so that a batch's records cost no
//! Python object per item; and the pseudonymous holder reference they carry:
//! HMAC-SHA-256(secret, credential id), hex, truncated (docs/operations.md "The audit record").

use std::fmt::Write as _;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use ring::hmac;

/// Bytes of the HMAC kept in a holder reference (`HOLDER_REF_HEX_CHARS` = 32 hex characters).
const HOLDER_REF_BYTES: usize = 16;

/// The audit trail's HMAC key. repr shows nothing of it.
#[pyclass(frozen, module = "apcv_verify._native")]
pub(crate) struct HolderRefKey {
    key: hmac::Key,
}

#[pymethods]
impl HolderRefKey {
    #[new]
    fn new(secret: &[u8]) -> PyResult<HolderRefKey> {
        if secret.is_empty() {
            return Err(PyValueError::new_err(
                "the holder reference secret must not be empty",
            ));
        }
        Ok(HolderRefKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        })
    }

    /// The holder reference of ``credential_id``.
    fn holder_ref(&self, credential_id: &str) -> String {
        let mut out = String::with_capacity(2 * HOLDER_REF_BYTES);
        self.push_ref(&mut out, credential_id);
        out
    }

    fn __repr__(&self) -> &'static str {
        "HolderRefKey(***)"
    }
}

impl HolderRefKey {
    fn push_ref(&self, out: &mut String, credential_id: &str) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let tag = hmac::sign(&self.key, credential_id.as_bytes());
        // Lowercase hex, two digits a byte, without a formatter call per byte.
        for &byte in &tag.as_ref()[..HOLDER_REF_BYTES] {
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
    }
}

/// `s` as a JSON string the way Python's `json.dumps` (ensure_ascii) writes it: `"` and `\`
/// escaped, `\n \r \t \b \f` by name, every other character outside space..`~` as `\uXXXX`
/// (lowercase hex; UTF-16 surrogate pairs above U+FFFF).
pub(crate) fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    if s.bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
    {
        // The usual identifier or reason code: nothing to escape.
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// One decision of a batch, as the audit record shows it.
pub(crate) struct Decided<'a> {
    /// The item's place in its batch or stream; None for the one scan of a unary call
    /// (audited without a number).
    pub(crate) position: Option<usize>,
    pub(crate) request_id: &'a str,
    pub(crate) reader_id: &'a str,
    pub(crate) accepted: bool,
    pub(crate) reason: &'a str,
    pub(crate) duplicate: bool,
    pub(crate) credential_id: Option<&'a str>,
    pub(crate) replay_unchecked: bool,
    /// The answer kept for an earlier request, given again (answer recovery).
    pub(crate) resent: bool,
}

/// What every record of one batch shares, already rendered as JSON values by the service:
/// the caller, the method, the latency and `tail`, the common keys after the record's
/// (`"event": …, "level": …, "timestamp": …}`).
pub(crate) struct Shared<'a> {
    pub(crate) caller: &'a str,
    pub(crate) method: &'a str,
    pub(crate) latency_ms: &'a str,
    pub(crate) tail: &'a str,
}

/// The audit line of `d` (newline included), keys in the audit trail's order.
pub(crate) fn line(key: &HolderRefKey, shared: &Shared<'_>, d: &Decided<'_>) -> String {
    let mut out = String::with_capacity(320 + shared.tail.len());
    push_line(&mut out, key, shared, d);
    out
}

/// Appends the audit line of `d` (newline included) to `out`.
pub(crate) fn push_line(
    out: &mut String,
    key: &HolderRefKey,
    shared: &Shared<'_>,
    d: &Decided<'_>,
) {
    out.push_str("{\"kind\": \"audit\", \"request_id\": ");
    push_json_str(out, d.request_id);
    out.push_str(", \"caller\": ");
    out.push_str(shared.caller);
    out.push_str(", \"reader_id\": ");
    push_json_str(out, d.reader_id);
    out.push_str(", \"method\": ");
    out.push_str(shared.method);
    out.push_str(", \"decision\": ");
    out.push_str(if d.accepted {
        "\"ACCEPTED\""
    } else {
        "\"REJECTED\""
    });
    out.push_str(", \"reason\": ");
    push_json_str(out, d.reason);
    out.push_str(", \"duplicate\": ");
    out.push_str(if d.duplicate { "true" } else { "false" });
    out.push_str(", \"latency_ms\": ");
    out.push_str(shared.latency_ms);
    out.push_str(", \"holder_ref\": ");
    match d.credential_id {
        Some(id) => {
            out.push('"');
            key.push_ref(out, id);
            out.push('"');
        }
        None => out.push_str("null"),
    }
    if let Some(position) = d.position {
        out.push_str(", \"item\": ");
        push_decimal(out, position);
    }
    if d.replay_unchecked {
        out.push_str(", \"replay_unchecked\": true");
    }
    if d.resent {
        out.push_str(", \"resent\": true");
    }
    out.push_str(", ");
    out.push_str(shared.tail);
    out.push('\n');
}

/// `n` in decimal, without a formatter.
fn push_decimal(out: &mut String, mut n: usize) {
    let mut digits = [0u8; 20]; // u64::MAX has 20
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        out.push(char::from(d));
    }
}

/// An audit record's `latency_ms` for a call of `seconds`: milliseconds rounded to three
/// decimals, written as the Python audit trail writes `round(seconds * 1000, 3)` (`repr` of
/// a float: the shortest text that reads back as the same float, with ".0" when whole).
/// Rounding half away from zero here, half to even there: they differ only on an exact tie
/// of a binary fraction, which a measured time does not make.
pub(crate) fn latency_ms(seconds: f64) -> String {
    let ms = (seconds * 1_000_000.0).round() / 1000.0;
    let mut out = format!("{ms}"); // Rust's shortest round-trip digits, as Python's repr
    if !out.contains('.') && ms.is_finite() {
        out.push_str(".0");
    }
    out
}

/// The end of an audit line (after the record's keys, closing brace included) when nothing
/// is bound in the log context and tracing is off: the keys the service's structlog chain
/// adds, `event`, `level` and `timestamp` (`TimeStamper(fmt="iso", utc=True)`: Python's
/// `datetime.isoformat()` in UTC, "+00:00" written "Z", the microseconds only when not zero),
/// the same text as python/apcv_verify/observe/logs.py `audit_tail` renders.
pub(crate) fn plain_tail(now: time::OffsetDateTime) -> String {
    let mut out = String::with_capacity(80);
    out.push_str("\"event\": \"verification\", \"level\": \"info\", \"timestamp\": \"");
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    let micros = now.microsecond(); // truncated, as Python's clock reading is
    if micros != 0 {
        let _ = write!(out, ".{micros:06}");
    }
    out.push_str("Z\"}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_plain_strings_are_written_as_json_dumps_does() {
        for (n, text) in [(0, "0"), (7, "7"), (10, "10"), (1_234_567, "1234567")] {
            let mut out = String::new();
            push_decimal(&mut out, n);
            assert_eq!(out, text);
        }
        let mut out = String::new();
        push_decimal(&mut out, usize::MAX);
        assert_eq!(out, usize::MAX.to_string());
        for (s, json) in [
            ("reader-01", "\"reader-01\""),
            ("", "\"\""),
            ("a\"b", "\"a\\\"b\""),
            ("a\\b", "\"a\\\\b\""),
            ("tab\there", "\"tab\\there\""),
            ("\u{7f}é", "\"\\u007f\\u00e9\""),
        ] {
            let mut out = String::new();
            push_json_str(&mut out, s);
            assert_eq!(out, json, "{s:?}");
        }
    }

    #[test]
    fn latency_ms_is_written_as_pythons_repr_of_the_rounded_milliseconds() {
        for (seconds, text) in [
            (0.0, "0.0"),
            (0.000_000_4, "0.0"),
            (0.000_001, "0.001"),
            (0.000_123_456, "0.123"),
            (0.001, "1.0"),
            (0.012_345_6, "12.346"),
            (0.25, "250.0"),
            (3.5, "3500.0"),
        ] {
            assert_eq!(latency_ms(seconds), text, "{seconds}");
        }
    }

    #[test]
    fn holder_ref_is_the_hmacs_first_bytes_in_lowercase_hex() {
        let key = HolderRefKey::new(b"secret").expect("a key");
        let tag = hmac::sign(&key.key, b"cred-1");
        let expected: String = tag.as_ref()[..HOLDER_REF_BYTES]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(key.holder_ref("cred-1"), expected);
    }

    #[test]
    fn plain_tail_is_pythons_isoformat_in_utc_with_z() {
        let at = time::OffsetDateTime::from_unix_timestamp_nanos(1_796_000_000_123_456_789)
            .expect("in range");
        assert_eq!(
            plain_tail(at),
            "\"event\": \"verification\", \"level\": \"info\", \
             \"timestamp\": \"2026-11-30T00:53:20.123456Z\"}"
        );
        let whole = time::OffsetDateTime::from_unix_timestamp(1_796_000_000).expect("in range");
        assert!(plain_tail(whole).ends_with("\"2026-11-30T00:53:20Z\"}"));
    }
}
