"""CORS as Envoy's cors filter applies it: a preflight (OPTIONS with Origin and
Access-Control-Request-Method) from an allowed origin is answered at once; one from
another origin goes on like any request; responses to allowed origins carry
Access-Control-Allow-Origin (the origin itself) and the exposed headers."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.spec import CorsSpec


class Cors:
    """The CORS policy of the edge."""

    def __init__(self, spec: CorsSpec) -> None:
        self._spec = spec

    def allowed(self, origin: str | None) -> bool:
        return bool(origin) and ("*" in self._spec.allow_origins
                                 or origin in self._spec.allow_origins)

    def is_preflight(self, method: str, headers: Mapping[str, str]) -> bool:
        return (method == "OPTIONS" and self.allowed(headers.get("origin"))
                and bool(headers.get("access-control-request-method")))

    def preflight_headers(self, origin: str) -> dict[str, str]:
        headers = {
            "access-control-allow-origin": origin,
            "access-control-allow-methods": ", ".join(self._spec.allow_methods),
            "access-control-allow-headers": ", ".join(self._spec.allow_headers),
            "access-control-max-age": str(self._spec.max_age_seconds),
        }
        if self._spec.allow_credentials:
            headers["access-control-allow-credentials"] = "true"
        return headers

    def response_headers(self, origin: str | None) -> dict[str, str]:
        if origin is None or not self.allowed(origin):
            return {}
        headers = {"access-control-allow-origin": origin,
                   "access-control-expose-headers": ", ".join(self._spec.expose_headers)}
        if self._spec.allow_credentials:
            headers["access-control-allow-credentials"] = "true"
        return headers
