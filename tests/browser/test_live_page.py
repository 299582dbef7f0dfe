"""The live leaderboard page (``GET /``) in a real browser.

A spectator and a player open the page in two browser contexts; the player
signs in as a guest and scores (dev mode mints the action token); the
spectator's table shows the new score without a reload.

The browser is Debian's Chromium (``scripts/install-browser``), driven by
Playwright's sync API in a worker thread while the node runs in the test's
Trio loop. Playwright never downloads a browser here.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import trio
from playwright.sync_api import (
    Browser,
    Page,
    ViewportSize,
    WebSocketRoute,
    expect,
    sync_playwright,
)

from config import Settings
from tests.api import Api
from tests.harness import running_node

T = TypeVar("T")
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # the tests run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 15_000
VIEWPORT: ViewportSize = {"width": 1200, "height": 900}
# Ahead of the player (whose two scores make at most 1,000), so the spectator's
# table has rows before it and the player's row lands among them.
LEADERS = (("ada_leader", 5000), ("bo_second", 3000), ("cy_third", 2000), ("di_fourth", 1500))


@pytest.fixture
def dev_settings(settings: Settings) -> Settings:
    return settings.replace(dev_mode=True)


@contextlib.contextmanager
def plain_asyncio_in_this_thread() -> Iterator[None]:
    """Let Playwright's sync API make an ordinary asyncio loop in this worker thread.

    trio-asyncio (which the node imports) makes ``asyncio.new_event_loop()``
    build its own kind of loop in every thread unless that thread has set a
    policy; trio-asyncio keeps that policy per thread, so the node's loop is
    not touched.
    """
    asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
    try:
        yield
    finally:
        asyncio.set_event_loop_policy(None)


@dataclass
class Seen:
    """What the browser part saw, for the Trio side to check against the API."""

    player_id: str
    player_score: int
    player_rank: int
    screenshots: list[Path]


def in_browser(session: Callable[[Browser], T]) -> T:
    """Run ``session`` against a fresh headless Chromium (in a worker thread)."""
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: run scripts/install-browser"
    with plain_asyncio_in_this_thread(), sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            expect.set_options(timeout=TIMEOUT_MS)
            return session(browser)
        finally:
            browser.close()


def open_page(browser: Browser, url: str, errors: list[str]) -> Page:
    """A page in a context of its own (its own localStorage: another visitor)."""
    page = browser.new_context(viewport=VIEWPORT, locale="en-US").new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    return page


def spectate_and_play(url: str, out: Path, browser: Browser) -> Seen:
    errors: list[str] = []

    # The spectator: a snapshot over the socket, the leaders in order.
    spectator = open_page(browser, url, errors)
    expect(spectator.get_by_test_id("status")).to_have_attribute("data-state", "live")
    expect(spectator.get_by_test_id("board")).to_have_attribute("data-seq", re.compile(r"^\d+$"))
    spectator_rows = spectator.locator('[data-testid="rows"] [data-testid="row"]')
    expect(spectator_rows).to_have_count(len(LEADERS))
    expect(spectator_rows.first).to_contain_text(LEADERS[0][0])
    expect(spectator_rows.first).to_contain_text(f"{LEADERS[0][1]:,}")
    expect(spectator_rows.first).to_have_class(re.compile(r"\btop-1\b"))
    expect(spectator.get_by_test_id("play")).to_be_visible()

    # The player: signs in as a guest, the socket authenticates, Score! appears.
    player = open_page(browser, url, errors)
    expect(player.get_by_test_id("status")).to_have_attribute("data-state", "live")
    player.get_by_label("Username").fill("web_player")
    player.get_by_test_id("play").click()
    expect(player.get_by_test_id("me-name")).to_have_text("web_player")
    score = player.get_by_test_id("score")
    expect(score).to_be_enabled()
    player_id = player.get_by_test_id("playing").get_attribute("data-user-id")
    assert player_id

    # Two scores in a row: the second update must reach the spectator too.
    last_ack = player.get_by_test_id("last-ack")
    for submit_id in ("s1", "s2"):
        score.click()
        expect(last_ack).to_have_attribute("data-id", submit_id)
        expect(last_ack).to_have_attribute("data-kind", "ok")
        expect(score).to_be_enabled()
    new_score = int(last_ack.get_attribute("data-new-score") or "")
    rank = int(last_ack.get_attribute("data-rank") or "")
    assert 20 <= new_score <= 1000
    assert rank == len(LEADERS) + 1
    expect(last_ack).to_contain_text(f"→ {new_score:,} · rank #{rank}")

    # The spectator sees the player's row arrive, with the final score.
    theirs = spectator.locator(f'[data-testid="rows"] [data-user-id="{player_id}"]')
    expect(theirs).to_contain_text("web_player")
    expect(theirs).to_contain_text(f"{new_score:,}")
    expect(theirs.locator(".rank-badge")).to_have_text(str(rank))
    expect(spectator_rows).to_have_count(len(LEADERS) + 1)
    expect(spectator.locator('[data-testid="rows"] .me')).to_have_count(0)

    # The player's own row is in the table, highlighted, and so are their stats.
    mine = player.locator(f'[data-testid="rows"] [data-user-id="{player_id}"]')
    expect(mine).to_have_class(re.compile(r"\bme\b"))
    expect(mine).to_have_attribute("aria-current", "true")
    expect(mine).to_contain_text(f"{new_score:,}")
    expect(player.get_by_test_id("me-rank")).to_have_text(f"#{rank}")
    expect(player.get_by_test_id("me-score")).to_have_text(f"{new_score:,}")
    expect(player.get_by_test_id("me-outside")).to_be_hidden()
    # Highlighted for real: the row's cells are painted unlike a plain row's.
    paint = "row => getComputedStyle(row.cells[0]).backgroundColor"
    plain = player.locator('[data-testid="rows"] [data-testid="row"]:not(.me):not(.top)')
    mine_paint = mine.evaluate(paint)
    assert mine_paint != plain.first.evaluate(paint)
    assert mine_paint != player.locator('[data-testid="rows"] .top-1').evaluate(paint)

    screenshots = [out / "live-page-player.png", out / "live-page-spectator.png"]
    player.screenshot(path=screenshots[0], full_page=True)
    spectator.screenshot(path=screenshots[1], full_page=True)
    for shot in screenshots:
        assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), shot
    assert not errors, errors
    return Seen(player_id, new_score, rank, screenshots)


async def test_spectator_sees_a_guest_score_live(dev_settings: Settings, tmp_path: Path) -> None:
    async with (
        running_node(dev_settings) as (_, address),
        httpx.AsyncClient(base_url=address.http_url, timeout=30) as http,
    ):
        api = Api(http, dev_settings)
        for name, points in LEADERS:
            await api.score(await api.player(name), points)
        session = partial(spectate_and_play, f"{address.http_url}/", tmp_path)
        seen = await trio.to_thread.run_sync(in_browser, session)
        reply = await http.get(f"/v1/leaderboards/global/users/{seen.player_id}")
        body = reply.json()
        assert (body["rank"], body["score"]) == (seen.player_rank, seen.player_score)


def reconnect_after_close_codes(url: str, browser: Browser) -> Seen:
    """Close the player's socket as a draining node would, then as a forbidding one."""
    errors: list[str] = []
    page = browser.new_context(viewport=VIEWPORT, locale="en-US").new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.on("pageerror", lambda error: errors.append(str(error)))
    sockets: list[WebSocketRoute] = []

    def through(route: WebSocketRoute) -> None:
        sockets.append(route)
        route.connect_to_server()

    page.route_web_socket(re.compile(r"/v1/ws$"), through)
    page.goto(url)
    status = page.get_by_test_id("status")
    expect(status).to_have_attribute("data-state", "live")
    page.get_by_test_id("play").click()
    score = page.get_by_test_id("score")
    expect(score).to_be_enabled()
    player_id = page.get_by_test_id("playing").get_attribute("data-user-id")
    assert player_id and len(sockets) == 1

    # 45xx: reconnect (with backoff), sign the new socket in, subscribe again.
    with page.expect_websocket():
        sockets[0].close(code=4503, reason="node draining")
    expect(status).to_have_attribute("data-state", "live")
    expect(score).to_be_enabled()
    assert len(sockets) == 2
    score.click()
    last_ack = page.get_by_test_id("last-ack")
    expect(last_ack).to_have_attribute("data-kind", "ok")
    rank = int(last_ack.get_attribute("data-rank") or "")
    mine = page.locator(f'[data-testid="rows"] [data-user-id="{player_id}"]')
    expect(mine).to_have_class(re.compile(r"\bme\b"))

    # 40xx: terminal; the page says so and stays down.
    sockets[1].close(code=4003, reason="forbidden")
    expect(status).to_have_attribute("data-state", "closed")
    expect(status).to_contain_text("4003")
    assert len(sockets) == 2
    assert not errors, errors
    score_text = page.get_by_test_id("me-score").inner_text().replace(",", "")
    return Seen(player_id, int(score_text), rank, [])


async def test_page_reconnects_after_4503_and_stops_after_4003(dev_settings: Settings) -> None:
    async with (
        running_node(dev_settings) as (_, address),
        httpx.AsyncClient(base_url=address.http_url, timeout=30) as http,
    ):
        session = partial(reconnect_after_close_codes, f"{address.http_url}/")
        seen = await trio.to_thread.run_sync(in_browser, session)
        reply = await http.get(f"/v1/leaderboards/global/users/{seen.player_id}")
        body = reply.json()
        assert (body["rank"], body["score"]) == (seen.player_rank, seen.player_score)


async def test_page_and_files_are_served(dev_settings: Settings) -> None:
    async with (
        running_node(dev_settings) as (_, address),
        httpx.AsyncClient(base_url=address.http_url, timeout=30) as http,
    ):
        page = await http.get("/", headers={"Host": f"example.test:{address.http_port}"})
        odd_host = await http.get("/", headers={"Host": 'x"><script>'})
        script = await http.get("/static/app.js")
        style = await http.get("/static/style.css")
        outside = await http.get("/static/..%2F..%2Fpyproject.toml")
        missing = await http.get("/static/nope.js")

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    # The port the listener really bound (the settings ask for any free one).
    ws_url = f"ws://example.test:{address.ws_port}/v1/ws"
    assert f'<meta name="podium-ws-url" content="{ws_url}">' in page.text
    assert ws_url in page.headers["content-security-policy"]
    assert "{{" not in page.text
    # A Host header that is not a host name is not echoed: the bind address is used.
    assert odd_host.status_code == 200
    fallback = f"ws://{dev_settings.bind_host}:{address.ws_port}/v1/ws"
    assert f'<meta name="podium-ws-url" content="{fallback}">' in odd_host.text
    assert "<script>" not in odd_host.text
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")
    for reply in (outside, missing):
        assert reply.status_code == 404
        assert reply.json()["error"]["code"] == "not_found"
