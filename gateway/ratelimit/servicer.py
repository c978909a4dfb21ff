"""`envoy.service.ratelimit.v3.RateLimitService` over the fixed-window limiter: the
transport only (unpack the request, ask the limiter, pack the response)."""

from __future__ import annotations

import functools
import logging
from typing import Any, TypeAlias

import grpc
from envoy.service.ratelimit.v3 import rls_pb2
from redis.exceptions import RedisError

from gateway.ratelimit.limiter import FixedWindowLimiter, Verdict, ratelimit_headers
from gateway.ratelimit.rules import Rule
from services.runtime.errors import FieldViolation, InvalidArgument, Unavailable

log = logging.getLogger("llmmesh.ratelimit")

# Envoy's generated modules ship no type stubs: to mypy their messages are Any.
RequestMessage: TypeAlias = Any  # envoy.service.ratelimit.v3.RateLimitRequest
ResponseMessage: TypeAlias = Any  # envoy.service.ratelimit.v3.RateLimitResponse

Response = rls_pb2.RateLimitResponse
_UNITS = {"second": Response.RateLimit.SECOND, "minute": Response.RateLimit.MINUTE,
          "hour": Response.RateLimit.HOUR, "day": Response.RateLimit.DAY}


class RateLimitServicer:
    """Answers Envoy's ratelimit filter.

    `redis_failure` says what a request gets while Redis cannot count: `error`
    (UNAVAILABLE; the caller's failure mode decides), `allow` (OK) or `deny` (OVER_LIMIT).
    """

    def __init__(self, limiter: FixedWindowLimiter, redis_failure: str = "error") -> None:
        self._limiter = limiter
        self._redis_failure = redis_failure

    async def ShouldRateLimit(self, request: RequestMessage,
                              context: grpc.aio.ServicerContext[Any, Any]) -> ResponseMessage:
        violations = []
        if not request.domain:
            violations.append(FieldViolation("domain", "must not be empty"))
        if not request.descriptors:
            violations.append(FieldViolation("descriptors", "must not be empty"))
        default_hits = request.hits_addend or 1
        descriptors = []
        for index, descriptor in enumerate(request.descriptors):
            entries = tuple([(entry.key, entry.value) for entry in descriptor.entries])
            if not entries:
                violations.append(FieldViolation(f"descriptors[{index}].entries",
                                                 "must not be empty"))
            hits = (descriptor.hits_addend.value if descriptor.HasField("hits_addend")
                    else default_hits)
            descriptors.append((entries, hits))
        if violations:
            raise InvalidArgument(violations)
        try:
            verdicts = await self._limiter.decide(request.domain, descriptors)
        except RedisError as error:
            return self._without_redis(error, len(descriptors))
        return _response(verdicts)

    def _without_redis(self, error: RedisError, count: int) -> ResponseMessage:
        log.warning("redis unavailable (%s: %s); answering %s", type(error).__name__, error,
                    self._redis_failure)
        if self._redis_failure == "allow":
            return Response(overall_code=Response.OK,
                            statuses=[Response.DescriptorStatus(code=Response.OK)] * count)
        if self._redis_failure == "deny":
            return Response(
                overall_code=Response.OVER_LIMIT,
                statuses=[Response.DescriptorStatus(code=Response.OVER_LIMIT)] * count)
        raise Unavailable("rate limit counters are unavailable", reason="REDIS_UNAVAILABLE",
                          retry_after_seconds=1.0)


@functools.cache
def _limit(rule: Rule) -> Any:
    """A rule as a status's `current_limit` (copied into each response, never changed)."""
    return Response.RateLimit(name=rule.name, requests_per_unit=rule.requests_per_unit,
                              unit=_UNITS[rule.unit])


def _response(verdicts: list[Verdict]) -> ResponseMessage:
    # Filled in place (add, CopyFrom): about half the cost of nested constructors.
    response = Response()
    first_over: Rule | None = None
    for verdict in verdicts:
        rule = verdict.rule
        if rule is None:
            response.statuses.add(code=Response.OK)
            continue
        status = response.statuses.add(
            code=Response.OVER_LIMIT if verdict.over_limit else Response.OK,
            limit_remaining=verdict.remaining)
        status.current_limit.CopyFrom(_limit(rule))
        # reset_seconds > 0 (the window ends after now): no normalisation needed.
        reset = status.duration_until_reset
        reset.seconds, reset.nanos = divmod(int(verdict.reset_seconds * 1e9), 1_000_000_000)
        if verdict.over_limit and first_over is None:
            first_over = rule
    if first_over is None:
        response.overall_code = Response.OK
    else:
        response.overall_code = Response.OVER_LIMIT
        response.raw_body = (f"rate limit exceeded: {first_over.requests_per_unit} per "
                             f"{first_over.unit}").encode()
    add_header = response.response_headers_to_add.add
    for key, value in ratelimit_headers(verdicts):
        add_header(key=key, value=value)
    return response
