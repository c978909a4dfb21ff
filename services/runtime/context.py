"""Per-call context: request id, the authenticated caller and the live gRPC call.

The server interceptor sets these for the duration of each RPC; domain code reads
them, and peer clients forward them (identity, request id, remaining deadline).
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import grpc

from services.runtime.errors import Unauthenticated


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user (verified JWT) or another llmmesh service."""

    kind: str  # "user" | "service" | "anonymous"
    subject: str = ""
    username: str = ""
    bearer_token: str = ""
    claims: dict[str, Any] = field(default_factory=dict)

    @property
    def is_user(self) -> bool:
        return self.kind == "user"


ANONYMOUS = Principal(kind="anonymous")

request_id_var: ContextVar[str] = ContextVar("llmmesh_request_id", default="")
principal_var: ContextVar[Principal] = ContextVar("llmmesh_principal", default=ANONYMOUS)
# The call being served, whatever its message types.
servicer_context_var: ContextVar[grpc.aio.ServicerContext[Any, Any] | None] = ContextVar(
    "llmmesh_servicer_context", default=None
)


def current_principal() -> Principal:
    """The caller of the RPC being served."""
    return principal_var.get()


def current_user() -> Principal:
    """The calling user; UNAUTHENTICATED when the caller is not a user."""
    principal = principal_var.get()
    if not principal.is_user:
        raise Unauthenticated("this method needs a user's access token",
                              reason="USER_TOKEN_REQUIRED")
    return principal


def remaining_deadline() -> float | None:
    """Seconds left before the current RPC's deadline, or None without one."""
    context = servicer_context_var.get()
    if context is None:
        return None
    remaining = context.time_remaining()
    return None if remaining is None else max(remaining, 0.0)
