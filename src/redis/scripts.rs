//! The Lua scripts, run by `EVALSHA` (loaded on first use by
//! [`redis::Script`]). Keys and values always travel as `KEYS`/`ARGV`,
//! never spliced into the source, so no key can change what a script does.

use std::sync::LazyLock;

use redis::Script;

/// `KEYS[1]` lock, `KEYS[2]` fence counter; `ARGV[1]` token, `ARGV[2]` ttl
/// in ms. Returns `{1, fence}` when taken, `{0, pttl}` when busy (`pttl` is
/// -1 when the holder's key has no expiry).
///
/// `PTTL` comes first so that a busy try, the common case under contention,
/// costs one command inside the script rather than two. The counter is
/// bumped only on success and in the same script, so fences are strictly
/// increasing per key with no gap a crash could reorder.
pub(crate) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local pttl = redis.call('PTTL', KEYS[1])
if pttl == -2 and redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, redis.call('INCR', KEYS[2])}
end
return {0, pttl}
",
    )
});

/// `KEYS[1]` lock; `ARGV[1]` token, `ARGV[2]` ttl in ms. Returns 1 when the
/// token still held the lock and its lease was restarted, else 0.
pub(crate) static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
",
    )
});

/// `KEYS[1]` lock; `ARGV[1]` token, `ARGV[2]` wake-up channel. Deletes the
/// lock only when the token still holds it, then publishes the lock key so
/// waiters on every node wake in one round trip (classic pub/sub reaches
/// every node of a Cluster). Returns 1 when released, else 0.
///
/// The publish is a `pcall`: where an ACL forbids the channel, the release
/// must still happen, and waiters fall back to their timers.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.pcall('PUBLISH', ARGV[2], KEYS[1])
  return 1
end
return 0
",
    )
});
