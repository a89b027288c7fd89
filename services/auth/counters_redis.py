"""Limit state in Redis: one Lua script per reserve and per settle, so any number
of auth replicas enforce one limit exactly. Time is Redis's own clock."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.auth.limiter import BucketLevel, Demand, LimitExceeded

# Slot entries of a reservation: its id, or `<id>:<i>` (i from 0) for a lease's
# many (limiter.slot_members); ZADD/ZREM take them in chunks (Lua's unpack limit).
MEMBERS = """
local function members(rid, count, score, kept)
  local out = {}
  if count <= 1 then
    if score then out[1] = score end
    out[#out + 1] = rid
    return {out}
  end
  local chunks = {}
  for i = 0, count - 1 do
    if not (kept and kept[i]) then
      if score then out[#out + 1] = score end
      out[#out + 1] = rid .. ':' .. i
      if #out >= 1000 then chunks[#chunks + 1] = out; out = {} end
    end
  end
  if #out > 0 then chunks[#chunks + 1] = out end
  return chunks
end
"""

# KEYS: bucket keys (n_buckets of them), then slot keys.
# ARGV: reservation id, lease seconds, n_buckets, slot count, block (1: must fit
# whole), then capacity+amount per bucket, then capacity per slot.
# Returns {1, levels...} or {0, index, wait, levels...}.
RESERVE = (
    MEMBERS
    + """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
local rid, lease, nb = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local count, block = tonumber(ARGV[4]), ARGV[5] == '1'
local levels = {}
for i = 1, nb do
  local cap = tonumber(ARGV[4 + 2 * i])
  local state = redis.call('HMGET', KEYS[i], 't', 'ts')
  local t, ts = tonumber(state[1]) or cap, tonumber(state[2]) or now
  levels[i] = math.min(cap, t + math.max(0, now - ts) * cap / 60)
end
local function report(head)
  for i = 1, nb do head[#head + 1] = tostring(levels[i]) end
  return head
end
for i = 1, nb do
  local cap, amount = tonumber(ARGV[4 + 2 * i]), tonumber(ARGV[5 + 2 * i])
  local need = amount
  if not block then need = math.min(amount, cap) end
  if levels[i] < need then
    if need > cap then return report({0, i, '60'}) end
    return report({0, i, tostring((need - levels[i]) * 60 / cap)})
  end
end
for j = nb + 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[j], '-inf', now)
  if redis.call('ZCARD', KEYS[j]) + count > tonumber(ARGV[5 + 2 * nb + (j - nb)]) then
    return report({0, j, '1'})
  end
end
for i = 1, nb do
  local cap, amount = tonumber(ARGV[4 + 2 * i]), tonumber(ARGV[5 + 2 * i])
  levels[i] = levels[i] - amount
  redis.call('HSET', KEYS[i], 't', tostring(levels[i]), 'ts', tostring(now))
  redis.call('EXPIRE', KEYS[i], math.ceil((cap - levels[i]) * 60 / cap) + 1)
end
if #KEYS > nb then
  local chunks = members(rid, count, now + lease, nil)
  for j = nb + 1, #KEYS do
    for _, chunk in ipairs(chunks) do redis.call('ZADD', KEYS[j], unpack(chunk)) end
    redis.call('EXPIRE', KEYS[j], math.ceil(lease) + 1)
  end
end
return report({1})
"""
)

# KEYS: settled marker, bucket keys, then slot keys.
# ARGV: reservation id, n_buckets, slot count, then capacity+refund per bucket,
# then the slot indices a lease's running requests keep (not freed here).
SETTLE = (
    MEMBERS
    + """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', 86400) == false then return 0 end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
local rid, nb, count = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 1, nb do
  local cap, refund = tonumber(ARGV[2 + 2 * i]), tonumber(ARGV[3 + 2 * i])
  if refund ~= 0 then
    local key = KEYS[1 + i]
    local state = redis.call('HMGET', key, 't', 'ts')
    local t, ts = tonumber(state[1]) or cap, tonumber(state[2]) or now
    t = math.min(cap, math.min(cap, t + math.max(0, now - ts) * cap / 60) + refund)
    redis.call('HSET', key, 't', tostring(t), 'ts', tostring(now))
    redis.call('EXPIRE', key, math.ceil((cap - t) * 60 / cap) + 1)
  end
end
if #KEYS > nb + 1 then
  local kept = {}
  for k = 4 + 2 * nb, #ARGV do kept[tonumber(ARGV[k])] = true end
  local chunks = members(rid, count, nil, kept)
  for j = nb + 2, #KEYS do
    for _, chunk in ipairs(chunks) do redis.call('ZREM', KEYS[j], unpack(chunk)) end
  end
end
return 1
"""
)


def redis_client(url: str) -> aioredis.Redis:
    """A pooled client whose calls survive a Redis restart: a pooled connection
    found dead (the first use of each after a restart) is replaced and the call
    sent again, up to 3 times within ~0.5 s, instead of failing a request.
    (A reserve sent again after its answer was lost takes its tokens twice, but
    its slot once: slots are keyed by reservation id.)"""
    return aioredis.Redis.from_url(
        url,
        retry=Retry(ExponentialBackoff(cap=0.25, base=0.02), 3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        socket_connect_timeout=1.0,
        socket_timeout=5.0,
        health_check_interval=30,
    )


class RedisCounters:
    def __init__(self, url: str) -> None:
        self.redis = redis_client(url)
        self._reserve = self.redis.register_script(RESERVE)
        self._settle = self.redis.register_script(SETTLE)

    async def ping(self) -> None:
        await self.redis.ping()

    async def reserve(
        self, demand: Demand, reservation_id: str, lease_s: float
    ) -> list[BucketLevel]:
        keys = [b.state_key for b in demand.buckets] + [s.state_key for s in demand.slots]
        args: list[str | int | float] = [reservation_id, lease_s, len(demand.buckets)]
        args += [demand.slot_count, int(demand.block)]
        for bucket in demand.buckets:
            args += [bucket.capacity, bucket.amount]
        args += [slot.capacity for slot in demand.slots]
        answer = await self._reserve(keys=keys, args=args)
        n = len(demand.buckets)
        levels = [
            BucketLevel(b, float(v))
            for b, v in zip(demand.buckets, answer[-n:] if n else [], strict=True)
        ]
        if int(answer[0]) == 1:
            return levels
        index, wait = int(answer[1]) - 1, float(answer[2])
        if index < n:
            b = demand.buckets[index]
            raise LimitExceeded(b.limit, b.scope, b.capacity, wait, levels)
        slot = demand.slots[index - n]
        raise LimitExceeded("max_concurrent", slot.scope, slot.capacity, wait, levels)

    async def settle(
        self,
        demand: Demand,
        reservation_id: str,
        refunds: dict[str, int],
        kept: frozenset[int] = frozenset(),
    ) -> bool:
        """False when this reservation was settled before (by any replica). `kept`:
        a lease's slot entries left held (see limiter.slot_members)."""
        keys = [f"aq:settled:{reservation_id}"] + [b.state_key for b in demand.buckets]
        keys += [s.state_key for s in demand.slots]
        args: list[str | int] = [reservation_id, len(demand.buckets), demand.slot_count]
        for bucket in demand.buckets:
            args += [bucket.capacity, refunds.get(bucket.limit, 0)]
        args += sorted(kept)
        return bool(int(await self._settle(keys=keys, args=args)))

    async def close(self) -> None:
        await self.redis.aclose()
