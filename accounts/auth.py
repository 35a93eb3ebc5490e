"""Who is calling: the one resolver of `Authorization: Bearer niy_<prefix>_<secret>` API tokens
(used by DRF's authentication and by the LLM routing endpoints), and the signed-in user of a view."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from accounts.models import ApiToken, User
from accounts.services import api_token_authenticate
from core.errors import AUTHENTICATION_FAILED, NiyraError


def bearer_token(request: HttpRequest | Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credentials.strip() or None


def bearer_api_token(request: HttpRequest | Request) -> ApiToken | None:
    """The API token the request presents, with its user; None if it presents none.

    A presented token that is unknown, revoked or of an inactive user is an error
    (`authentication_failed`), never a fall-back to the session.
    """
    plaintext = bearer_token(request)
    if plaintext is None:
        return None
    token = api_token_authenticate(plaintext=plaintext)
    if token is None:
        raise NiyraError(AUTHENTICATION_FAILED)
    return token


class ApiTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[User, ApiToken] | None:
        try:
            token = bearer_api_token(request)
        except NiyraError:
            raise exceptions.AuthenticationFailed() from None  # DRF adds WWW-Authenticate
        if token is None:
            return None  # not ours: let session auth try
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        # Makes DRF answer 401 (with WWW-Authenticate) rather than 403 when credentials are missing.
        return self.keyword


def request_user(request: Request | HttpRequest) -> User:
    """The signed-in user of a view that requires authentication (typed for mypy)."""
    user = request.user
    if not isinstance(user, User):
        raise exceptions.NotAuthenticated()
    return user


async def arequest_user(request: HttpRequest) -> User:
    """`request_user` for async views (the session's user is loaded without blocking)."""
    user = await request.auser()
    if not isinstance(user, User):
        raise exceptions.NotAuthenticated()
    return user


class ApiTokenScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.auth.ApiTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "bearerFormat": "niy_<prefix>_<secret>"}
