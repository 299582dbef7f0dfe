"""The admin API against a real node, Redis and PostgreSQL.

Fraud cases are inserted with SQL, shaped as the fraud engine writes them;
everything else goes through the HTTP API. Every reply is also checked
against the OpenAPI document, so the document cannot drift from the handlers.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import jsonschema
import pytest
import trio_asyncio

from config import Settings
from server.admin_api import ADMIN_ROUTES
from server.openapi import openapi_document
from server.stores.pg_store import PostgresStore, open_postgres
from tests.api import Api, Player
from tests.harness import node_api

T0 = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
NOBODY = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
def admin_settings(settings: Settings) -> Settings:
    # The fraud engine would score these tests' quick submissions and log
    # cases of its own; here cases are only the ones a test inserts.
    return settings.replace(fraud_enabled=False)


@dataclass
class Admin:
    """The admin side of a test: the node's API with the admin token, and SQL."""

    api: Api
    pg: PostgresStore
    settings: Settings

    @property
    def http(self) -> httpx.AsyncClient:
        return self.api.http

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.settings.admin_token}"}

    async def call(
        self, method: str, path: str, *, status: int = 200, **kwargs: Any
    ) -> dict[str, Any]:
        """An admin request whose reply must have ``status`` and match the document."""
        kwargs.setdefault("headers", self.auth)
        reply = await self.http.request(method, path, **kwargs)
        assert reply.status_code == status, reply.text
        body: dict[str, Any] = reply.json()
        check_documented(method, path, reply)
        return body

    async def error(self, method: str, path: str, status: int, **kwargs: Any) -> str:
        """The error code of an admin request that must fail with ``status``."""
        body = await self.call(method, path, status=status, **kwargs)
        code: str = body["error"]["code"]
        return code

    async def case(
        self,
        user: Player | None,
        *,
        event_type: str = "flag",
        risk: float = 0.62,
        minutes: int = 0,
        status: str = "open",
        assessment: dict[str, Any] | None = None,
    ) -> int:
        """Insert a fraud case ``minutes`` after T0, the way the fraud engine logs one."""
        if assessment is None:
            assessment = {
                "risk": risk,
                "decision": event_type,
                "factors": {"frequency": 0.9, "increment": 0.4, "timing": 0.1},
                "reasons": ["12 submissions in 10 s", "delta near the maximum"],
            }
        metadata = {
            "assessment": assessment,
            "leaderboard": "global",
            "action_type": "score",
            "delta": 9000,
            "nonce": f"n{minutes}",
            "ip": "203.0.113.7",
            "device": "ua-hash",
        }
        rows = await self.pg.fetch(
            "INSERT INTO fraud_logs (user_id, event_type, risk_score, metadata, review_status, "
            "created_at) VALUES ($1, $2, $3, $4::jsonb, $5, $6) RETURNING id",
            user.user_id if user else None,
            event_type,
            risk,
            json.dumps(metadata),
            status,
            T0 + dt.timedelta(minutes=minutes),
        )
        case_id: int = rows[0]["id"]
        return case_id

    async def history_ids(self, player: Player, board: str = "global") -> list[int]:
        """The player's score history ids on ``board``, oldest first."""
        reply = await self.http.get(
            f"/v1/users/{player.user_id}/history", params={"leaderboard": board}, headers=self.auth
        )
        assert reply.status_code == 200, reply.text
        return [entry["id"] for entry in reversed(reply.json()["entries"])]

    async def audit(self, limit: int = 50) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = (
            await self.call("GET", "/v1/admin/audit", params={"limit": limit})
        )["entries"]
        return entries


def check_documented(method: str, path: str, reply: httpx.Response) -> None:
    document = openapi_document(max_limit=100)
    for template, item in document["paths"].items():
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path) and method.lower() in item:
            responses = item[method.lower()]["responses"]
            break
    else:
        raise AssertionError(f"{method} {path} is not documented")
    status = str(reply.status_code)
    assert status in responses, (method, path, reply.status_code, reply.text)
    body = reply.json()
    if reply.status_code >= 400:
        assert f"`{body['error']['code']}`" in responses[status]["description"], reply.text
    schema = responses[status]["content"]["application/json"]["schema"]
    jsonschema.validate(body, schema | {"components": document["components"]})


@contextlib.asynccontextmanager
async def admin_node(settings: Settings) -> AsyncIterator[Admin]:
    async with (
        trio_asyncio.open_loop(),
        open_postgres(settings.database_url or "", min_size=1, max_size=2) as pg,
        node_api(settings) as (api, _, _),
    ):
        yield Admin(api, pg, settings)


async def top_ids(api: Api, board: str = "global") -> list[str]:
    return [entry["user_id"] for entry in (await api.top(board, limit=50))["entries"]]


async def test_every_admin_route_needs_the_admin_token(admin_settings: Settings) -> None:
    async with admin_node(admin_settings) as admin:
        ann = await admin.api.player("ann")
        case_id = await admin.case(ann)
        params = {"board_id": "global", "user_id": ann.user_id, "case_id": str(case_id)}
        params |= {"history_id": "1"}
        wrong = {"Authorization": "Bearer not-the-admin-token"}
        for route in ADMIN_ROUTES:
            path = re.sub(r"<([a-z_]+)>", lambda m: params[m[1]], route.rule)
            for headers in ({}, wrong, ann.auth):
                # A body that would be accepted: the token is checked first.
                code = await admin.error(
                    route.method, path, 401, headers=headers, json={"status": "confirmed"}
                )
                assert code == "bad_key", (route, headers)
        assert await admin.audit() == []
        assert (await admin.call("GET", f"/v1/admin/fraud/cases/{case_id}"))["review_status"] == (
            "open"
        )


async def test_fraud_cases_are_listed_newest_first_filtered_and_paged(
    admin_settings: Settings,
) -> None:
    async with admin_node(admin_settings) as admin:
        ann, bob = await admin.api.player("ann"), await admin.api.player("bob")
        ids = [
            await admin.case(ann, event_type="flag", risk=0.55, minutes=1),
            await admin.case(bob, event_type="block", risk=0.91, minutes=2),
            await admin.case(ann, event_type="shadow_ban", risk=0.97, minutes=3),
            await admin.case(ann, event_type="block", risk=0.85, minutes=4, status="confirmed"),
            await admin.case(None, event_type="flag", risk=0.5, minutes=5, assessment={}),
            # Same moment as the one before: the id breaks the tie.
            await admin.case(bob, event_type="flag", risk=0.6, minutes=5, status="false_positive"),
        ]
        newest_first = ids[::-1]

        everything = await admin.call("GET", "/v1/admin/fraud/cases")
        assert [c["id"] for c in everything["cases"]] == newest_first
        assert everything["next_cursor"] is None

        shadow = everything["cases"][3]
        assert shadow == shadow | {
            "id": ids[2],
            "user_id": ann.user_id,
            "username": "ann",
            "user_status": "active",
            "event_type": "shadow_ban",
            "risk_score": 0.97,
            "factors": {"frequency": 0.9, "increment": 0.4, "timing": 0.1},
            "reasons": ["12 submissions in 10 s", "delta near the maximum"],
            "review_status": "open",
            "reviewed_by": None,
            "reviewed_at": None,
            "review_note": None,
        }
        assert dt.datetime.fromisoformat(shadow["created_at"]) == T0 + dt.timedelta(minutes=3)
        assert shadow["metadata"]["ip"] == "203.0.113.7"
        assert shadow["metadata"]["assessment"]["decision"] == "shadow_ban"
        # No assessment, no user: still a case, with nothing to lift.
        orphan = everything["cases"][1]
        assert (orphan["user_id"], orphan["username"], orphan["user_status"]) == (None, None, None)
        assert (orphan["factors"], orphan["reasons"]) == ({}, [])

        async def listed(**params: Any) -> list[int]:
            body = await admin.call("GET", "/v1/admin/fraud/cases", params=params)
            return [c["id"] for c in body["cases"]]

        assert await listed(status="open") == [ids[4], ids[2], ids[1], ids[0]]
        assert await listed(status="confirmed") == [ids[3]]
        assert await listed(status="false_positive") == [ids[5]]
        assert await listed(event_type="block") == [ids[3], ids[1]]
        assert await listed(user_id=ann.user_id) == [ids[3], ids[2], ids[0]]
        assert await listed(user_id=ann.user_id, status="open", event_type="flag") == [ids[0]]
        assert await listed(user_id=NOBODY) == []

        # Pages of two, following next_cursor, with a filter kept throughout.
        opened = [ids[4], ids[2], ids[1], ids[0]]
        for params, expected in (({}, newest_first), ({"status": "open"}, opened)):
            seen: list[int] = []
            cursor: str | None = None
            while True:
                query = params | {"limit": 2} | ({"cursor": cursor} if cursor else {})
                page = await admin.call("GET", "/v1/admin/fraud/cases", params=query)
                seen += [c["id"] for c in page["cases"]]
                cursor = page["next_cursor"]
                if cursor is None:
                    break
                assert len(page["cases"]) == 2
            assert seen == expected

        one = await admin.call("GET", f"/v1/admin/fraud/cases/{ids[2]}")
        assert one == shadow
        # An automatic shadow ban is logged with just a reason: that is its reason.
        [auto] = await admin.pg.fetch(
            "INSERT INTO fraud_logs (user_id, event_type, risk_score, metadata) "
            "VALUES ($1, 'shadow_ban', 1, $2::jsonb) RETURNING id",
            bob.user_id,
            json.dumps({"reason": "3 blocks in 24 h"}),
        )
        auto_case = await admin.call("GET", f"/v1/admin/fraud/cases/{auto['id']}")
        assert (auto_case["factors"], auto_case["reasons"]) == ({}, ["3 blocks in 24 h"])

        cases = "/v1/admin/fraud/cases"
        refused: list[tuple[dict[str, Any], int, str]] = [
            ({"status": "closed"}, 422, "invalid_value"),
            ({"event_type": "allow"}, 422, "invalid_value"),
            ({"user_id": "ann"}, 400, "bad_user_id"),
            ({"limit": 0}, 422, "invalid_value"),
            ({"limit": 201}, 422, "invalid_value"),
            ({"limit": "ten"}, 400, "bad_request"),
            ({"cursor": "not-a-cursor"}, 400, "bad_cursor"),
            ({"cursor": "WyJ4IiwxXQ"}, 400, "bad_cursor"),  # ["x",1]
            ({"cursor": "WzEwMDAwMDAwMDAwMDAwMDAwMDAsMV0"}, 400, "bad_cursor"),  # out of range
        ]
        for params, status, code in refused:
            assert await admin.error("GET", cases, status, params=params) == code, params
        assert await admin.error("GET", f"{cases}/999999", 404) == "case_not_found"
        for bad in ("abc", "0", "-1", "1.5", "99999999999999999999"):
            assert await admin.error("GET", f"{cases}/{bad}", 400) == "bad_id", bad


async def test_reviewing_a_case(admin_settings: Settings) -> None:
    async with admin_node(admin_settings) as admin:
        ann = await admin.api.player("ann")
        case_id = await admin.case(ann, event_type="block", risk=0.88)
        review = f"/v1/admin/fraud/cases/{case_id}/review"

        before = await admin.pg.fetch("SELECT now() AS now")
        confirmed = await admin.call(
            "POST", review, json={"status": "confirmed", "note": "bot-like timing"}
        )
        assert confirmed["review_status"] == "confirmed"
        assert confirmed["reviewed_by"] == "admin"
        assert confirmed["review_note"] == "bot-like timing"
        assert dt.datetime.fromisoformat(confirmed["reviewed_at"]) >= before[0]["now"]
        assert (await admin.call("GET", f"/v1/admin/fraud/cases/{case_id}")) == confirmed
        confirmed_list = await admin.call(
            "GET", "/v1/admin/fraud/cases", params={"status": "confirmed"}
        )
        assert [c["id"] for c in confirmed_list["cases"]] == [case_id]

        reopened = await admin.call("POST", review, json={"status": "open"})
        assert (reopened["review_status"], reopened["review_note"]) == ("open", None)
        false_positive = await admin.call(
            "POST", review, json={"status": "false_positive", "note": "a speedrunner"}
        )
        assert false_positive["review_status"] == "false_positive"

        [third, second, first] = [e for e in await admin.audit() if e["target"] == str(case_id)]
        assert {e["action"] for e in (first, second, third)} == {"fraud_case.review"}
        assert {e["actor"] for e in (first, second, third)} == {"admin"}
        assert first["details"] == {
            "user_id": ann.user_id,
            "from": "open",
            "to": "confirmed",
            "note": "bot-like timing",
        }
        assert (second["details"]["from"], second["details"]["to"]) == ("confirmed", "open")
        assert third["details"]["note"] == "a speedrunner"

        for body, status, code in (
            ({"status": "dismissed"}, 422, "invalid_value"),
            ({}, 422, "invalid_value"),
            ({"status": "confirmed", "note": 5}, 422, "invalid_value"),
            ({"status": "confirmed", "note": "x" * 501}, 422, "invalid_value"),
            ([1, 2], 400, "bad_request"),
        ):
            assert await admin.error("POST", review, status, json=body) == code, body
        not_json = await admin.error(
            "POST", review, 415, content=b"status=confirmed", headers=admin.auth
        )
        assert not_json == "not_json"
        broken = await admin.error(
            "POST",
            review,
            400,
            content=b"{nope",
            headers=admin.auth | {"Content-Type": "application/json"},
        )
        assert broken == "malformed_json"
        missing = await admin.error(
            "POST", "/v1/admin/fraud/cases/424242/review", 404, json={"status": "confirmed"}
        )
        assert missing == "case_not_found"
        # None of the refused reviews changed the case or wrote an audit row.
        assert (await admin.call("GET", f"/v1/admin/fraud/cases/{case_id}")) == false_positive
        assert len(await admin.audit()) == 3


async def test_ban_refuses_submissions_and_hides_the_user_until_unbanned(
    admin_settings: Settings,
) -> None:
    async with admin_node(admin_settings) as admin:
        api = admin.api
        ann, bob = await api.player("ann"), await api.player("bob")
        await api.score(ann, 500)
        await api.score(bob, 300)
        await admin.case(ann, event_type="block")
        await admin.case(ann, event_type="flag", status="confirmed")
        assert await top_ids(api) == [ann.user_id, bob.user_id]

        user = f"/v1/admin/users/{ann.user_id}"
        banned = await admin.call("POST", f"{user}/ban", json={"reason": "confirmed bot"})
        assert banned == {"user_id": ann.user_id, "status": "banned"}
        refused = await api.submit(ann, await api.mint(ann, 10))
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "user_banned"
        assert await top_ids(api) == [bob.user_id]
        assert (await api.top())["entries"][0]["rank"] == 1
        details = await admin.call("GET", user)
        assert details == details | {
            "user_id": ann.user_id,
            "username": "ann",
            "status": "banned",
            "fraud_cases": {"open": 1, "confirmed": 1, "false_positive": 0},
        }
        listed = await admin.call("GET", "/v1/admin/fraud/cases", params={"user_id": ann.user_id})
        assert {c["user_status"] for c in listed["cases"]} == {"banned"}

        # Banning twice is harmless (and is how a 503 half-way is retried); no body is needed.
        again = await admin.http.post(f"{user}/ban", headers=admin.auth)
        assert again.status_code == 200, again.text

        unbanned = await admin.call("POST", f"{user}/unban")
        assert unbanned == {"user_id": ann.user_id, "status": "active"}
        assert await top_ids(api) == [ann.user_id, bob.user_id]
        assert (await api.score(ann, 10))["new_score"] == 510

        rows = await admin.pg.fetch("SELECT status FROM users WHERE id = $1", ann.user_id)
        assert rows[0]["status"] == "active"
        actions = [(e["action"], e["target"], e["details"]) for e in await admin.audit()][::-1]
        assert actions == [
            (
                "user.ban",
                ann.user_id,
                {"from": "active", "to": "banned", "reason": "confirmed bot"},
            ),
            ("user.ban", ann.user_id, {"from": "banned", "to": "banned", "reason": None}),
            ("user.unban", ann.user_id, {"from": "banned", "to": "active", "reason": None}),
        ]


async def test_shadow_ban_hides_the_user_from_everyone_but_themself(
    admin_settings: Settings,
) -> None:
    async with admin_node(admin_settings) as admin:
        api = admin.api
        ann, bob = await api.player("ann"), await api.player("bob")
        await api.score(ann, 500)
        await api.score(bob, 300)

        user = f"/v1/admin/users/{ann.user_id}"
        shadowed = await admin.call("POST", f"{user}/shadow-ban", json={})
        assert shadowed == {"user_id": ann.user_id, "status": "shadow_banned"}
        assert await top_ids(api) == [bob.user_id]

        # Her submissions still count; only she can see them.
        accepted = await api.score(ann, 50)
        assert (accepted["old_score"], accepted["new_score"]) == (500, 550)
        assert await top_ids(api) == [bob.user_id]
        mine = await api.http.get(f"/v1/leaderboards/global/users/{ann.user_id}")
        assert mine.status_code == 200, mine.text
        assert (mine.json()["score"], mine.json()["username"]) == (550, "ann")
        assert (await admin.call("GET", user))["status"] == "shadow_banned"

        await admin.call("POST", f"{user}/unban")
        top = (await api.top())["entries"]
        assert [(e["user_id"], e["score"], e["rank"]) for e in top] == [
            (ann.user_id, 550, 1),
            (bob.user_id, 300, 2),
        ]


async def test_user_status_bad_inputs(admin_settings: Settings) -> None:
    async with admin_node(admin_settings) as admin:
        ann = await admin.api.player("ann")
        for action in ("ban", "unban", "shadow-ban"):
            path = f"/v1/admin/users/{NOBODY}/{action}"
            assert await admin.error("POST", path, 404) == "user_not_found"
            bad_id = f"/v1/admin/users/not-a-uuid/{action}"
            assert await admin.error("POST", bad_id, 400) == "bad_user_id"
            path = f"/v1/admin/users/{ann.user_id}/{action}"
            long_reason = {"reason": "x" * 501}
            assert await admin.error("POST", path, 422, json=long_reason) == "invalid_value"
            assert await admin.error("POST", path, 422, json={"reason": 7}) == "invalid_value"
            not_json = await admin.error("POST", path, 415, content=b"reason=x", headers=admin.auth)
            assert not_json == "not_json"
        assert await admin.error("GET", f"/v1/admin/users/{NOBODY}", 404) == "user_not_found"
        assert await admin.error("GET", "/v1/admin/users/ANN", 400) == "bad_user_id"
        assert (await admin.call("GET", f"/v1/admin/users/{ann.user_id}"))["status"] == "active"
        assert await admin.audit() == []


async def test_removing_scores_recomputes_the_record_and_the_ranking(
    admin_settings: Settings,
) -> None:
    async with admin_node(admin_settings) as admin:
        api = admin.api
        ann, bob = await api.player("ann"), await api.player("bob")
        for delta in (100, 50, 30):
            await api.score(ann, delta)
        await api.score(bob, 150)
        assert await top_ids(api) == [ann.user_id, bob.user_id]
        first, second, third = await admin.history_ids(ann)

        removed = await admin.call(
            "POST", f"/v1/admin/scores/{second}/remove", json={"reason": "replayed run"}
        )
        assert removed == {
            "history_id": second,
            "user_id": ann.user_id,
            "leaderboard": "global",
            "old_score": 180,
            "new_score": 130,
            "rank": 2,
        }
        top = (await api.top())["entries"]
        assert [(e["user_id"], e["score"]) for e in top] == [
            (bob.user_id, 150),
            (ann.user_id, 130),
        ]
        assert await admin.history_ids(ann) == [first, third]
        record = await admin.pg.fetch(
            "SELECT r.score, r.version, u.current_score FROM leaderboard_records r "
            "JOIN users u ON u.id = r.user_id WHERE r.user_id = $1",
            ann.user_id,
        )
        assert (record[0]["score"], record[0]["current_score"], record[0]["version"]) == (
            130,
            130,
            4,
        )

        again = f"/v1/admin/scores/{second}/remove"
        assert await admin.error("POST", again, 409) == "score_already_removed"
        assert await admin.error("POST", "/v1/admin/scores/987654/remove", 404) == (
            "score_not_found"
        )
        assert await admin.error("POST", "/v1/admin/scores/first/remove", 400) == "bad_id"
        long_reason = {"reason": "x" * 501}
        path = f"/v1/admin/scores/{first}/remove"
        assert await admin.error("POST", path, 422, json=long_reason) == "invalid_value"

        # The ledger carries on from the recomputed total.
        assert (await api.score(ann, 5))["new_score"] == 135
        # Removing everything left deletes the record: she is off the board.
        remaining = await admin.history_ids(ann)
        assert remaining[:2] == [first, third]
        replies = [
            await admin.call("POST", f"/v1/admin/scores/{history_id}/remove")
            for history_id in remaining
        ]
        assert [(r["new_score"], r["rank"]) for r in replies] == [(35, 2), (5, 2), (None, None)]
        assert await top_ids(api) == [bob.user_id]
        gone = await api.http.get(f"/v1/leaderboards/global/users/{ann.user_id}")
        assert gone.json()["error"]["code"] == "not_ranked"
        users = await admin.pg.fetch("SELECT current_score FROM users WHERE id = $1", ann.user_id)
        assert users[0]["current_score"] == 0
        # And a new score starts from zero again, ranked at once.
        assert (await api.score(ann, 7))["new_score"] == 7
        assert await top_ids(api) == [bob.user_id, ann.user_id]

        audit = [e for e in await admin.audit() if e["action"] == "score.remove"][::-1]
        assert [e["target"] for e in audit] == [str(h) for h in [second, *remaining]]
        assert audit[0]["details"] == {
            "user_id": ann.user_id,
            "leaderboard": "global",
            "period": 0,
            "score_increment": 50,
            "old_score": 180,
            "new_score": 130,
            "reason": "replayed run",
        }


@pytest.mark.parametrize(
    ("sort_order", "operator", "deltas", "remove", "before", "after"),
    [
        ("asc", "best", (90, 70, 80), 1, 70, 80),  # the best goes: the next best remains
        ("desc", "best", (90, 70, 95), 0, 95, 95),  # not the best: nothing changes
        ("desc", "set", (5, 9, 7), 2, 7, 9),  # the latest goes: the one before it remains
        ("desc", "decr", (3, 2), 0, -5, -2),  # decr: the delta is given back
    ],
)
async def test_removing_a_score_follows_the_board_operator(
    admin_settings: Settings,
    sort_order: str,
    operator: str,
    deltas: tuple[int, ...],
    remove: int,
    before: int,
    after: int,
) -> None:
    async with admin_node(admin_settings) as admin:
        api = admin.api
        created = await api.create_board("arena", sort_order=sort_order, operator=operator)
        assert created.status_code == 201, created.text
        ann, bob = await api.player("ann"), await api.player("bob")
        for delta in deltas:
            await api.score(ann, delta, leaderboard="arena")
        await api.score(bob, 85, leaderboard="arena")
        ann_score = await api.http.get(f"/v1/leaderboards/arena/users/{ann.user_id}")
        assert ann_score.json()["score"] == before

        history = await admin.history_ids(ann, "arena")
        removed = await admin.call("POST", f"/v1/admin/scores/{history[remove]}/remove")
        assert (removed["leaderboard"], removed["old_score"], removed["new_score"]) == (
            "arena",
            before,
            after,
        )
        entries = (await api.top("arena"))["entries"]
        scores = {e["user_id"]: e["score"] for e in entries}
        bob_score = -85 if operator == "decr" else 85
        assert scores == {ann.user_id: after, bob.user_id: bob_score}
        ann_first = after < bob_score if sort_order == "asc" else after > bob_score
        expected = [ann.user_id, bob.user_id] if ann_first else [bob.user_id, ann.user_id]
        assert [e["user_id"] for e in entries] == expected
        assert removed["rank"] == expected.index(ann.user_id) + 1
        # global is untouched: these scores were on another board.
        assert (await api.top())["entries"] == []


async def test_rebuild_reloads_a_board_from_postgres(admin_settings: Settings) -> None:
    async with admin_node(admin_settings) as admin:
        api = admin.api
        ann, bob = await api.player("ann"), await api.player("bob")
        await api.score(ann, 500)
        await api.score(bob, 300)
        # Changed behind the ranking's back: only a rebuild can know.
        await admin.pg.execute(
            "UPDATE leaderboard_records SET score = 900, version = version + 1 WHERE user_id = $1",
            bob.user_id,
        )
        assert await top_ids(api) == [ann.user_id, bob.user_id]

        rebuilt = await admin.call("POST", "/v1/admin/leaderboards/global/rebuild")
        assert rebuilt == {"leaderboard": "global", "records": 2}
        top = (await api.top())["entries"]
        assert [(e["user_id"], e["score"]) for e in top] == [
            (bob.user_id, 900),
            (ann.user_id, 500),
        ]
        [entry] = await admin.audit()
        assert (entry["action"], entry["target"], entry["details"]) == (
            "leaderboard.rebuild",
            "global",
            {"records": 2},
        )

        nope = "/v1/admin/leaderboards/nope/rebuild"
        assert await admin.error("POST", nope, 404) == "leaderboard_not_found"
        bad = "/v1/admin/leaderboards/No!/rebuild"
        assert await admin.error("POST", bad, 400) == "bad_leaderboard_id"


async def test_audit_log_records_who_did_what_when(admin_settings: Settings) -> None:
    async with admin_node(admin_settings) as admin:
        api = admin.api
        started = (await admin.pg.fetch("SELECT now() AS now"))[0]["now"]
        ann = await api.player("ann")
        await api.score(ann, 40)
        case_id = await admin.case(ann)
        created = await admin.call(
            "POST", "/v1/admin/leaderboards", status=201, json={"id": "weekly"}
        )
        assert created["id"] == "weekly"
        patched = await admin.call(
            "PATCH", "/v1/admin/leaderboards/weekly", json={"reset_schedule": "weekly"}
        )
        assert patched["reset_schedule"] == "weekly"
        immutable = await admin.error(
            "PATCH", "/v1/admin/leaderboards/weekly", 422, json={"operator": "set"}
        )
        assert immutable == "immutable_field"
        await admin.call(
            "POST", f"/v1/admin/fraud/cases/{case_id}/review", json={"status": "confirmed"}
        )
        await admin.call("POST", f"/v1/admin/users/{ann.user_id}/shadow-ban")
        [history_id] = await admin.history_ids(ann)
        await admin.call("POST", f"/v1/admin/scores/{history_id}/remove")
        await admin.call("POST", "/v1/admin/leaderboards/weekly/rebuild")

        expected = [
            ("leaderboard.create", "weekly"),
            ("leaderboard.update", "weekly"),
            ("fraud_case.review", str(case_id)),
            ("user.shadow_ban", ann.user_id),
            ("score.remove", str(history_id)),
            ("leaderboard.rebuild", "weekly"),
        ]
        entries = await admin.audit()
        assert [(e["action"], e["target"]) for e in entries] == expected[::-1]
        assert {e["actor"] for e in entries} == {"admin"}
        stamps = [dt.datetime.fromisoformat(e["created_at"]) for e in entries]
        assert all(started <= stamp for stamp in stamps)
        assert stamps == sorted(stamps, reverse=True)

        # Paged with next_before.
        first = await admin.call("GET", "/v1/admin/audit", params={"limit": 4})
        assert first["next_before"] == first["entries"][-1]["id"]
        rest = await admin.call(
            "GET", "/v1/admin/audit", params={"limit": 4, "before": first["next_before"]}
        )
        assert rest["next_before"] is None
        assert first["entries"] + rest["entries"] == entries
        for params, status, code in (
            ({"limit": 0}, 422, "invalid_value"),
            ({"limit": 500}, 422, "invalid_value"),
            ({"before": "x"}, 400, "bad_request"),
        ):
            assert await admin.error("GET", "/v1/admin/audit", status, params=params) == code
