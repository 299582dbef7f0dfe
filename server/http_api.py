"""The v1 HTTP API: accounts, action tokens, score updates, leaderboard reads.

Handlers are thin: they parse and bound the request, call the service that
owns the work, and shape the reply. They see an :class:`ApiRequest`, not a
framework's request, and every route is declared once in :data:`ROUTES`:
:func:`register_api` mounts them all on the Quart app, and the hot ones
(score updates and leaderboard reads) are also served by
:mod:`server.fast_http` straight from ASGI, without Quart's per-request
machinery. Every error is a :class:`protocol.errors.PodiumError`, turned
into the shared error body at the edge.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
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
)
from server.auth import TokenReply, check_bearer, is_bearer
from server.proxies import TrustedProxies

if TYPE_CHECKING:
    from server.node import NodeServices

_UUID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_DEFAULT_TOP: Final = 10
_DEFAULT_RADIUS: Final = 5
_HISTORY_DEFAULT: Final = 50


@dataclass(frozen=True, slots=True)
class ApiRequest:
    """What a handler needs of an HTTP request, whichever layer parsed it.

    ``headers`` must answer lower-case names; ``body()`` returns the raw body,
    reading at most one byte past the body limit.
    """

    headers: Mapping[str, str]
    query: Mapping[str, str]
    params: Mapping[str, str]
    remote_addr: str | None
    content_type: str | None
    content_length: int | None
    body: Callable[[], Awaitable[bytes]]


async def json_body(req: ApiRequest, max_bytes: int) -> dict[str, Any]:
    """The request's JSON object, or the documented 413/415/400."""
    if req.content_type != "application/json":
        raise UnsupportedMediaType(
            "send the body as JSON with 'Content-Type: application/json'", code="not_json"
        )
    if req.content_length is not None and req.content_length > max_bytes:
        raise PayloadTooLarge(f"the body is larger than {max_bytes} bytes", code="body_too_large")
    raw = await req.body()
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


def _int_arg(req: ApiRequest, name: str, default: int, low: int, high: int) -> int:
    raw = req.query.get(name)
    if raw is None:
        return min(default, high)
    if not re.fullmatch(r"-?[0-9]{1,19}", raw):
        raise BadRequest(f"{name} must be an integer", code="bad_request")
    value = int(raw)
    if not low <= value <= high:
        raise Unprocessable(f"{name} must be from {low} to {high}", code="invalid_value")
    return value


def _request_meta(req: ApiRequest, ip: str | None) -> dict[str, Any]:
    return {
        "ip": ip,
        "user_agent": (req.headers.get("user-agent") or "")[:256],
    }


class V1Api:
    """The v1 handlers of one node. Each takes an :class:`ApiRequest` and returns
    the JSON body (the status is the route's) or raises a PodiumError."""

    def __init__(self, services: NodeServices) -> None:
        self._services = services
        self._settings = services.settings
        self._max_body = services.settings.http_max_body_bytes
        self._submissions = services.metrics.submissions_total
        self._submitted_ok = self._submissions.labels("ok")
        self._proxies = TrustedProxies(services.settings.trusted_proxies)

    def client_ip(self, req: ApiRequest) -> str | None:
        """The client's address (behind trusted proxies, from X-Forwarded-For)."""
        return self._proxies.client_ip(req.remote_addr, req.headers.get("x-forwarded-for"))

    async def _sign_in(
        self, req: ApiRequest, how: Callable[..., Awaitable[TokenReply]]
    ) -> dict[str, Any]:
        """Sign in with ``how`` (an AuthService method), spending one of the client IP's
        requests (429 over it) and telling the fraud engine where the player came from."""
        body = await json_body(req, self._max_body)
        ip = self.client_ip(req)
        await self._services.limiter.check_ip(ip)
        reply = await how(body, meta=_request_meta(req, ip))
        device = req.headers.get("x-device-id") or req.headers.get("user-agent")
        self._services.limiter.note_sign_in_nowait(reply.user_id, ip=ip, device=device)
        return reply.as_json()

    def _board(self, board_id: str) -> Board:
        check_board_id(board_id)
        found = self._services.catalog.board(board_id)
        if found is None:
            raise NotFound(f"no leaderboard {board_id!r}", code="leaderboard_not_found")
        return found

    def _player(self, req: ApiRequest) -> AccessClaims:
        return self._services.auth.authenticate(req.headers.get("authorization"))

    # ---- accounts

    async def auth_device(self, req: ApiRequest) -> dict[str, Any]:
        return await self._sign_in(req, self._services.auth.device)

    async def auth_register(self, req: ApiRequest) -> dict[str, Any]:
        return await self._sign_in(req, self._services.auth.register)

    async def auth_login(self, req: ApiRequest) -> dict[str, Any]:
        return await self._sign_in(req, self._services.auth.login)

    async def auth_refresh(self, req: ApiRequest) -> dict[str, Any]:
        body = await json_body(req, self._max_body)
        return (await self._services.auth.refresh(body)).as_json()

    async def auth_logout(self, req: ApiRequest) -> dict[str, Any]:
        await self._services.auth.logout(self._player(req))
        return {"status": "logged_out"}

    # ---- action tokens, for trusted game servers

    async def mint_action(self, req: ApiRequest) -> dict[str, Any]:
        settings = self._settings
        check_bearer(req.headers.get("authorization"), settings.service_key, what="service key")
        await self._services.limiter.check_service()
        body = await json_body(req, self._max_body)
        return self._mint(_user_id(body.get("user_id")), body, default_delta=None)

    async def dev_mint_action(self, req: ApiRequest) -> dict[str, Any]:
        """Development only: a signed-in player mints a token for themself."""
        if not self._settings.dev_mode:
            raise NotFound("not found", code="not_found")
        claims = self._player(req)
        body = await json_body(req, self._max_body)
        return self._mint(claims.user_id, body, default_delta=100)

    def _mint(
        self, user_id: str, body: dict[str, Any], *, default_delta: int | None
    ) -> dict[str, Any]:
        settings = self._settings
        board_id = body.get("leaderboard", "global")
        if not isinstance(board_id, str):
            raise Unprocessable('"leaderboard" must be a string', code="invalid_value")
        self._board(board_id)
        action_type = body.get("action_type", "score")
        delta = body.get("delta", default_delta)
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
            key=self._services.action_key,
            now=time.time(),
            ttl_s=settings.action_token_ttl_s,
        )
        action_token.check_delta(
            claims, self._services.action_rules, allow_unknown=settings.allow_unknown_action_types
        )
        return {"action_token": token, "expires_at": claims.expires_at, "nonce": claims.nonce}

    # ---- scores

    async def update_score(self, req: ApiRequest) -> dict[str, Any]:
        try:
            claims = self._player(req)
            body = await json_body(req, self._max_body)
            ack = await self._services.score_path.submit(
                claims,
                body.get("action_token"),
                ip=self.client_ip(req),
                user_agent=req.headers.get("user-agent"),
                device=req.headers.get("x-device-id"),
            )
        except PodiumError as exc:
            self._submissions.labels(exc.code).inc()
            raise
        self._submitted_ok.inc()
        return ack.as_json()

    # ---- reads

    async def list_boards(self, req: ApiRequest) -> dict[str, Any]:
        return {"leaderboards": [_board_json(b) for b in self._services.catalog.boards()]}

    async def get_board(self, req: ApiRequest) -> dict[str, Any]:
        return _board_json(self._board(req.params["board_id"]))

    async def top(self, req: ApiRequest) -> dict[str, Any]:
        found = self._board(req.params["board_id"])
        limit = _int_arg(req, "limit", _DEFAULT_TOP, 1, self._settings.read_max_limit)
        cursor = req.query.get("cursor")
        offset, anchor = 0, ""
        if cursor:
            anchor, offset = decode_cursor(cursor)
        entries = await self._services.ranking.top(
            found, offset=offset, limit=limit, after_user=anchor
        )
        next_cursor = (
            encode_cursor(entries[-1].user_id, entries[-1].rank) if len(entries) == limit else None
        )
        return {
            "leaderboard": found.id,
            "entries": [e.as_json() for e in entries],
            "next_cursor": next_cursor,
        }

    async def around(self, req: ApiRequest) -> dict[str, Any]:
        found = self._board(req.params["board_id"])
        user_id = _user_id(req.params["user_id"])
        radius = _int_arg(
            req, "radius", _DEFAULT_RADIUS, 0, (self._settings.read_max_limit - 1) // 2
        )
        entries = await self._services.ranking.around(found, user_id, radius)
        if not entries:
            raise NotFound("that user has no score on this leaderboard", code="not_ranked")
        return {
            "leaderboard": found.id,
            "user_id": user_id,
            "entries": [e.as_json() for e in entries],
        }

    async def user_rank(self, req: ApiRequest) -> dict[str, Any]:
        found = self._board(req.params["board_id"])
        user_id = _user_id(req.params["user_id"])
        entries = await self._services.ranking.users(found, [user_id])
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

    async def ranks(self, req: ApiRequest) -> dict[str, Any]:
        found = self._board(req.params["board_id"])
        body = await json_body(req, self._max_body)
        user_ids = body.get("user_ids")
        limit = self._settings.read_max_limit
        if not isinstance(user_ids, list) or not user_ids:
            raise Unprocessable('"user_ids" must be a non-empty list', code="invalid_value")
        if len(user_ids) > limit:
            raise Unprocessable(f'"user_ids" may hold at most {limit} ids', code="too_many_ids")
        wanted = list(dict.fromkeys(_user_id(u, "user_ids[]") for u in user_ids))
        entries = await self._services.ranking.users(found, wanted)
        return {"leaderboard": found.id, "entries": [e.as_json() for e in entries]}

    async def history(self, req: ApiRequest) -> dict[str, Any]:
        user_id = _user_id(req.params["user_id"])
        is_admin = is_bearer(req.headers.get("authorization"), self._settings.admin_token)
        if not is_admin and self._player(req).user_id != user_id:
            raise Forbidden("only that player or an admin may read this", code="forbidden")
        board_id = req.query.get("leaderboard")
        if board_id is not None:
            check_board_id(board_id)
        limit = _int_arg(req, "limit", _HISTORY_DEFAULT, 1, self._settings.read_max_limit)
        before = _int_arg(req, "before", 0, 0, 2**63 - 1) or None
        rows = await self._services.postgres.history(
            user_id, board_id, limit=limit, before_id=before
        )
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


@dataclass(frozen=True, slots=True)
class Route:
    """One v1 route. ``fast`` routes are also served by :mod:`server.fast_http`."""

    method: str
    rule: str
    handler: str
    status: int = 200
    fast: bool = False


ROUTES: Final = (
    Route("POST", "/v1/auth/device", "auth_device"),
    Route("POST", "/v1/auth/register", "auth_register", status=201),
    Route("POST", "/v1/auth/login", "auth_login"),
    Route("POST", "/v1/auth/refresh", "auth_refresh"),
    Route("POST", "/v1/auth/logout", "auth_logout"),
    Route("POST", "/v1/actions", "mint_action"),
    Route("POST", "/v1/dev/actions", "dev_mint_action"),
    Route("POST", "/v1/scores/update", "update_score", fast=True),
    Route("POST", "/scores/update", "update_score", fast=True),
    Route("GET", "/v1/leaderboards", "list_boards"),
    Route("GET", "/v1/leaderboards/<board_id>", "get_board"),
    Route("GET", "/v1/leaderboards/<board_id>/top", "top", fast=True),
    Route("GET", "/v1/leaderboards/<board_id>/around/<user_id>", "around", fast=True),
    Route("GET", "/v1/leaderboards/<board_id>/users/<user_id>", "user_rank", fast=True),
    Route("POST", "/v1/leaderboards/<board_id>/ranks", "ranks", fast=True),
    Route("GET", "/v1/users/<user_id>/history", "history"),
)


def register_api(app: Quart, services: NodeServices) -> V1Api:
    """Mount every route of :data:`ROUTES` and :data:`server.admin_api.ADMIN_ROUTES` on
    ``app``; return the v1 handlers for the fast path."""
    from server.admin_api import ADMIN_ROUTES, AdminApi  # it builds on this module

    api = V1Api(services)
    admin = AdminApi(services)

    def view(
        route: Route, handler: Callable[[ApiRequest], Awaitable[dict[str, Any]]]
    ) -> Callable[..., Awaitable[tuple[dict[str, Any], int]]]:

        async def quart_view(**params: str) -> tuple[dict[str, Any], int]:
            async def body() -> bytes:
                data = await request.get_data(as_text=False)
                assert isinstance(data, bytes)
                return data

            req = ApiRequest(
                headers=request.headers,  # type: ignore[arg-type]  # case-insensitive
                query=request.args,
                params=params,
                remote_addr=request.remote_addr,
                content_type=request.mimetype,
                content_length=request.content_length,
                body=body,
            )
            return await handler(req), route.status

        return quart_view

    for routes, handlers in ((ROUTES, api), (ADMIN_ROUTES, admin)):
        for route in routes:
            endpoint = f"{route.handler}:{route.rule}"
            handler = getattr(handlers, route.handler)
            app.add_url_rule(route.rule, endpoint, view(route, handler), methods=[route.method])
    return api


def _board_json(board: Board) -> dict[str, Any]:
    return {
        "id": board.id,
        "sort_order": board.sort_order,
        "operator": board.operator,
        "reset_schedule": board.reset_schedule,
        "period": board.current_period,
    }
