"""A rate limiter shared by every worker on every machine, kept in Redis.

Two buckets per model endpoint, refilled continuously like OpenAI's: requests per minute and
tokens per minute. A call is charged before it is sent, the way OpenAI charges it (the larger of
the prompt and ``max_tokens``); workers wait for capacity instead of collecting 429s, and the
``x-ratelimit-remaining-*`` headers and 429s of the endpoint correct the buckets.
"""

from __future__ import annotations

import time

import redis

from service.core.logs import log
from service.core.profiles import RateTier

# KEYS[1]: the bucket. ARGV: rpm, tpm, tokens to charge. Returns milliseconds to wait (0 = taken).
# The clock is Redis's own, so workers on different machines agree.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm, tpm, charge = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local s = redis.call('HMGET', KEYS[1], 'r', 't', 'ts', 'blocked')
local r = tonumber(s[1]) or rpm
local k = tonumber(s[2]) or tpm
local ts = tonumber(s[3]) or now
local blocked = tonumber(s[4]) or 0
local minutes = math.max(0, now - ts) / 60000
r = math.min(rpm, r + minutes * rpm)
k = math.min(tpm, k + minutes * tpm)
local wait = 0
if now < blocked then wait = blocked - now end
if rpm > 0 and r < 1 then wait = math.max(wait, (1 - r) * 60000 / rpm) end
if tpm > 0 and k < charge then wait = math.max(wait, (charge - k) * 60000 / tpm) end
if wait == 0 then
  r = r - 1
  k = k - charge
end
redis.call('HSET', KEYS[1], 'r', r, 't', k, 'ts', now)
redis.call('PEXPIRE', KEYS[1], 180000)
return math.ceil(wait)
"""

# ARGV: remaining requests (or -1), remaining tokens (or -1), block for ms (0 = none).
_CORRECT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rr, rt, block = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local s = redis.call('HMGET', KEYS[1], 'r', 't', 'blocked')
if rr >= 0 and s[1] and tonumber(s[1]) > rr then redis.call('HSET', KEYS[1], 'r', rr) end
if rt >= 0 and s[2] and tonumber(s[2]) > rt then redis.call('HSET', KEYS[1], 't', rt) end
if block > 0 then
  redis.call('HSET', KEYS[1], 'blocked', math.max(tonumber(s[3]) or 0, now + block))
end
return 0
"""


class RateLimiter:
    def __init__(self, client: redis.Redis, key: str, limits: RateTier, max_wait_s: float = 600) -> None:
        self.client, self.key, self.limits, self.max_wait_s = client, key, limits, max_wait_s
        self._acquire = client.register_script(_ACQUIRE)
        self._correct = client.register_script(_CORRECT)

    def acquire(self, tokens: int) -> float:
        """Blocks until the call may be sent; returns the seconds waited."""
        if not self.limits.enabled:
            return 0.0
        started = time.monotonic()
        while True:
            wait_ms = int(self._acquire(keys=[self.key], args=[self.limits.rpm, self.limits.tpm,
                                                                min(tokens, self.limits.tpm or tokens)]))
            if wait_ms <= 0:
                return time.monotonic() - started
            waited = time.monotonic() - started
            if waited > self.max_wait_s:
                raise TimeoutError(f"no rate-limit capacity after {waited:.0f} s")
            # Sleep a little longer than needed so waiting workers do not all wake at once.
            time.sleep(min(wait_ms / 1000 * 1.05 + 0.005, 5.0))

    def observe(self, headers: dict[str, str] | None, retry_after_s: float | None = None) -> None:
        """Corrects the buckets from what the endpoint reported."""
        if not self.limits.enabled or (not headers and not retry_after_s):
            return
        headers = headers or {}

        def number(name: str) -> int:
            try:
                return int(float(headers.get(name, "-1")))
            except ValueError:
                return -1

        block_ms = int((retry_after_s or 0) * 1000)
        try:
            self._correct(keys=[self.key], args=[number("x-ratelimit-remaining-requests"),
                                                 number("x-ratelimit-remaining-tokens"), block_ms])
        except redis.RedisError as exc:
            log.warning("ratelimit.correct_failed", error=str(exc))
