"""Domain errors raised by core modules. They carry no HTTP knowledge: the API layer maps each
class to a status and an OpenAI error type in one table (`api/v1/errors.py`), and workers map them
to ack / retry / dead-letter. Messages are safe to show to callers: never put secrets, raw inputs
or upstream bodies in them.
"""

from __future__ import annotations


class TLDWError(Exception):
    """Base class. `code` is the machine-readable reason; `param` names the offending field."""

    code: str = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidInput(TLDWError):
    code = "invalid_value"


class InputTooLong(InvalidInput):
    code = "input_too_long"


class UnknownProvider(InvalidInput):
    code = "unknown_provider"


class PayloadTooLarge(TLDWError):
    code = "request_too_large"


class QuotaExceeded(TLDWError):
    """A per-user allowance is used up (stored media bytes): waiting does not help, deleting does."""

    code = "quota_exceeded"


class AuthenticationFailed(TLDWError):
    code = "invalid_api_key"


class PermissionDenied(TLDWError):
    code = "permission_denied"


class NotFound(TLDWError):
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(TLDWError):
    """The resource already exists (a vector store name, say)."""

    code = "conflict"


class UnsupportedMediaType(TLDWError):
    code = "unsupported_media_type"


class ProviderNotImplemented(TLDWError):
    code = "provider_not_implemented"


class ProviderError(TLDWError):
    """The upstream provider or local model failed or answered something unusable."""

    code = "provider_error"


class UpstreamRejectedRequest(ProviderError):
    """The upstream refused this one request (HTTP 400, 413, 422, ...): a fault of the request as
    the upstream sees it, not of the upstream's health, so it never trips a circuit breaker."""

    code = "upstream_rejected_request"


class ProviderTransientError(ProviderError):
    """A provider failure worth retrying or falling back from: upstream 5xx, 429, timeout,
    connection error, or an open circuit. `retry_after` is the upstream's hint, in seconds."""

    code = "provider_unavailable"

    def __init__(
        self, message: str, *, retry_after: float | None = None, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.retry_after = retry_after


class RetryableError(TLDWError):
    """Base for errors a caller may retry after `retry_after` seconds."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.retry_after = retry_after


class RateLimited(RetryableError):
    code = "rate_limit_exceeded"


class Overloaded(RetryableError):
    code = "overloaded"


class ServiceUnavailable(RetryableError):
    code = "service_unavailable"


class CircuitOpenError(ServiceUnavailable):
    code = "circuit_open"


# --- what a pipeline worker does with an error (the HTTP table is `api/v1/errors.py`) ------------
class WorkerOutcome:
    """How a stage worker settles a message whose handler raised."""

    RETRY = "retry"              # transient: deliver again after a backoff, dead-letter past max retries
    DEAD_LETTER = "dead_letter"  # permanent: the job fails now, the message goes to the DLQ with its error
    FAIL_JOB = "fail_job"        # refused by a rule (a quota): the job fails, the message is dropped


# Most specific class first wins (by MRO); anything not a TLDWError (a store or driver fault) retries.
WORKER_OUTCOMES: dict[type[TLDWError], str] = {
    TLDWError: WorkerOutcome.DEAD_LETTER,
    RetryableError: WorkerOutcome.RETRY,            # rate limited, overloaded, unavailable, circuit open
    ProviderTransientError: WorkerOutcome.RETRY,    # upstream 5xx / 429 / timeout
    QuotaExceeded: WorkerOutcome.FAIL_JOB,          # nothing wrong with the message: no dead letter
}


def worker_outcome(exc: BaseException) -> str:
    """The `WorkerOutcome` of an exception raised by a stage handler."""
    if not isinstance(exc, TLDWError):
        return WorkerOutcome.RETRY
    for cls in type(exc).__mro__:
        if cls in WORKER_OUTCOMES:
            return WORKER_OUTCOMES[cls]
    return WorkerOutcome.DEAD_LETTER
