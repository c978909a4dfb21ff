"""API-key scopes: which methods a key may call, defined once for every service.

A key carries a set of scopes (none = every user method). Whatever its scopes, a key
never reaches the methods that manage credentials and teams (`KEY_FORBIDDEN_SERVICES`):
those need a password (or single sign-on) login's access token. A method no scope names
is refused to a scoped key (fail closed: a new method needs a scope before keys use it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

CHAT = "chat"
DOCUMENTS_READ = "documents.read"
DOCUMENTS_WRITE = "documents.write"
EMBEDDINGS = "embeddings"
USAGE_READ = "usage.read"

_CHAT = "llmmesh.chat.v1.ChatService"
_DOCUMENT = "llmmesh.document.v1.DocumentService"
_EMBEDDING = "llmmesh.embedding.v1.EmbeddingService"
_AUTH = "llmmesh.auth.v1.AuthService"
_OPERATIONS = "google.longrunning.Operations"

# Scope -> the full method names (`/pkg.Service/Method`) or whole services (`pkg.Service`)
# it grants.
SCOPES: Mapping[str, frozenset[str]] = {
    CHAT: frozenset({_CHAT}),
    DOCUMENTS_READ: frozenset({
        f"/{_DOCUMENT}/{name}" for name in (
            "SearchDocuments", "GetDocument", "ListDocuments", "ListCollections")}
        | {f"/{_OPERATIONS}/{name}" for name in ("GetOperation", "ListOperations",
                                                 "WaitOperation")}),
    DOCUMENTS_WRITE: frozenset({
        f"/{_DOCUMENT}/{name}" for name in (
            "CreateDocument", "UploadDocument", "IngestDocument", "ImportDocument",
            "DeleteDocument")}
        | {f"/{_OPERATIONS}/{name}" for name in ("CancelOperation", "DeleteOperation")}),
    EMBEDDINGS: frozenset({_EMBEDDING}),
    USAGE_READ: frozenset({f"/{_AUTH}/GetUser", f"/{_AUTH}/GetUsage"}),
}

# Never callable with a key, whatever its scopes.
KEY_FORBIDDEN_SERVICES = frozenset({
    "llmmesh.auth.v1.ApiKeyService", "llmmesh.auth.v1.TeamService"})
KEY_FORBIDDEN_METHODS = frozenset({f"/{_AUTH}/Logout"})


def unknown_scopes(scopes: Iterable[str]) -> list[str]:
    """The scopes in `scopes` that are not defined."""
    return [scope for scope in scopes if scope not in SCOPES]


def key_may_call(method: str, scopes: Iterable[str]) -> bool:
    """Whether a key with `scopes` (empty: all) may call `method` (`/pkg.Service/Method`)."""
    service = method.strip("/").split("/")[0]
    if service in KEY_FORBIDDEN_SERVICES or method in KEY_FORBIDDEN_METHODS:
        return False
    granted = list(scopes)
    if not granted:
        return True
    return any(method in SCOPES.get(scope, ()) or service in SCOPES.get(scope, ())
               for scope in granted)
