"""The quota ledger's Lua scripts (see quota.py for the model they keep).

The same scripts run on a user's month (8 keys, all with the user's hash tag) and on a
team's month (10 keys, all with the team's hash tag: the two extra ones are
`by_member`, member -> tokens charged, and `members`, hold id -> member). On a team a
limit of 0 means no limit; only the team side keeps per-member charges.

KEYS: used, holds, expiry, states, limit, checkpoints, charged, ttls[, by_member, members]
"""

from __future__ import annotations

RETENTION_SECONDS = 400 * 86400  # a year of monthly history, plus slack

# Charges each expired hold its last checkpoint (capped at the hold; none: nothing),
# marks it expired, then computes now, used, reserved and limit (ARGV[1] is the
# default limit). Every operation and read runs it, so usage is never read stale.
_PRELUDE = """
local team = #KEYS > 8
local function keep(ttl)
  for _, i in ipairs({1, 2, 3, 4, 6, 7, 8}) do redis.call('EXPIRE', KEYS[i], ttl) end
  if team then
    redis.call('EXPIRE', KEYS[9], ttl)
    redis.call('EXPIRE', KEYS[10], ttl)
  end
end
local function charge_member(id, delta)
  if team and delta ~= 0 then
    local member = redis.call('HGET', KEYS[10], id)
    if member then redis.call('HINCRBY', KEYS[9], member, delta) end
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
for _, id in ipairs(expired) do
  local held = tonumber(redis.call('HGET', KEYS[2], id) or '0')
  local charge = math.min(tonumber(redis.call('HGET', KEYS[6], id) or '0'), held)
  redis.call('HDEL', KEYS[2], id)
  redis.call('HDEL', KEYS[6], id)
  redis.call('HDEL', KEYS[8], id)
  if redis.call('HGET', KEYS[4], id) == 'held' then
    redis.call('HSET', KEYS[4], id, 'expired')
    redis.call('HSET', KEYS[7], id, charge)
    if charge > 0 then
      redis.call('INCRBY', KEYS[1], charge)
      charge_member(id, charge)
    end
    keep(RETENTION)
  end
end
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now) end
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local reserved = 0
for _, v in ipairs(redis.call('HVALS', KEYS[2])) do reserved = reserved + tonumber(v) end
local limit = tonumber(redis.call('GET', KEYS[5]) or ARGV[1])
local function fits(extra)
  return (team and limit <= 0) or used + reserved + extra <= limit
end
""".replace("RETENTION", str(RETENTION_SECONDS))

# ARGV: default limit, id, tokens, ttl ms, retention s[, member (team side)]
RESERVE = _PRELUDE + """
local tokens = tonumber(ARGV[3])
if not fits(tokens) then return {0, used, reserved, limit, 0} end
local expires = now + tonumber(ARGV[4])
redis.call('HSET', KEYS[2], ARGV[2], tokens)
redis.call('ZADD', KEYS[3], expires, ARGV[2])
redis.call('HSET', KEYS[4], ARGV[2], 'held')
redis.call('HSET', KEYS[8], ARGV[2], ARGV[4])
if team then redis.call('HSET', KEYS[10], ARGV[2], ARGV[6]) end
keep(ARGV[5])
return {1, used, reserved + tokens, limit, expires}
"""

# ARGV: default limit, id, additional tokens, ttl ms, delivered tokens (0: none).
# The checkpoint is recorded (it only grows) even when the growth does not fit. The
# hold lives on for the TTL it was reserved with (ARGV[4] for holds from before ttls).
# A negative addition shrinks the hold (never below 0) and always fits: the ledger
# takes back a team hold's growth that the user's quota refused.
EXTEND = _PRELUDE + """
local state = redis.call('HGET', KEYS[4], ARGV[2])
if not state then return {-1, used, reserved, limit, 0, 0} end
local held = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '-1')
if state ~= 'held' or held < 0 then return {-2, used, reserved, limit, 0, 0} end
local delivered = tonumber(ARGV[5])
if delivered > tonumber(redis.call('HGET', KEYS[6], ARGV[2]) or '0') then
  redis.call('HSET', KEYS[6], ARGV[2], delivered)
end
local extra = tonumber(ARGV[3])
if extra > 0 and not fits(extra) then return {0, used, reserved, limit, 0, held} end
local grown = math.max(held + extra, 0)
local expires = now + tonumber(redis.call('HGET', KEYS[8], ARGV[2]) or ARGV[4])
redis.call('HSET', KEYS[2], ARGV[2], grown)
redis.call('ZADD', KEYS[3], expires, ARGV[2])
return {1, used, reserved + grown - held, limit, expires, grown}
"""

# ARGV: default limit, id, used tokens, retention s. Returns the tokens this call
# charged (last). Settling again with the same usage answers OK and charges nothing;
# settling an expired hold brings its checkpoint charge to the real usage.
SETTLE = _PRELUDE + """
local state = redis.call('HGET', KEYS[4], ARGV[2])
if not state then return {-1, used, reserved, limit, 0} end
local usage = tonumber(ARGV[3])
local charged = tonumber(redis.call('HGET', KEYS[7], ARGV[2]) or '-1')
if state == 'settled' and charged == usage then return {1, used, reserved, limit, 0} end
if state ~= 'held' and state ~= 'expired' then return {-2, used, reserved, limit, 0} end
local held = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0')
local delta = usage
if state == 'expired' then delta = usage - math.max(charged, 0) end
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[6], ARGV[2])
redis.call('HDEL', KEYS[8], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('HSET', KEYS[4], ARGV[2], 'settled')
redis.call('HSET', KEYS[7], ARGV[2], usage)
used = redis.call('INCRBY', KEYS[1], delta)
charge_member(ARGV[2], delta)
keep(ARGV[4])
return {1, used, reserved - held, limit, delta}
"""

# ARGV: default limit, id. Releasing again answers OK; releasing an expired hold
# takes back its checkpoint charge (the caller says nothing was delivered).
RELEASE = _PRELUDE + """
local state = redis.call('HGET', KEYS[4], ARGV[2])
if not state then return {-1, used, reserved, limit} end
if state == 'released' then return {1, used, reserved, limit} end
if state ~= 'held' and state ~= 'expired' then return {-2, used, reserved, limit} end
local held = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0')
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[6], ARGV[2])
redis.call('HDEL', KEYS[8], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('HSET', KEYS[4], ARGV[2], 'released')
if state == 'expired' then
  local charged = tonumber(redis.call('HGET', KEYS[7], ARGV[2]) or '0')
  redis.call('HDEL', KEYS[7], ARGV[2])
  if charged > 0 then
    used = redis.call('DECRBY', KEYS[1], charged)
    charge_member(ARGV[2], -charged)
  end
end
return {1, used, reserved - held, limit}
"""

# ARGV: default limit
READ = _PRELUDE + """
return {1, used, reserved, limit}
"""
