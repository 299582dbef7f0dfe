"""The one table from error to HTTP status."""

from __future__ import annotations

import pytest

from protocol import errors
from protocol.messages import ProtocolError


def test_every_error_class_has_a_status_and_a_code() -> None:
    classes = [
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type)
        and issubclass(cls, errors.PodiumError)
        and cls is not errors.PodiumError
    ]
    assert set(classes) == set(errors.HTTP_STATUS)
    for cls in classes:
        assert cls.default_code.islower() and " " not in cls.default_code


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.BadRequest("m"), 400),
        (errors.Unauthorized("m"), 401),
        (errors.Forbidden("m", code="fraud_blocked"), 403),
        (errors.Conflict("m", code="action_token_used"), 409),
        (errors.RateLimited("m", retry_after_s=3), 429),
        (errors.Unavailable("m"), 503),
        (ProtocolError("m"), 400),  # a subclass takes its parent's status
    ],
)
def test_status_follows_the_class(error: errors.PodiumError, status: int) -> None:
    assert errors.http_status(error) == status


def test_error_body_has_the_contract_shape() -> None:
    error = errors.Conflict("already used", code="action_token_used")
    assert errors.error_body(error.code, error.message) == {
        "error": {"code": "action_token_used", "message": "already used"}
    }
