"""The OpenAPI 3.1 description of the HTTP API, served at ``GET /openapi.json``.

Built from small tables rather than one literal: the shapes that repeat
(error responses, path parameters, objects) are helpers, and the patterns,
enumerations and bounds come from the modules that enforce them wherever
those are public. Each operation lists the error codes that its handler and
the services it calls can actually produce, from :data:`CODES`.

:func:`openapi_document` builds the document once per ``max_limit`` and
returns the cached dict: callers must not mutate it.
``tests/server/test_openapi.py`` checks it against the app's routes.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any, Final

from protocol.action_token import MAX_TOKEN_CHARS
from protocol.leaderboards import BOARD_ID_RE, MAX_SCORE, OPERATORS, RESET_SCHEDULES, SORT_ORDERS
from protocol.passwords import MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS
from server.admin_api import (
    AUDIT_DEFAULT,
    AUDIT_MAX,
    CASES_DEFAULT,
    CASES_MAX,
    EVENT_TYPES,
    MAX_ID,
    MAX_TEXT_CHARS,
    REVIEW_STATUSES,
)

Json = dict[str, Any]

# Patterns the handlers enforce (server.http_api, server.auth), anchored for JSON Schema.
UUID_PATTERN: Final = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
USERNAME_PATTERN: Final = "^[A-Za-z0-9_.-]{3,32}$"
DEVICE_ID_PATTERN: Final = "^[A-Za-z0-9_.:-]{8,128}$"
ACTION_TYPE_PATTERN: Final = "^[a-z][a-z0-9_]{0,31}$"
BOARD_ID_PATTERN: Final = f"^{BOARD_ID_RE.pattern}$"

_DEFAULT_TOP: Final = 10
_DEFAULT_RADIUS: Final = 5
_DEFAULT_HISTORY: Final = 50
_MAX_BEFORE: Final = 2**31 - 1
_MAX_DELTA: Final = 2**53 - 1

#: Every error code the HTTP API answers with: its status, and what it means to a client.
CODES: Final[dict[str, tuple[int, str]]] = {
    "not_found": (404, "no such route here (development routes need PODIUM_DEV_MODE)"),
    "bad_request": (400, "the body is not a JSON object, or a query parameter not an integer"),
    "malformed_json": (400, "the body is not valid JSON"),
    "bad_leaderboard_id": (400, "not a leaderboard id (1-64 of a-z 0-9 _ -, starting a-z/0-9)"),
    "bad_user_id": (400, "a user id is not a lower-case UUID"),
    "bad_cursor": (400, "the cursor is not one this API issued"),
    "bad_id": (400, "a fraud case or score id in the path is not a positive integer"),
    "no_session": (400, "tokens of an external issuer have no session to log out"),
    "action_token_malformed": (400, "not an action token, or its lifetime is not allowed"),
    "action_token_unknown_key": (400, "signed under a key id this server does not accept"),
    "action_token_bad_signature": (400, "the signature does not match (wrong key, or altered)"),
    "action_token_not_yet_valid": (400, "issued in the future: the minting clock is ahead"),
    "action_token_expired": (400, "expired; mint a new one"),
    "action_token_wrong_user": (400, "the action token was minted for another player"),
    "action_type_unknown": (400, "the action type is not configured on this server"),
    "token_missing": (401, "no 'Authorization: Bearer <access token>' header"),
    "token_malformed": (401, "the access token is not a well-formed JWT"),
    "token_unknown_key": (401, "the access token names a key this server does not know"),
    "token_bad_algorithm": (401, "the access token's algorithm is not its key's"),
    "token_bad_signature": (401, "the access token's signature is not valid"),
    "token_expired": (401, "the access token has expired; refresh it"),
    "token_not_yet_valid": (401, "the access token is not valid yet"),
    "token_wrong_issuer": (401, "the access token comes from another issuer"),
    "token_wrong_audience": (401, "the access token is meant for another audience"),
    "session_revoked": (401, "the session was logged out; sign in again"),
    "unknown_user": (401, "the access token's user no longer exists"),
    "bad_key": (401, "missing or wrong service key or admin token"),
    "bad_credentials": (401, "wrong username, email or password"),
    "refresh_invalid": (401, "the refresh token is not valid, expired, or logged out"),
    "forbidden": (403, "only that player or an admin may read this"),
    "user_banned": (403, "the account is banned"),
    "fraud_blocked": (403, "the fraud checks refused this submission (docs/fraud.md)"),
    "leaderboard_not_found": (404, "no such leaderboard"),
    "not_ranked": (404, "the user has no score on this leaderboard"),
    "case_not_found": (404, "no such fraud case"),
    "user_not_found": (404, "no such user"),
    "score_not_found": (404, "no such score history entry"),
    "action_token_used": (409, "the action token was already accepted; do not retry it"),
    "username_taken": (409, "the username is taken"),
    "email_taken": (409, "the email is already registered"),
    "leaderboard_exists": (409, "a leaderboard with that id exists"),
    "score_already_removed": (409, "the score was removed already"),
    "body_too_large": (413, "the body is larger than the configured limit"),
    "payload_too_large": (413, "the body is larger than the configured limit"),
    "not_json": (415, "the body must be sent with 'Content-Type: application/json'"),
    "invalid_value": (422, "a field or parameter has the wrong type or is out of range"),
    "weak_password": (422, f"not {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters long"),
    "too_many_ids": (422, "more user ids than the read limit"),
    "immutable_field": (422, "sort_order and operator cannot change once a board exists"),
    "delta_out_of_range": (422, "the delta is outside the bounds of its action type"),
    "score_out_of_range": (422, "the new score would leave the range a leaderboard holds"),
    "rate_limited": (429, "too many requests; wait Retry-After seconds"),
    "database_unavailable": (503, "PostgreSQL cannot be reached"),
    "database_timeout": (503, "PostgreSQL did not answer in time"),
    "schema_not_migrated": (503, "the database is not migrated"),
    "redis_unavailable": (503, "Redis cannot be reached"),
    "redis_timeout": (503, "Redis did not answer in time"),
    "ranking_rebuilding": (503, "rankings are being rebuilt from PostgreSQL"),
    "ranking_timeout": (503, "the ranking actor did not answer in time"),
    "overloaded": (503, "too much work is queued"),
    "unavailable": (503, "reading ranks failed"),
    "commit_timeout": (503, "not committed in time; retrying the same token is safe"),
    "commit_failed": (503, "the batch could not be committed and was rolled back whole"),
    "not_ready": (503, "the node is not ready"),
}

_STATUS: Final[dict[int, str]] = {
    400: "Malformed request",
    401: "Missing, bad, expired or revoked credentials",
    403: "Not allowed",
    404: "Not found",
    409: "Conflict",
    413: "Body too large",
    415: "Body is not JSON",
    422: "Well-formed but invalid values",
    429: "Rate limited; wait for Retry-After seconds",
    503: "Temporarily unable to serve; retry with backoff (no Retry-After is sent)",
}

# Error codes that families of operations share, as space-separated lists.
_JWT: Final = " ".join(code for code in CODES if code.startswith("token_")) + " session_revoked"
_BODY: Final = "malformed_json bad_request body_too_large payload_too_large not_json"
_BOARD: Final = "bad_leaderboard_id leaderboard_not_found"
_POSTGRES: Final = "database_unavailable database_timeout schema_not_migrated"
_RANKING: Final = (
    "ranking_rebuilding ranking_timeout overloaded unavailable redis_unavailable redis_timeout"
)
_TOKEN_CHECKS: Final = " ".join(
    code for code, (status, _) in CODES.items() if code.startswith("action_") and status == 400
)

_PLAYER: Final = ("playerJwt",)
_SERVICE: Final = ("serviceKey",)
_ADMIN: Final = ("adminToken",)


# ---------------------------------------------------------------- shapes


def _ref(kind: str, name: str) -> Json:
    return {"$ref": f"#/components/{kind}/{name}"}


def _schema(name: str) -> Json:
    return _ref("schemas", name)


def _json(schema: Json) -> Json:
    return {"application/json": {"schema": schema}}


def _str(pattern: str | None = None, **extra: Any) -> Json:
    return {"type": "string", **({"pattern": pattern} if pattern else {}), **extra}


def _int(minimum: int | None = None, maximum: int | None = None, **extra: Any) -> Json:
    bounds = {"minimum": minimum, "maximum": maximum}
    return {"type": "integer", **{k: v for k, v in bounds.items() if v is not None}, **extra}


def _enum(values: Iterable[str], **extra: Any) -> Json:
    return {"type": "string", "enum": list(values), **extra}


def _nullable(schema: Json) -> Json:
    widened = dict(schema, type=[schema["type"], "null"])
    if "enum" in schema:
        widened["enum"] = [*schema["enum"], None]
    return widened


def _array(items: Json, **extra: Any) -> Json:
    return {"type": "array", "items": items, **extra}


def _object(required: Json, optional: Json | None = None, description: str = "") -> Json:
    """An object schema; unknown members are ignored in requests and may appear in replies."""
    schema: Json = {"type": "object", "properties": required | (optional or {})}
    if required:
        schema["required"] = list(required)
    if description:
        schema["description"] = description
    return schema


def _param(where: str, name: str, schema: Json, description: str) -> Json:
    required = {"required": True} if where == "path" else {}
    return {"name": name, "in": where, **required, "description": description, "schema": schema}


def _error_response(status: int, codes: list[str]) -> Json:
    lines = [f"{_STATUS[status]}. `error.code` is one of:", ""]
    lines += [f"- `{code}`: {CODES[code][1]}" for code in codes]
    response: Json = {"description": "\n".join(lines), "content": _json(_schema("Error"))}
    if status == 429:
        response["headers"] = {"Retry-After": _ref("headers", "RetryAfter")}
    return response


def _op(
    route: str,
    operation_id: str,
    summary: str,
    *,
    tag: str,
    ok: tuple[str, str] | None = None,
    status: int = 200,
    security: tuple[str, ...] = (),
    parameters: Iterable[Json] = (),
    body: str | None = None,
    body_required: bool = True,
    errors: str = "",
    responses: dict[str, Json] | None = None,
    description: str = "",
) -> tuple[str, str, Json]:
    """One operation: ``(path, method, operation)``; ``route`` is ``"METHOD /path"``.

    ``ok`` is the success reply's (description, schema name); ``errors`` the
    codes the operation can answer with, grouped into responses by status.
    """
    method, path = route.split(" ")
    operation: Json = {
        "operationId": operation_id,
        "summary": summary,
        "tags": [tag],
        "security": [{scheme: []} for scheme in security],
    }
    if description:
        operation["description"] = description
    if parameters:
        operation["parameters"] = list(parameters)
    if body is not None:
        operation["requestBody"] = {"required": body_required, "content": _json(_schema(body))}
    replies = dict(responses or {})
    if ok is not None:
        replies[str(status)] = {"description": ok[0], "content": _json(_schema(ok[1]))}
    by_status: dict[int, list[str]] = {}
    for code in dict.fromkeys(errors.split()):
        by_status.setdefault(CODES[code][0], []).append(code)
    for code_status in sorted(by_status):
        replies[str(code_status)] = _error_response(code_status, by_status[code_status])
    operation["responses"] = replies
    return path, method.lower(), operation


# ---------------------------------------------------------------- the document


@functools.cache
def openapi_document(*, max_limit: int) -> dict[str, Any]:
    """The whole OpenAPI 3.1 document; ``max_limit`` is ``Settings.read_max_limit``."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Podium",
            "version": "1",
            "summary": "A real-time leaderboard server for games.",
            "description": (
                "Request bodies are JSON objects sent with `Content-Type: application/json`, "
                "at most `PODIUM_HTTP_MAX_BODY_BYTES` (16 KiB by default). Every error has the "
                'body `{"error": {"code", "message"}}`; an unknown path answers 404 '
                "`not_found`, a wrong method 405 `method_not_allowed`, and a bug in the server "
                "500 `internal_error`. Leaderboard reads return at most "
                f"{max_limit} entries. See docs/api.md."
            ),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": [
            {"name": name, "description": text}
            for name, text in (
                ("ops", "health, readiness, metrics, this document"),
                ("auth", "accounts and sessions"),
                ("actions", "action tokens, for trusted game servers"),
                ("scores", "submitting scores"),
                ("leaderboards", "reading leaderboards"),
                ("users", "a player's own data"),
                ("admin", "operators"),
            )
        ],
        "paths": _paths(max_limit),
        "components": _components(max_limit),
    }


def _paths(max_limit: int) -> dict[str, Json]:
    paths: dict[str, Json] = {}
    for path, method, operation in _operations(max_limit):
        paths.setdefault(path, {})[method] = operation
    return paths


def _operations(max_limit: int) -> list[tuple[str, str, Json]]:
    board_id, user_id = _ref("parameters", "BoardId"), _ref("parameters", "UserId")
    limit = _param("query", "limit", _int(1, max_limit, default=_DEFAULT_TOP), "Entries wanted.")
    cursor = _param("query", "cursor", _str(), "The previous page's `next_cursor`.")
    radius = _param(
        "query",
        "radius",
        _int(0, (max_limit - 1) // 2, default=_DEFAULT_RADIUS),
        "Entries wanted above and below the user.",
    )
    history_params = [
        user_id,
        _param("query", "leaderboard", _str(BOARD_ID_PATTERN), "Only this leaderboard."),
        _param("query", "limit", _int(1, max_limit, default=_DEFAULT_HISTORY), "Entries wanted."),
        _param(
            "query",
            "before",
            _int(0, _MAX_BEFORE, default=0),
            "The previous page's `next_before`: entries with a smaller id; 0 for the newest.",
        ),
    ]
    score_update: Json = {
        "tag": "scores",
        "security": _PLAYER,
        "body": "ScoreUpdate",
        "ok": ("Committed", "ScoreAck"),
        "errors": f"{_JWT} unknown_user {_BODY} {_TOKEN_CHECKS} user_banned leaderboard_not_found "
        f"action_token_used delta_out_of_range score_out_of_range commit_timeout commit_failed "
        "overloaded fraud_blocked rate_limited "
        f"{_POSTGRES}",
        "description": "Verifies the action token (docs/action-tokens.md), commits it exactly "
        "once and answers with the new score and rank. After a 503 retrying the same token is "
        "safe; 409 `action_token_used` means it was applied already. The fraud checks "
        "(docs/fraud.md) may refuse it with 403 `fraud_blocked` (the token is then spent), and "
        "the player's and the client address's rate limits with 429 (the token is not spent: "
        "retry it after `Retry-After` seconds). Send `X-Device-Id` to name the device.",
    }
    readiness = _json(_schema("Readiness"))
    return [
        _op("GET /healthz", "getHealth", "Liveness", tag="ops", ok=("Alive", "Health")),
        _op(
            "GET /readyz",
            "getReadiness",
            "Readiness: Redis, PostgreSQL, migrations, not draining",
            tag="ops",
            ok=("Ready", "Readiness"),
            responses={"503": {"description": "Not ready (`not_ready`)", "content": readiness}},
        ),
        _op(
            "GET /metrics",
            "getMetrics",
            "Prometheus metrics",
            tag="ops",
            responses={
                "200": {
                    "description": "Prometheus text format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        ),
        _op(
            "GET /openapi.json",
            "getOpenApi",
            "This document",
            tag="ops",
            responses={"200": {"description": "OpenAPI 3.1", "content": _json({"type": "object"})}},
        ),
        _op(
            "POST /v1/auth/device",
            "authDevice",
            "Sign in with a device id; the user is created on first sight",
            tag="auth",
            body="DeviceLogin",
            ok=("Signed in", "TokenReply"),
            errors=f"{_BODY} username_taken invalid_value rate_limited {_POSTGRES}",
            description="`username` is used only when the user is created.",
        ),
        _op(
            "POST /v1/auth/register",
            "authRegister",
            "Create an account with a password",
            tag="auth",
            body="Register",
            ok=("Created and signed in", "TokenReply"),
            status=201,
            errors=f"{_BODY} username_taken email_taken invalid_value weak_password rate_limited "
            f"{_POSTGRES}",
        ),
        _op(
            "POST /v1/auth/login",
            "authLogin",
            "Sign in with username or email, and password",
            tag="auth",
            body="Login",
            ok=("Signed in", "TokenReply"),
            errors=f"{_BODY} bad_credentials user_banned invalid_value rate_limited {_POSTGRES}",
        ),
        _op(
            "POST /v1/auth/refresh",
            "authRefresh",
            "New tokens for a refresh token",
            tag="auth",
            body="Refresh",
            ok=("New tokens; the refresh token is rotated", "TokenReply"),
            errors=f"{_BODY} refresh_invalid {_POSTGRES}",
        ),
        _op(
            "POST /v1/auth/logout",
            "authLogout",
            "Revoke this access token's session (no body)",
            tag="auth",
            security=_PLAYER,
            ok=("Logged out", "LoggedOut"),
            errors=f"{_JWT} no_session {_POSTGRES}",
            description="Every token of the session then gets 401 `session_revoked`.",
        ),
        _op(
            "POST /v1/actions",
            "mintActionToken",
            "Mint an action token for a player",
            tag="actions",
            security=_SERVICE,
            body="MintAction",
            ok=("Minted", "ActionToken"),
            errors=f"bad_key {_BODY} bad_user_id {_BOARD} action_type_unknown invalid_value "
            "delta_out_of_range rate_limited",
        ),
        _op(
            "POST /v1/dev/actions",
            "devMintActionToken",
            "Development only: mint an action token for yourself",
            tag="actions",
            security=_PLAYER,
            body="DevMintAction",
            ok=("Minted", "ActionToken"),
            errors=f"not_found {_JWT} {_BODY} {_BOARD} action_type_unknown invalid_value "
            "delta_out_of_range",
            description="Answers 404 unless the node runs with PODIUM_DEV_MODE (podium dev).",
        ),
        _op("POST /v1/scores/update", "updateScore", "Submit an action token", **score_update),
        _op(
            "POST /scores/update",
            "updateScoreUnversioned",
            "Submit an action token (same as POST /v1/scores/update)",
            **score_update,
        ),
        _op(
            "GET /v1/leaderboards",
            "listLeaderboards",
            "Every leaderboard",
            tag="leaderboards",
            ok=("The leaderboards", "LeaderboardList"),
        ),
        _op(
            "GET /v1/leaderboards/{board_id}",
            "getLeaderboard",
            "One leaderboard's definition",
            tag="leaderboards",
            parameters=[board_id],
            ok=("The leaderboard", "Leaderboard"),
            errors=_BOARD,
        ),
        _op(
            "GET /v1/leaderboards/{board_id}/top",
            "getTop",
            "The top of a leaderboard, page by page",
            tag="leaderboards",
            parameters=[board_id, limit, cursor],
            ok=("One page", "TopPage"),
            errors=f"{_BOARD} bad_request bad_cursor invalid_value {_RANKING}",
            description="`next_cursor` is set when the page is full; pass it as `cursor` for "
            "the next page, which may be empty.",
        ),
        _op(
            "GET /v1/leaderboards/{board_id}/around/{user_id}",
            "getAround",
            "The entries around a user",
            tag="leaderboards",
            parameters=[board_id, user_id, radius],
            ok=("The user's entry and up to `radius` on each side", "Around"),
            errors=f"{_BOARD} bad_user_id bad_request not_ranked invalid_value {_RANKING}",
        ),
        _op(
            "GET /v1/leaderboards/{board_id}/users/{user_id}",
            "getUserRank",
            "One user's rank and score",
            tag="leaderboards",
            parameters=[board_id, user_id],
            ok=("The user's entry", "UserRank"),
            errors=f"{_BOARD} bad_user_id not_ranked {_RANKING}",
        ),
        _op(
            "POST /v1/leaderboards/{board_id}/ranks",
            "getRanks",
            "The entries of given users (friends)",
            tag="leaderboards",
            parameters=[board_id],
            body="RanksRequest",
            ok=("Their entries, in the order asked; users without a score left out", "Ranks"),
            errors=f"{_BOARD} {_BODY} bad_user_id invalid_value too_many_ids {_RANKING}",
        ),
        _op(
            "GET /v1/users/{user_id}/history",
            "getHistory",
            "A player's score history, newest first (that player or an admin)",
            tag="users",
            security=_PLAYER + _ADMIN,
            parameters=history_params,
            ok=("One page", "HistoryPage"),
            errors=f"bad_user_id bad_leaderboard_id bad_request {_JWT} forbidden invalid_value "
            f"{_POSTGRES}",
        ),
        _op(
            "POST /v1/admin/leaderboards",
            "createLeaderboard",
            "Create a leaderboard",
            tag="admin",
            security=_ADMIN,
            body="LeaderboardCreate",
            ok=("Created", "Leaderboard"),
            status=201,
            errors=f"bad_key {_BODY} bad_leaderboard_id leaderboard_exists invalid_value "
            f"{_POSTGRES}",
        ),
        _op(
            "PATCH /v1/admin/leaderboards/{board_id}",
            "updateLeaderboard",
            "Change a leaderboard's reset schedule",
            tag="admin",
            security=_ADMIN,
            parameters=[board_id],
            body="LeaderboardUpdate",
            ok=("Updated", "Leaderboard"),
            errors=f"bad_key {_BOARD} {_BODY} immutable_field invalid_value {_POSTGRES}",
            description="`sort_order` and `operator` may be sent only with their current values; "
            "an absent `reset_schedule` keeps it, `null` removes it.",
        ),
        *_admin_operations(board_id, user_id),
    ]


def _admin_operations(board_id: Json, user_id: Json) -> list[tuple[str, str, Json]]:
    """The admin routes beyond creating and updating boards (server.admin_api)."""
    case_id, history_id = _ref("parameters", "CaseId"), _ref("parameters", "HistoryId")
    admin: Json = {"tag": "admin", "security": _ADMIN}
    status_change: Json = admin | {
        "parameters": [user_id],
        "body": "AdminReason",
        "body_required": False,
        "ok": ("The user's new status", "UserStatus"),
        "errors": f"bad_key bad_user_id {_BODY} invalid_value user_not_found {_POSTGRES} "
        f"{_RANKING}",
    }
    case_filters = [
        _param("query", "status", _enum(REVIEW_STATUSES), "Only cases with this review status."),
        _param("query", "event_type", _enum(EVENT_TYPES), "Only this kind of event."),
        _param("query", "user_id", _str(UUID_PATTERN), "Only this user's cases."),
        _param("query", "limit", _int(1, CASES_MAX, default=CASES_DEFAULT), "Cases wanted."),
        _param("query", "cursor", _str(), "The previous page's `next_cursor`."),
    ]
    return [
        _op(
            "GET /v1/admin/fraud/cases",
            "listFraudCases",
            "Fraud cases, newest first, filtered",
            parameters=case_filters,
            ok=("One page", "FraudCasePage"),
            errors=f"bad_key bad_user_id bad_request bad_cursor invalid_value {_POSTGRES}",
            description="`next_cursor` is set when the page is full; pass it as `cursor`, with "
            "the same filters, for older cases.",
            **admin,
        ),
        _op(
            "GET /v1/admin/fraud/cases/{case_id}",
            "getFraudCase",
            "One fraud case",
            parameters=[case_id],
            ok=("The case", "FraudCase"),
            errors=f"bad_key bad_id case_not_found {_POSTGRES}",
            **admin,
        ),
        _op(
            "POST /v1/admin/fraud/cases/{case_id}/review",
            "reviewFraudCase",
            "Mark a fraud case confirmed, a false positive, or open again",
            parameters=[case_id],
            body="CaseReview",
            ok=("The case, stamped with its reviewer and the time", "FraudCase"),
            errors=f"bad_key bad_id {_BODY} invalid_value case_not_found {_POSTGRES}",
            description="Reviewing changes nothing about the user: ban or shadow-ban them "
            "separately.",
            **admin,
        ),
        _op(
            "GET /v1/admin/users/{user_id}",
            "getAdminUser",
            "A user's account status and fraud case counts",
            parameters=[user_id],
            ok=("The user", "AdminUser"),
            errors=f"bad_key bad_user_id user_not_found {_POSTGRES}",
            **admin,
        ),
        _op(
            "POST /v1/admin/users/{user_id}/ban",
            "banUser",
            "Ban a user: their submissions get 403, and nobody sees them on any board",
            **status_change,
        ),
        _op(
            "POST /v1/admin/users/{user_id}/shadow-ban",
            "shadowBanUser",
            "Shadow-ban a user: their submissions count, but only they see their scores",
            **status_change,
        ),
        _op(
            "POST /v1/admin/users/{user_id}/unban",
            "unbanUser",
            "Make a user active again, back on every board",
            **status_change,
        ),
        _op(
            "POST /v1/admin/scores/{history_id}/remove",
            "removeScore",
            "Remove one score; the user's record and rank are recomputed",
            parameters=[history_id],
            body="AdminReason",
            body_required=False,
            ok=("Removed", "ScoreRemoved"),
            errors=f"bad_key bad_id {_BODY} invalid_value score_not_found score_already_removed "
            f"score_out_of_range {_POSTGRES} {_RANKING}",
            description="`history_id` is an entry's `id` in `GET /v1/users/{user_id}/history`. "
            "The record follows the board's operator: `incr` subtracts the removed delta, "
            "`decr` adds it back, `best` keeps the best remaining delta and `set` the latest; "
            "with no entries left the record is deleted (`new_score` null).",
            **admin,
        ),
        _op(
            "POST /v1/admin/leaderboards/{board_id}/rebuild",
            "rebuildLeaderboard",
            "Rebuild a leaderboard's ranking from PostgreSQL",
            parameters=[board_id],
            ok=("Rebuilt", "BoardRebuilt"),
            errors=f"bad_key {_BOARD} {_POSTGRES} {_RANKING}",
            description="The board keeps serving its old ranking until the new one replaces it.",
            **admin,
        ),
        _op(
            "GET /v1/admin/audit",
            "getAuditLog",
            "Admin actions, newest first",
            parameters=[
                _param("query", "limit", _int(1, AUDIT_MAX, default=AUDIT_DEFAULT), "Wanted."),
                _param(
                    "query",
                    "before",
                    _int(0, MAX_ID, default=0),
                    "The previous page's `next_before`: entries with a smaller id; 0 for the "
                    "newest.",
                ),
            ],
            ok=("One page", "AuditPage"),
            errors=f"bad_key bad_request invalid_value {_POSTGRES}",
            **admin,
        ),
    ]


def _components(max_limit: int) -> Json:
    uuid = _str(UUID_PATTERN, description="A user id: a lower-case UUID.")
    board_id = _str(BOARD_ID_PATTERN, description="A leaderboard id.")
    score = _int(-MAX_SCORE, MAX_SCORE)
    rank = _int(1, description="1-based; ties rank whoever reached the score first first.")
    username = _str(minLength=1, maxLength=64)
    entry_list = _array(_schema("Entry"))
    schedule = _nullable(_enum(RESET_SCHEDULES, description="When the board resets; or never."))
    error = _object(
        {"code": _str("^[a-z][a-z0-9_]*$"), "message": _str(description="A human sentence.")}
    )
    schemas: dict[str, Json] = {
        "Error": _object({"error": error}, description="Every error's body."),
        "Health": _object({"status": {"const": "ok"}, "node_id": _str()}),
        "Readiness": _object(
            {
                "status": _enum(["ready", "not_ready"]),
                "checks": {
                    "type": "object",
                    "additionalProperties": _str(),
                    "description": 'Each check: "ok" or why not.',
                },
            },
            {"error": error},
        ),
        "DeviceLogin": _object(
            {"device_id": _str(DEVICE_ID_PATTERN)},
            {"username": _str(USERNAME_PATTERN)},
        ),
        "Register": _object(
            {
                "username": _str(USERNAME_PATTERN),
                "email": _str(format="email", maxLength=254),
                "password": _str(
                    minLength=MIN_PASSWORD_CHARS,
                    maxLength=MAX_PASSWORD_CHARS,
                    description="Counted after NFKC normalisation.",
                ),
            }
        ),
        "Login": _object(
            {"password": _str()},
            {"username": _str(maxLength=254), "email": _str(maxLength=254)},
            description="`username` or `email`; `username` wins if both are sent.",
        )
        | {"anyOf": [{"required": ["username"]}, {"required": ["email"]}]},
        "Refresh": _object({"refresh_token": _str(maxLength=200)}),
        "TokenReply": _object(
            {
                "user_id": uuid,
                "username": username,
                "access_token": _str(description="A JWT; send it as `Authorization: Bearer`."),
                "refresh_token": _str(description="Opaque; for /v1/auth/refresh only."),
                "token_type": {"const": "Bearer"},
                "expires_in": _int(1, description="Seconds the access token lives."),
            }
        ),
        "LoggedOut": _object({"status": {"const": "logged_out"}}),
        "MintAction": _object(
            {
                "user_id": uuid,
                "delta": _int(-_MAX_DELTA, _MAX_DELTA, description="Within the type's bounds."),
            },
            {
                "leaderboard": board_id | {"default": "global"},
                "action_type": _str(ACTION_TYPE_PATTERN, default="score"),
            },
        ),
        "DevMintAction": _object(
            {},
            {
                "leaderboard": board_id | {"default": "global"},
                "action_type": _str(ACTION_TYPE_PATTERN, default="score"),
                "delta": _int(-_MAX_DELTA, _MAX_DELTA, default=100),
            },
        ),
        "ActionToken": _object(
            {
                "action_token": _str(maxLength=MAX_TOKEN_CHARS),
                "expires_at": _int(0, description="Unix time, seconds."),
                "nonce": _str(),
            }
        ),
        "ScoreUpdate": _object({"action_token": _str(maxLength=MAX_TOKEN_CHARS)}),
        "ScoreAck": _object(
            {
                "leaderboard": board_id,
                "user_id": uuid,
                "old_score": score,
                "new_score": score,
                "rank": _nullable(rank) | {"description": "null if not known right now."},
            }
        ),
        "Leaderboard": _object(
            {
                "id": board_id,
                "sort_order": _enum(SORT_ORDERS),
                "operator": _enum(OPERATORS),
                "reset_schedule": schedule,
                "period": _int(0, description="The current period; grows at each reset."),
            }
        ),
        "LeaderboardList": _object({"leaderboards": _array(_schema("Leaderboard"))}),
        "Entry": _object({"rank": rank, "user_id": uuid, "username": username, "score": score}),
        "TopPage": _object(
            {
                "leaderboard": board_id,
                "entries": entry_list,
                "next_cursor": _nullable(_str(description="Null on the last page.")),
            }
        ),
        "Around": _object({"leaderboard": board_id, "user_id": uuid, "entries": entry_list}),
        "UserRank": _object(
            {
                "leaderboard": board_id,
                "user_id": uuid,
                "username": username,
                "rank": rank,
                "score": score,
            }
        ),
        "RanksRequest": _object({"user_ids": _array(uuid, minItems=1, maxItems=max_limit)}),
        "Ranks": _object({"leaderboard": board_id, "entries": entry_list}),
        "HistoryEntry": _object(
            {
                "id": _int(1),
                "leaderboard": board_id,
                "score_increment": _int(),
                "old_score": score,
                "new_score": score,
                "action_type": _str(ACTION_TYPE_PATTERN),
                "created_at": _str(format="date-time"),
            }
        ),
        "HistoryPage": _object(
            {
                "user_id": uuid,
                "entries": _array(_schema("HistoryEntry")),
                "next_before": _nullable(_int(1, description="Null on the last page.")),
            }
        ),
        "LeaderboardCreate": _object(
            {"id": board_id},
            {
                "sort_order": _enum(SORT_ORDERS, default="desc"),
                "operator": _enum(
                    OPERATORS,
                    default="incr",
                    description="incr adds the delta, decr subtracts it, set replaces the "
                    "score, best keeps the better of old and new.",
                ),
                "reset_schedule": schedule | {"default": None},
            },
        ),
        "LeaderboardUpdate": _object(
            {},
            {
                "reset_schedule": schedule,
                "sort_order": _enum(SORT_ORDERS, description="Only its current value."),
                "operator": _enum(OPERATORS, description="Only its current value."),
            },
        ),
        **_admin_schemas(uuid, board_id, score),
    }
    return {
        "schemas": schemas,
        "parameters": {
            "BoardId": _param("path", "board_id", board_id, "The leaderboard."),
            "UserId": _param("path", "user_id", uuid, "The user."),
            "CaseId": _param("path", "case_id", _int(1, MAX_ID), "The fraud case."),
            "HistoryId": _param(
                "path", "history_id", _int(1, MAX_ID), "The score: a history entry's `id`."
            ),
        },
        "headers": {
            "RetryAfter": {
                "description": "Seconds to wait before retrying.",
                "schema": _int(1),
            }
        },
        "responses": {
            "RateLimited": _error_response(429, ["rate_limited"]),
        },
        "securitySchemes": {
            "playerJwt": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "A player's access token from /v1/auth/*.",
            },
            "serviceKey": {
                "type": "http",
                "scheme": "bearer",
                "description": "PODIUM_SERVICE_KEY, for trusted game servers.",
            },
            "adminToken": {
                "type": "http",
                "scheme": "bearer",
                "description": "PODIUM_ADMIN_TOKEN, for operators.",
            },
        },
    }


def _admin_schemas(uuid: Json, board_id: Json, score: Json) -> dict[str, Json]:
    when = _str(format="date-time")
    note = _nullable(_str(maxLength=MAX_TEXT_CHARS))
    user_status = _enum(("active", "banned", "shadow_banned"))
    return {
        "FraudCase": _object(
            {
                "id": _int(1, MAX_ID),
                "user_id": _nullable(uuid),
                "username": _nullable(_str()),
                "user_status": _nullable(user_status),
                "event_type": _str(description=f"One of {', '.join(EVENT_TYPES)}."),
                "risk_score": {"type": "number", "minimum": 0, "maximum": 1},
                "factors": {
                    "type": "object",
                    "additionalProperties": {"type": "number"},
                    "description": "Each fraud factor's score, from `metadata.assessment`.",
                },
                "reasons": _array(
                    _str(),
                    description="Why, in words: the assessment's, or the logged `reason`.",
                ),
                "metadata": {
                    "type": "object",
                    "description": "What the fraud engine logged: the assessment, the "
                    "leaderboard, action type, delta, nonce, IP, device...",
                },
                "review_status": _enum(REVIEW_STATUSES),
                "reviewed_by": _nullable(_str()),
                "reviewed_at": _nullable(when),
                "review_note": note,
                "created_at": when,
            }
        ),
        "FraudCasePage": _object(
            {
                "cases": _array(_schema("FraudCase")),
                "next_cursor": _nullable(_str(description="Null on the last page.")),
            }
        ),
        "CaseReview": _object({"status": _enum(REVIEW_STATUSES)}, {"note": note}),
        "AdminUser": _object(
            {
                "user_id": uuid,
                "username": _str(),
                "status": user_status,
                "created_at": when,
                "fraud_cases": _object({status: _int(0) for status in REVIEW_STATUSES}),
            }
        ),
        "AdminReason": _object({}, {"reason": note | {"description": "Kept in the audit log."}}),
        "UserStatus": _object({"user_id": uuid, "status": user_status}),
        "ScoreRemoved": _object(
            {
                "history_id": _int(1, MAX_ID),
                "user_id": uuid,
                "leaderboard": board_id,
                "old_score": _nullable(score),
                "new_score": _nullable(score) | {"description": "Null: the record was deleted."},
                "rank": _nullable(_int(1)) | {"description": "Null if not ranked now."},
            }
        ),
        "BoardRebuilt": _object({"leaderboard": board_id, "records": _int(0)}),
        "AuditEntry": _object(
            {
                "id": _int(1, MAX_ID),
                "actor": _str(),
                "action": _str(description="e.g. user.ban, fraud_case.review, score.remove."),
                "target": _nullable(_str()),
                "details": {"type": "object"},
                "created_at": when,
            }
        ),
        "AuditPage": _object(
            {
                "entries": _array(_schema("AuditEntry")),
                "next_before": _nullable(_int(1, description="Null on the last page.")),
            }
        ),
    }
