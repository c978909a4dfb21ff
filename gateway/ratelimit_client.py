"""The edge's side of rate limiting: descriptors built as Envoy's route actions build
them, one ShouldRateLimit call, and the ratelimit filter's handling of the answer.

- methods needing a token: [route_class, user] and [user], the user being the verified
  token's `sub` (jwt_authn's payload metadata in Envoy), never a header;
- public methods: [route_class, remote_address], the connection's peer address;
- a descriptor whose caller is unknown is dropped; no descriptors, no call;
- OVER_LIMIT: 429 with `x-envoy-ratelimited: true` and the service's headers;
- an error or timeout: allowed, unless the spec says `ratelimit_failure_mode_deny`
  (then 503, as `status_on_error`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import grpc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from gateway.spec import REMOTE_ADDRESS_KEY, ROUTE_CLASS_KEY, USER_KEY, EdgeSpec

log = logging.getLogger("llmmesh.edge")

Descriptor = list[tuple[str, str]]


def descriptors_for(spec: EdgeSpec, class_name: str, *, user: str | None,
                    remote_address: str | None) -> list[Descriptor]:
    route_class = spec.route_class(class_name)
    if route_class.key == "remote_address":
        if not remote_address:
            return []
        return [[(ROUTE_CLASS_KEY, class_name), (REMOTE_ADDRESS_KEY, remote_address)]]
    if not user:
        return []
    return [[(ROUTE_CLASS_KEY, class_name), (USER_KEY, user)], [(USER_KEY, user)]]


@dataclass(frozen=True)
class Decision:
    """What the edge does with the request."""

    status: int | None = None  # None: go on; else the status to answer with
    message: str = ""
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    request_headers: list[tuple[str, str]] = field(default_factory=list)


class RateLimitClient:
    """Asks the rate limit service over one long-lived channel."""

    def __init__(self, channel: grpc.aio.Channel, spec: EdgeSpec) -> None:
        self._stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        self._domain = spec.domain
        self._timeout = spec.ratelimit_timeout_seconds
        self._deny_on_error = spec.ratelimit_failure_mode_deny

    async def check(self, descriptors: list[Descriptor]) -> Decision:
        if not descriptors:
            return Decision()
        request = rls_pb2.RateLimitRequest(domain=self._domain, descriptors=[
            ratelimit_pb2.RateLimitDescriptor(entries=[
                ratelimit_pb2.RateLimitDescriptor.Entry(key=key, value=value)
                for key, value in descriptor])
            for descriptor in descriptors])
        try:
            answer = await self._stub.ShouldRateLimit(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            log.warning("rate limit service failed", extra={"code": error.code().name})
            return Decision(status=503) if self._deny_on_error else Decision()
        headers = [(h.key, h.value) for h in answer.response_headers_to_add]
        if answer.overall_code == rls_pb2.RateLimitResponse.OVER_LIMIT:
            return Decision(status=429, message=answer.raw_body.decode("utf-8", "replace"),
                            response_headers=[("x-envoy-ratelimited", "true"), *headers])
        return Decision(response_headers=headers,
                        request_headers=[(h.key, h.value)
                                         for h in answer.request_headers_to_add])
