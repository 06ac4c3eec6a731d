//! The Lua scripts, run by `EVALSHA` (loaded on first use by
//! [`redis::Script`]). Keys and values always travel as `KEYS`/`ARGV`,
//! never spliced into the source, so no key can change what a script does.

use std::sync::LazyLock;

use redis::Script;

/// Prepends `held_by(v, token)`: whether the lock's content `v` (or
/// `false`) is held by `token`, alone or followed by a space and a value.
macro_rules! with_held_by {
    ($body:literal) => {
        concat!(
            "
local function held_by(v, token)
  return v == token or (v ~= false and string.sub(v, 1, #token + 1) == token .. ' ')
end
",
            $body
        )
    };
}

/// `KEYS[1]` lock, `KEYS[2]` fence counter, `KEYS[3]` waiter queue;
/// `ARGV[1]` token, `ARGV[2]` ttl in ms, `ARGV[3]` the caller's backend id,
/// `ARGV[4]` `1` when the caller will wait, `ARGV[5]` the retention in ms,
/// `ARGV[6]` `1` when others of the caller's process wait behind it,
/// `ARGV[7]` the value stored with the lease (empty for none), `ARGV[8]`
/// the channel that hears of grants of leases with a value. Returns `{1, fence}` when taken, `{0, pttl}` when busy and `{2, pttl}`
/// when busy and the caller is queued (`pttl` is -1 when the holder's key
/// has no expiry).
///
/// A lock that a release handed to the caller's backend holds
/// `next:<backend id>` for a short grace; only that backend may take it.
/// A lock that already holds the caller's token is taken again, with the
/// fence of its grant (the counter's value, which only grants move): that
/// is a retry of a try whose reply was lost (or that redis-rs re-sent after
/// a reconnect), or a holder storing a new value.
///
/// The lock holds the token, then a space and the value if there is one
/// (tokens have no spaces). A grant of a lease with a value is published
/// on `ARGV[8]`, so observers of an election hear of a new leader; plain
/// locks publish nothing when taken.
///
/// The fence is the server's clock in microseconds (`TIME`), or one more
/// than the counter's last value when that is not below it (a clock that
/// stepped back, two grants in one microsecond), so fences strictly
/// increase while the counter lives and, once it has expired, as long as
/// the clock did not step back by more than the retention. The counter
/// lives for the lease plus the retention, so nothing of an unused key
/// stays. Lua numbers are doubles, exact below 2^53; `%d` prints them
/// without an exponent (a number argument would be printed with `%.17g`).
///
/// A waiting caller joins the queue once, however often it tries, and
/// leaves it when it takes the lock (a turn's release already took it
/// out), unless others of its process wait behind it: then its backend
/// goes to the tail of the queue in the same script, so the next of them
/// is served in its turn without a try of its own to join. Each join keeps
/// the queue for the holder's lease plus the retention, so entries of
/// backends that died while queued go too.
pub(crate) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(with_held_by!(
        r"
local current = redis.call('GET', KEYS[1])
local turn = 'next:' .. ARGV[3]
local own = held_by(current, ARGV[1])
if current == false or current == turn or own then
  local stored = ARGV[1]
  if ARGV[7] ~= '' then
    stored = ARGV[1] .. ' ' .. ARGV[7]
  end
  redis.call('SET', KEYS[1], stored, 'PX', ARGV[2])
  if ARGV[6] == '1' then
    redis.call('LREM', KEYS[3], 0, ARGV[3])
    redis.call('RPUSH', KEYS[3], ARGV[3])
    redis.call('PEXPIRE', KEYS[3], string.format('%d', ARGV[2] + ARGV[5]))
  elseif current ~= turn and ARGV[4] == '1' then
    redis.call('LREM', KEYS[3], 0, ARGV[3])
  end
  local last = tonumber(redis.call('GET', KEYS[2]))
  local fence = last
  if not (own and last) then
    local now = redis.call('TIME')
    fence = now[1] * 1000000 + now[2]
    if last and last >= fence then
      fence = last + 1
    end
  end
  redis.call('SET', KEYS[2], string.format('%d', fence), 'PX', string.format('%d', ARGV[2] + ARGV[5]))
  if ARGV[7] ~= '' then
    redis.pcall('PUBLISH', ARGV[8], KEYS[1])
  end
  return {1, fence}
end
local pttl = redis.call('PTTL', KEYS[1])
if ARGV[4] == '1' then
  if not redis.call('LPOS', KEYS[3], ARGV[3]) then
    redis.call('RPUSH', KEYS[3], ARGV[3])
  end
  redis.call('PEXPIRE', KEYS[3], string.format('%d', math.max(pttl, 0) + ARGV[5]))
  return {2, pttl}
end
return {0, pttl}
"
    ))
});

/// `KEYS[1]` lock, `KEYS[2]` fence counter; `ARGV[1]` token, `ARGV[2]`
/// ttl in ms, `ARGV[3]` the retention in ms. Returns 1 when the token still
/// held the lock and its lease was restarted, else 0. The counter is kept
/// for the new lease plus the retention, so the holder's fence stays
/// readable while the lease runs.
pub(crate) static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(with_held_by!(
        r"
if held_by(redis.call('GET', KEYS[1]), ARGV[1]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], string.format('%d', ARGV[2] + ARGV[3]))
  return 1
end
return 0
"
    ))
});

/// `KEYS[1]` lock, `KEYS[2]` waiter queue, `KEYS[3]` fence counter;
/// `ARGV[1]` token (or `next:<id>` to pass on a turn), `ARGV[2]` the prefix
/// of the backends' turn channels, `ARGV[3]` the grace in ms, `ARGV[4]` a backend id to take out
/// of the queue first (its waiters gave up), or empty, `ARGV[5]` the
/// retention in ms, `ARGV[6]` the channel that hears of releases of leases
/// with a value. Acts only when `ARGV[1]` still holds the lock. With a
/// waiter queued, the lock goes to the first queued backend for the grace,
/// and its own channel (`ARGV[2]` and the id) carries the lock key to tell
/// it, so no other backend is disturbed; with none, the lock is deleted.
/// Either way the counter is kept for the retention from now (and the
/// turn's claim restarts it). Returns `{1, id}` when handed on, `{1}` when deleted, `{0}` when
/// `ARGV[1]` no longer held the lock.
///
/// The publish is a `pcall`: where an ACL forbids the channel, the release
/// must still happen; the turn then lapses after the grace and waiters find
/// the lock free on their timers.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(with_held_by!(
        r"
if ARGV[4] ~= '' then
  redis.call('LREM', KEYS[2], 0, ARGV[4])
end
local current = redis.call('GET', KEYS[1])
if not held_by(current, ARGV[1]) then
  return {0}
end
if current ~= ARGV[1] then
  redis.pcall('PUBLISH', ARGV[6], KEYS[1])
end
redis.call('PEXPIRE', KEYS[3], string.format('%d', ARGV[3] + ARGV[5]))
local next = redis.call('LPOP', KEYS[2])
if next then
  redis.call('SET', KEYS[1], 'next:' .. next, 'PX', ARGV[3])
  redis.pcall('PUBLISH', ARGV[2] .. next, KEYS[1])
  return {1, next}
end
redis.call('DEL', KEYS[1])
return {1}
"
    ))
});

/// `KEYS[1]` lock, `KEYS[2]` fence counter. Returns `{1, token, fence,
/// pttl}` (and the value, when the lease has one) while a holder's token
/// is stored, `{0}` when the lock is free or only reserved for a queued
/// backend's turn.
pub(crate) static HOLDER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local token = redis.call('GET', KEYS[1])
if token == false or string.sub(token, 1, 5) == 'next:' then
  return {0}
end
local reply = {1, token, tonumber(redis.call('GET', KEYS[2]) or '0'), redis.call('PTTL', KEYS[1])}
local space = string.find(token, ' ', 1, true)
if space then
  reply[2] = string.sub(token, 1, space - 1)
  reply[5] = string.sub(token, space + 1)
end
return reply
",
    )
});
