//! The Lua scripts, run by `EVALSHA` (loaded on first use by
//! [`redis::Script`]). Keys and values always travel as `KEYS`/`ARGV`,
//! never spliced into the source, so no key can change what a script does.
//!
//! Every script takes the same keys, all in the lock's slot (see
//! [`KeySpace::script_keys`](super::keys::KeySpace::script_keys)):
//! `KEYS[1]` the lock, `KEYS[2]` its fence counter, `KEYS[3]` the waiter
//! queue, `KEYS[4]` a waiting writer's claim, `KEYS[5]` the shared or
//! counted holders (token → end of lease, in ms of the server's clock),
//! `KEYS[6]` their fences (token → fence), `KEYS[7]` turns given to queued
//! backends' shared or counted waiters (backend id → end of the turn). And
//! the same first arguments: `ARGV[1]` the caller's backend id, `ARGV[2]` the
//! prefix of the backends' turn channels, `ARGV[3]` the grace of a turn in
//! ms, `ARGV[4]` the retention in ms, `ARGV[5]` how long a writer's claim
//! lasts in ms; each script's own arguments follow from `ARGV[6]`.
//!
//! # What the lock holds
//!
//! - nothing: the key is free;
//! - a token, then a space and the value if there is one (tokens are
//!   hexadecimal and have no spaces): an exclusive holder;
//! - `next:<backend id>`: a turn reserved for one queued backend, for the
//!   grace; only a waiter of that backend may take it, of any kind;
//! - `shared` or `permits:<n>`: the key is held shared, or by up to `n`
//!   counted holders, listed in `KEYS[5]`. The lock then expires when the
//!   last holder's lease or the last turn does, so a writer's script sees a
//!   busy key in its one `GET`, as with an exclusive holder.
//!
//! # Queue entries
//!
//! A backend's waiters queue as `<id>` (exclusive), `<id>:s` (shared) or
//! `<id>:c:<n>` (counted, `n` permits). A hand-off gives the head entry its
//! turn: an exclusive one the lock as `next:<id>`; a shared or counted one,
//! with the run of entries of its kind behind it (as many as there are free
//! permits), a place in `KEYS[7]` for the grace, which lets them in even
//! past a writer's claim (they queued before that writer) and, for permits,
//! keeps the permit for them. So one hand-off lets every reader waiting
//! ahead of the next writer in at once, and a released permit wakes one
//! counted waiter, never a herd.

use std::sync::LazyLock;

use redis::Script;

/// Prepends the names every script uses and the small functions the
/// exclusive scripts need.
macro_rules! with_base {
    ($($body:expr),+ $(,)?) => {
        concat!(
            "
local lock, fence_key, queue, claim = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local holders, fences, turns = KEYS[5], KEYS[6], KEYS[7]
local me, turn_prefix = ARGV[1], ARGV[2]
local grace, retention, claim_ms = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]

local function held_by(v, token)
  return v == token or (v ~= false and string.sub(v, 1, #token + 1) == token .. ' ')
end

local function is_marker(v)
  return v == 'shared' or (v ~= false and string.sub(v, 1, 8) == 'permits:')
end

-- Whole numbers for Redis: a number argument would be printed with %.17g.
local function int(n)
  return string.format('%d', n)
end

-- The server's clock, in ms and in µs.
local function clock()
  local t = redis.call('TIME')
  return t[1] * 1000 + math.floor(t[2] / 1000), t[1] * 1000000 + t[2]
end
",
            $($body),+
        )
    };
}

/// The functions of the shared and counted scripts, and of hand-offs.
macro_rules! lib {
    () => {
        "
-- A queue entry: the backend id, its kind ('x', 's' or 'c'), its permits.
local function parse(entry)
  local colon = string.find(entry, ':', 1, true)
  if not colon then
    return entry, 'x', 0
  end
  return string.sub(entry, 1, colon - 1), string.sub(entry, colon + 1, colon + 1),
    tonumber(string.sub(entry, colon + 3)) or 0
end

-- Forgets holders whose lease ended (a crashed holder's) and lapsed turns.
local function purge(now)
  local gone = redis.call('ZRANGEBYSCORE', holders, '-inf', int(now))
  if #gone > 0 then
    for i = 1, #gone, 1000 do
      redis.call('HDEL', fences, unpack(gone, i, math.min(i + 999, #gone)))
    end
    redis.call('ZREMRANGEBYSCORE', holders, '-inf', int(now))
  end
  redis.call('ZREMRANGEBYSCORE', turns, '-inf', int(now))
end

-- When the last lease or turn of a shared or counted key ends (0: none).
local function last_end()
  local e = 0
  local h = redis.call('ZRANGE', holders, -1, -1, 'WITHSCORES')
  if h[2] then
    e = tonumber(h[2])
  end
  local t = redis.call('ZRANGE', turns, -1, -1, 'WITHSCORES')
  if t[2] and tonumber(t[2]) > e then
    e = tonumber(t[2])
  end
  return e
end

-- The lock and its holders live exactly as long as the last of them.
local function keep_until(e)
  local at = int(e)
  redis.call('PEXPIREAT', lock, at)
  redis.call('PEXPIREAT', holders, at)
  redis.call('PEXPIREAT', fences, at)
  redis.call('PEXPIREAT', turns, at)
end

-- Gives turns to the queue's leading run of entries of `kind` with
-- `permits`, at most `room` of them; returns their backend ids.
local function admit(now, kind, permits, room)
  local ids = {}
  while room > 0 do
    local head = redis.call('LINDEX', queue, 0)
    if not head then
      break
    end
    local id, k, p = parse(head)
    if k ~= kind or p ~= permits then
      break
    end
    redis.call('LPOP', queue)
    redis.call('ZADD', turns, int(now + grace), id)
    redis.pcall('PUBLISH', turn_prefix .. id, lock)
    ids[#ids + 1] = id
    room = room - 1
  end
  if #ids > 0 then
    -- A writer queued behind the waiters just let in keeps newcomers out
    -- meanwhile, as its own refused tries would.
    local next = redis.call('LINDEX', queue, 0)
    if next and not string.find(next, ':', 1, true) then
      redis.call('SET', claim, next, 'PX', claim_ms)
    end
  end
  return ids
end

-- The key has no holder and no turn left: gives it to the queue's head
-- (with the run of its kind behind it), or frees it. Returns the backend
-- ids it went to.
local function hand_off(now)
  local head = redis.call('LINDEX', queue, 0)
  if not head then
    redis.call('DEL', lock)
    return {}
  end
  local id, kind, permits = parse(head)
  if kind == 'x' then
    redis.call('LPOP', queue)
    redis.call('SET', lock, 'next:' .. id, 'PX', grace)
    redis.pcall('PUBLISH', turn_prefix .. id, lock)
    return {id}
  end
  now = now or clock()
  local marker, room = 'shared', math.huge
  if kind == 'c' then
    marker, room = 'permits:' .. permits, permits
  end
  local ids = admit(now, kind, permits, room)
  redis.call('SET', lock, marker)
  keep_until(now + grace)
  return ids
end
"
    };
}

/// An exclusive try. `ARGV[6]` token, `ARGV[7]` ttl in ms, `ARGV[8]` `1`
/// when the caller will wait, `ARGV[9]` `1` when others of the caller's
/// process wait behind it, `ARGV[10]` the value stored with the lease
/// (empty for none), `ARGV[11]` the channel that hears of grants of leases
/// with a value, `ARGV[12]` `1` when the backend has proven that a lease
/// with a value may be granted on a key with no counter (see below).
/// Returns `{1, fence}` when taken, `{0, pttl}` when busy, `{2, pttl}` when
/// busy and the caller is queued (`pttl` is -1 when the holder's key has no
/// expiry), and `{4, 0}`, changing nothing beyond a turn the caller's
/// backend dropped, when a lease with a value could be granted but the
/// key has no counter and `ARGV[12]` is not `1`: the store may have lost a
/// leader's lease along with the counter (see [`EPOCH`]).
///
/// A lock that a release handed to the caller's backend holds
/// `next:<backend id>` for a short grace; only that backend may take it.
/// A lock that already holds the caller's token is taken again, with the
/// fence of its grant (the counter's value, which only grants move): that
/// is a retry of a try whose reply was lost (or that redis-rs re-sent after
/// a reconnect), or a holder storing a new value.
///
/// A grant of a lease with a value is published on `ARGV[11]`, so
/// observers of an election hear of a new leader; plain locks publish
/// nothing when taken. A grant ends its own backend's claim, never
/// another writer's (that one still waits), and a retry with the holder's
/// token ends none; a refused waiting try claims the key (for shared and
/// counted requests) for `ARGV[5]` ms. A turn given to this backend's
/// shared or counted waiters and met by its writer instead (the next of
/// its waiters is one) is dropped, and taken if nobody else holds the key;
/// otherwise a permit it kept goes to the next queued counted waiter.
///
/// The fence is the server's clock in microseconds (`TIME`), or one more
/// than the counter's last value when that is not below it (a clock that
/// stepped back, two grants in one microsecond), so fences strictly
/// increase while the counter lives and, once it has expired, as long as
/// the clock did not step back by more than the retention. The counter
/// lives for the lease plus the retention, so nothing of an unused key
/// stays. Lua numbers are doubles, exact below 2^53.
///
/// A waiting caller joins the queue once, however often it tries, and
/// leaves it when it takes the lock (a turn's release already took it
/// out), unless others of its process wait behind it: then its backend
/// goes to the tail of the queue in the same script, so the next of them
/// is served in its turn without a try of its own to join. Each join keeps
/// the queue for the holder's lease plus the retention, so entries of
/// backends that died while queued go too.
pub(crate) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(with_base!(
        lib!(),
        r"
local token, ttl = ARGV[6], ARGV[7]
local current = redis.call('GET', lock)
local turn = 'next:' .. me
local own = held_by(current, token)
local free = current == false or current == turn or own
if not free and ARGV[8] == '1' and is_marker(current) and redis.call('ZREM', turns, me) == 1 then
  local now = clock()
  purge(now)
  local left = redis.call('ZCARD', holders) + redis.call('ZCARD', turns)
  free = left == 0
  if free then
    redis.call('DEL', holders, fences, turns)
  else
    -- The turn kept a permit for this backend's counted waiters; the
    -- writer does not take it, so the next queued counted waiter does,
    -- at once rather than on its backoff timer.
    if current ~= 'shared' then
      local permits = tonumber(string.sub(current, 9))
      admit(now, 'c', permits, permits - left)
    end
    keep_until(last_end())
  end
end
if free then
  local last = tonumber(redis.call('GET', fence_key))
  -- A lease with a value on a key with no counter: the store may have lost
  -- a leader's lease with it, so the backend must first prove it did not.
  if ARGV[10] ~= '' and not own and not last and ARGV[12] ~= '1' then
    return {4, 0}
  end
  local stored = token
  if ARGV[10] ~= '' then
    stored = token .. ' ' .. ARGV[10]
  end
  redis.call('SET', lock, stored, 'PX', ttl)
  -- Only the claim's own writer ends it: another writer still waiting
  -- keeps new readers out, and a holder's retry is no writer's grant.
  if not own and redis.call('GET', claim) == me then
    redis.call('DEL', claim)
  end
  if ARGV[9] == '1' then
    redis.call('LREM', queue, 0, me)
    redis.call('RPUSH', queue, me)
    redis.call('PEXPIRE', queue, int(ttl + retention))
  elseif current ~= turn and ARGV[8] == '1' then
    redis.call('LREM', queue, 0, me)
  end
  local fence = last
  if not (own and last) then
    local now = redis.call('TIME')
    fence = now[1] * 1000000 + now[2]
    if last and last >= fence then
      fence = last + 1
    end
  end
  redis.call('SET', fence_key, int(fence), 'PX', int(ttl + retention))
  if ARGV[10] ~= '' then
    redis.pcall('PUBLISH', ARGV[11], lock)
  end
  return {1, fence}
end
local pttl = redis.call('PTTL', lock)
if ARGV[8] == '1' then
  redis.call('SET', claim, me, 'PX', claim_ms)
  if not redis.call('LPOS', queue, me) then
    redis.call('RPUSH', queue, me)
  end
  redis.call('PEXPIRE', queue, int(math.max(pttl, 0) + retention))
  return {2, pttl}
end
return {0, pttl}
"
    ))
});

/// A shared or counted try. `ARGV[6]` token, `ARGV[7]` ttl in ms,
/// `ARGV[8]` `1` when the caller will wait, `ARGV[9]` `1` when others of
/// the caller's process wait behind it, `ARGV[10]` `s` (shared) or `c`
/// (counted), `ARGV[11]` the permits of a counted try. Returns `{1, fence,
/// wake, took}` when taken (`wake` is 1 when the next waiter of the
/// caller's process may come in at once, see below; `took` is 1 when the
/// grant took a turn given to the caller's backend), `{0, ms}` when busy, `{2, ms}` when busy and queued (`ms`:
/// until the holder's lease, or the claim, or for permits the earliest
/// lease or turn, ends; -1 for a holder's key with no expiry), and `{3,
/// n}` when the key's counted holders took it with `n` permits, not
/// `ARGV[11]` (nothing is changed, beyond taking the caller's own entry out
/// of the queue).
///
/// Granted when the key is free and unclaimed, held by its kind with no
/// live claim (or by a caller whose backend was given a turn) and, for
/// permits, fewer holders and turns than permits; or when the lock is a
/// turn for the caller's backend. The caller's own live token is granted
/// again with its fence. Fences come from the same counter and clock as
/// exclusive ones. A grant lets in the queue's leading run of waiters of
/// its kind too (as many as permits allow, leaving one for the caller's
/// next waiter), and a grant with others of the caller's process behind it
/// has the backend wake the next of them at once when one more could join,
/// or keeps its place at the tail of the queue when none could (or a writer
/// claims the key, and the next of them comes after that writer).
pub(crate) static ACQUIRE_SHARED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(with_base!(
        lib!(),
        r"
local token, ttl = ARGV[6], tonumber(ARGV[7])
local waiting, behind = ARGV[8] == '1', ARGV[9] == '1'
local kind, permits = ARGV[10], tonumber(ARGV[11])
local entry, marker = me .. ':s', 'shared'
if kind == 'c' then
  entry, marker = me .. ':c:' .. ARGV[11], 'permits:' .. ARGV[11]
else
  permits = 0
end
local now, micros = clock()
local current = redis.call('GET', lock)
if is_marker(current) then
  purge(now)
end

local function refuse(left)
  if waiting then
    if not redis.call('LPOS', queue, entry) then
      redis.call('RPUSH', queue, entry)
    end
    redis.call('PEXPIRE', queue, int(math.max(redis.call('PTTL', lock), 0) + retention))
    return {2, left}
  end
  return {0, left}
end

local function used()
  return redis.call('ZCARD', holders) + redis.call('ZCARD', turns)
end

local function add(fence, fresh)
  redis.call('ZADD', holders, int(now + ttl), token)
  redis.call('HSET', fences, token, int(fence))
  local keep = math.max(redis.call('PTTL', fence_key), ttl + retention)
  if fresh then
    redis.call('SET', fence_key, int(fence), 'PX', int(keep))
  else
    redis.call('PEXPIRE', fence_key, int(keep))
  end
  if current ~= marker then
    redis.call('SET', lock, marker)
  end
end

-- A retry of a try whose answer was lost: the same fence.
if current == marker and redis.call('ZSCORE', holders, token) then
  local fence = tonumber(redis.call('HGET', fences, token))
  if fence then
    add(fence, false)
    keep_until(last_end())
    return {1, fence}
  end
end

local claimed = redis.call('PTTL', claim)
local entitled = false
if current == 'next:' .. me then
  entitled = true
elseif current == false then
  if claimed > 0 then
    return refuse(claimed)
  end
elseif current == marker then
  entitled = redis.call('ZREM', turns, me) == 1
  if claimed > 0 and not entitled then
    return refuse(math.max(claimed, redis.call('PTTL', lock)))
  end
  if kind == 'c' and used() >= permits then
    local first = math.huge
    for _, set in ipairs({holders, turns}) do
      local e = redis.call('ZRANGE', set, 0, 0, 'WITHSCORES')
      if e[2] then
        first = math.min(first, tonumber(e[2]))
      end
    end
    return refuse(math.max(first - now, 0))
  end
elseif kind == 'c' and string.sub(current, 1, 8) == 'permits:' and redis.call('ZCARD', holders) > 0 then
  redis.call('LREM', queue, 0, entry)
  return {3, tonumber(string.sub(current, 9))}
else
  return refuse(redis.call('PTTL', lock))
end

local last = tonumber(redis.call('GET', fence_key))
local fence = micros
if last and last >= fence then
  fence = last + 1
end
add(fence, true)
local room = math.huge
if kind == 'c' then
  room = permits - used()
end
local wake_next = 0
if behind then
  redis.call('LREM', queue, 0, entry)
  if claimed > 0 or room <= 0 then
    redis.call('RPUSH', queue, entry)
    redis.call('PEXPIRE', queue, int(ttl + retention))
  else
    wake_next = 1
  end
elseif waiting then
  redis.call('LREM', queue, 0, entry)
end
if room > 0 then
  admit(now, kind, permits, room - wake_next)
end
keep_until(last_end())
local took_turn = 0
if entitled then
  took_turn = 1
end
return {1, fence, wake_next, took_turn}
"
    ))
});

/// Extends an exclusive lease. `ARGV[6]` token, `ARGV[7]` ttl in ms.
/// Returns 1 when the token still held the lock and its lease was
/// restarted, else 0. The counter is kept for the new lease plus the
/// retention, so the holder's fence stays readable while the lease runs.
pub(crate) static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(with_base!(
        r"
if held_by(redis.call('GET', lock), ARGV[6]) then
  redis.call('PEXPIRE', lock, ARGV[7])
  redis.call('PEXPIRE', fence_key, int(ARGV[7] + retention))
  return 1
end
return 0
"
    ))
});

/// Extends a shared or counted lease. `ARGV[6]` token, `ARGV[7]` ttl in
/// ms. Returns 1 when the token still held a live lease and it was
/// restarted, else 0. The lock lives until the last lease ends, and the
/// counter for the longest lease plus the retention.
pub(crate) static EXTEND_SHARED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(with_base!(
        lib!(),
        r"
if not is_marker(redis.call('GET', lock)) then
  return 0
end
local now = clock()
local ends = tonumber(redis.call('ZSCORE', holders, ARGV[6]))
if not ends or ends <= now then
  return 0
end
local ttl = tonumber(ARGV[7])
redis.call('ZADD', holders, int(now + ttl), ARGV[6])
local keep = math.max(redis.call('PTTL', fence_key), ttl + retention)
redis.call('PEXPIRE', fence_key, int(keep))
keep_until(last_end())
return 1
"
    ))
});

/// Releases an exclusive lease. `ARGV[6]` token, `ARGV[7]` the channel
/// that hears of releases of leases with a value. Acts only when `ARGV[6]`
/// still holds the lock. With a waiter queued, the lock goes to the first
/// queued backend (and, for shared or counted waiters, the run of its kind
/// behind it) for the grace, and its own channel (`ARGV[2]` and the id)
/// carries the lock key to tell it, so no other backend is disturbed; with
/// none, the lock is deleted. Either way the counter is kept for the
/// retention from now (and the turn's claim restarts it). Returns `{1,
/// ids...}` (the backends handed to, if any), or `{0}` when `ARGV[6]` no
/// longer held the lock.
///
/// The publish is a `pcall`: where an ACL forbids the channel, the release
/// must still happen; the turn then lapses after the grace and waiters find
/// the lock free on their timers.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(with_base!(
        lib!(),
        r"
local current = redis.call('GET', lock)
if not held_by(current, ARGV[6]) then
  return {0}
end
if current ~= ARGV[6] then
  redis.pcall('PUBLISH', ARGV[7], lock)
end
redis.call('PEXPIRE', fence_key, int(grace + retention))
return {1, unpack(hand_off(nil))}
"
    ))
});

/// Releases a shared or counted lease. `ARGV[6]` token. Acts only while
/// the token holds a live lease. A release that leaves other holders wakes
/// nobody, except, for permits, the next queued counted waiter (one per
/// freed permit); the last one hands the key on as an exclusive release
/// does. Returns `{1, ids...}` when it was the last (`ids`: the backends
/// the key went to), `{2, ids...}` when other holders remain (`ids`: the
/// backends given a freed permit), or `{0}`.
pub(crate) static RELEASE_SHARED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(with_base!(
        lib!(),
        r"
local current = redis.call('GET', lock)
if not is_marker(current) then
  return {0}
end
local now = clock()
local ends = tonumber(redis.call('ZSCORE', holders, ARGV[6]))
if not ends or ends <= now then
  return {0}
end
redis.call('ZREM', holders, ARGV[6])
redis.call('HDEL', fences, ARGV[6])
purge(now)
local held = redis.call('ZCARD', holders)
local left = held + redis.call('ZCARD', turns)
if left == 0 then
  redis.call('PEXPIRE', fence_key, int(grace + retention))
  return {1, unpack(hand_off(now))}
end
local ids = {}
if current == 'shared' then
  ids = admit(now, 's', 0, math.huge)
else
  local permits = tonumber(string.sub(current, 9))
  ids = admit(now, 'c', permits, permits - left)
end
keep_until(last_end())
return {2, unpack(ids)}
"
    ))
});

/// Takes the caller's backend (`ARGV[1]`) out of the queue, because none
/// of its waiters waits for the key any longer, and passes on a turn
/// already given to it: the lock reserved as `next:<id>`, or its place
/// among the turns of a shared or counted key (a freed permit goes to the
/// next counted waiter; a key left with no holder and no turn is handed on
/// as by a release), and ends its own writer's claim. Returns 1 when it
/// passed a turn on, else 0.
pub(crate) static WITHDRAW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(with_base!(
        lib!(),
        r"
for _, entry in ipairs(redis.call('LRANGE', queue, 0, -1)) do
  if parse(entry) == me then
    redis.call('LREM', queue, 0, entry)
  end
end
-- No writer of this backend waits any longer: its claim would keep
-- readers out for nothing.
if redis.call('GET', claim) == me then
  redis.call('DEL', claim)
end
local current = redis.call('GET', lock)
if current == 'next:' .. me then
  redis.call('PEXPIRE', fence_key, int(grace + retention))
  hand_off(nil)
  return 1
end
if not (is_marker(current) and redis.call('ZREM', turns, me) == 1) then
  return 0
end
local now = clock()
purge(now)
local left = redis.call('ZCARD', holders) + redis.call('ZCARD', turns)
if left == 0 then
  redis.call('PEXPIRE', fence_key, int(grace + retention))
  hand_off(now)
  return 1
end
if current ~= 'shared' then
  local permits = tonumber(string.sub(current, 9))
  admit(now, 'c', permits, permits - left)
end
keep_until(last_end())
return 1
"
    ))
});

/// Returns `{1, token, fence, pttl}` (and the value, when the lease has
/// one) while an exclusive holder's token is stored, `{0}` when the lock is
/// free, only reserved for a queued backend's turn, or held shared or
/// counted (those are not reported: see the module docs).
pub(crate) static HOLDER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(with_base!(
        r"
local token = redis.call('GET', lock)
if token == false or string.sub(token, 1, 5) == 'next:' or is_marker(token) then
  return {0}
end
local reply = {1, token, tonumber(redis.call('GET', fence_key) or '0'), redis.call('PTTL', lock)}
local space = string.find(token, ' ', 1, true)
if space then
  reply[2] = string.sub(token, 1, space - 1)
  reply[5] = string.sub(token, space + 1)
end
return reply
"
    ))
});

/// The store's epoch, `KEYS[1]` (`<prefix>epoch`, no expiry): the server
/// time in ms since which the store is known not to have lost its state,
/// written when absent (a first use, or a `FLUSHALL` or a restart that lost
/// every key since). Returns `{epoch, now}` in ms of the server's clock.
/// A lease with a value on a key with no counter is granted only once the
/// epoch is one ttl old: a leader whose lease the store lost with the
/// epoch counts it lost by then.
pub(crate) static EPOCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local since = tonumber(redis.call('GET', KEYS[1]))
if not since then
  since = now
  redis.call('SET', KEYS[1], string.format('%d', now))
end
return {since, now}
",
    )
});
