"""Fixed-window limits: the counters a ShouldRateLimit request touches, and its verdicts.

Every limited descriptor has one counter per window:
`<prefix><domain>|<key>=<value>|...|<window start>`, components percent-encoded so no
two descriptors share a key. A request's counters are incremented together by
BatchedCounter, atomically in one Redis script with those of the requests that arrived
at the same time, so concurrent requests never read the same count and no burst gets past
a limit. On Redis Cluster each counter lives in the slot of its own key (no hash tag: the
counters of one descriptor spread over the cluster window by window), and BatchedCounter
sends a batch as one script call per slot.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import quote

from gateway.ratelimit.counter import BatchedCounter, Increment
from gateway.ratelimit.rules import RateLimitRules, Rule

Entries = tuple[tuple[str, str], ...]
# Descriptors resolved to their rule and counter-key prefix, most recently used kept; only
# short ones, so that long (caller-chosen) values cannot make the cache large.
RESOLVED_CACHE_SIZE = 16_384
CACHED_DESCRIPTOR_CHARS = 256


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome for one descriptor; `rule` is None when it is not limited."""

    rule: Rule | None
    over_limit: bool = False
    remaining: int = 0
    reset_seconds: float = 0.0


UNLIMITED = Verdict(rule=None)


class FixedWindowLimiter:
    """Decides requests against `rules`, counting in Redis through `counter`."""

    def __init__(self, counter: BatchedCounter, rules: RateLimitRules, *,
                 prefix: str = "llmmesh:ratelimit:",
                 clock: Callable[[], float] = time.time) -> None:
        self._counter = counter
        self._rules = rules
        self._prefix = prefix
        self._clock = clock
        self._resolve_cached = functools.lru_cache(maxsize=RESOLVED_CACHE_SIZE)(
            self._resolve_rule)

    async def decide(self, domain: str,
                     descriptors: Sequence[tuple[Entries, int]]) -> list[Verdict]:
        """One verdict per (entries, hits) descriptor, in order.

        Raises redis.RedisError when Redis cannot count.
        """
        now = self._clock()
        resolved = [self._resolve(domain, entries) for entries, _ in descriptors]
        increments = []
        for (_, hits), (rule, key_prefix) in zip(descriptors, resolved, strict=True):
            if rule is not None:
                window = rule.window_seconds
                start = int(now // window) * window
                increments.append(Increment(f"{key_prefix}{start}", hits, window))
        counted = iter(await self._counter.count(increments))
        verdicts = []
        for rule, _ in resolved:
            if rule is None:
                verdicts.append(UNLIMITED)
                continue
            count = next(counted)
            window = rule.window_seconds
            limit = rule.requests_per_unit
            verdicts.append(Verdict(rule=rule, over_limit=count > limit,
                                    remaining=max(limit - count, 0),
                                    reset_seconds=(int(now // window) + 1) * window - now))
        return verdicts

    def _resolve(self, domain: str, entries: Entries) -> tuple[Rule | None, str]:
        if sum(len(key) + len(value) for key, value in entries) <= CACHED_DESCRIPTOR_CHARS:
            return self._resolve_cached(domain, entries)
        return self._resolve_rule(domain, entries)

    def _resolve_rule(self, domain: str, entries: Entries) -> tuple[Rule | None, str]:
        """A descriptor's rule and its counters' key without the window start."""
        rule = self._rules.rule_for(domain, entries)
        if rule is None:
            return None, ""
        parts = [quote(domain, safe="")]
        parts += [f"{quote(key, safe='')}={quote(value, safe='')}" for key, value in entries]
        return rule, f"{self._prefix}{'|'.join(parts)}|"


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
