"""The Python edge's route table: every HTTP binding of the exposed services, with what
the edge needs to serve it (message classes, upstream, public or not, rate-limit class,
deadline)."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import descriptor_pool
from google.protobuf.message import Message

from gateway.descriptors import Binding, MethodInfo, message_class, methods_of
from gateway.httprule import Match, PathMatcher
from gateway.spec import EdgeSpec


@dataclass(frozen=True)
class Route:
    method: MethodInfo
    binding: Binding
    request_class: type[Message]
    response_class: type[Message]
    upstream: str
    public: bool
    route_class: str
    timeout: float | None


class RouteTable:
    """Finds the route of an HTTP request, as the transcoder's path matcher would."""

    def __init__(self, spec: EdgeSpec, pool: descriptor_pool.DescriptorPool) -> None:
        self._matcher: PathMatcher[Route] = PathMatcher()
        self.methods = methods_of(pool, spec.services)
        for method in self.methods:
            upstream = spec.upstream_for(method.full_name)
            assert upstream is not None
            for binding in method.bindings:
                self._matcher.register(binding.http_method, binding.template, Route(
                    method=method, binding=binding,
                    request_class=message_class(pool, method.descriptor.input_type.full_name),
                    response_class=message_class(pool,
                                                 method.descriptor.output_type.full_name),
                    upstream=upstream.name,
                    public=method.full_name in spec.public_methods,
                    route_class=spec.class_of(method.full_name),
                    timeout=spec.timeout_of(method.full_name, method.server_streaming)))

    def lookup(self, http_method: str, raw_path: str) -> Match[Route] | None:
        """Raises UnicodeDecodeError when a path variable is not UTF-8."""
        return self._matcher.lookup(http_method, raw_path)
