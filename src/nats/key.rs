//! Lossless encoding of lock keys into NATS KV keys.
//!
//! NATS KV keys may only hold `[-/_=.a-zA-Z0-9]`, and `.` separates subject
//! tokens, which must not be empty. Lock keys may hold any characters, so
//! every byte outside `[-/_a-zA-Z0-9]` (including `=` and `.`) becomes `=XX`
//! (two upper-case hex digits). `=` only ever starts an escape, so the
//! encoding is injective and reversible, and readable keys stay readable in
//! `nats kv ls`: `invoice:42` is stored as `invoice=3A42`.

use std::fmt::Write;

/// Bytes that pass through unchanged: valid anywhere in a KV key.
fn passes(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'/' | b'_')
}

/// Encodes a (validated, non-empty) lock key as a NATS KV key.
pub(crate) fn encode(key: &str) -> String {
    let mut encoded = String::with_capacity(key.len());
    for &byte in key.as_bytes() {
        if passes(byte) {
            encoded.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(encoded, "={byte:02X}");
        }
    }
    encoded
}

/// Decodes what [`encode`] made; `None` for anything it cannot have made.
pub(crate) fn decode(encoded: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(encoded.len());
    let mut rest = encoded.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'=' {
            let hex = tail.get(..2)?;
            let hex = std::str::from_utf8(hex).ok()?;
            if hex.bytes().any(|b| b.is_ascii_lowercase()) {
                return None;
            }
            let value = u8::from_str_radix(hex, 16).ok()?;
            if passes(value) {
                return None;
            }
            bytes.push(value);
            rest = &tail[2..];
        } else if passes(byte) {
            bytes.push(byte);
            rest = tail;
        } else {
            return None;
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_kv_key(key: &str) -> bool {
        !key.is_empty()
            && !key.starts_with('.')
            && !key.ends_with('.')
            && !key.contains("..")
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b))
    }

    #[test]
    fn round_trips_and_stays_valid() {
        for key in [
            "a",
            "invoice:42",
            "a b",
            "*",
            ">",
            ".",
            "..",
            "a.b",
            "=",
            "=3A",
            "-",
            "_",
            "/",
            "\0",
            "\n",
            "é",
            "e\u{301}",
            "ключ",
            "🔒",
            "%2A",
            "{tag}",
        ] {
            let encoded = encode(key);
            assert!(valid_kv_key(&encoded), "{key:?} -> {encoded:?}");
            assert_eq!(decode(&encoded).as_deref(), Some(key), "{encoded:?}");
        }
    }

    #[test]
    fn readable_keys_stay_readable() {
        assert_eq!(encode("invoice:42"), "invoice=3A42");
        assert_eq!(encode("tenant/7-a_b"), "tenant/7-a_b");
    }

    #[test]
    fn distinct_keys_stay_distinct() {
        let keys = ["=", "=3D", ":", "=3A", ".", "=2E", "a=", "a=3D"];
        let encoded: std::collections::HashSet<_> = keys.iter().map(|k| encode(k)).collect();
        assert_eq!(encoded.len(), keys.len());
    }

    #[test]
    fn decode_refuses_what_encode_never_makes() {
        for bad in ["=", "=4", "=zz", "=3a", "=41", "a.b", "=FF"] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn longest_keys_fit_a_subject() {
        let longest = "é".repeat(crate::MAX_KEY_LEN / 2);
        // Three bytes per input byte at worst, well under the server's
        // 4 KiB control line.
        assert!(encode(&longest).len() <= 3 * crate::MAX_KEY_LEN);
    }
}
