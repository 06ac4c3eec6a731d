//! How lock keys are named in Redis.
//!
//! A user key `K` becomes `<prefix>{E}` (the lock), `<prefix>{E}:fence`
//! (its fence counter), `<prefix>{E}:queue` (its waiter queue),
//! `<prefix>{E}:claim` (a waiting writer's claim), and, while the key is
//! held shared or counted, `<prefix>{E}:holders`, `<prefix>{E}:fences` and
//! `<prefix>{E}:turns`, where `E` is `K` with `%`, `{`, `}` and control
//! characters percent-encoded. Encoding the braces makes `E` the whole hash
//! tag (Redis Cluster hashes the text between the first `{` and the first
//! `}` after it), so all of them land in the same slot whatever `K` holds
//! and one script may touch them all. The encoding is injective, so
//! distinct user keys never share a lock. A lock key always ends in `}`,
//! and every other key in its own `:<suffix>`, so the kinds never collide
//! either.

use percent_encoding::{AsciiSet, CONTROLS, percent_decode, utf8_percent_encode};

/// Bytes that must not appear raw inside the hash tag, plus `%` so that the
/// encoding can be reversed.
const TAG_UNSAFE: &AsciiSet = &CONTROLS.add(b'%').add(b'{').add(b'}');

const FENCE_SUFFIX: &str = ":fence";
const QUEUE_SUFFIX: &str = ":queue";
const CLAIM_SUFFIX: &str = ":claim";
const HOLDERS_SUFFIX: &str = ":holders";
const FENCES_SUFFIX: &str = ":fences";
const TURNS_SUFFIX: &str = ":turns";

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KeySpace {
    prefix: String,
}

impl KeySpace {
    /// `prefix` must not contain braces (checked by the builder).
    pub(crate) fn new(prefix: String) -> Self {
        KeySpace { prefix }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis key of the lock on `key`.
    pub(crate) fn lock_key(&self, key: &str) -> String {
        let encoded = utf8_percent_encode(key, TAG_UNSAFE);
        format!("{}{{{encoded}}}", self.prefix)
    }

    /// Every Redis key of the lock `lock_key`, in the order the scripts take
    /// them (`KEYS[1]` to `KEYS[7]`): the lock, its fence counter, waiter
    /// queue, writer claim, shared or counted holders (a sorted set of
    /// tokens by the end of their lease, in ms of the server's clock), their
    /// fences (a hash by token), and the turns given to queued backends'
    /// shared or counted waiters (a sorted set of backend ids by the end of
    /// the turn).
    pub(crate) fn script_keys(lock_key: String) -> [String; 7] {
        let [fence, queue, claim, holders, fences, turns] = [
            FENCE_SUFFIX,
            QUEUE_SUFFIX,
            CLAIM_SUFFIX,
            HOLDERS_SUFFIX,
            FENCES_SUFFIX,
            TURNS_SUFFIX,
        ]
        .map(|suffix| [lock_key.as_str(), suffix].concat());
        [lock_key, fence, queue, claim, holders, fences, turns]
    }

    /// The user key of a lock key (as found in a wake-up message), or `None`
    /// for anything that is not a lock key of this key space.
    pub(crate) fn user_key(&self, redis_key: &[u8]) -> Option<String> {
        let tagged = redis_key.strip_prefix(self.prefix.as_bytes())?;
        let encoded = tagged.strip_prefix(b"{")?.strip_suffix(b"}")?;
        if encoded.contains(&b'{') || encoded.contains(&b'}') {
            return None;
        }
        percent_decode(encoded)
            .decode_utf8()
            .ok()
            .map(|key| key.into_owned())
    }

    /// Whether `redis_key` (under the prefix) is a lock rather than a fence
    /// counter.
    pub(crate) fn is_lock_key(&self, redis_key: &[u8]) -> bool {
        self.user_key(redis_key).is_some()
    }

    /// A `SCAN MATCH` pattern covering both kinds of keys of this space.
    pub(crate) fn scan_pattern(&self) -> String {
        let mut pattern = String::with_capacity(self.prefix.len() + 2);
        for c in self.prefix.chars() {
            // Glob metacharacters in the prefix must match themselves.
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('*');
        pattern
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Redis Cluster hash tag rule, as in the Redis docs.
    fn hash_tag(key: &str) -> &str {
        if let Some(open) = key.find('{')
            && let Some(len) = key[open + 1..].find('}')
            && len > 0
        {
            return &key[open + 1..open + 1 + len];
        }
        key
    }

    #[test]
    fn every_key_of_a_lock_shares_its_nonempty_hash_tag() {
        let space = KeySpace::new("lock:".into());
        for key in [
            "a", "}", "{", "{}", "}{", "a}b{c", "%7D", "x}:fence", "\n", "ключ",
        ] {
            let lock = space.lock_key(key);
            let fence = [lock.as_str(), ":fence"].concat();
            assert_eq!(hash_tag(&lock), hash_tag(&fence), "{key:?}");
            assert!(!hash_tag(&lock).is_empty());
            assert_ne!(hash_tag(&lock), lock, "{key:?} must be tagged");
            assert_eq!(space.user_key(lock.as_bytes()).as_deref(), Some(key));
            assert_eq!(space.user_key(fence.as_bytes()), None);
            assert!(space.is_lock_key(lock.as_bytes()));
            assert!(!space.is_lock_key(fence.as_bytes()));
            let all = KeySpace::script_keys(lock.clone());
            assert_eq!(all[0], lock);
            assert_eq!(all[1], fence);
            for other in &all[1..] {
                assert_eq!(hash_tag(other), hash_tag(&lock), "{other:?}");
                assert_eq!(space.user_key(other.as_bytes()), None, "{other:?}");
            }
        }
    }

    #[test]
    fn encoding_is_injective_on_tricky_keys() {
        let space = KeySpace::new("p:".into());
        let keys = ["%", "%25", "{", "%7B", "}", "%7D", "a b", "a\nb", "a%0Ab"];
        let encoded: std::collections::HashSet<_> =
            keys.iter().map(|k| space.lock_key(k)).collect();
        assert_eq!(encoded.len(), keys.len());
    }

    #[test]
    fn foreign_keys_are_not_ours() {
        let space = KeySpace::new("lock:".into());
        for foreign in ["other:{a}", "lock:a", "lock:{a", "lock:{a}}", "lock:{%FF}"] {
            assert_eq!(space.user_key(foreign.as_bytes()), None, "{foreign}");
        }
    }

    #[test]
    fn scan_pattern_escapes_glob_characters() {
        assert_eq!(KeySpace::new("a*[b]:".into()).scan_pattern(), r"a\*\[b\]:*");
    }
}
