"""The v1 HTTP API: accounts, action tokens, score updates, leaderboard reads, admin.

Handlers are thin: they parse and bound the request, call the service that
owns the work, and shape the reply. Every error is a
:class:`protocol.errors.PodiumError` turned into the shared error body by
the app's handlers (:mod:`server.http_app`).
"""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING, Any, Final

from quart import Quart, request

from protocol import action_token
from protocol.errors import (
    BadRequest,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    PodiumError,
    Unprocessable,
    UnsupportedMediaType,
)
from protocol.jwt_keys import AccessClaims
from protocol.leaderboards import (
    Board,
    check_board_id,
    decode_cursor,
    encode_cursor,
    parse_board_definition,
)
from server.auth import check_bearer, is_bearer

if TYPE_CHECKING:
    from server.node import NodeServices

_UUID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_DEFAULT_TOP: Final = 10
_DEFAULT_RADIUS: Final = 5
_HISTORY_DEFAULT: Final = 50


async def json_body(max_bytes: int) -> dict[str, Any]:
    """The request's JSON object, or the documented 413/415/400."""
    if request.mimetype != "application/json":
        raise UnsupportedMediaType(
            "send the body as JSON with 'Content-Type: application/json'", code="not_json"
        )
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLarge(f"the body is larger than {max_bytes} bytes", code="body_too_large")
    raw = await request.get_data(as_text=False)
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"the body is larger than {max_bytes} bytes", code="body_too_large")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadRequest("the body is not valid JSON", code="malformed_json") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="bad_request")
    return body


def _user_id(value: object, what: str = "user_id") -> str:
    if not isinstance(value, str) or not _UUID.fullmatch(value):
        raise BadRequest(f'"{what}" must be a lower-case UUID', code="bad_user_id")
    return value


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return min(default, high)
    if not re.fullmatch(r"-?[0-9]{1,19}", raw):
        raise BadRequest(f"{name} must be an integer", code="bad_request")
    value = int(raw)
    if not low <= value <= high:
        raise Unprocessable(f"{name} must be from {low} to {high}", code="invalid_value")
    return value


def _request_meta() -> dict[str, Any]:
    return {
        "ip": request.remote_addr,
        "user_agent": (request.headers.get("User-Agent") or "")[:256],
    }


def register_api(app: Quart, services: NodeServices) -> None:
    """Add the v1 routes to ``app``."""
    settings = services.settings
    max_body = settings.http_max_body_bytes

    def board(board_id: str) -> Board:
        check_board_id(board_id)
        found = services.catalog.board(board_id)
        if found is None:
            raise NotFound(f"no leaderboard {board_id!r}", code="leaderboard_not_found")
        return found

    def player() -> AccessClaims:
        return services.auth.authenticate(request.headers.get("Authorization"))

    def admin() -> str:
        check_bearer(request.headers.get("Authorization"), settings.admin_token, what="admin token")
        return "admin"

    # ---- accounts

    @app.post("/v1/auth/device")
    async def auth_device() -> tuple[dict[str, Any], int]:
        body = await json_body(max_body)
        reply = await services.auth.device(body, meta=_request_meta())
        return reply.as_json(), 200

    @app.post("/v1/auth/register")
    async def auth_register() -> tuple[dict[str, Any], int]:
        body = await json_body(max_body)
        reply = await services.auth.register(body, meta=_request_meta())
        return reply.as_json(), 201

    @app.post("/v1/auth/login")
    async def auth_login() -> dict[str, Any]:
        body = await json_body(max_body)
        return (await services.auth.login(body, meta=_request_meta())).as_json()

    @app.post("/v1/auth/refresh")
    async def auth_refresh() -> dict[str, Any]:
        body = await json_body(max_body)
        return (await services.auth.refresh(body)).as_json()

    @app.post("/v1/auth/logout")
    async def auth_logout() -> dict[str, Any]:
        claims = player()
        await services.auth.logout(claims)
        return {"status": "logged_out"}

    # ---- action tokens, for trusted game servers

    @app.post("/v1/actions")
    async def mint_action() -> dict[str, Any]:
        check_bearer(request.headers.get("Authorization"), settings.service_key, what="service key")
        body = await json_body(max_body)
        user_id = _user_id(body.get("user_id"))
        board_id = body.get("leaderboard", "global")
        if not isinstance(board_id, str):
            raise Unprocessable('"leaderboard" must be a string', code="invalid_value")
        board(board_id)
        action_type = body.get("action_type", "score")
        delta = body.get("delta")
        if not isinstance(action_type, str) or not re.fullmatch(
            r"[a-z][a-z0-9_]{0,31}", action_type
        ):
            raise Unprocessable(
                '"action_type" must match [a-z][a-z0-9_]{0,31}', code="invalid_value"
            )
        if not isinstance(delta, int) or isinstance(delta, bool) or abs(delta) >= 2**53:
            raise Unprocessable('"delta" must be an integer', code="invalid_value")
        token, claims = action_token.mint(
            user_id=user_id,
            leaderboard=board_id,
            action_type=action_type,
            delta=delta,
            kid=settings.action_key_id,
            key=services.action_key,
            now=time.time(),
            ttl_s=settings.action_token_ttl_s,
        )
        action_token.check_delta(
            claims, services.action_rules, allow_unknown=settings.allow_unknown_action_types
        )
        return {"action_token": token, "expires_at": claims.expires_at, "nonce": claims.nonce}

    # ---- scores

    submissions = services.metrics.submissions_total
    submitted_ok = submissions.labels("ok")

    async def update_score() -> dict[str, Any]:
        try:
            claims = player()
            body = await json_body(max_body)
            ack = await services.score_path.submit(
                claims,
                body.get("action_token"),
                ip=request.remote_addr,
                user_agent=request.headers.get("User-Agent"),
            )
        except PodiumError as exc:
            submissions.labels(exc.code).inc()
            raise
        submitted_ok.inc()
        return ack.as_json()

    app.add_url_rule("/v1/scores/update", "update_score", update_score, methods=["POST"])
    app.add_url_rule("/scores/update", "update_score_unversioned", update_score, methods=["POST"])

    # ---- reads

    @app.get("/v1/leaderboards")
    async def list_boards() -> dict[str, Any]:
        return {"leaderboards": [_board_json(b) for b in services.catalog.boards()]}

    @app.get("/v1/leaderboards/<board_id>")
    async def get_board(board_id: str) -> dict[str, Any]:
        return _board_json(board(board_id))

    @app.get("/v1/leaderboards/<board_id>/top")
    async def top(board_id: str) -> dict[str, Any]:
        found = board(board_id)
        limit = _int_arg("limit", _DEFAULT_TOP, 1, settings.read_max_limit)
        cursor = request.args.get("cursor")
        offset, anchor = 0, ""
        if cursor:
            anchor, offset = decode_cursor(cursor)
        entries = await services.ranking.top(found, offset=offset, limit=limit, after_user=anchor)
        next_cursor = (
            encode_cursor(entries[-1].user_id, entries[-1].rank) if len(entries) == limit else None
        )
        return {
            "leaderboard": found.id,
            "entries": [e.as_json() for e in entries],
            "next_cursor": next_cursor,
        }

    @app.get("/v1/leaderboards/<board_id>/around/<user_id>")
    async def around(board_id: str, user_id: str) -> dict[str, Any]:
        found = board(board_id)
        _user_id(user_id)
        radius = _int_arg("radius", _DEFAULT_RADIUS, 0, (settings.read_max_limit - 1) // 2)
        entries = await services.ranking.around(found, user_id, radius)
        if not entries:
            raise NotFound("that user has no score on this leaderboard", code="not_ranked")
        return {
            "leaderboard": found.id,
            "user_id": user_id,
            "entries": [e.as_json() for e in entries],
        }

    @app.get("/v1/leaderboards/<board_id>/users/<user_id>")
    async def user_rank(board_id: str, user_id: str) -> dict[str, Any]:
        found = board(board_id)
        _user_id(user_id)
        entries = await services.ranking.users(found, [user_id])
        if not entries:
            raise NotFound("that user has no score on this leaderboard", code="not_ranked")
        entry = entries[0]
        return {
            "leaderboard": found.id,
            "user_id": user_id,
            "username": entry.username,
            "rank": entry.rank,
            "score": entry.score,
        }

    @app.post("/v1/leaderboards/<board_id>/ranks")
    async def ranks(board_id: str) -> dict[str, Any]:
        found = board(board_id)
        body = await json_body(max_body)
        user_ids = body.get("user_ids")
        if not isinstance(user_ids, list) or not user_ids:
            raise Unprocessable('"user_ids" must be a non-empty list', code="invalid_value")
        if len(user_ids) > settings.read_max_limit:
            raise Unprocessable(
                f'"user_ids" may hold at most {settings.read_max_limit} ids', code="too_many_ids"
            )
        wanted = list(dict.fromkeys(_user_id(u, "user_ids[]") for u in user_ids))
        entries = await services.ranking.users(found, wanted)
        return {"leaderboard": found.id, "entries": [e.as_json() for e in entries]}

    @app.get("/v1/users/<user_id>/history")
    async def history(user_id: str) -> dict[str, Any]:
        _user_id(user_id)
        is_admin = is_bearer(request.headers.get("Authorization"), settings.admin_token)
        if not is_admin and player().user_id != user_id:
            raise Forbidden("only that player or an admin may read this", code="forbidden")
        board_id = request.args.get("leaderboard")
        if board_id is not None:
            check_board_id(board_id)
        limit = _int_arg("limit", _HISTORY_DEFAULT, 1, settings.read_max_limit)
        before = _int_arg("before", 0, 0, 2**63 - 1) or None
        rows = await services.postgres.history(user_id, board_id, limit=limit, before_id=before)
        entries = [
            {
                "id": row["id"],
                "leaderboard": row["leaderboard_id"],
                "score_increment": row["score_increment"],
                "old_score": row["old_score"],
                "new_score": row["new_score"],
                "action_type": row["action_type"],
                "created_at": row["created_at"].isoformat(),
            }
            for row in rows
        ]
        next_before = entries[-1]["id"] if len(entries) == limit else None
        return {"user_id": user_id, "entries": entries, "next_before": next_before}

    # ---- admin

    @app.post("/v1/admin/leaderboards")
    async def admin_create_board() -> tuple[dict[str, Any], int]:
        who = admin()
        definition = parse_board_definition(await json_body(max_body))
        created = await services.postgres.create_leaderboard(definition, actor=who)
        services.catalog.put_board(created)
        return _board_json(created), 201

    @app.patch("/v1/admin/leaderboards/<board_id>")
    async def admin_update_board(board_id: str) -> dict[str, Any]:
        who = admin()
        current = board(board_id)
        body = await json_body(max_body)
        fixed = {k: body[k] for k in ("sort_order", "operator") if k in body}
        if any(fixed[k] != getattr(current, k) for k in fixed):
            raise Unprocessable(
                "sort_order and operator cannot change once a board exists; create a new board",
                code="immutable_field",
            )
        merged = {
            "sort_order": current.sort_order,
            "operator": current.operator,
            "reset_schedule": body.get("reset_schedule", current.reset_schedule),
        }
        updated = await services.postgres.update_leaderboard(
            parse_board_definition(merged, board_id=board_id), actor=who
        )
        services.catalog.put_board(updated)
        return _board_json(updated)


def _board_json(board: Board) -> dict[str, Any]:
    return {
        "id": board.id,
        "sort_order": board.sort_order,
        "operator": board.operator,
        "reset_schedule": board.reset_schedule,
        "period": board.current_period,
    }
