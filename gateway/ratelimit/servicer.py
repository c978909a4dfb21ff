"""`envoy.service.ratelimit.v3.RateLimitService` over the fixed-window limiter: the
transport only (unpack the request, ask the limiter, pack the response)."""

from __future__ import annotations

import logging

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from redis.exceptions import RedisError

from gateway.ratelimit.limiter import FixedWindowLimiter, Verdict, ratelimit_headers
from services.runtime.errors import FieldViolation, InvalidArgument, Unavailable

log = logging.getLogger("llmmesh.ratelimit")

Response = rls_pb2.RateLimitResponse
_UNITS = {"second": Response.RateLimit.SECOND, "minute": Response.RateLimit.MINUTE,
          "hour": Response.RateLimit.HOUR, "day": Response.RateLimit.DAY}


class RateLimitServicer(rls_pb2_grpc.RateLimitServiceServicer):
    """Answers Envoy's ratelimit filter and the Python edge alike.

    `redis_failure` says what a request gets while Redis cannot count: `error`
    (UNAVAILABLE; the caller's failure mode decides), `allow` (OK) or `deny` (OVER_LIMIT).
    """

    def __init__(self, limiter: FixedWindowLimiter, redis_failure: str = "error") -> None:
        self._limiter = limiter
        self._redis_failure = redis_failure

    async def ShouldRateLimit(self, request: rls_pb2.RateLimitRequest,
                              context: grpc.aio.ServicerContext) -> Response:
        violations = []
        if not request.domain:
            violations.append(FieldViolation("domain", "must not be empty"))
        if not request.descriptors:
            violations.append(FieldViolation("descriptors", "must not be empty"))
        for index, descriptor in enumerate(request.descriptors):
            if not descriptor.entries:
                violations.append(FieldViolation(f"descriptors[{index}].entries",
                                                 "must not be empty"))
        if violations:
            raise InvalidArgument(violations)
        default_hits = request.hits_addend or 1
        descriptors = [
            ([(entry.key, entry.value) for entry in descriptor.entries],
             descriptor.hits_addend.value if descriptor.HasField("hits_addend")
             else default_hits)
            for descriptor in request.descriptors
        ]
        try:
            verdicts = await self._limiter.decide(request.domain, descriptors)
        except RedisError as error:
            return self._without_redis(error, len(descriptors))
        return _response(verdicts)

    def _without_redis(self, error: RedisError, count: int) -> Response:
        log.warning("redis unavailable", extra={"error": str(error),
                                                "mode": self._redis_failure})
        if self._redis_failure == "allow":
            return Response(overall_code=Response.OK,
                            statuses=[Response.DescriptorStatus(code=Response.OK)] * count)
        if self._redis_failure == "deny":
            return Response(
                overall_code=Response.OVER_LIMIT,
                statuses=[Response.DescriptorStatus(code=Response.OVER_LIMIT)] * count)
        raise Unavailable("rate limit counters are unavailable", reason="REDIS_UNAVAILABLE",
                          retry_after_seconds=1.0)


def _status(verdict: Verdict) -> Response.DescriptorStatus:
    if verdict.rule is None:
        return Response.DescriptorStatus(code=Response.OK)
    status = Response.DescriptorStatus(
        code=Response.OVER_LIMIT if verdict.over_limit else Response.OK,
        current_limit=Response.RateLimit(name=verdict.rule.name,
                                         requests_per_unit=verdict.rule.requests_per_unit,
                                         unit=_UNITS[verdict.rule.unit]),
        limit_remaining=verdict.remaining)
    status.duration_until_reset.FromNanoseconds(int(verdict.reset_seconds * 1e9))
    return status


def _response(verdicts: list[Verdict]) -> Response:
    over = [verdict for verdict in verdicts if verdict.over_limit and verdict.rule]
    body = b""
    if over and over[0].rule is not None:
        rule = over[0].rule
        body = f"rate limit exceeded: {rule.requests_per_unit} per {rule.unit}".encode()
    return Response(
        overall_code=Response.OVER_LIMIT if over else Response.OK,
        raw_body=body,
        statuses=[_status(verdict) for verdict in verdicts],
        response_headers_to_add=[base_pb2.HeaderValue(key=key, value=value)
                                 for key, value in ratelimit_headers(verdicts)])
