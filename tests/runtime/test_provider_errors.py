"""The one provider-failure mapping chat and embedding share, without sockets."""

from __future__ import annotations

import grpc
import httpx2
import openai
import pytest

from services.runtime.errors import LlmmeshError, NotFound, Unavailable
from services.runtime.provider_errors import (
    DEFAULT_RETRY_SECONDS,
    MAX_RETRY_SECONDS,
    provider_error,
)

REQUEST = httpx2.Request("POST", "http://provider.test/v1/chat/completions")


def _answer(status: int, retry_after: str | None = None) -> httpx2.Response:
    headers = {"retry-after": retry_after} if retry_after is not None else {}
    return httpx2.Response(status, headers=headers, request=REQUEST)


def _status_error(status: int, retry_after: str | None = None) -> openai.APIStatusError:
    kind = {429: openai.RateLimitError, 400: openai.BadRequestError,
            401: openai.AuthenticationError, 500: openai.InternalServerError}.get(
        status, openai.APIStatusError)
    return kind(f"HTTP {status}", response=_answer(status, retry_after), body=None)


@pytest.mark.parametrize(("error", "code", "reason", "retry", "provider_status"), [
    (_status_error(429, "7"), grpc.StatusCode.RESOURCE_EXHAUSTED, "MODEL_RATE_LIMITED",
     7.0, "429"),
    (_status_error(429), grpc.StatusCode.RESOURCE_EXHAUSTED, "MODEL_RATE_LIMITED",
     DEFAULT_RETRY_SECONDS, "429"),
    (_status_error(500), grpc.StatusCode.UNAVAILABLE, "MODEL_UNAVAILABLE",
     DEFAULT_RETRY_SECONDS, "500"),
    (_status_error(503, "2"), grpc.StatusCode.UNAVAILABLE, "MODEL_UNAVAILABLE", 2.0, "503"),
    (_status_error(400), grpc.StatusCode.FAILED_PRECONDITION, "MODEL_REJECTED", None, "400"),
    (_status_error(401), grpc.StatusCode.FAILED_PRECONDITION, "MODEL_REJECTED", None, "401"),
    (openai.APITimeoutError(request=REQUEST), grpc.StatusCode.DEADLINE_EXCEEDED,
     "MODEL_TIMEOUT", None, None),
    (httpx2.ReadTimeout("read timed out", request=REQUEST), grpc.StatusCode.DEADLINE_EXCEEDED,
     "MODEL_TIMEOUT", None, None),
    (openai.APIConnectionError(request=REQUEST), grpc.StatusCode.UNAVAILABLE,
     "MODEL_UNAVAILABLE", DEFAULT_RETRY_SECONDS, None),
    (httpx2.RemoteProtocolError("peer closed", request=REQUEST), grpc.StatusCode.UNAVAILABLE,
     "MODEL_UNAVAILABLE", DEFAULT_RETRY_SECONDS, None),
    (openai.APIError("stream broke", REQUEST, body=None), grpc.StatusCode.UNAVAILABLE,
     "MODEL_UNAVAILABLE", DEFAULT_RETRY_SECONDS, None),
], ids=["429-retry-after", "429", "500", "503-retry-after", "400", "401", "sdk-timeout",
        "http-timeout", "refused", "dropped", "mid-answer"])
def test_provider_failures_map_to_one_status_and_reason(
        error: BaseException, code: grpc.StatusCode, reason: str, retry: float | None,
        provider_status: str | None) -> None:
    mapped = provider_error(error, "gpt-test")
    assert mapped is not None
    assert (mapped.code, mapped.reason) == (code, reason)
    assert mapped.metadata.get("model") == "gpt-test"
    assert mapped.metadata.get("provider_status") == provider_status
    assert getattr(mapped, "retry_after_seconds", None) == retry
    assert "gpt-test" in mapped.message


@pytest.mark.parametrize(("header", "seconds"), [
    ("soon", DEFAULT_RETRY_SECONDS), ("nan", DEFAULT_RETRY_SECONDS),
    ("inf", DEFAULT_RETRY_SECONDS), ("-5", 0.0), ("99999999", MAX_RETRY_SECONDS),
    ("0.25", 0.25),
])
def test_retry_after_is_read_safely(header: str, seconds: float) -> None:
    mapped = provider_error(_status_error(429, header), "m")
    assert getattr(mapped, "retry_after_seconds", None) == seconds


def test_domain_errors_stay_and_anything_else_is_not_a_provider_failure() -> None:
    ours: LlmmeshError = Unavailable("embedding service is unavailable")
    assert provider_error(ours, "m") is ours
    missing = NotFound("document", "documents/x")
    assert provider_error(missing, "m") is missing
    assert provider_error(ValueError("a bug"), "m") is None
    assert provider_error(KeyError("a bug"), "m") is None
