//! The audit records of a `WireBatch` as JSON lines, written exactly as the service's audit
//! trail writes them (python/apcv_verify/observe/audit.py and logs.py: the record's keys, then
//! the common ones, rendered as Python's `json.dumps` does), so that a batch's records cost no
//! Python object per item; and the pseudonymous holder reference they carry:
//! HMAC-SHA-256(secret, credential id), hex, truncated (docs/operations.md "The audit record").

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use ring::hmac;

/// Bytes of the HMAC kept in a holder reference (`HOLDER_REF_HEX_CHARS` = 32 hex characters).
const HOLDER_REF_BYTES: usize = 16;

/// The audit trail's HMAC key. repr shows nothing of it.
#[pyclass(frozen, module = "apcv_verify._native")]
pub(crate) struct HolderRefKey {
    /// Shared with the records waiting in an `AuditQueue`.
    key: Arc<hmac::Key>,
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
            key: Arc::new(hmac::Key::new(hmac::HMAC_SHA256, secret)),
        })
    }

    /// The holder reference of ``credential_id``.
    fn holder_ref(&self, credential_id: &str) -> String {
        let mut out = String::with_capacity(2 * HOLDER_REF_BYTES);
        push_holder_ref(&mut out, &self.key, credential_id);
        out
    }

    fn __repr__(&self) -> &'static str {
        "HolderRefKey(***)"
    }
}

impl HolderRefKey {
    pub(crate) fn hmac_key(&self) -> &Arc<hmac::Key> {
        &self.key
    }
}

/// Appends the holder reference of `credential_id` under `key`.
fn push_holder_ref(out: &mut String, key: &hmac::Key, credential_id: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let tag = hmac::sign(key, credential_id.as_bytes());
    // Lowercase hex, two digits a byte, without a formatter call per byte.
    for &byte in &tag.as_ref()[..HOLDER_REF_BYTES] {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
}

/// `s` as a JSON string the way Python's `json.dumps` (ensure_ascii) writes it: `"` and `\`
/// escaped, `\n \r \t \b \f` by name, every other character outside space..`~` as `\uXXXX`
/// (lowercase hex; UTF-16 surrogate pairs above U+FFFF).
pub(crate) fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    if is_plain(s) {
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
    pub(crate) reason: &'static str,
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

/// Appends the audit line of `d` (newline included) to `out`, keys in the audit trail's
/// order, the holder reference under `key`.
pub(crate) fn push_line(out: &mut String, key: &hmac::Key, shared: &Shared<'_>, d: &Decided<'_>) {
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
            push_holder_ref(out, key, id);
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

/// Audit lines gathered as the audit buffer writes them: one `String` per line
/// (`chunk_bytes` 0), or joined in order into chunks of whole lines of at most `chunk_bytes`
/// bytes, a longer line alone; rendered in place, one allocation per chunk rather than per
/// line.
pub(crate) struct Lines {
    chunk_bytes: usize,
    out: Vec<String>,
    chunk: String,
    line: String,
}

impl Lines {
    pub(crate) fn new(chunk_bytes: usize) -> Lines {
        Lines {
            chunk_bytes,
            out: Vec::new(),
            chunk: String::new(),
            line: String::new(),
        }
    }

    /// Adds the line `render` appends to an empty string.
    pub(crate) fn add(&mut self, render: impl FnOnce(&mut String)) {
        if self.chunk_bytes == 0 {
            let mut line = String::with_capacity(384);
            render(&mut line);
            self.out.push(line);
            return;
        }
        self.line.clear();
        render(&mut self.line);
        if !self.chunk.is_empty() && self.chunk.len() + self.line.len() > self.chunk_bytes {
            self.out.push(std::mem::take(&mut self.chunk));
        }
        if self.chunk.capacity() == 0 {
            self.chunk.reserve(self.chunk_bytes.max(self.line.len()));
        }
        self.chunk.push_str(&self.line);
    }

    pub(crate) fn finish(mut self) -> Vec<String> {
        if !self.chunk.is_empty() {
            self.out.push(self.chunk);
        }
        self.out
    }
}

/// One decision's audit record kept as its fields until it is rendered (`AuditQueue`): a
/// `Decided` owned, with what its line shares with others.
pub(crate) struct Waiting {
    key: Arc<hmac::Key>,
    caller: String,
    method: &'static str,
    position: Option<usize>,
    request_id: String,
    reader_id: String,
    accepted: bool,
    reason: &'static str,
    duplicate: bool,
    credential_id: Option<String>,
    replay_unchecked: bool,
    resent: bool,
    latency_seconds: f64,
    /// When the decision was audited: the line's timestamp.
    at: time::OffsetDateTime,
}

/// What a line takes beside its values: the keys, the punctuation, the decision,
/// `duplicate`'s `false` and the usual tail with a timestamp to the microsecond.
const LINE_BYTES_BESIDE_VALUES: usize = 247;
/// A latency's usual digits ("0.123"): the one value of a line not counted exactly.
const LATENCY_BYTES: usize = 5;

/// Whether `s` is written as it is between the quotes of a JSON string.
fn is_plain(s: &str) -> bool {
    s.bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
}

/// The bytes of `s` as a JSON string (`push_json_str`).
fn json_str_len(s: &str) -> usize {
    if is_plain(s) {
        return s.len() + 2;
    }
    let mut out = String::new(); // rare: written to be counted
    push_json_str(&mut out, s);
    out.len()
}

impl Waiting {
    /// The record of `d`, decided by a call of `method` from `caller` that took
    /// `latency_seconds` and was audited `at`, its holder reference under `key`.
    pub(crate) fn new(
        key: &Arc<hmac::Key>,
        caller: &str,
        method: &'static str,
        d: &Decided<'_>,
        latency_seconds: f64,
        at: time::OffsetDateTime,
    ) -> Waiting {
        Waiting {
            key: key.clone(),
            caller: caller.to_owned(),
            method,
            position: d.position,
            request_id: d.request_id.to_owned(),
            reader_id: d.reader_id.to_owned(),
            accepted: d.accepted,
            reason: d.reason,
            duplicate: d.duplicate,
            credential_id: d.credential_id.map(str::to_owned),
            replay_unchecked: d.replay_unchecked,
            resent: d.resent,
            latency_seconds,
            at,
        }
    }

    /// About the bytes of its line (the latency's digits are not known before it is
    /// rendered), for the buffer to know when it is full.
    fn estimated_bytes(&self) -> usize {
        let mut bytes = LINE_BYTES_BESIDE_VALUES
            + LATENCY_BYTES
            + json_str_len(&self.caller)
            + json_str_len(self.method)
            + json_str_len(&self.request_id)
            + json_str_len(&self.reader_id)
            + json_str_len(self.reason)
            + if self.credential_id.is_some() {
                2 + 2 * HOLDER_REF_BYTES
            } else {
                4
            };
        if let Some(position) = self.position {
            bytes += ", \"item\": ".len() + position.checked_ilog10().unwrap_or(0) as usize + 1;
        }
        if self.duplicate {
            bytes -= "false".len() - "true".len();
        }
        if self.replay_unchecked {
            bytes += ", \"replay_unchecked\": true".len();
        }
        if self.resent {
            bytes += ", \"resent\": true".len();
        }
        bytes
    }

    /// Appends its line, as `WireBatch.audit` with the usual tail renders it.
    fn push_line(&self, out: &mut String) {
        let (mut caller, mut method) = (String::new(), String::new());
        push_json_str(&mut caller, &self.caller);
        push_json_str(&mut method, self.method);
        let shared = Shared {
            caller: &caller,
            method: &method,
            latency_ms: &latency_ms(self.latency_seconds),
            tail: &plain_tail(self.at),
        };
        let decided = Decided {
            position: self.position,
            request_id: &self.request_id,
            reader_id: &self.reader_id,
            accepted: self.accepted,
            reason: self.reason,
            duplicate: self.duplicate,
            credential_id: self.credential_id.as_deref(),
            replay_unchecked: self.replay_unchecked,
            resent: self.resent,
        };
        push_line(out, &self.key, &shared, &decided);
    }
}

#[derive(Default)]
struct Queued {
    records: Vec<Waiting>,
    bytes: usize,
}

/// Audit records of unary calls waiting for the audit buffer's next write, where they are
/// rendered together: a record's rendering (the holder reference's HMAC, the latency's and
/// the timestamp's digits, the JSON) is code a unary call would otherwise fetch again each
/// time, after gRPC's and the interpreter's work (docs/benchmarks.md "Unary: the audit line
/// rendered when written"). The lines are the same text as rendered at once. repr shows only
/// the number of records.
#[pyclass(frozen, module = "apcv_verify._native")]
#[derive(Default)]
pub(crate) struct AuditQueue {
    queued: Mutex<Queued>,
}

#[pymethods]
impl AuditQueue {
    #[new]
    fn new() -> AuditQueue {
        AuditQueue::default()
    }

    /// The waiting records' lines, in the order they were queued (each ends with its
    /// newline), the queue emptied: one string per line, or with ``chunk_bytes`` joined into
    /// chunks of whole lines of at most that many bytes (a longer line alone).
    #[pyo3(signature = (chunk_bytes=0))]
    fn take(&self, chunk_bytes: usize) -> Vec<String> {
        let queued = std::mem::take(&mut *self.lock());
        let mut lines = Lines::new(chunk_bytes);
        for record in &queued.records {
            lines.add(|out| record.push_line(out));
        }
        lines.finish()
    }

    /// The number of waiting records.
    fn __len__(&self) -> usize {
        self.lock().records.len()
    }

    fn __repr__(&self) -> String {
        // docs/profile.md §9.1: no reader-supplied text.
        format!("<AuditQueue records={}>", self.__len__())
    }
}

impl AuditQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        // A panic while holding the lock leaves whole records: go on with them.
        self.queued.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `records`; about the bytes of all the lines now waiting.
    pub(crate) fn push(&self, records: impl IntoIterator<Item = Waiting>) -> usize {
        let mut queued = self.lock();
        for record in records {
            queued.bytes += record.estimated_bytes();
            queued.records.push(record);
        }
        queued.bytes
    }
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
    fn a_waiting_records_estimate_is_its_lines_length_but_for_the_latency() {
        let key = Arc::new(hmac::Key::new(hmac::HMAC_SHA256, b"secret"));
        let at = time::OffsetDateTime::from_unix_timestamp_nanos(1_796_000_000_123_456_000)
            .expect("in range");
        let record = |request_id: &str, credential_id: Option<&str>, flags: bool| Waiting {
            key: key.clone(),
            caller: "caller-1".to_owned(),
            method: "Verify",
            position: flags.then_some(1234),
            request_id: request_id.to_owned(),
            reader_id: "reader \"01\"".to_owned(),
            accepted: !flags,
            reason: if flags { "REPLAY_UNAVAILABLE" } else { "OK" },
            duplicate: flags,
            credential_id: credential_id.map(str::to_owned),
            replay_unchecked: flags,
            resent: flags,
            latency_seconds: 0.000_123,
            at,
        };
        for waiting in [
            record("r-1", Some("cred-1"), false),
            record("\u{e9}t\u{e9}\n\u{1f600}", None, true),
        ] {
            let mut line = String::new();
            waiting.push_line(&mut line);
            assert!(line.contains("\"latency_ms\": 0.123,"), "{line}");
            assert_eq!(waiting.estimated_bytes(), line.len(), "{line}");
        }
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
