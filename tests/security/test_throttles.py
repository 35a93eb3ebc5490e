"""Throttles hold under repeated requests, and a throttled request has no effect.

* Key save and key test: the API and the dashboard share one per-user budget, spent only by
  requests that reach the provider (a malformed, empty or wrong-provider key costs nothing);
  past it the API answers 429 `throttled` with Retry-After, the dashboard a 429 page with
  Retry-After, both saying the real wait in words, and the provider is never called, the key
  row and the audit trail stay exactly as they were.
* Sign-in (dashboard and admin): failed attempts per client IP + email and per client IP; past
  a limit even the right password is refused (429 + Retry-After, nobody signed in), a burst of
  parallel guesses gets no more password checks than the limit, and a spoofed X-Forwarded-For
  buys nothing.

Rates are shrunk with settings overrides and the cache (where throttles keep their history)
is cleared around each test, so nothing here waits for a window to pass.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from django.contrib.auth.signals import user_login_failed
from django.db import connections
from django.test import Client
from rest_framework.test import APIClient

from accounts.models import AuditEvent, User
from byok.models import ProviderKey
from byok.services import provider_key_save
from byok.throttle import wait_in_words
from credits.models import BillingAccount
from credits.services.accounts import billing_account_ensure
from sandbox import SandboxServer, anthropic_key, openai_key

pytestmark = pytest.mark.django_db

PASSWORD = "correct-horse-battery"  # tests/conftest.py's default for make_user
HTMX: dict[str, Any] = {"HTTP_HX_REQUEST": "true", "HTTP_HX_CURRENT_URL": "http://testserver/settings/byok/"}


@pytest.fixture
def providers(settings: Any, sandbox: SandboxServer) -> SandboxServer:
    settings.ANTHROPIC_BASE_URL = sandbox.anthropic_base_url
    settings.OPENAI_BASE_URL = sandbox.openai_base_url
    return sandbox


@pytest.fixture
def byok_rates(settings: Any) -> dict[str, str]:
    rates = {"byok_save": "3/hour", "byok_test": "2/hour"}
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}
    return rates


@pytest.fixture
def pro(make_user: Callable[..., Any]) -> User:
    user: User = make_user("pro@example.com")
    billing_account_ensure(user=user)
    BillingAccount.objects.filter(user=user).update(plan="pro")
    return user


def _api(user: User) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def _browser(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _key_row(user: User) -> dict[str, Any] | None:
    row = ProviderKey.objects.filter(user=user, provider="anthropic").values().first()
    return {k: bytes(v) if isinstance(v, memoryview) else v for k, v in row.items()} if row else None


def _audit_count() -> int:
    return AuditEvent.objects.count()


def _assert_api_throttled(response: Any) -> None:
    assert response.status_code == 429, response.content
    body = response.json()
    assert body["code"] == "throttled" and body["message"]
    assert int(response["Retry-After"]) > 0
    assert body["detail"]["retry_after_seconds"] >= int(response["Retry-After"])


def _assert_page_throttled(response: Any) -> None:
    assert response.status_code == 429
    assert int(response["Retry-After"]) > 0
    assert response["Content-Type"].startswith("text/html")
    assert "Too many requests. Try again in about an hour." in response.content.decode()


# --- key save -----------------------------------------------------------------------------------


def test_api_save_past_the_limit_is_refused_every_time_and_changes_nothing(
    pro: User, providers: SandboxServer, byok_rates: dict[str, str]
) -> None:
    client = _api(pro)
    for _ in range(3):
        assert client.put("/api/keys/anthropic", {"key": anthropic_key()}, format="json").status_code == 200
    before, audit, probes = _key_row(pro), _audit_count(), len(providers.log)

    for _ in range(10):  # repeated: the limit holds every time
        fresh = anthropic_key()
        _assert_api_throttled(client.put("/api/keys/anthropic", {"key": fresh}, format="json"))
        assert providers.log.count(key=fresh) == 0

    assert _key_row(pro) == before  # ciphertext, hint, status, updated_at: all unchanged
    assert (_audit_count(), len(providers.log)) == (audit, probes)


def test_dashboard_save_past_the_limit_is_a_429_page_and_changes_nothing(
    pro: User, providers: SandboxServer, byok_rates: dict[str, str]
) -> None:
    browser = _browser(pro)
    for _ in range(3):
        assert browser.post("/settings/byok/anthropic/save", {"key": anthropic_key()}).status_code == 302
    before, audit, probes = _key_row(pro), _audit_count(), len(providers.log)

    for extra in ({}, HTMX, {}, HTMX):
        _assert_page_throttled(browser.post("/settings/byok/anthropic/save", {"key": anthropic_key()}, **extra))

    assert _key_row(pro) == before
    assert (_audit_count(), len(providers.log)) == (audit, probes)


def test_api_and_dashboard_share_one_save_budget(
    pro: User, providers: SandboxServer, byok_rates: dict[str, str]
) -> None:
    client, browser = _api(pro), _browser(pro)
    assert client.put("/api/keys/anthropic", {"key": anthropic_key()}, format="json").status_code == 200
    assert browser.post("/settings/byok/anthropic/save", {"key": anthropic_key()}).status_code == 302
    assert client.put("/api/keys/anthropic", {"key": anthropic_key()}, format="json").status_code == 200

    _assert_page_throttled(browser.post("/settings/byok/anthropic/save", {"key": anthropic_key()}, **HTMX))
    _assert_api_throttled(client.put("/api/keys/anthropic", {"key": anthropic_key()}, format="json"))


def test_the_save_budget_is_per_user(
    pro: User, make_user: Callable[..., Any], providers: SandboxServer, byok_rates: dict[str, str]
) -> None:
    other: User = make_user("other@example.com")
    BillingAccount.objects.filter(pk=billing_account_ensure(user=other).pk).update(plan="pro")
    client = _api(pro)
    for _ in range(3):
        client.put("/api/keys/anthropic", {"key": anthropic_key()}, format="json")
    _assert_api_throttled(client.put("/api/keys/anthropic", {"key": anthropic_key()}, format="json"))

    assert _api(other).put("/api/keys/anthropic", {"key": anthropic_key()}, format="json").status_code == 200


def test_saves_that_never_reach_the_provider_spend_no_budget(
    pro: User, providers: SandboxServer, byok_rates: dict[str, str]
) -> None:
    client, browser = _api(pro), _browser(pro)
    refused_early = ["", "   ", "not-a-key", "sk-ant-bad", openai_key()]  # empty, malformed, wrong provider
    for key in refused_early * 2:
        assert client.put("/api/keys/anthropic", {"key": key}, format="json").status_code == 400
        assert browser.post("/settings/byok/anthropic/save", {"key": key}, **HTMX).status_code == 200
    assert len(providers.log) == 0

    for _ in range(3):  # the whole budget is still there
        assert client.put("/api/keys/anthropic", {"key": anthropic_key()}, format="json").status_code == 200
    _assert_api_throttled(client.put("/api/keys/anthropic", {"key": anthropic_key()}, format="json"))


def test_the_eleventh_probe_in_an_hour_is_refused_with_the_wait_in_words(
    pro: User, providers: SandboxServer, settings: Any
) -> None:
    """The default budget (10 saves an hour, no rate in the settings); the refusal says how long
    to wait as a person would, in the API's message and on the dashboard."""
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {}}
    client, browser = _api(pro), _browser(pro)
    for n in range(10):
        key = anthropic_key("invalid") if n % 2 else anthropic_key()  # rejected keys were probed too
        assert client.put("/api/keys/anthropic", {"key": key}, format="json").status_code in (200, 400)

    refused = client.put("/api/keys/anthropic", {"key": anthropic_key()}, format="json")
    _assert_api_throttled(refused)
    assert 3500 < int(refused["Retry-After"]) <= 3600
    assert refused.json()["message"] == "Too many requests. Try again in about an hour."
    assert refused.json()["detail"]["retry_after_seconds"] == int(refused["Retry-After"])
    page = browser.post("/settings/byok/anthropic/save", {"key": anthropic_key()}, **HTMX)
    _assert_page_throttled(page)
    assert "Wait a moment" not in page.content.decode()
    assert len(providers.log) == 10


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (1, "in a few seconds"),
        (44, "in a few seconds"),
        (60, "in about a minute"),
        (5 * 60, "in about 5 minutes"),
        (44 * 60, "in about 44 minutes"),
        (59 * 60, "in about an hour"),
        (3600, "in about an hour"),
        (3 * 3600, "in about 3 hours"),
    ],
)
def test_waits_in_words(seconds: int, words: str) -> None:
    assert wait_in_words(seconds) == words


# --- key test -----------------------------------------------------------------------------------


def test_key_test_past_the_limit_never_calls_the_provider_from_api_or_dashboard(
    pro: User, providers: SandboxServer, byok_rates: dict[str, str]
) -> None:
    key = anthropic_key()
    provider_key_save(user=pro, provider="anthropic", key=key)
    client, browser = _api(pro), _browser(pro)
    assert client.post("/api/keys/anthropic/test").status_code == 200
    assert browser.post("/settings/byok/anthropic/test").status_code == 302  # the budget is shared
    before, audit, calls = _key_row(pro), _audit_count(), providers.log.count(key=key)

    for _ in range(5):
        _assert_api_throttled(client.post("/api/keys/anthropic/test"))
        _assert_page_throttled(browser.post("/settings/byok/anthropic/test", **HTMX))
        _assert_page_throttled(browser.post("/settings/byok/anthropic/test"))

    assert providers.log.count(key=key) == calls  # no round trip with the stored key
    assert _key_row(pro) == before  # last_tested_at and status untouched
    assert _audit_count() == audit


# --- sign-in ------------------------------------------------------------------------------------


@pytest.fixture
def login_limits(settings: Any) -> tuple[int, int]:
    settings.LOGIN_FAILURES_PER_IP_EMAIL = 3
    settings.LOGIN_FAILURES_PER_IP = 5
    settings.LOGIN_THROTTLE_WINDOW_SECONDS = 900
    settings.CLIENT_IP_HEADER = ""
    return 3, 5


def _sign_in(client: Client, email: str, password: str, ip: str = "203.0.113.7", **extra: Any) -> Any:
    return client.post("/login/", {"username": email, "password": password}, REMOTE_ADDR=ip, **extra)


def _signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def _assert_login_throttled(response: Any) -> None:
    assert response.status_code == 429
    assert 0 < int(response["Retry-After"]) <= 900
    html = response.content.decode()
    assert "Too many sign-in attempts. Wait a few minutes and try again." in html
    assert "didn't match" not in html  # the password was not even checked


def test_past_the_limit_even_the_right_password_is_refused(user: User, login_limits: tuple[int, int]) -> None:
    client = Client()
    for _ in range(3):
        response = _sign_in(client, user.email, "wrong")
        assert response.status_code == 200 and "didn't match" in response.content.decode()

    for _ in range(5):
        _assert_login_throttled(_sign_in(client, user.email, PASSWORD))

    assert not _signed_in(client)
    user.refresh_from_db()
    assert user.last_login is None


def test_the_email_is_matched_whatever_its_case(user: User, login_limits: tuple[int, int]) -> None:
    client = Client()
    for email in ("ada@example.com", "ADA@example.com", "Ada@Example.com"):
        _sign_in(client, email, "wrong")

    _assert_login_throttled(_sign_in(client, "ada@example.com", PASSWORD))


def test_a_stranger_cannot_lock_a_user_out_from_another_address(user: User, login_limits: tuple[int, int]) -> None:
    attacker = Client()
    for _ in range(6):
        _sign_in(attacker, user.email, "wrong", ip="198.51.100.66")
    _assert_login_throttled(_sign_in(attacker, user.email, PASSWORD, ip="198.51.100.66"))

    owner = Client()
    response = _sign_in(owner, user.email, PASSWORD, ip="203.0.113.10")

    assert response.status_code == 302 and _signed_in(owner)


def test_one_address_cannot_spray_many_emails(make_user: Callable[..., Any], login_limits: tuple[int, int]) -> None:
    victim: User = make_user("victim@example.com")
    client = Client()
    for n in range(5):  # one failure each on five emails: the per-address limit
        _sign_in(client, f"guess{n}@example.com", "wrong")

    _assert_login_throttled(_sign_in(client, victim.email, PASSWORD))
    assert _sign_in(Client(), victim.email, PASSWORD, ip="203.0.113.99").status_code == 302


def test_a_spoofed_forwarded_for_header_buys_nothing(user: User, login_limits: tuple[int, int]) -> None:
    client = Client()
    for n in range(3):
        _sign_in(client, user.email, "wrong", HTTP_X_FORWARDED_FOR=f"10.0.0.{n}")

    _assert_login_throttled(_sign_in(client, user.email, PASSWORD, HTTP_X_FORWARDED_FOR="10.9.9.9"))


def test_behind_a_proxy_its_client_ip_header_is_the_address(
    user: User, login_limits: tuple[int, int], settings: Any
) -> None:
    settings.CLIENT_IP_HEADER = "Fly-Client-IP"
    proxy = "172.16.0.1"  # every request arrives from the proxy
    for _ in range(3):
        _sign_in(Client(), user.email, "wrong", ip=proxy, HTTP_FLY_CLIENT_IP="198.51.100.66")
    _assert_login_throttled(_sign_in(Client(), user.email, PASSWORD, ip=proxy, HTTP_FLY_CLIENT_IP="198.51.100.66"))

    owner = Client()
    assert _sign_in(owner, user.email, PASSWORD, ip=proxy, HTTP_FLY_CLIENT_IP="203.0.113.10").status_code == 302


def test_successful_sign_ins_use_no_budget(user: User, login_limits: tuple[int, int]) -> None:
    for _ in range(8):
        client = Client()
        assert _sign_in(client, user.email, PASSWORD).status_code == 302 and _signed_in(client)
    for _ in range(2):
        _sign_in(Client(), user.email, "wrong")

    assert _sign_in(Client(), user.email, PASSWORD).status_code == 302  # 2 failures < 3


def test_the_refusal_ends_with_the_window(
    user: User, login_limits: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    import accounts.login

    now = 1_800_000_000.0  # a window boundary (a multiple of 900 s)
    monkeypatch.setattr(accounts.login, "time", SimpleNamespace(time=lambda: now + 100))
    for _ in range(3):
        _sign_in(Client(), user.email, "wrong")
    refused = _sign_in(Client(), user.email, PASSWORD)
    _assert_login_throttled(refused)
    assert refused["Retry-After"] == "800"

    monkeypatch.setattr(accounts.login, "time", SimpleNamespace(time=lambda: now + 900))
    assert _sign_in(Client(), user.email, PASSWORD).status_code == 302


def test_admin_sign_in_shares_the_budget(make_user: Callable[..., Any], login_limits: tuple[int, int]) -> None:
    staff: User = make_user("staff@niyra.ai", is_staff=True)
    for _ in range(2):
        _sign_in(Client(), staff.email, "wrong")
    Client().post("/admin/login/", {"username": staff.email, "password": "wrong"}, REMOTE_ADDR="203.0.113.7")

    admin = Client()
    response = admin.post("/admin/login/", {"username": staff.email, "password": PASSWORD}, REMOTE_ADDR="203.0.113.7")

    assert not _signed_in(admin)
    assert "Too many sign-in attempts" in response.content.decode()
    _assert_login_throttled(_sign_in(Client(), staff.email, PASSWORD))


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_burst_of_parallel_guesses_gets_no_more_password_checks_than_the_limit(
    settings: Any, login_limits: tuple[int, int]
) -> None:
    """Counted before the password is checked, atomically (Redis INCR): 12 guesses at once, 3
    checked. `user_login_failed` fires once per password check that failed."""
    settings.LOGIN_FAILURES_PER_IP = 100
    checks: list[str] = []
    lock = threading.Lock()

    def count_check(sender: Any, credentials: dict[str, Any], **kwargs: Any) -> None:
        with lock:
            checks.append(credentials.get("username", ""))

    statuses: list[int] = []
    barrier = threading.Barrier(12)

    def guess(n: int) -> None:
        try:
            barrier.wait(timeout=10)
            response = _sign_in(Client(), "target@example.com", f"guess-{n}")
            with lock:
                statuses.append(response.status_code)
        finally:
            connections.close_all()

    user_login_failed.connect(count_check)
    try:
        threads = [threading.Thread(target=guess, args=(n,)) for n in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        user_login_failed.disconnect(count_check)

    assert sorted(statuses) == [200] * 3 + [429] * 9
    assert len(checks) == 3
