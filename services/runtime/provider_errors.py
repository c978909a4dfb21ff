"""Model provider (openai SDK) failures as domain errors, the same in every service
that calls a provider (chat's chat models, embedding's OpenAI-compatible models).

    rate limited (429)          RESOURCE_EXHAUSTED  MODEL_RATE_LIMITED + RetryInfo
                                                    (Retry-After, else 1 s)
    down (5xx)                  UNAVAILABLE         MODEL_UNAVAILABLE + RetryInfo (likewise)
    unreachable, or failed      UNAVAILABLE         MODEL_UNAVAILABLE + RetryInfo (1 s)
    mid-answer
    timed out                   DEADLINE_EXCEEDED   MODEL_TIMEOUT
    refused the request (4xx)   FAILED_PRECONDITION MODEL_REJECTED (a model misconfigured,
                                                    or the input refused)

Every error names the model (`model`) in its metadata, and an HTTP answer its status
(`provider_status`). Importing this module imports openai: import it where a provider
is used.
"""

from __future__ import annotations

import math

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
    """Our error for a failure calling `model`'s provider; a domain error stays as it is,
    and anything else is None (not a provider failure: the caller decides)."""
    if isinstance(error, LlmmeshError):
        return error
    meta = {"model": model}
    if isinstance(error, openai.RateLimitError):
        meta["provider_status"] = str(error.status_code)
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


def retry_after_seconds(error: BaseException) -> float | None:
    """The delay a provider's HTTP error asked for (`Retry-After`, in seconds); None
    when it named none (or was no HTTP answer)."""
    if not isinstance(error, openai.APIStatusError):
        return None
    if not error.response.headers.get("retry-after"):
        return None
    return _retry_after(error.response)


def _retry_after(response: httpx2.Response) -> float:
    raw = response.headers.get("retry-after", "")
    try:
        seconds = float(raw)
    except ValueError:
        return DEFAULT_RETRY_SECONDS
    if not math.isfinite(seconds):  # "nan" and "inf" parse as floats
        return DEFAULT_RETRY_SECONDS
    return min(max(seconds, 0.0), MAX_RETRY_SECONDS)
