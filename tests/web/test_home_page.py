"""The home page (/) in a real Chromium against a real server: it lists a live room (the floor
holder, since when, spectators) and follows the room as it goes idle, by polling GET /api/rooms."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.request import Request, urlopen

import pytest

from tests.support.browser import ensure_chromium, launch, screenshot_on_failure
from tests.support.parley_server import FuzzServer, running_server

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def home_server() -> Iterator[FuzzServer]:
    with running_server(require_auth=False) as server:
        yield server


@pytest.fixture(scope="module")
def home_browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    ensure_chromium()  # installs Debian's chromium if needed, before any timer runs
    with sync_playwright() as p:
        browser = launch(p)
        try:
            yield browser
        finally:
            browser.close()


def floor(server: FuzzServer, room: str, method: str, speaker: str) -> None:
    body = json.dumps({"speaker": speaker}).encode() if method == "POST" else None
    url = f"{server.url}/api/rooms/{room}/floor" + ("" if body else f"?speaker={speaker}")
    request = Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    with urlopen(request, timeout=30) as answer:
        assert answer.status in (200, 201)


def test_home_lists_a_live_room(home_server: FuzzServer, home_browser: Any, tmp_path):
    page = home_browser.new_page()
    page.on("pageerror", lambda err: print(f"page error: {err}"))
    with screenshot_on_failure(page, tmp_path, "home"):
        page.goto(f"{home_server.url}/")
        page.wait_for_function(
            "() => window.parleyHome && window.parleyHome.polls > 0", timeout=30000
        )
        assert page.locator("#live-empty").is_visible()
        for href in ("/tts/", "/record/", "/agent/", "/docs", "/admin/"):
            assert page.locator(f".home-links a[href='{href}']").count() == 1

        floor(home_server, "lobby", "POST", "dora")
        row = page.locator("#live-rooms tr[data-room='lobby']")
        row.wait_for(timeout=30000)
        cells = row.locator("td").all_inner_texts()
        assert cells[0] == "lobby" and cells[1] == "dora"
        assert "ago" in cells[2]  # since when the floor is held
        assert row.locator("a").get_attribute("href") == "/rooms/lobby/"

        # Updated live: once the floor is given up the room is no longer listed as live.
        floor(home_server, "lobby", "DELETE", "dora")
        row.wait_for(state="detached", timeout=30000)
        page.locator("#recent-rooms a[href='/rooms/lobby/']").wait_for(timeout=30000)
