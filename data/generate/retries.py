"""Judging a failed call to a corpus writer's API: worth a retry or not, and how long to wait first.

Shared by every SDK-backed writer: the Anthropic and OpenAI SDKs raise exceptions of the same names,
and both servers speak `retry-after` headers.
"""

from __future__ import annotations

import email.utils
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import ModuleType
from typing import Any


class Failure(Exception):
    """One failed attempt, judged: worth retrying or not, and how long the server asked us to wait."""

    def __init__(self, reason: str, *, retryable: bool, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after


class MalformedResponse(Failure):
    """A 2xx answer whose body is not the shape the API promises (a proxy page, a cut-off body)."""

    def __init__(self, what: str):
        super().__init__(f"malformed response body: {what}", retryable=True)


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5
    base_delay: float = 1.0  # seconds before the first retry; doubles each time
    max_delay: float = 30.0
    max_retry_after: float = 60.0  # a server asking for longer is not waited on past this

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        backoff = min(self.base_delay * 2 ** (attempt - 1), self.max_delay)
        # Jitter spreads the retries of many workers that failed together (one 429 burst).
        return backoff * random.uniform(0.5, 1.0)


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (seconds or an HTTP date); None if absent."""
    if not headers:
        return None
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(float(millis) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


def _api_detail(exc: Any) -> str:
    """The API's own explanation of an error status, e.g. "authentication_error: invalid key"."""
    body = getattr(exc, "body", None)
    error = body.get("error", body) if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        kind = error.get("type")
        detail = f"{kind}: {error['message']}" if kind else str(error["message"])
    else:
        detail = str(getattr(exc, "message", exc))
    return detail[:300]


def classify_sdk_error(exc: BaseException, sdk: ModuleType) -> Failure | None:
    """Judge an exception from the `anthropic` or `openai` SDK (they share these class names).

    None means the exception is not about the API call at all (a bug): let it propagate.
    """
    if isinstance(exc, Failure):
        return exc
    if isinstance(exc, sdk.APITimeoutError):
        return Failure("request timed out", retryable=True)
    if isinstance(exc, sdk.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        why = f"{type(cause).__name__}: {cause}" if cause else str(exc)
        return Failure(f"connection error ({why[:200]})", retryable=True)
    if isinstance(exc, sdk.APIResponseValidationError):
        return MalformedResponse(f"does not match the API schema ({str(exc)[:200]})")
    if isinstance(exc, sdk.APIStatusError):
        return _classify_status(exc.status_code, _api_detail(exc), exc.response.headers)
    if isinstance(exc, (json.JSONDecodeError, UnicodeDecodeError)):
        return MalformedResponse(f"not valid JSON ({exc})")
    base = getattr(sdk, "AnthropicError", None) or getattr(sdk, "OpenAIError", None)
    if base is not None and isinstance(exc, base):
        return Failure(f"{type(exc).__name__}: {exc}", retryable=False)
    return None


def _classify_status(status: int, detail: str, headers: Mapping[str, str]) -> Failure:
    retry_after = parse_retry_after(headers)
    if status == 429:
        return Failure(f"rate limited (HTTP 429, {detail})", retryable=True, retry_after=retry_after)
    if status == 408:  # the server's own timeout: as transient as ours
        return Failure(f"server timed out (HTTP 408, {detail})", retryable=True, retry_after=retry_after)
    if status >= 500:
        return Failure(f"server error (HTTP {status}, {detail})", retryable=True, retry_after=retry_after)
    hint = {
        401: " - check the API key",
        403: " - the key lacks permission",
        404: " - check the model name and base_url",
    }
    return Failure(f"request rejected (HTTP {status}, {detail}){hint.get(status, '')}", retryable=False)
