"""Fixed-window counting in Redis, and the decision for one ShouldRateLimit request.

Every limited descriptor has one counter per window:
`<prefix><domain>|<key>=<value>|...|<window start>`, components percent-encoded so no
two descriptors share a key. One Lua script adds the hits to all of a request's
counters and sets their expiry: Redis runs it atomically, so concurrent requests never
read the same count and no burst gets past a limit. (In Redis Cluster the keys of one
request would need one hash slot; a single Redis or a replicated primary is assumed.)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import quote

from redis.asyncio import Redis

from gateway.ratelimit.rules import RateLimitRules, Rule

_COUNT_SCRIPT = """
local counts = {}
for i, key in ipairs(KEYS) do
  counts[i] = redis.call('INCRBY', key, ARGV[i])
  if redis.call('TTL', key) < 0 then
    redis.call('EXPIRE', key, ARGV[#KEYS + i])
  end
end
return counts
"""

Entries = Sequence[tuple[str, str]]


@dataclass(frozen=True)
class Verdict:
    """The outcome for one descriptor; `rule` is None when it is not limited."""

    rule: Rule | None
    over_limit: bool = False
    remaining: int = 0
    reset_seconds: float = 0.0


class FixedWindowLimiter:
    """Decides requests against `rules`, counting in Redis."""

    def __init__(self, redis: Redis, rules: RateLimitRules, *,
                 prefix: str = "llmmesh:ratelimit:",
                 clock: Callable[[], float] = time.time) -> None:
        self._rules = rules
        self._prefix = prefix
        self._clock = clock
        self._script = redis.register_script(_COUNT_SCRIPT)

    async def decide(self, domain: str,
                     descriptors: Sequence[tuple[Entries, int]]) -> list[Verdict]:
        """One verdict per (entries, hits) descriptor, in order.

        Raises redis.RedisError when Redis cannot count.
        """
        now = self._clock()
        rules = [self._rules.rule_for(domain, entries) for entries, _ in descriptors]
        keys: list[str] = []
        hits: list[int] = []
        windows: list[int] = []
        for (entries, addend), rule in zip(descriptors, rules, strict=True):
            if rule is None:
                continue
            window = rule.window_seconds
            start = int(now // window) * window
            keys.append(self._key(domain, entries, start))
            hits.append(addend)
            windows.append(window)
        counts = []
        if keys:
            counts = [int(c) for c in await self._script(keys=keys, args=[*hits, *windows])]
        verdicts = []
        counted = iter(counts)
        for rule in rules:
            if rule is None:
                verdicts.append(Verdict(rule=None))
                continue
            count = next(counted)
            window = rule.window_seconds
            reset = (int(now // window) + 1) * window - now
            verdicts.append(Verdict(rule=rule, over_limit=count > rule.requests_per_unit,
                                    remaining=max(rule.requests_per_unit - count, 0),
                                    reset_seconds=reset))
        return verdicts

    def _key(self, domain: str, entries: Entries, window_start: int) -> str:
        parts = [quote(domain, safe="")]
        parts += [f"{quote(key, safe='')}={quote(value, safe='')}" for key, value in entries]
        return f"{self._prefix}{'|'.join(parts)}|{window_start}"


def ratelimit_headers(verdicts: Sequence[Verdict]) -> list[tuple[str, str]]:
    """`x-ratelimit-*` headers in the form of Envoy's DRAFT_VERSION_03: the descriptor
    closest to its limit, then every limit's quota policy (`<limit>;w=<seconds>`)."""
    limited = [verdict for verdict in verdicts if verdict.rule is not None]
    if not limited:
        return []
    closest = min(limited, key=lambda v: (v.remaining, v.reset_seconds))
    assert closest.rule is not None
    policies = ", ".join(f"{v.rule.requests_per_unit};w={v.rule.window_seconds}"
                         for v in limited if v.rule is not None)
    return [
        ("x-ratelimit-limit", f"{closest.rule.requests_per_unit}, {policies}"),
        ("x-ratelimit-remaining", str(closest.remaining)),
        ("x-ratelimit-reset", str(max(math.ceil(closest.reset_seconds), 0))),
    ]
