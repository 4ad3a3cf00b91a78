"""GET /docs in a real browser: every endpoint listed, 'Try it out' works, nothing leaves the host.

Debian's headless Chromium, driven by Playwright (`executable_path`, never
`playwright install`), loads the page from a real `bankrace serve`. Every
request the page makes is recorded; one to any other origin is refused and
fails the test, so the page is proven to work offline. The page runs under
its Content-Security-Policy, and a violation of it fails the test too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
import requests

from tests.support.browser import launch_chromium
from tests.support.servers import ServerProcess

pytestmark = pytest.mark.e2e

WAIT_SECONDS = 30.0
POLL_SECONDS = 0.1
VIEWPORT = {"width": 1280, "height": 900}
T = TypeVar("T")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("docs")
    settings = {
        "BANK_DATABASE_URL": f"sqlite:///{workdir / 'bank.db'}",
        "BANK_WORKERS": "1",
        "BANK_THREADS": "4",
    }
    with ServerProcess(workdir, settings) as running:
        yield running


def wait_for(what: str, read: Callable[[], T], done: Callable[[T], bool]) -> T:
    deadline = time.monotonic() + WAIT_SECONDS
    value = read()
    while not done(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}; last seen: {value!r}")
        time.sleep(POLL_SECONDS)  # polling interval, not synchronisation
        value = read()
    return value


def documented_operations(base_url: str) -> set[tuple[str, str]]:
    document = requests.get(f"{base_url}/openapi.json", timeout=10).json()
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item}


def listed_operations(page: Any) -> set[tuple[str, str]]:
    """(METHOD, path) of every operation block Swagger UI rendered."""
    rows = page.eval_on_selector_all(
        ".opblock",
        """blocks => blocks.map(block => [
            block.querySelector('.opblock-summary-method').textContent.trim(),
            block.querySelector('.opblock-summary-path').getAttribute('data-path'),
        ])""",
    )
    return {(method.upper(), path) for method, path in rows}


def test_docs_page_lists_every_endpoint_and_tries_get_mode(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Headless Chromium: all operations shown, GET /mode tried from the page, no other origin."""
    from playwright.sync_api import sync_playwright

    origin = urlsplit(server.url).netloc
    foreign: list[str] = []
    problems: list[str] = []

    def only_this_server(route: Any) -> None:
        if urlsplit(route.request.url).netloc == origin:
            route.continue_()
        else:
            foreign.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.route("**/*", only_this_server)
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on(
                "console",
                lambda message: (
                    problems.append(f"console {message.type}: {message.text}")
                    if message.type == "error"
                    else None
                ),
            )
            response = page.goto(f"{server.url}/docs")
            assert response is not None and response.status == 200
            assert "default-src 'none'" in response.headers["content-security-policy"]

            expected = documented_operations(server.url)
            listed = wait_for(
                "every operation on the page",
                lambda: listed_operations(page),
                lambda shown: shown == expected,
            )
            print(f"{len(listed)} operations listed")

            get_mode = page.locator("#operations-mode-admin_get_mode")
            get_mode.locator(".opblock-summary").click()
            get_mode.get_by_role("button", name="Try it out").click()
            get_mode.get_by_role("button", name="Execute").click()
            status = get_mode.locator(".live-responses-table tbody .response-col_status").first
            status.wait_for(timeout=WAIT_SECONDS * 1000)
            assert status.inner_text().strip() == "200"
            shown = get_mode.locator(".live-responses-table .microlight").first.inner_text()
            answer = json.loads(shown)
            assert answer == requests.get(f"{server.url}/mode", timeout=10).json()

            screenshot = tmp_path / "docs.png"
            page.screenshot(path=str(screenshot), full_page=False)
            assert screenshot.stat().st_size > 10_000
        finally:
            browser.close()

    assert foreign == [], "the docs page reached for another origin"
    assert problems == [], problems
    mode_lines = [
        line for line in server.read_log().splitlines() if '"message": "GET /mode 200"' in line
    ]
    assert mode_lines, "the page's GET /mode never reached the server"
