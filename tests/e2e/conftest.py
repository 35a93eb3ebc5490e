"""Browser tests: Python Playwright driving Debian's Chromium (`/usr/bin/chromium`, headless)
against pytest-django's live server, with the provider sandbox as Anthropic, OpenAI and OAuth.

Needs the `playwright` package (requirements-dev.txt) and `apt-get install -y chromium`; never
`playwright install` (no browser downloads). Without them the tests are skipped, saying why;
with NIYRA_REQUIRE_BROWSER=1 (CI) they fail instead.

Every page a test visits is checked for console errors and uncaught exceptions, and saved as a
screenshot under var/screenshots/ (ignored by git; NIYRA_SCREENSHOT_DIR moves it).
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.cache import cache

from accounts.models import User
from accounts.services import user_create
from credits.services.accounts import billing_plan_set
from credits.services.ledger import credit_grant
from sandbox import SandboxServer
from tests.conftest import DEFAULT_PASSWORD

CHROMIUM = Path(os.environ.get("NIYRA_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REQUIRE_BROWSER = os.environ.get("NIYRA_REQUIRE_BROWSER") == "1"
SCREENSHOTS = Path(os.environ.get("NIYRA_SCREENSHOT_DIR", django_settings.BASE_DIR / "var" / "screenshots"))


def _browser_missing() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install -r requirements-dev.txt)"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install -y chromium)"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("browser") is None:
        return
    missing = _browser_missing()
    if missing is None:
        return
    if REQUIRE_BROWSER:
        pytest.fail(f"NIYRA_REQUIRE_BROWSER=1 but {missing}", pytrace=False)
    pytest.skip(f"browser test skipped: {missing}")


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    """One headless Chromium for the package. Playwright's sync API runs an asyncio loop in this
    thread while it is started, and Django refuses ORM calls from a thread with a running loop;
    the tests' own ORM work (setting up users, checking rows) is plain synchronous code, so that
    check is switched off exactly while Playwright runs, as Django documents for such hosts."""
    from playwright.sync_api import sync_playwright

    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()
    finally:
        playwright.stop()
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture(autouse=True)
def _live_settings(settings: Any, sandbox: SandboxServer) -> None:
    settings.ANTHROPIC_BASE_URL = sandbox.anthropic_base_url
    settings.OPENAI_BASE_URL = sandbox.openai_base_url
    # The live server speaks plain HTTP: cookies marked Secure would not come back.
    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False
    settings.OAUTH_INTEGRATIONS = {
        "sandbox": {
            "label": "Provider sandbox",
            "client_id": "sandbox-app",
            "client_secret": "secret-sandbox-app",  # the sandbox's documented fake rule
            "authorize_url": f"{sandbox.url}/oauth/authorize",
            "token_url": f"{sandbox.url}/oauth/token",
            "revoke_url": f"{sandbox.url}/oauth/revoke",
            "scopes": ["profile", "email"],
        }
    }
    cache.clear()  # throttles


class Dashboard:
    """One signed-in (or not) browser tab, failing the test on any console error."""

    def __init__(self, page: Any, base_url: str, name: str) -> None:
        self.page = page
        self.base_url = base_url
        self.name = name
        self.problems: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(f"uncaught: {error}"))

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.problems.append(f"{message.text} ({message.location.get('url', '')})")

    def url(self, path: str) -> str:
        return self.base_url + path

    def goto(self, path: str) -> None:
        self.page.goto(self.url(path))
        self.page.wait_for_load_state("load")
        self.assert_clean()

    def assert_clean(self) -> None:
        problems, self.problems[:] = list(self.problems), []
        assert problems == [], f"console errors on {self.page.url}: {problems}"

    def shot(self, label: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{self.name}-{re.sub(r'[^a-z0-9-]+', '-', label.lower())}.png"
        self.page.screenshot(path=str(path), full_page=True)
        self.assert_clean()
        return path

    def login(self, email: str, password: str = DEFAULT_PASSWORD) -> None:
        self.goto("/login/")
        self.page.get_by_label("Email").fill(email)
        self.page.get_by_label("Password").fill(password)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.wait_for_url(re.compile(r"^(?!.*/login/)"))
        self.assert_clean()

    def admin_login(self, email: str, password: str = DEFAULT_PASSWORD) -> None:
        self.goto("/admin/login/")
        self.page.locator("#id_username").fill(email)
        self.page.locator("#id_password").fill(password)
        self.page.get_by_role("button", name="Log in").click()
        self.page.wait_for_url(re.compile(r"/admin/$"))
        self.assert_clean()


@pytest.fixture
def open_tab(browser: Any, live_server: Any, request: pytest.FixtureRequest) -> Iterator[Callable[[], Dashboard]]:
    contexts: list[Any] = []

    def open_tab() -> Dashboard:
        context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        context.set_default_timeout(10_000)
        contexts.append(context)
        name = request.node.name.removeprefix("test_") + (f"-{len(contexts)}" if len(contexts) > 1 else "")
        return Dashboard(context.new_page(), live_server.url, name)

    yield open_tab
    for context in contexts:
        context.close()


@pytest.fixture
def make_customer(transactional_db: None) -> Callable[..., User]:
    counter = iter(range(1, 1000))

    def make(plan: str = "pro", credits_mc: int = 50_000, email: str | None = None, **extra: Any) -> User:
        user = user_create(email=email or f"customer{next(counter)}@example.com", password=DEFAULT_PASSWORD, **extra)
        billing_plan_set(user=user, plan=plan)
        if credits_mc:
            credit_grant(user=user, amount=credits_mc, reason="Welcome credits", idempotency_key=f"welcome-{user.pk}")
        return user

    return make
