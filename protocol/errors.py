"""Podium's errors: one hierarchy, one table from error to wire.

Every error a client can cause is a :class:`PodiumError` with a stable
snake_case ``code`` and a human ``message``. The edges (HTTP and WebSocket)
turn them into responses with :data:`HTTP_STATUS` and :func:`error_body`;
nothing else decides a status code. The tree::

    PodiumError
    ├── BadRequest            400  malformed request, bad action token
    ├── Unauthorized          401  bad, expired or revoked JWT
    ├── Forbidden             403  blocked by fraud checks, a ban or a role
    ├── NotFound              404  unknown route, leaderboard or user
    ├── MethodNotAllowed      405  known route, wrong method
    ├── Conflict              409  action token already used
    ├── PayloadTooLarge       413  body or message over its limit
    ├── UnsupportedMediaType  415  not JSON
    ├── Unprocessable         422  well-formed but invalid values
    ├── RateLimited           429  too many requests (carries retry_after_s)
    └── Unavailable           503  not ready, draining, or cannot commit

A bug in Podium is *not* a PodiumError: it reaches the edge as any other
exception, is logged with its traceback, and the client sees a generic
``internal_error`` (the only 500 there is).
"""

from __future__ import annotations

from typing import ClassVar, Final


class PodiumError(Exception):
    """An error with a stable machine ``code`` and a human ``message``."""

    default_code: ClassVar[str] = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code


class BadRequest(PodiumError):
    default_code = "bad_request"


class Unauthorized(PodiumError):
    default_code = "unauthorized"


class Forbidden(PodiumError):
    default_code = "forbidden"


class NotFound(PodiumError):
    default_code = "not_found"


class MethodNotAllowed(PodiumError):
    default_code = "method_not_allowed"


class Conflict(PodiumError):
    default_code = "conflict"


class PayloadTooLarge(PodiumError):
    default_code = "payload_too_large"


class UnsupportedMediaType(PodiumError):
    default_code = "unsupported_media_type"


class Unprocessable(PodiumError):
    default_code = "invalid_value"


class RateLimited(PodiumError):
    default_code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class Unavailable(PodiumError):
    default_code = "unavailable"


#: The one table from error class to HTTP status.
HTTP_STATUS: Final[dict[type[PodiumError], int]] = {
    BadRequest: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    MethodNotAllowed: 405,
    Conflict: 409,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    Unprocessable: 422,
    RateLimited: 429,
    Unavailable: 503,
}

INTERNAL_ERROR_CODE: Final = "internal_error"
INTERNAL_ERROR_MESSAGE: Final = "internal error; it has been logged"


def http_status(error: PodiumError) -> int:
    """The HTTP status for ``error`` (its nearest class in :data:`HTTP_STATUS`)."""
    for cls in type(error).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 400


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    """The error body shared by HTTP and WebSocket: ``{"error": {code, message}}``."""
    return {"error": {"code": code, "message": message}}


def error_reply(
    error: PodiumError,
) -> tuple[int, dict[str, dict[str, str]], dict[str, str]]:
    """What an HTTP edge answers ``error`` with: (status, body, extra headers)."""
    headers: dict[str, str] = {}
    retry_after = getattr(error, "retry_after_s", None)
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, round(retry_after)))
    return http_status(error), error_body(error.code, error.message), headers
