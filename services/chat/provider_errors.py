"""Model provider failures as domain errors.

    rate limited (429)          -> RESOURCE_EXHAUSTED + RetryInfo (Retry-After, else 1 s)
    down (5xx, refused, reset)  -> UNAVAILABLE + RetryInfo
    timed out                   -> DEADLINE_EXCEEDED
    refused the request (4xx)   -> FAILED_PRECONDITION (a model misconfigured or the
                                   prompt refused; the status is in the metadata)
"""

from __future__ import annotations

import httpx2
import openai

from services.runtime.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    LlmmeshError,
    ResourceExhausted,
    Unavailable,
)

DEFAULT_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 3600.0


def provider_error(error: BaseException, model: str) -> LlmmeshError | None:
    """The domain error for a provider failure; None for anything else."""
    if isinstance(error, LlmmeshError):
        return error
    meta = {"model": model}
    if isinstance(error, openai.RateLimitError):
        return ResourceExhausted(f"model {model!r} is rate limited; retry later",
                                 reason="MODEL_RATE_LIMITED", metadata=meta,
                                 retry_after_seconds=_retry_after(error.response))
    if isinstance(error, openai.APITimeoutError | httpx2.TimeoutException):
        return DeadlineExceeded(f"model {model!r} did not answer in time",
                                reason="MODEL_TIMEOUT", metadata=meta)
    if isinstance(error, openai.APIStatusError):
        status = error.status_code
        meta["provider_status"] = str(status)
        if status >= 500:
            return Unavailable(f"model {model!r} is unavailable (HTTP {status})",
                               reason="MODEL_UNAVAILABLE", metadata=meta,
                               retry_after_seconds=_retry_after(error.response))
        return FailedPrecondition(f"model {model!r} refused the request (HTTP {status})",
                                  reason="MODEL_REJECTED", metadata=meta)
    if isinstance(error, openai.APIConnectionError | httpx2.TransportError):
        return Unavailable(f"model {model!r} is unreachable", reason="MODEL_UNAVAILABLE",
                           metadata=meta, retry_after_seconds=DEFAULT_RETRY_SECONDS)
    if isinstance(error, openai.APIError):
        return Unavailable(f"model {model!r} failed mid-answer", reason="MODEL_UNAVAILABLE",
                           metadata=meta, retry_after_seconds=DEFAULT_RETRY_SECONDS)
    return None


def _retry_after(response: httpx2.Response) -> float:
    raw = response.headers.get("retry-after", "")
    try:
        seconds = float(raw)
    except ValueError:
        return DEFAULT_RETRY_SECONDS
    return min(max(seconds, 0.0), MAX_RETRY_SECONDS)
