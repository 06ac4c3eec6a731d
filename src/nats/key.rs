//! Lossless encoding of lock keys into NATS KV keys.
//!
//! NATS KV keys may only hold `[-/_=.a-zA-Z0-9]`, and `.` separates subject
//! tokens, which must not be empty. Lock keys may hold any characters, so
//! every byte outside `[-/_a-zA-Z0-9]` (including `=` and `.`) becomes `=XX`
//! (two upper-case hex digits). `=` only ever starts an escape, so the
//! encoding is injective and reversible, and readable keys stay readable in
//! `nats kv ls`: `invoice:42` is stored as `invoice=3A42`.
//!
//! An encoded key never holds a `.`, so the entries of shared and counted
//! leases, kept under keys of several tokens (`<key>.r.<token>`,
//! `<key>.p.<permits>.<slot>`, `<key>.w`; see [`Entry`]), can never be
//! another lock's key, and `<key>.>` matches that lock's entries only.

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

/// The bucket keys of one lock's entries besides its own key (which holds
/// its exclusive lease).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Entry {
    /// `<key>.r.<token>`: one shared holder.
    Reader,
    /// `<key>.p.<permits>.<slot>`: one of `permits` slots.
    Slot { permits: u32 },
    /// `<key>.w`: a waiting writer's claim. One token only, so that the
    /// writer's one read of `<key>.*.>` finds every holder and no claim.
    Claim,
}

impl Entry {
    /// What a bucket key under an encoded lock key stands for: `None` for
    /// the lock key itself and for anything this crate does not write.
    pub(crate) fn of(key: &str) -> Option<Entry> {
        let (_, rest) = key.split_once('.')?;
        let parts: Vec<&str> = rest.split('.').collect();
        match parts[..] {
            ["w"] => Some(Entry::Claim),
            ["r", _] => Some(Entry::Reader),
            ["p", permits, slot] => {
                let permits = canonical(permits)?;
                (canonical(slot)? < permits).then_some(Entry::Slot { permits })
            }
            _ => None,
        }
    }
}

/// A number as [`slot`] writes it: decimal digits, no sign, no leading
/// zero. Anything else names no slot, so that no two names stand for one.
fn canonical(number: &str) -> Option<u32> {
    let parsed: u32 = number.parse().ok()?;
    (parsed.to_string() == number).then_some(parsed)
}

/// The lock key an entry belongs to: the part before the first `.`.
pub(crate) fn lock_of(key: &str) -> &str {
    key.split_once('.').map_or(key, |(lock, _)| lock)
}

/// The entry of the shared holder `token` of (encoded) `key`.
pub(crate) fn reader(key: &str, token: impl std::fmt::Display) -> String {
    format!("{key}.r.{token}")
}

/// Slot `slot` of `key` held with `permits` permits.
pub(crate) fn slot(key: &str, permits: u32, slot: u32) -> String {
    format!("{key}.p.{permits}.{slot}")
}

/// A filter matching every shared holder's entry of `key`.
pub(crate) fn readers(key: &str) -> String {
    format!("{key}.r.>")
}

/// A filter matching every slot of `key`, of any count.
pub(crate) fn slots(key: &str) -> String {
    format!("{key}.p.>")
}

/// A filter matching every shared and counted holder's entry of `key`, and
/// not its claim (`<key>.w` has one token fewer).
pub(crate) fn holders(key: &str) -> String {
    format!("{key}.*.>")
}

/// The key of a waiting writer's claim on `key`.
pub(crate) fn claim(key: &str) -> String {
    format!("{key}.w")
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
    fn entries_are_told_apart_and_never_a_lock_key() {
        let key = encode("doc:1");
        let token = uuid::Uuid::nil();
        assert_eq!(Entry::of(&reader(&key, token)), Some(Entry::Reader));
        assert_eq!(
            Entry::of(&slot(&key, 4, 3)),
            Some(Entry::Slot { permits: 4 })
        );
        assert_eq!(Entry::of(&claim(&key)), Some(Entry::Claim));
        assert_eq!(Entry::of(&key), None);
        for entry in [reader(&key, token), slot(&key, 4, 3), claim(&key)] {
            assert_eq!(lock_of(&entry), key);
            assert_eq!(decode(&entry), None, "{entry:?}");
        }
        for foreign in [
            "a.x.y",
            "a.p",
            "a.p.x.1",
            "a.r.t.u",
            "a.w.1",
            "a.r",
            "a.p.1.evil",
            "a.p.1.1",
            "a.p.1.+0",
            "a.p.+1.0",
            "a.p.01.0",
            "a.p.2.00",
            "a.p.0.0",
            "a.p.2.-1",
        ] {
            assert_eq!(Entry::of(foreign), None, "{foreign:?}");
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
