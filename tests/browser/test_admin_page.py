"""The admin page (``GET /admin``) in a real browser.

An operator signs in with the admin token, finds the newest fraud case with
its risk, factor bars and reasons, confirms it, and shadow-bans its player;
the page shows each result inline, and an error with the API's own message.
The node, PostgreSQL and Redis are real; the browser is the system Chromium,
driven as in :mod:`tests.browser.test_live_page`.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import trio
import trio_asyncio
from playwright.sync_api import Browser, ConsoleMessage, Locator, Page, expect

from config import Settings
from server.stores.pg_store import PostgresStore, open_postgres
from tests.api import Api, Player
from tests.browser.test_live_page import TIMEOUT_MS, VIEWPORT, in_browser
from tests.harness import running_node

T = TypeVar("T")
CHEATER_FACTORS = {"frequency": 0.95, "increment": 0.7, "timing": 0.2, "identity": 0.05}
CHEATER_REASONS = ["14 submissions in 10 s", "deltas at the action type's maximum"]


@pytest.fixture
def admin_settings(settings: Settings) -> Settings:
    # Only the cases this test inserts: the fraud engine stays out of it.
    return settings.replace(fraud_enabled=False)


@dataclass
class Seeded:
    cheater: Player
    honest: Player
    cheater_case: int
    honest_case: int


async def insert_case(
    pg: PostgresStore,
    player: Player,
    *,
    event_type: str,
    risk: float,
    factors: dict[str, float],
    reasons: list[str],
    at: dt.datetime,
) -> int:
    """A fraud case as the fraud engine logs one."""
    metadata = {
        "assessment": {
            "risk": risk,
            "decision": event_type,
            "factors": factors,
            "reasons": reasons,
        },
        "leaderboard": "global",
        "action_type": "score",
        "delta": 10_000,
        "nonce": f"nonce-{event_type}",
        "ip": "198.51.100.23",
        "device": "3f9a1c",
    }
    rows = await pg.fetch(
        "INSERT INTO fraud_logs (user_id, event_type, risk_score, metadata, created_at) "
        "VALUES ($1, $2, $3, $4::jsonb, $5) RETURNING id",
        player.user_id,
        event_type,
        risk,
        json.dumps(metadata),
        at,
    )
    case_id: int = rows[0]["id"]
    return case_id


def case_card(page: Page, case_id: int) -> Locator:
    return page.locator(f'[data-testid="case"][data-case-id="{case_id}"]')


def review_and_shadow_ban(
    url: str, token: str, seeded: Seeded, shots: Path, browser: Browser
) -> None:
    errors: list[str] = []
    page = browser.new_context(viewport=VIEWPORT, locale="en-US").new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.on("pageerror", lambda error: errors.append(str(error)))

    def console(message: ConsoleMessage) -> None:
        # The browser itself logs every 4xx reply; the page must log nothing else.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            errors.append(message.text)

    page.on("console", console)
    page.goto(url)

    # A wrong token is refused, and the page says so.
    expect(page.get_by_test_id("workspace")).to_be_hidden()
    page.get_by_label("Admin token").fill("not-the-token")
    page.get_by_test_id("sign-in").click()
    expect(page.get_by_test_id("signin-error")).to_contain_text("refused (bad_key)")
    expect(page.get_by_test_id("workspace")).to_be_hidden()

    page.get_by_label("Admin token").fill(token)
    page.get_by_test_id("sign-in").click()
    expect(page.get_by_test_id("workspace")).to_be_visible()
    expect(page.get_by_test_id("session")).to_be_visible()

    # Open cases, newest first: the cheater's block, then the honest player's flag.
    cards = page.get_by_test_id("case")
    expect(cards).to_have_count(2)
    expect(page.get_by_test_id("count")).to_have_text("2 cases")
    expect(cards.nth(0)).to_have_attribute("data-case-id", str(seeded.cheater_case))
    expect(cards.nth(1)).to_have_attribute("data-case-id", str(seeded.honest_case))

    case = case_card(page, seeded.cheater_case)
    expect(case.get_by_test_id("username")).to_have_text(seeded.cheater.username)
    expect(case.get_by_test_id("user-id")).to_have_text(seeded.cheater.user_id)
    expect(case.get_by_test_id("event-type")).to_have_text("Block")
    expect(case.get_by_test_id("risk")).to_contain_text("0.91")
    expect(case.get_by_test_id("risk")).to_have_class(re.compile(r"\brisk-high\b"))
    expect(case.get_by_test_id("review-status")).to_have_text("Open")
    expect(case.get_by_test_id("user-status")).to_have_text("Active")
    expect(case.get_by_test_id("facts")).to_contain_text("198.51.100.23")

    # One bar per factor, largest first, each as long as its score.
    factors = case.get_by_test_id("factor")
    expect(factors).to_have_count(len(CHEATER_FACTORS))
    ranked = sorted(CHEATER_FACTORS.items(), key=lambda item: -item[1])
    for i, (name, score) in enumerate(ranked):
        row = factors.nth(i)
        expect(row).to_have_attribute("data-factor", name)
        expect(row).to_contain_text(f"{score:.2f}")
        expect(row.get_by_role("meter")).to_have_attribute("aria-valuenow", str(score))
        fill = row.get_by_test_id("factor-bar")
        share = fill.evaluate("el => el.offsetWidth / el.parentElement.offsetWidth")
        assert abs(share - score) < 0.02, (name, share, score)
    expect(case.get_by_test_id("reasons").locator("li")).to_have_text(CHEATER_REASONS)
    page.screenshot(path=shots / "admin-cases.png", full_page=True)

    # Confirm: the case says so at once, and moves to the confirmed list.
    case.get_by_test_id("note").fill("bot-like bursts")
    case.get_by_test_id("confirm").click()
    expect(case.get_by_test_id("review-status")).to_have_text("Confirmed")
    expect(case).to_have_attribute("data-status", "confirmed")
    expect(case.get_by_test_id("result")).to_have_attribute("data-kind", "ok")
    expect(case.get_by_test_id("result")).to_contain_text("Marked confirmed")
    expect(case.get_by_test_id("reviewed")).to_contain_text("by admin")
    expect(case.get_by_test_id("reviewed")).to_contain_text("bot-like bursts")
    expect(case.get_by_test_id("confirm")).to_be_disabled()

    page.get_by_test_id("filter-status").select_option("confirmed")
    expect(cards).to_have_count(1)
    case = case_card(page, seeded.cheater_case)
    expect(case.get_by_test_id("review-status")).to_have_text("Confirmed")
    page.get_by_test_id("filter-status").select_option("open")
    expect(cards).to_have_count(1)
    expect(cards.first).to_have_attribute("data-case-id", str(seeded.honest_case))
    page.get_by_test_id("filter-status").select_option("")
    expect(cards).to_have_count(2)
    case = case_card(page, seeded.cheater_case)

    # Shadow-ban the player: their status changes on the card.
    expect(case.get_by_test_id("unban")).to_be_disabled()
    case.get_by_test_id("shadow-ban").click()
    expect(case.get_by_test_id("user-status")).to_have_text("Shadow-banned")
    expect(case).to_have_attribute("data-user-status", "shadow_banned")
    expect(case.get_by_test_id("result")).to_have_text(
        f"{seeded.cheater.username} is shadow-banned."
    )
    expect(case.get_by_test_id("shadow-ban")).to_be_disabled()
    expect(case.get_by_test_id("unban")).to_be_enabled()
    audit = page.get_by_test_id("audit-entry")
    expect(audit.first).to_have_attribute("data-action", "user.shadow_ban")
    expect(audit.nth(1)).to_have_attribute("data-action", "fraud_case.review")
    # The honest player's case is untouched.
    honest = case_card(page, seeded.honest_case)
    expect(honest.get_by_test_id("user-status")).to_have_text("Active")

    # An error shows the API's own message, and the buttons come back.
    note = case.get_by_test_id("note")
    note.evaluate("el => { el.value = 'x'.repeat(501); }")  # past maxlength, as a script can
    case.get_by_test_id("ban").click()
    result = case.get_by_test_id("result")
    expect(result).to_have_attribute("data-kind", "error")
    expect(result).to_have_text('"reason" must be a string of at most 500 characters')
    expect(case.get_by_test_id("user-status")).to_have_text("Shadow-banned")
    expect(case.get_by_test_id("ban")).to_be_enabled()

    # The token lives in this tab: a reload keeps the session and shows the server's state.
    page.reload()
    expect(page.get_by_test_id("workspace")).to_be_visible()
    expect(cards).to_have_count(1)  # the default filter: open cases
    expect(cards.first).to_have_attribute("data-case-id", str(seeded.honest_case))
    page.get_by_test_id("filter-status").select_option("confirmed")
    expect(case_card(page, seeded.cheater_case).get_by_test_id("user-status")).to_have_text(
        "Shadow-banned"
    )
    page.screenshot(path=shots / "admin-reviewed.png", full_page=True)
    stored = page.evaluate("() => [sessionStorage.length, localStorage.length]")
    assert stored == [1, 0]

    page.get_by_test_id("sign-out").click()
    expect(page.get_by_test_id("signin")).to_be_visible()
    assert page.evaluate("() => sessionStorage.length") == 0
    assert not errors, errors


async def test_operator_reviews_a_case_and_shadow_bans_its_player(
    admin_settings: Settings, tmp_path: Path
) -> None:
    async with (
        trio_asyncio.open_loop(),
        open_postgres(admin_settings.database_url or "", min_size=1, max_size=1) as pg,
        running_node(admin_settings) as (_, address),
        httpx.AsyncClient(base_url=address.http_url, timeout=30) as http,
    ):
        api = Api(http, admin_settings)
        cheater, honest = await api.player("nova_cheater"), await api.player("fair_play")
        await api.score(cheater, 9000)
        await api.score(honest, 400)
        now = dt.datetime.now(dt.UTC)
        seeded = Seeded(
            cheater,
            honest,
            cheater_case=await insert_case(
                pg,
                cheater,
                event_type="block",
                risk=0.91,
                factors=CHEATER_FACTORS,
                reasons=CHEATER_REASONS,
                at=now - dt.timedelta(minutes=1),
            ),
            honest_case=await insert_case(
                pg,
                honest,
                event_type="flag",
                risk=0.52,
                factors={"timing": 0.6},
                reasons=["played at 4 a.m."],
                at=now - dt.timedelta(minutes=5),
            ),
        )
        token = admin_settings.admin_token or ""
        session = partial(
            review_and_shadow_ban, f"{address.http_url}/admin", token, seeded, tmp_path
        )
        await trio.to_thread.run_sync(in_browser, session)

        admin = {"Authorization": f"Bearer {token}"}
        case = (
            await http.get(f"/v1/admin/fraud/cases/{seeded.cheater_case}", headers=admin)
        ).json()
        assert (case["review_status"], case["reviewed_by"], case["review_note"]) == (
            "confirmed",
            "admin",
            "bot-like bursts",
        )
        user = (await http.get(f"/v1/admin/users/{cheater.user_id}", headers=admin)).json()
        assert user["status"] == "shadow_banned"
        assert user["fraud_cases"] == {"open": 0, "confirmed": 1, "false_positive": 0}
        top = (await api.top())["entries"]
        assert [e["user_id"] for e in top] == [honest.user_id]
        audit = (await http.get("/v1/admin/audit", headers=admin)).json()["entries"]
        assert [e["action"] for e in audit] == ["user.shadow_ban", "fraud_case.review"]


async def test_admin_page_and_files_are_served(admin_settings: Settings) -> None:
    async with (
        running_node(admin_settings) as (_, address),
        httpx.AsyncClient(base_url=address.http_url, timeout=30) as http,
    ):
        page = await http.get("/admin")
        script = await http.get("/static/admin.js")
        style = await http.get("/static/admin.css")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cache-control"] == "no-cache"
    # Nothing from elsewhere, and no inline script or style the policy would refuse.
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text)
    assert not re.search(r"<script>|<style|style=", page.text)
    assert '<script src="/static/admin.js" defer></script>' in page.text
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")
    assert "innerHTML" not in script.text
