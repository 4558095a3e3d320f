//! `Verdict`s encoded straight from the core's decisions, for the responses of batches and
//! stream micro-batches: the same bytes as the `prost` message `wire::verdict` builds, written
//! from borrowed fields instead of a message whose every string is a copy (docs/benchmarks.md
//! "Service, fifth pass": the copies and their frees were most of a response's cost).
//!
//! Proto3 rules, as `prost` applies them: fields in tag order; a string, bool, enum or number
//! equal to its default is left out; a set sub-message is written even when empty; every
//! element of a repeated string is written, empty or not; an `optional` field is written
//! when set.

use apcv_core::claims::Person;
use apcv_core::verify::Decision;
use prost::encoding::{encode_varint, encoded_len_varint};

/// Where encoded bytes go: a buffer, or a counter of their length (a sub-message's length
/// comes before it).
trait Sink {
    fn raw(&mut self, bytes: &[u8]);
    fn varint(&mut self, value: u64);
}

/// Counts the bytes instead of writing them.
struct Count(usize);

impl Sink for Count {
    fn raw(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
    fn varint(&mut self, value: u64) {
        self.0 += encoded_len_varint(value);
    }
}

impl Sink for Vec<u8> {
    fn raw(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    fn varint(&mut self, value: u64) {
        encode_varint(value, self);
    }
}

/// A message's fields, written to any sink.
trait Body {
    fn write<S: Sink>(&self, s: &mut S);
}

const VARINT: u64 = 0;
const LENGTH_DELIMITED: u64 = 2;

fn key<S: Sink>(s: &mut S, tag: u64, wire_type: u64) {
    s.varint((tag << 3) | wire_type);
}

/// A string field (left out when empty).
fn string<S: Sink>(s: &mut S, tag: u64, value: &str) {
    if !value.is_empty() {
        element(s, tag, value);
    }
}

/// One element of a repeated string (written even when empty).
fn element<S: Sink>(s: &mut S, tag: u64, value: &str) {
    key(s, tag, LENGTH_DELIMITED);
    s.varint(value.len() as u64);
    s.raw(value.as_bytes());
}

/// A bool, enum or integer field (left out when 0). Negative `int32`s and enums are
/// sign-extended to 64 bits, as protobuf encodes them.
fn number<S: Sink>(s: &mut S, tag: u64, value: i64) {
    if value != 0 {
        key(s, tag, VARINT);
        s.varint(value as u64);
    }
}

/// A set sub-message: its length, then its fields.
fn message<S: Sink, B: Body>(s: &mut S, tag: u64, body: &B) {
    let mut count = Count(0);
    body.write(&mut count);
    key(s, tag, LENGTH_DELIMITED);
    s.varint(count.0 as u64);
    body.write(s);
}

/// Field groups a verdict may carry (`FIELD_GROUPS` of the configuration), as bits.
pub(crate) const INS: u8 = 1;
pub(crate) const IDENTITY: u8 = 2;
pub(crate) const AMO: u8 = 4;
pub(crate) const AMC: u8 = 8;

/// What a verdict says, borrowed from the item and its decision.
pub(crate) struct VerdictRef<'a> {
    pub request_id: &'a str,
    /// `Decision` value (ACCEPTED or REJECTED).
    pub decision: i32,
    /// `Reason` value.
    pub reason: i32,
    pub detail: &'a str,
    pub duplicate: bool,
    pub use_: &'a str,
    /// An accepted decision with its person, and the groups disclosed: the person, issuer,
    /// qualification, AMC coverage and delegation fields (none on a rejection).
    pub accepted: Option<Accepted<'a>>,
    pub fhir_json: &'a str,
    pub resent: bool,
}

/// The fields of an accepted verdict.
pub(crate) struct Accepted<'a> {
    pub person: &'a Person,
    pub decision: &'a Decision,
    pub disclosed: u8,
    /// `Reason` value of each AMC coverage, in order.
    pub amc_reasons: &'a [i32],
    /// The AMC details to give instead of the decision's (a resent answer's kept phrases,
    /// in order; the decision's own beyond them).
    pub amc_details: &'a [String],
}

impl Body for VerdictRef<'_> {
    fn write<S: Sink>(&self, s: &mut S) {
        string(s, 1, self.request_id);
        number(s, 2, i64::from(self.decision));
        number(s, 3, i64::from(self.reason));
        string(s, 4, self.detail);
        number(s, 5, i64::from(self.duplicate));
        string(s, 6, self.use_);
        if let Some(a) = &self.accepted {
            message(s, 7, &PersonRef(a.person, a.disclosed));
            string(s, 8, a.decision.issuer.as_deref().unwrap_or(""));
            if a.disclosed & INS != 0 {
                // RNIV: an INS read from the Appli carte Vitale is qualified.
                message(s, 9, &Qualification);
            }
            if a.disclosed & AMC != 0 {
                for (n, amc) in a.decision.amc.iter().enumerate() {
                    let detail = a.amc_details.get(n).map_or(amc.detail, String::as_str);
                    let reason = a.amc_reasons.get(n).copied().unwrap_or(0);
                    message(s, 10, &AmcRef(amc, reason, detail));
                }
            }
            if let Some(label) = &a.decision.delegation_label {
                message(s, 11, &DelegationRef(label));
            }
        }
        string(s, 12, self.fhir_json);
        number(s, 13, i64::from(self.resent));
    }
}

struct PersonRef<'a>(&'a Person, u8);

impl Body for PersonRef<'_> {
    fn write<S: Sink>(&self, s: &mut S) {
        let (p, disclosed) = (self.0, self.1);
        // uint32 in the contract: the rank as `prost` casts it.
        number(s, 1, i64::from(p.rank as u32));
        if disclosed & INS != 0 {
            message(s, 2, &Strings(&[&p.ins, &p.ins_oid]));
        }
        if disclosed & IDENTITY != 0 {
            let traits = [
                &p.birth_name,
                &p.given_names,
                &p.sex,
                &p.birth_date,
                &p.birth_place,
            ];
            message(s, 3, &Strings(&traits));
        }
        if disclosed & AMO != 0 {
            let amo = &p.amo;
            let rights = [
                &amo.regime,
                &amo.caisse,
                &amo.centre,
                &amo.open_from,
                &amo.open_to,
            ];
            message(s, 4, &Strings(&rights));
        }
    }
}

/// A message of string fields 1, 2, … in order (`Ins`, `IdentityTraits`, `AmoRights`).
struct Strings<'a, const N: usize>(&'a [&'a String; N]);

impl<const N: usize> Body for Strings<'_, N> {
    fn write<S: Sink>(&self, s: &mut S) {
        for (n, value) in self.0.iter().enumerate() {
            string(s, n as u64 + 1, value);
        }
    }
}

/// `IdentityQualification` of an INS read from the Appli carte Vitale.
struct Qualification;

impl Body for Qualification {
    fn write<S: Sink>(&self, s: &mut S) {
        string(s, 1, "QUALIFIED");
        string(s, 2, "QUAL");
        string(s, 3, "AV");
    }
}

struct AmcRef<'a>(&'a apcv_core::verify::AmcCoverage, i32, &'a str);

impl Body for AmcRef<'_> {
    fn write<S: Sink>(&self, s: &mut S) {
        let (a, reason, detail) = (self.0, self.1, self.2);
        number(s, 1, i64::from(a.valid()));
        number(s, 2, i64::from(reason));
        string(s, 3, detail);
        string(s, 4, a.organisation.as_deref().unwrap_or(""));
        string(s, 5, a.amc_number.as_deref().unwrap_or(""));
        string(s, 6, a.contract.as_deref().unwrap_or(""));
        if let Some(value) = a.third_party_payment {
            // `optional`: written when set, false included.
            key(s, 7, VARINT);
            s.varint(u64::from(value));
        }
        for domain in &a.domains {
            element(s, 8, domain);
        }
        if let Some(seconds) = a.expires_at {
            message(s, 9, &Timestamp(seconds));
        }
        if let Some(seconds) = a.valid_from {
            message(s, 10, &Timestamp(seconds));
        }
    }
}

/// `google.protobuf.Timestamp` of whole seconds.
struct Timestamp(i64);

impl Body for Timestamp {
    fn write<S: Sink>(&self, s: &mut S) {
        number(s, 1, self.0);
    }
}

struct DelegationRef<'a>(&'a str);

impl Body for DelegationRef<'_> {
    fn write<S: Sink>(&self, s: &mut S) {
        number(s, 1, 1); // used
        string(s, 2, self.0);
    }
}

/// Appends `verdict` to `buf` as field `tag` of the enclosing message (a response's
/// `verdicts`, or a stream response's `verdict`).
pub(crate) fn put_verdict(buf: &mut Vec<u8>, tag: u64, verdict: &VerdictRef<'_>) {
    message(buf, tag, verdict);
}

/// `verdict` as an encoded `Verdict` message of its own.
pub(crate) fn verdict_bytes(verdict: &VerdictRef<'_>) -> Vec<u8> {
    let mut buf = Vec::new();
    verdict.write(&mut buf);
    buf
}
