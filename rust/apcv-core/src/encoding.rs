//! Transport encodings of a presentation (docs/profile.md §4.1, §4.2, limits §4.4):
//! QR text `"APCV1:" + base45(zlib(presentation))` (RFC 9285, RFC 1950) and raw NFC bytes.

use std::io::Read;

use crate::error::{Error, Result};
use crate::limits::{MAX_INFLATED_BYTES, MAX_NFC_BYTES, MAX_QR_CHARS, QR_PREFIX};

/// The RFC 9285 alphabet (value = index).
const BASE45_ALPHABET: &[u8; 45] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:";

/// Decodes QR text to presentation bytes, enforcing every limit before the work it bounds.
pub fn decode_qr(text: &str) -> Result<Vec<u8>> {
    // The base45 alphabet is ASCII, so a byte count above the char limit is already invalid.
    if text.len() > MAX_QR_CHARS {
        return Err(Error::Malformed("QR text too long"));
    }
    let body = text
        .strip_prefix(QR_PREFIX)
        .ok_or(Error::Malformed("missing APCV1: prefix"))?;
    // RFC 9285 §4: a final 2-character group encodes one byte, so its value must be ≤ 255
    // (the base45 crate would silently truncate it; docs/profile.md §4.1).
    if body.len() % 3 == 2 {
        let tail = body.as_bytes().get(body.len() - 2..).unwrap_or(&[]);
        let digit = |c: &u8| BASE45_ALPHABET.iter().position(|a| a == c);
        if let [Some(lo), Some(hi)] = [tail.first().and_then(digit), tail.get(1).and_then(digit)] {
            if lo + 45 * hi > 255 {
                return Err(Error::Malformed("invalid base45"));
            }
        }
    }
    let compressed = base45::decode(body).map_err(|_| Error::Malformed("invalid base45"))?;
    inflate_capped(&compressed, MAX_INFLATED_BYTES)
}

/// Checks NFC bytes against their limit and returns them as the presentation bytes.
pub fn decode_nfc(bytes: &[u8]) -> Result<&[u8]> {
    if bytes.len() > MAX_NFC_BYTES {
        return Err(Error::Malformed("NFC payload too large"));
    }
    Ok(bytes)
}

/// Encodes presentation bytes as QR text (the issuer's side; used by tests and tools).
pub fn encode_qr(presentation: &[u8]) -> String {
    use flate2::write::ZlibEncoder;
    use std::io::Write;
    let mut enc = ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing to a Vec cannot fail.
    let compressed: Vec<u8> = enc
        .write_all(presentation)
        .and_then(|()| enc.finish())
        .unwrap_or_default();
    format!("{QR_PREFIX}{}", base45::encode(compressed))
}

/// Inflates one complete zlib stream, stopping at `cap + 1` bytes (zip bombs), and refuses
/// bytes after the end of the stream.
pub fn inflate_capped(compressed: &[u8], cap: usize) -> Result<Vec<u8>> {
    let mut dec = flate2::bufread::ZlibDecoder::new(compressed);
    let mut out = Vec::new();
    let limit = u64::try_from(cap).unwrap_or(u64::MAX).saturating_add(1);
    (&mut dec)
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|_| Error::Malformed("invalid zlib stream"))?;
    if out.len() > cap {
        return Err(Error::Malformed("inflated payload exceeds its limit"));
    }
    // bufread consumes exactly the stream: what is left of the input is trailing garbage.
    if !dec.get_ref().is_empty() {
        return Err(Error::Malformed("bytes after the zlib stream"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qr_round_trip() {
        let data = b"\xa1\x01\x02hello".to_vec();
        let qr = encode_qr(&data);
        assert!(qr.starts_with("APCV1:"));
        assert_eq!(decode_qr(&qr).unwrap(), data);
    }

    #[test]
    fn qr_refusals() {
        assert_eq!(
            decode_qr("HC1:ABC"),
            Err(Error::Malformed("missing APCV1: prefix"))
        );
        assert_eq!(
            decode_qr("APCV1:a"),
            Err(Error::Malformed("invalid base45"))
        );
        let long = format!("APCV1:{}", "0".repeat(MAX_QR_CHARS));
        assert_eq!(decode_qr(&long), Err(Error::Malformed("QR text too long")));
        // A final 2-char group above 255 ("GGW" would be 3 chars; ":W" = 44 + 45*32 = 1484).
        assert_eq!(
            decode_qr("APCV1::W"),
            Err(Error::Malformed("invalid base45"))
        );
        // Lower case, a trailing newline: not base45; an extra char: not this payload.
        assert_eq!(
            decode_qr("APCV1:abc"),
            Err(Error::Malformed("invalid base45"))
        );
        let good = encode_qr(b"x");
        assert_eq!(
            decode_qr(&format!("{good}\n")),
            Err(Error::Malformed("invalid base45"))
        );
        assert!(decode_qr(&format!("{good}0")).is_err());
        assert_eq!(
            decode_qr("apcv1:00"),
            Err(Error::Malformed("missing APCV1: prefix"))
        );
        // Valid base45, not zlib.
        let not_zlib = format!("APCV1:{}", base45::encode(b"plain text"));
        assert_eq!(
            decode_qr(&not_zlib),
            Err(Error::Malformed("invalid zlib stream"))
        );
    }

    #[test]
    fn zip_bomb_stops_at_cap() {
        // 1 MiB of zeros compresses to about 1 KiB: fits the QR, must not inflate past 16 KiB.
        let bomb = encode_qr(&vec![0u8; 1 << 20]);
        assert!(bomb.len() <= MAX_QR_CHARS);
        assert_eq!(
            decode_qr(&bomb),
            Err(Error::Malformed("inflated payload exceeds its limit"))
        );
        // Exactly at the cap is fine.
        let at_cap = encode_qr(&vec![0u8; MAX_INFLATED_BYTES]);
        assert_eq!(decode_qr(&at_cap).unwrap().len(), MAX_INFLATED_BYTES);
    }

    #[test]
    fn trailing_bytes_after_zlib() {
        use flate2::write::ZlibEncoder;
        use std::io::Write;
        let mut e = ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b"abc").unwrap();
        let mut z = e.finish().unwrap();
        assert_eq!(inflate_capped(&z, 100).unwrap(), b"abc");
        z.push(0);
        assert_eq!(
            inflate_capped(&z, 100),
            Err(Error::Malformed("bytes after the zlib stream"))
        );
        // Truncated stream.
        let short = &z[..z.len() - 4];
        assert!(inflate_capped(short, 100).is_err());
    }

    #[test]
    fn zlib_header_rules() {
        // FDICT set (preset dictionary): refused (docs/profile.md §4.1). 0x78BB is a valid FCHECK.
        let mut with_dict = vec![0x78, 0xbb, 0, 0, 0, 1];
        with_dict.extend_from_slice(&[0x03, 0x00]);
        assert_eq!(
            inflate_capped(&with_dict, 100),
            Err(Error::Malformed("invalid zlib stream"))
        );
        // Bad Adler-32.
        let mut z = {
            use std::io::Write;
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(b"abc").unwrap();
            e.finish().unwrap()
        };
        let n = z.len();
        z[n - 1] ^= 1;
        assert_eq!(
            inflate_capped(&z, 100),
            Err(Error::Malformed("invalid zlib stream"))
        );
        // Raw deflate without the zlib header.
        assert!(inflate_capped(&[0x03, 0x00], 100).is_err());
    }

    #[test]
    fn nfc_limit() {
        assert!(decode_nfc(&[0u8; MAX_NFC_BYTES]).is_ok());
        assert!(decode_nfc(&vec![0u8; MAX_NFC_BYTES + 1]).is_err());
    }
}
