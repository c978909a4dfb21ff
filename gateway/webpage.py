"""The web chat page the edge serves at `/`: static files in `gateway/web/` (no build
step, no framework, nothing fetched from elsewhere), copied beside Envoy's bootstrap by
`gateway/edge_files.py` and answered by the edge's internal file listener
(`gateway/envoy_config.py`), public, like `/openapi.json`.

The page talks to the REST API of the same origin (`/v1/...`, streams as Server-Sent
Events read with fetch(), since EventSource cannot send the Authorization header).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

WEB_DIR = Path(__file__).resolve().parent / "web"


@dataclass(frozen=True)
class WebFile:
    """One file of the page: the URL path it is served at, its source in `WEB_DIR`, the
    name it has beside the bootstrap (a flat name: a ConfigMap key) and its type."""

    path: str
    source: str
    content_type: str

    @property
    def file(self) -> str:
        return f"web-{self.source}"


WEB_FILES: tuple[WebFile, ...] = (
    WebFile("/", "index.html", "text/html; charset=utf-8"),
    WebFile("/app.js", "app.js", "text/javascript; charset=utf-8"),
    WebFile("/app.css", "app.css", "text/css; charset=utf-8"),
)

# Everything from this origin, nothing inline, nothing from elsewhere.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; "
                           "connect-src 'self'; img-src 'self' data:; form-action 'none'; "
                           "frame-ancestors 'none'; base-uri 'none'")

RESPONSE_HEADERS: tuple[tuple[str, str], ...] = (
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-cache"),
)


def web_files() -> dict[str, bytes]:
    """File name beside the bootstrap -> contents."""
    return {page.file: (WEB_DIR / page.source).read_bytes() for page in WEB_FILES}
