"""The admin API: fraud-case review, account status, score removal, leaderboards.

Every route takes ``Authorization: Bearer <PODIUM_ADMIN_TOKEN>`` and answers
401 ``bad_key`` without it, before it looks at anything else. The routes are
declared once in :data:`ADMIN_ROUTES`, which
:func:`server.http_api.register_api` mounts beside the v1 routes; handlers
see an :class:`~server.http_api.ApiRequest` and raise
:class:`~protocol.errors.PodiumError`, as there.

Every change is made in PostgreSQL together with its audit_log row (actor,
action, target, details) in one transaction
(:class:`~server.stores.pg_store.PostgresStore`); only then is the ranking
told, so Redis follows the source of truth. If telling the ranking fails the
reply is a 503 and repeating the request is safe: each action is idempotent
apart from its audit row (and a score removal, which answers 409 the second
time — rebuild the board instead).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from typing import TYPE_CHECKING, Any, Final

from protocol.errors import BadRequest, NotFound, Unprocessable
from protocol.leaderboards import Board, LedgerResult, check_board_id, parse_board_definition
from server.auth import check_bearer
from server.http_api import ApiRequest, Route, _board_json, _int_arg, _user_id, json_body

if TYPE_CHECKING:
    from server.node import NodeServices

#: A fraud case's review states, and the event types the fraud engine logs.
REVIEW_STATUSES: Final = ("open", "confirmed", "false_positive")
EVENT_TYPES: Final = ("flag", "block", "shadow_ban")
CASES_DEFAULT: Final = 50
CASES_MAX: Final = 200
AUDIT_DEFAULT: Final = 50
AUDIT_MAX: Final = 200
MAX_TEXT_CHARS: Final = 500
MAX_ID: Final = 2**63 - 1
_ID_RE: Final = re.compile(r"[0-9]{1,19}")
_MAX_CURSOR_CHARS: Final = 128
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class AdminApi:
    """The admin handlers of one node; see the module docstring."""

    def __init__(self, services: NodeServices) -> None:
        self._services = services
        self._postgres = services.postgres
        self._max_body = services.settings.http_max_body_bytes

    def _admin(self, req: ApiRequest) -> str:
        """The acting admin's name for the audit log, or 401 ``bad_key``."""
        check_bearer(
            req.headers.get("authorization"),
            self._services.settings.admin_token,
            what="admin token",
        )
        return "admin"

    def _board(self, board_id: str) -> Board:
        check_board_id(board_id)
        found = self._services.catalog.board(board_id)
        if found is None:
            raise NotFound(f"no leaderboard {board_id!r}", code="leaderboard_not_found")
        return found

    # ---- leaderboards

    async def create_board(self, req: ApiRequest) -> dict[str, Any]:
        who = self._admin(req)
        definition = parse_board_definition(await json_body(req, self._max_body))
        created = await self._postgres.create_leaderboard(definition, actor=who)
        self._services.catalog.put_board(created)
        return _board_json(created)

    async def update_board(self, req: ApiRequest) -> dict[str, Any]:
        who = self._admin(req)
        board_id = req.params["board_id"]
        current = self._board(board_id)
        body = await json_body(req, self._max_body)
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
        updated = await self._postgres.update_leaderboard(
            parse_board_definition(merged, board_id=board_id), actor=who
        )
        self._services.catalog.put_board(updated)
        return _board_json(updated)

    async def rebuild_board(self, req: ApiRequest) -> dict[str, Any]:
        """Rebuild one board's ranking from PostgreSQL (it stays in service meanwhile)."""
        who = self._admin(req)
        board = self._board(req.params["board_id"])
        records = await self._services.ranking.rebuild_board(board)
        # Nothing changed in PostgreSQL: the audit row records the finished rebuild.
        await self._postgres.audit(who, "leaderboard.rebuild", board.id, {"records": records})
        return {"leaderboard": board.id, "records": records}

    # ---- fraud cases

    async def list_cases(self, req: ApiRequest) -> dict[str, Any]:
        self._admin(req)
        review_status = _choice(req.query.get("status"), "status", REVIEW_STATUSES)
        event_type = _choice(req.query.get("event_type"), "event_type", EVENT_TYPES)
        user_id = req.query.get("user_id")
        if user_id is not None:
            _user_id(user_id)
        limit = _int_arg(req, "limit", CASES_DEFAULT, 1, CASES_MAX)
        cursor = req.query.get("cursor")
        rows = await self._postgres.fraud_cases(
            review_status=review_status,
            event_type=event_type,
            user_id=user_id,
            after=decode_case_cursor(cursor) if cursor else None,
            limit=limit,
        )
        last = rows[-1] if len(rows) == limit else None
        return {
            "cases": [case_json(row) for row in rows],
            "next_cursor": encode_case_cursor(last["created_at"], last["id"]) if last else None,
        }

    async def get_case(self, req: ApiRequest) -> dict[str, Any]:
        self._admin(req)
        case_id = _id(req.params["case_id"], "case_id")
        return case_json(await self._postgres.fraud_case(case_id))

    async def review_case(self, req: ApiRequest) -> dict[str, Any]:
        who = self._admin(req)
        case_id = _id(req.params["case_id"], "case_id")
        body = await json_body(req, self._max_body)
        status = body.get("status")
        if status not in REVIEW_STATUSES:
            raise Unprocessable(
                '"status" must be "confirmed", "false_positive" or "open"', code="invalid_value"
            )
        note = _text(body, "note")
        row = await self._postgres.review_fraud_case(case_id, status, note=note, actor=who)
        return case_json(row)

    # ---- users

    async def get_user(self, req: ApiRequest) -> dict[str, Any]:
        self._admin(req)
        row = await self._postgres.admin_user(_user_id(req.params["user_id"]))
        return {
            "user_id": row["user_id"],
            "username": row["username"],
            "status": row["status"],
            "created_at": row["created_at"].isoformat(),
            "fraud_cases": {status: row[status] for status in REVIEW_STATUSES},
        }

    async def ban_user(self, req: ApiRequest) -> dict[str, Any]:
        """Refuse the user's submissions (403 ``user_banned``) and hide them everywhere."""
        return await self._set_status(req, "banned")

    async def shadow_ban_user(self, req: ApiRequest) -> dict[str, Any]:
        """Keep accepting the user's submissions, but show them to nobody else."""
        return await self._set_status(req, "shadow_banned")

    async def unban_user(self, req: ApiRequest) -> dict[str, Any]:
        """Make the user active again, back on every ranking with their scores."""
        return await self._set_status(req, "active")

    async def _set_status(self, req: ApiRequest, status: str) -> dict[str, Any]:
        who = self._admin(req)
        user_id = _user_id(req.params["user_id"])
        reason = _text(await _optional_body(req, self._max_body), "reason")
        await self._postgres.set_user_status(user_id, status, actor=who, reason=reason)
        await self._services.ranking.set_hidden(user_id, status != "active")
        return {"user_id": user_id, "status": status}

    # ---- scores

    async def remove_score(self, req: ApiRequest) -> dict[str, Any]:
        """Remove one score_history row; the user's record and ranking are recomputed."""
        who = self._admin(req)
        history_id = _id(req.params["history_id"], "history_id")
        reason = _text(await _optional_body(req, self._max_body), "reason")
        removed = await self._postgres.remove_score(history_id, actor=who, reason=reason)
        board: Board = removed["board"]
        rank: int | None = None
        if removed["state"] is not None:
            _, rank = await self._services.ranking.apply(
                removed["state"], LedgerResult(status="ok")
            )
        elif removed["new_score"] is None and removed["period"] == board.current_period:
            # The record is gone; a newer version cannot say so, a rebuild can.
            await self._services.ranking.rebuild_board(board)
        return {
            "history_id": history_id,
            "user_id": removed["user_id"],
            "leaderboard": board.id,
            "old_score": removed["old_score"],
            "new_score": removed["new_score"],
            "rank": rank,
        }

    # ---- the audit log

    async def audit_log(self, req: ApiRequest) -> dict[str, Any]:
        self._admin(req)
        limit = _int_arg(req, "limit", AUDIT_DEFAULT, 1, AUDIT_MAX)
        before = _int_arg(req, "before", 0, 0, MAX_ID) or None
        rows = await self._postgres.audit_entries(limit=limit, before_id=before)
        entries = [
            {
                "id": row["id"],
                "actor": row["actor"],
                "action": row["action"],
                "target": row["target"],
                "details": row["details"],
                "created_at": row["created_at"].isoformat(),
            }
            for row in rows
        ]
        return {
            "entries": entries,
            "next_before": entries[-1]["id"] if len(rows) == limit else None,
        }


ADMIN_ROUTES: Final = (
    Route("POST", "/v1/admin/leaderboards", "create_board", status=201),
    Route("PATCH", "/v1/admin/leaderboards/<board_id>", "update_board"),
    Route("POST", "/v1/admin/leaderboards/<board_id>/rebuild", "rebuild_board"),
    Route("GET", "/v1/admin/fraud/cases", "list_cases"),
    Route("GET", "/v1/admin/fraud/cases/<case_id>", "get_case"),
    Route("POST", "/v1/admin/fraud/cases/<case_id>/review", "review_case"),
    Route("GET", "/v1/admin/users/<user_id>", "get_user"),
    Route("POST", "/v1/admin/users/<user_id>/ban", "ban_user"),
    Route("POST", "/v1/admin/users/<user_id>/unban", "unban_user"),
    Route("POST", "/v1/admin/users/<user_id>/shadow-ban", "shadow_ban_user"),
    Route("POST", "/v1/admin/scores/<history_id>/remove", "remove_score"),
    Route("GET", "/v1/admin/audit", "audit_log"),
)


def case_json(row: dict[str, Any]) -> dict[str, Any]:
    """A fraud_logs row as the API shows it.

    ``factors`` (name → score) and ``reasons`` are lifted out of
    ``metadata.assessment`` as the fraud engine writes it; a case without
    them has ``{}`` and ``[]`` (or, for a case logged with just a
    ``metadata.reason``, such as an automatic shadow ban, that one reason).
    """
    metadata = row["metadata"] if isinstance(row["metadata"], dict) else {}
    assessment = metadata.get("assessment")
    if not isinstance(assessment, dict):
        assessment = {}
    factors = assessment.get("factors")
    reasons = assessment.get("reasons")
    if reasons is None and isinstance(metadata.get("reason"), str):
        reasons = [metadata["reason"]]
    return {
        "id": row["id"],
        "user_id": row["user_id"],
        "username": row["username"],
        "user_status": row["user_status"],
        "event_type": row["event_type"],
        "risk_score": row["risk_score"],
        "factors": {
            name: float(score)
            for name, score in (factors.items() if isinstance(factors, dict) else ())
            if isinstance(score, int | float) and not isinstance(score, bool)
        },
        "reasons": [r for r in reasons if isinstance(r, str)] if isinstance(reasons, list) else [],
        "metadata": metadata,
        "review_status": row["review_status"],
        "reviewed_by": row["reviewed_by"],
        "reviewed_at": row["reviewed_at"].isoformat() if row["reviewed_at"] else None,
        "review_note": row["review_note"],
        "created_at": row["created_at"].isoformat(),
    }


def encode_case_cursor(created_at: dt.datetime, case_id: int) -> str:
    """An opaque keyset cursor: continue with cases older than (created_at, id)."""
    micros = (created_at - _EPOCH) // dt.timedelta(microseconds=1)
    raw = json.dumps([micros, case_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_case_cursor(cursor: str) -> tuple[dt.datetime, int]:
    """The (created_at, id) in ``cursor``; 400 ``bad_cursor`` if it is not one of ours."""
    bad = BadRequest("the cursor is not valid", code="bad_cursor")
    if len(cursor) > _MAX_CURSOR_CHARS:
        raise bad
    try:
        micros, case_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not all(type(v) is int for v in (micros, case_id)) or not 1 <= case_id <= MAX_ID:
            raise bad
        return _EPOCH + dt.timedelta(microseconds=micros), case_id
    except (ValueError, TypeError, OverflowError, binascii.Error):
        raise bad from None


def _choice(value: str | None, name: str, allowed: tuple[str, ...]) -> str | None:
    if value is None or value in allowed:
        return value
    raise Unprocessable(f"{name} must be one of {', '.join(allowed)}", code="invalid_value")


def _id(value: str, name: str) -> int:
    if not _ID_RE.fullmatch(value) or not 1 <= int(value) <= MAX_ID:
        raise BadRequest(f"{name} must be a positive integer", code="bad_id")
    return int(value)


def _text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, str) or len(value) > MAX_TEXT_CHARS):
        raise Unprocessable(
            f'"{name}" must be a string of at most {MAX_TEXT_CHARS} characters',
            code="invalid_value",
        )
    return value or None


async def _optional_body(req: ApiRequest, max_bytes: int) -> dict[str, Any]:
    """The JSON body, or ``{}`` if the request has none at all."""
    if not req.content_type and not req.content_length:
        return {}
    return await json_body(req, max_bytes)
