"""connections.oauth: integrations from the environment, the authorization URL, token responses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from connections import oauth
from core.errors import OAUTH_INTEGRATION_UNKNOWN, NiyraError
from tests.core.test_startup import GOOD_KEY, PRODUCTION_ENV, ROOT

PRINT_INTEGRATIONS = "import json; from django.conf import settings; print(json.dumps(settings.OAUTH_INTEGRATIONS))"


def load_settings(**env: str) -> subprocess.CompletedProcess[str]:
    """Load the settings in a fresh interpreter with exactly this environment (plus PATH):
    niyra.settings.development for DEBUG=True, else niyra.settings.production."""
    module = "niyra.settings.development" if env.get("DEBUG") == "True" else "niyra.settings.production"
    clean = {"PATH": os.environ.get("PATH", ""), "DJANGO_SETTINGS_MODULE": module, "NIYRA_READ_DOTENV": "0"}
    return subprocess.run(
        [sys.executable, "-c", PRINT_INTEGRATIONS],
        cwd=ROOT,
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def integrations_from_env(**env: str) -> Any:
    result = load_settings(**env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# --- Settings -------------------------------------------------------------------------------------


def test_development_gets_the_sandbox_integration() -> None:
    configured = integrations_from_env(DEBUG="True", NIYRA_ENCRYPTION_KEYS=GOOD_KEY, NIYRA_SANDBOX_PORT="9999")
    assert list(configured) == ["sandbox"]
    assert configured["sandbox"]["client_id"] == "sandbox-app"
    assert configured["sandbox"]["token_url"] == "http://127.0.0.1:9999/oauth/token"


def test_production_has_no_integration_unless_configured() -> None:
    assert integrations_from_env(**PRODUCTION_ENV) == {}


def test_integrations_come_from_the_environment() -> None:
    configured = integrations_from_env(
        **PRODUCTION_ENV,
        OAUTH_INTEGRATION_NAMES="gmail,slack-bot",
        OAUTH_GMAIL_CLIENT_ID="gmail-id",
        OAUTH_GMAIL_CLIENT_SECRET="gmail-secret",
        OAUTH_GMAIL_AUTHORIZE_URL="https://accounts.example/o/oauth2/auth",
        OAUTH_GMAIL_TOKEN_URL="https://oauth2.example/token",
        OAUTH_GMAIL_REVOKE_URL="https://oauth2.example/revoke",
        OAUTH_GMAIL_SCOPES="openid, email https://mail.example/readonly",
        OAUTH_SLACK_BOT_CLIENT_ID="slack-id",
        OAUTH_SLACK_BOT_CLIENT_SECRET="slack-secret",
        OAUTH_SLACK_BOT_AUTHORIZE_URL="https://slack.example/oauth/v2/authorize",
        OAUTH_SLACK_BOT_TOKEN_URL="https://slack.example/api/oauth.v2.access",
        OAUTH_SLACK_BOT_CLIENT_AUTH_METHOD="client_secret_post",
    )
    assert list(configured) == ["gmail", "slack-bot"]
    assert configured["gmail"]["scopes"] == ["openid", "email", "https://mail.example/readonly"]
    assert configured["gmail"]["revoke_url"] == "https://oauth2.example/revoke"
    assert configured["slack-bot"]["revoke_url"] == ""
    assert configured["slack-bot"]["client_auth_method"] == "client_secret_post"


def test_a_configured_integration_missing_a_secret_stops_start_up() -> None:
    result = load_settings(
        **PRODUCTION_ENV,
        OAUTH_INTEGRATION_NAMES="gmail",
        OAUTH_GMAIL_CLIENT_ID="gmail-id",
        OAUTH_GMAIL_AUTHORIZE_URL="https://accounts.example/auth",
        OAUTH_GMAIL_TOKEN_URL="https://oauth2.example/token",
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "django.core.exceptions.ImproperlyConfigured: missing OAuth integration settings: OAUTH_GMAIL_CLIENT_SECRET"
    )


def test_unknown_integrations_are_a_catalogue_error(settings: Any) -> None:
    settings.OAUTH_INTEGRATIONS = {}
    with pytest.raises(NiyraError) as caught:
        oauth.get_integration("gmail")
    assert caught.value.spec == OAUTH_INTEGRATION_UNKNOWN and caught.value.detail is None


def test_the_client_secret_is_not_in_the_repr() -> None:
    integration = oauth.Integration.from_setting(
        "x",
        {"client_id": "id", "client_secret": "very-secret", "authorize_url": "https://a", "token_url": "https://t"},
    )
    assert "very-secret" not in repr(integration)


# --- Authorization URL ----------------------------------------------------------------------------


def test_the_authorization_url_carries_state_and_an_s256_challenge() -> None:
    integration = oauth.Integration.from_setting(
        "x",
        {
            "client_id": "client-1",
            "client_secret": "s",
            "authorize_url": "https://provider.example/authorize?prompt=consent",
            "token_url": "https://provider.example/token",
            "scopes": ["a", "b"],
        },
    )
    start = oauth.authorization_start(integration, redirect_uri="https://niyra.example/oauth/callback/x")
    url = urlsplit(start.url)
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert url.netloc == "provider.example" and query["prompt"] == "consent"
    assert query["client_id"] == "client-1" and query["response_type"] == "code" and query["scope"] == "a b"
    assert query["state"] == start.state and len(start.state) >= 43
    assert 43 <= len(start.code_verifier) <= 128
    assert query["code_challenge"] == create_s256_code_challenge(start.code_verifier)
    assert query["code_challenge_method"] == "S256"
    assert start.code_verifier not in start.url and start.code_verifier not in repr(start)


# --- Token responses ------------------------------------------------------------------------------


def parse(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> oauth.TokenSet:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return oauth.parse_token_response(status, headers or {}, raw)


def test_a_good_response() -> None:
    tokens = parse({"access_token": "at", "refresh_token": "rt", "expires_in": 3600, "token_type": "bearer"})
    assert (tokens.access_token, tokens.refresh_token, tokens.expires_in) == ("at", "rt", 3600)
    assert "at" not in repr(tokens).replace("expires_in", "") and "rt" not in repr(tokens).replace("refresh_token", "")


def test_expires_in_as_an_integer_string_and_no_refresh_token() -> None:
    tokens = parse({"access_token": "at", "expires_in": "120"})
    assert (tokens.refresh_token, tokens.expires_in) == (None, 120)
    assert parse({"access_token": "at"}).expires_in is None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"refresh_token": "rt", "expires_in": 3600}, "no access_token"),
        ({"access_token": "", "expires_in": 3600}, "no access_token"),
        ({"access_token": 42}, "no access_token"),
        ({"access_token": "at", "expires_in": -5}, "expires_in is not positive"),
        ({"access_token": "at", "expires_in": 0}, "expires_in is not positive"),
        ({"access_token": "at", "expires_in": 3600.5}, "expires_in is not an integer"),
        ({"access_token": "at", "expires_in": "soon"}, "expires_in is not an integer"),
        ({"access_token": "at", "expires_in": True}, "expires_in is not an integer"),
        ({"access_token": "at", "token_type": "mac"}, "token_type is not Bearer"),
        ({"access_token": "at", "refresh_token": ""}, "refresh_token is not a string"),
        (["access_token"], "the body is not a JSON object"),
        (b'{"access_token": "at", "exp', "the body is not a JSON object"),
        (b"", "the body is not a JSON object"),
    ],
)
def test_malformed_responses(body: Any, reason: str) -> None:
    with pytest.raises(oauth.TokenEndpointError) as caught:
        parse(body)
    assert (caught.value.kind, caught.value.reason) == ("malformed", reason)


@pytest.mark.parametrize(
    ("status", "body", "headers", "kind", "reason", "retry_after"),
    [
        (
            400,
            {"error": "invalid_grant", "error_description": "Token sbx_rt_abc revoked"},
            {},
            "invalid_grant",
            "invalid_grant",
            None,
        ),
        (200, {"error": "invalid_grant"}, {}, "invalid_grant", "invalid_grant", None),
        (401, {"error": "invalid_client"}, {}, "rejected", "invalid_client (http_401)", None),
        (400, {"error": "<script>"}, {}, "rejected", "unknown (http_400)", None),
        (403, b"<html>nope</html>", {}, "rejected", "unknown (http_403)", None),
        (429, {"error": "slow_down"}, {"retry-after": "7"}, "transient", "http_429", 7.0),
        (503, b"", {"retry-after": "tomorrow"}, "transient", "http_503", None),
        (500, {"error": "server_error"}, {}, "transient", "http_500", None),
        (302, b"", {}, "rejected", "unknown (http_302)", None),
    ],
)
def test_error_responses(
    status: int, body: Any, headers: dict[str, str], kind: str, reason: str, retry_after: Any
) -> None:
    with pytest.raises(oauth.TokenEndpointError) as caught:
        parse(body, status, headers)
    assert (caught.value.kind, caught.value.reason, caught.value.retry_after) == (kind, reason, retry_after)
    assert "sbx_rt_abc" not in str(caught.value)  # the provider's free text is never kept


def test_backoff_is_exponential_and_capped() -> None:
    assert [oauth.backoff_seconds(n) for n in range(1, 9)] == [5, 10, 20, 40, 80, 160, 300, 300]
