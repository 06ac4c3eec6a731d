//! [`Token`]: the identity of one acquisition.

use std::{cell::Cell, fmt};

use uuid::Uuid;

/// The identity of one acquisition, stored as the lock's value so that only
/// its holder can extend or release it.
///
/// [`Locker`](crate::Locker) gives every try a token of its own, unique to
/// that try across processes and hosts; [`Token::new`] makes a random one.
/// A token tells holders apart: it is not a secret.
///
/// ```
/// use tower_lock::backend::Token;
///
/// let (a, b) = (Token::new(), Token::new());
/// assert_ne!(a, b);
/// assert_eq!(a.to_string().len(), 36);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token(Uuid);

impl Token {
    /// A fresh random token (a UUID v4).
    pub fn new() -> Self {
        Token(Uuid::new_v4())
    }

    /// A token for one try of this process's lockers: unique across
    /// processes like [`new`](Self::new), at the cost of a thread-local
    /// count rather than 122 fresh random bits (which cost an uncontended
    /// in-memory lock a fifth of its time).
    #[inline]
    pub(crate) fn unique() -> Self {
        thread_local! {
            /// 64 random bits drawn at the thread's first token, and a count.
            static NEXT: Cell<Option<(u64, u64)>> = const { Cell::new(None) };
        }
        let (prefix, count) = NEXT.with(|next| {
            let (prefix, count) = next
                .get()
                .unwrap_or_else(|| (Uuid::new_v4().as_u64_pair().0, 0));
            next.set(Some((prefix, count.wrapping_add(1))));
            (prefix, count)
        });
        // Laid out as a UUID of version 8 (bits 76 to 79 of the big-endian
        // number) and variant 0b10 (bits 62 and 63), so it never equals a
        // `new` one: the thread's random bits above, the count below. Built
        // as one number: reading back bytes just stored would stall the
        // CPU's store forwarding.
        const VERSION_BITS: u128 = 0xF << 76;
        const VERSION_8: u128 = 8 << 76;
        const VARIANT: u128 = 0b10 << 62;
        let high = (u128::from(prefix) << 64) & !VERSION_BITS;
        let count = u128::from(count) & ((1 << 62) - 1);
        Token(Uuid::from_u128(high | VERSION_8 | VARIANT | count))
    }

    /// The token as a UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for Token {
    fn default() -> Self {
        Token::new()
    }
}

impl From<Uuid> for Token {
    fn from(uuid: Uuid) -> Self {
        Token(uuid)
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_tokens_are_unique_across_threads_and_apart_from_random_ones() {
        let per_thread = 1000;
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    (0..per_thread).map(|_| Token::unique()).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        for thread in threads {
            for token in thread.join().expect("thread") {
                assert_eq!(token.as_uuid().get_version_num(), 8);
                assert_eq!(token.as_uuid().get_variant(), uuid::Variant::RFC4122);
                assert!(seen.insert(token), "{token} was handed out twice");
            }
        }
        assert_eq!(seen.len(), 4 * per_thread);
        assert_eq!(Token::new().as_uuid().get_version_num(), 4);
    }
}
