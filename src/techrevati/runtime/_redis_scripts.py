"""The Lua scripts behind the shared tier: one per primitive, each decision one atomic step.

Private to :mod:`~techrevati.runtime.redis_store`. Every script starts by
reading the server's clock (``TIME``, plus ``ARGV[1]`` milliseconds, which
is 0 except in tests that move the server's time forward), so workers whose
clocks disagree still agree on every window and lease. ``ARGV[2]`` names
the operation. All keys of one script share one hash tag, so each call
touches one Redis Cluster slot.

Numbers: Lua numbers in Redis are doubles, exact for integers below 2**53.
Token and request counts stay far below that. Money (femto-dollars, 10**-15
USD) does not: $10 is already 10**16 femto-dollars. The budget script keeps
money in two limbs, whole dollars and the femto-dollars below one dollar
(``0 <= lo < 10**15``), so every number it handles is an exact integer, and
writes them with ``%.0f`` (Lua's ``tostring`` would round them to 14 digits).
"""

from __future__ import annotations

import hashlib
from typing import Final

__all__ = ["BREAKER", "BUDGET", "LIMITER", "Script"]


class Script:
    """One Lua script: run by SHA, loaded on the first NOSCRIPT by running it whole."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


_CLOCK: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local op = ARGV[2]
local function num(v) if v then return tonumber(v) end return 0 end
local function fmt(v) return string.format('%.0f', v) end
"""

LIMITER: Final = Script(
    _CLOCK
    + """
-- KEYS: 1 the log of admissions (zset: member id|requests|input|output, score: admitted ms),
-- 2 the totals (hash: req, inp, out, ends), 3 the open calls (zset: id -> lease expiry ms),
-- 4 the server's caps (hash: dimension 1-4 -> remaining|until ms).
local log, st, open, caps = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local window = tonumber(ARGV[3])
local lease = tonumber(ARGV[4])
local NAMES = {'requests', 'tokens', 'input_tokens', 'output_tokens'}
local function parse(m)
  local r, i, o = string.match(m, '|(%d+)|(%d+)|(%d+)$')
  return tonumber(r), tonumber(i), tonumber(o)
end
local function amount(m, d)
  local r, i, o = parse(m)
  if d == 1 then return r elseif d == 2 then return i + o elseif d == 3 then return i end
  return o
end
local function expire()
  local old = redis.call('ZRANGEBYSCORE', log, '-inf', now - window)
  if #old > 0 then
    local r, i, o = 0, 0, 0
    for _, m in ipairs(old) do
      local a, b, c = parse(m)
      r, i, o = r + a, i + b, o + c
    end
    redis.call('ZREMRANGEBYSCORE', log, '-inf', now - window)
    redis.call('HINCRBY', st, 'req', 0 - r) -- never -0: HINCRBY refuses it
    redis.call('HINCRBY', st, 'inp', 0 - i)
    redis.call('HINCRBY', st, 'out', 0 - o)
  end
  local dead = redis.call('ZRANGEBYSCORE', open, '-inf', now)
  if #dead > 0 then
    redis.call('ZREMRANGEBYSCORE', open, '-inf', now)
    redis.call('HINCRBY', st, 'ends', #dead)
  end
end
local function keep()
  redis.call('PEXPIRE', log, window + lease)
  redis.call('PEXPIRE', st, window + lease)
  redis.call('PEXPIRE', open, window + lease)
end
expire()
if op == 'admit' then
  -- ARGV: 5 input, 6 output, 7-10 limits (-1: none), 11 max concurrent (-1), 12 id
  local i, o = tonumber(ARGV[5]), tonumber(ARGV[6])
  local h = redis.call('HMGET', st, 'req', 'inp', 'out', 'ends')
  local inp, out = num(h[2]), num(h[3])
  local want = {1, i + o, i, o}
  local tot = {num(h[1]), inp + out, inp, out}
  local kind, wait = '', 0
  for d = 1, 4 do
    local lim = tonumber(ARGV[6 + d])
    if lim >= 0 and tot[d] + want[d] > lim then
      local excess = tot[d] + want[d] - lim
      local entries = redis.call('ZRANGE', log, 0, -1, 'WITHSCORES')
      for k = 1, #entries, 2 do
        excess = excess - amount(entries[k], d)
        if excess <= 0 then
          local w = tonumber(entries[k + 1]) + window - now
          if kind == '' or w > wait then kind, wait = NAMES[d], w end
          break
        end
      end
    end
  end
  local held = {}
  for d = 1, 4 do
    local c = redis.call('HGET', caps, d)
    if c then
      local rem, untl = string.match(c, '^(-?%d+)|(%d+)$')
      rem, untl = tonumber(rem), tonumber(untl)
      if untl <= now then
        redis.call('HDEL', caps, d)
      else
        held[d] = {rem, untl}
        if want[d] > rem and untl - now > wait then kind, wait = 'server', untl - now end
      end
    end
  end
  if kind ~= '' then return {0, kind, wait, num(h[4])} end
  local most = tonumber(ARGV[11])
  if most >= 0 and redis.call('ZCARD', open) >= most then
    return {0, 'concurrent', -1, num(h[4])}
  end
  for d, c in pairs(held) do
    redis.call('HSET', caps, d, fmt(c[1] - want[d]) .. '|' .. fmt(c[2]))
  end
  local id = ARGV[12]
  redis.call('ZADD', log, now, id .. '|1|' .. i .. '|' .. o)
  redis.call('HINCRBY', st, 'req', 1)
  redis.call('HINCRBY', st, 'inp', i)
  redis.call('HINCRBY', st, 'out', o)
  redis.call('ZADD', open, now + lease, id)
  keep()
  return {1, '', now, num(h[4])}
elseif op == 'end' then
  -- ARGV: 5 id, 6 estimated input, 7 estimated output, 8 settle (1) or release (0),
  -- 9 actual input, 10 actual output
  local id = ARGV[5]
  local removed = redis.call('ZREM', open, id)
  if removed == 1 then redis.call('HINCRBY', st, 'ends', 1) end
  local member = id .. '|1|' .. ARGV[6] .. '|' .. ARGV[7]
  local admitted = redis.call('ZSCORE', log, member)
  if admitted then
    redis.call('ZREM', log, member)
    local r, i, o = 0, 0, 0
    if ARGV[8] == '1' then
      r, i, o = 1, tonumber(ARGV[9]), tonumber(ARGV[10])
      redis.call('ZADD', log, admitted, id .. '|1|' .. i .. '|' .. o)
    end
    redis.call('HINCRBY', st, 'req', r - 1)
    redis.call('HINCRBY', st, 'inp', i - tonumber(ARGV[6]))
    redis.call('HINCRBY', st, 'out', o - tonumber(ARGV[7]))
  end
  keep()
  return removed
elseif op == 'tighten' then
  -- ARGV: 5 dimension (1-4), 6 remaining, 7 milliseconds until the reset
  redis.call('HSET', caps, ARGV[5], ARGV[6] .. '|' .. fmt(now + tonumber(ARGV[7])))
  redis.call('PEXPIRE', caps, math.max(tonumber(ARGV[7]), window) + lease)
  return 1
elseif op == 'usage' then
  local h = redis.call('HMGET', st, 'req', 'inp', 'out')
  return {num(h[1]), num(h[2]), num(h[3]), redis.call('ZCARD', open), now}
end
return redis.error_reply('unknown operation ' .. tostring(op))
"""
)

BUDGET: Final = Script(
    _CLOCK
    + """
-- KEYS: 1 the totals (hash; money in limbs: *_hi whole dollars, *_lo femto-dollars below
-- one dollar), 2 the holds (zset: id -> expiry ms), 3 what each hold holds (hash:
-- id -> hi|lo|tokens).
local st, holds, amounts = KEYS[1], KEYS[2], KEYS[3]
local B = 1000000000000000
local FIELDS = {'s_hi', 's_lo', 's_tok', 's_req', 'r_hi', 'r_lo', 'r_tok', 'r_req'}
local v = {}
local h = redis.call('HMGET', st, unpack(FIELDS))
for k = 1, 8 do v[k] = num(h[k]) end
local function norm(hi, lo)
  local c = math.floor(lo / B)
  return hi + c, lo - c * B
end
local function save()
  local pairs_ = {}
  for k = 1, 8 do
    pairs_[2 * k - 1] = FIELDS[k]
    pairs_[2 * k] = fmt(v[k])
  end
  redis.call('HSET', st, unpack(pairs_))
end
local function parse(a)
  local hi, lo, tok = string.match(a, '^(%d+)|(%d+)|(%d+)$')
  return tonumber(hi), tonumber(lo), tonumber(tok)
end
local function unhold(id)
  local a = redis.call('HGET', amounts, id)
  if not a then return 0 end
  local hi, lo, tok = parse(a)
  v[5], v[6] = norm(v[5] - hi, v[6] - lo)
  v[7] = v[7] - tok
  v[8] = v[8] - 1
  redis.call('HDEL', amounts, id)
  redis.call('ZREM', holds, id)
  return 1
end
-- a worker that died holding an estimate frees it when the hold's lease ends
local dead = redis.call('ZRANGEBYSCORE', holds, '-inf', now)
for _, id in ipairs(dead) do unhold(id) end
local changed = #dead > 0
local function reply(ok, kind)
  if changed then save() end
  return {ok, kind, v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8]}
end
-- a >= b, a > b on limbs
local function ge(ahi, alo, bhi, blo) return ahi > bhi or (ahi == bhi and alo >= blo) end
local function gt(ahi, alo, bhi, blo) return ahi > bhi or (ahi == bhi and alo > blo) end
if op == 'reserve' then
  -- ARGV: 3 id, 4-5 the estimate's limbs, 6 its tokens, 7 lease ms,
  -- 8-9 the dollar cap's limbs (8 = -1: none), 10 token cap (-1), 11 request cap (-1)
  local whi, wlo, wtok = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
  local lhi, llo = tonumber(ARGV[8]), tonumber(ARGV[9])
  if lhi >= 0 then
    local chi, clo = norm(v[1] + v[5], v[2] + v[6])
    local nhi, nlo = norm(chi + whi, clo + wlo)
    if ge(chi, clo, lhi, llo) or gt(nhi, nlo, lhi, llo) then return reply(0, 'usd') end
  end
  local ltok = tonumber(ARGV[10])
  if ltok >= 0 then
    local c = v[3] + v[7]
    if c >= ltok or c + wtok > ltok then return reply(0, 'tokens') end
  end
  local lreq = tonumber(ARGV[11])
  if lreq >= 0 then
    local c = v[4] + v[8]
    if c >= lreq or c + 1 > lreq then return reply(0, 'requests') end
  end
  local id, lease = ARGV[3], tonumber(ARGV[7])
  v[5], v[6] = norm(v[5] + whi, v[6] + wlo)
  v[7] = v[7] + wtok
  v[8] = v[8] + 1
  redis.call('ZADD', holds, now + lease, id)
  redis.call('HSET', amounts, id, fmt(whi) .. '|' .. fmt(wlo) .. '|' .. fmt(wtok))
  -- no PEXPIRE: the totals count these holds until a step sweeps them, so they must live
  -- as long as the totals do; every step sweeps the ended ones, and an emptied key goes
  changed = true
  return reply(1, '')
elseif op == 'settle' then
  -- ARGV: 3 hold id ('' for a charge without one), 4-5 the cost's limbs, 6 tokens,
  -- 7 requests (1 for a call; more when a resumed session's log is counted)
  local found = 0
  if ARGV[3] ~= '' then found = unhold(ARGV[3]) end
  v[1], v[2] = norm(v[1] + tonumber(ARGV[4]), v[2] + tonumber(ARGV[5]))
  v[3] = v[3] + tonumber(ARGV[6])
  v[4] = v[4] + tonumber(ARGV[7])
  changed = true
  return reply(found, '')
elseif op == 'release' then
  local found = unhold(ARGV[3])
  if found == 1 then changed = true end
  return reply(found, '')
elseif op == 'read' then
  return reply(1, '')
end
return redis.error_reply('unknown operation ' .. tostring(op))
"""
)

BREAKER: Final = Script(
    _CLOCK
    + """
-- KEYS: 1 the state (hash: state, gen, nxt, cons, opened, pok, succ, fail, ign, rej),
-- 2 the half-open probes' leases (zset: ticket -> lease expiry ms).
local st, leases = KEYS[1], KEYS[2]
local IDLE = 86400000 -- a breaker nobody uses for a day is forgotten (closed)
local h = redis.call('HMGET', st, 'state', 'gen', 'nxt', 'cons', 'opened', 'pok')
local state = h[1] or 'closed'
local gen, nxt, cons = num(h[2]), num(h[3]), num(h[4])
local opened, pok = num(h[5]), num(h[6])
if nxt == 0 then nxt = 1 end
local old = state
local function save()
  redis.call('HSET', st, 'state', state, 'gen', fmt(gen), 'nxt', fmt(nxt), 'cons', fmt(cons),
    'opened', fmt(opened), 'pok', fmt(pok))
  redis.call('PEXPIRE', st, IDLE)
end
local function move(new, at)
  gen, nxt, pok, state = nxt, nxt + 1, 0, new
  redis.call('DEL', leases)
  if new == 'closed' then cons = 0 end
  if new == 'open' or new == 'forced_open' then opened = at end
end
-- ARGV[3]: recovery ms, ARGV[4]: 1 if an expired probe lease reopens the breaker
local recovery = tonumber(ARGV[3])
local function advance()
  if state == 'half_open' then
    local first = redis.call('ZRANGE', leases, 0, 0, 'WITHSCORES')
    if ARGV[4] == '1' and #first > 0 and tonumber(first[2]) <= now then
      move('open', tonumber(first[2]))
    else
      redis.call('ZREMRANGEBYSCORE', leases, '-inf', now) -- a dead worker's probe frees
    end
  end
  if state == 'open' and now - opened >= recovery then move('half_open', now) end
end
local function retry_after()
  if state == 'open' then return math.max(0, opened + recovery - now) end
  if state == 'forced_open' then return -1 end
  return 0
end
if op == 'admit' then
  -- ARGV: 5 probes allowed at once, 6 a probe's lease ms
  if state == 'closed' then return {gen, state, 0, old} end
  if state ~= 'forced_open' then
    advance()
    if state == 'half_open' and redis.call('ZCARD', leases) < tonumber(ARGV[5]) then
      local ticket = nxt
      nxt = nxt + 1
      redis.call('ZADD', leases, now + tonumber(ARGV[6]), ticket)
      redis.call('PEXPIRE', leases, 2 * tonumber(ARGV[6]))
      save()
      return {ticket, state, 0, old}
    end
  end
  redis.call('HINCRBY', st, 'rej', 1)
  save()
  return {-1, state, retry_after(), old}
elseif op == 'settle' then
  -- ARGV: 5 ticket, 6 outcome (0 success, 1 failure, 2 neither), 7 failure threshold,
  -- 8 success threshold
  local ticket, outcome = tonumber(ARGV[5]), tonumber(ARGV[6])
  redis.call('HINCRBY', st, ({'succ', 'fail', 'ign'})[outcome + 1], 1)
  if state == 'closed' and ticket == gen then
    if outcome == 1 then
      cons = cons + 1
      if cons >= tonumber(ARGV[7]) then move('open', now) end
    elseif outcome == 0 then
      cons = 0
    end
  elseif state == 'half_open' and redis.call('ZREM', leases, ticket) == 1 then
    if outcome == 1 then
      move('open', now)
    elseif outcome == 0 then
      pok = pok + 1
      if pok >= tonumber(ARGV[8]) then move('closed', now) end
    end
  end
  save()
  return {old, state}
elseif op == 'abandon' then
  -- ARGV: 5 ticket, 6 1 to count the call as neither success nor failure
  redis.call('ZREM', leases, tonumber(ARGV[5]))
  if ARGV[6] == '1' then redis.call('HINCRBY', st, 'ign', 1) end
  return 1
elseif op == 'read' then
  if state ~= 'closed' and state ~= 'forced_open' then advance() save() end
  local c = redis.call('HMGET', st, 'succ', 'fail', 'ign', 'rej')
  return {old, state, cons, num(c[1]), num(c[2]), num(c[3]), num(c[4]),
    redis.call('ZCARD', leases), retry_after(), opened, now}
elseif op == 'reset' or op == 'force_open' then
  if op == 'reset' then move('closed', now) else move('forced_open', now) end
  save()
  return {old, state}
end
return redis.error_reply('unknown operation ' .. tostring(op))
"""
)
