"""A real browser for the tests: Debian's Chromium driven by Playwright.

``chromium`` (one browser per test module) and ``page`` (a fresh context per test) are
fixtures, registered by ``tests/conftest.py``. A page fails its test at teardown if it logged
a console error or threw an uncaught exception, unless the test expected it
(``page.expect_console_errors(pattern)``).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Error, Page, sync_playwright

CHROMIUM = os.environ.get("NOTIFY_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """One browser per test module. Not per session: Playwright's sync API keeps an event
    loop running in this thread while it is started, and other modules' tests call
    ``asyncio.run``."""
    # The tests' ORM calls are plain synchronous calls, made while that loop runs; Django
    # would take them for calls from async code. Restored afterwards, so that the check
    # still guards every other test.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            yield browser
            browser.close()
    finally:
        if previous is None:
            del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


class PageProblems:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.expected: list[re.Pattern[str]] = []

    def console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.problems.append(f"console error: {message.text}")

    def page_error(self, error: Error) -> None:
        self.problems.append(f"uncaught: {error}")

    def unexpected(self) -> list[str]:
        return [p for p in self.problems if not any(e.search(p) for e in self.expected)]


@pytest.fixture
def page(chromium: Browser) -> Iterator[Page]:
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(10_000)
    page = context.new_page()
    problems = PageProblems()
    page.on("console", problems.console)
    page.on("pageerror", problems.page_error)
    page.expect_console_errors = lambda pattern: problems.expected.append(re.compile(pattern))  # type: ignore[attr-defined]
    yield page
    context.close()
    assert problems.unexpected() == []
