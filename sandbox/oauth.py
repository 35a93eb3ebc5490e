"""The sandbox's OAuth 2 authorization server: ``/oauth/authorize``, ``/token``, ``/revoke``
and ``/userinfo`` (authorization code with PKCE S256, refresh-token rotation with reuse
detection, RFC 7009 revocation).

Clients need no registration: any ``client_id`` works and its client secret is
``"secret-" + client_id`` (HTTP Basic or ``client_id``/``client_secret`` form fields).
Behaviour words in the client id choose failures (see :mod:`sandbox.behaviour`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit, urlunsplit

from aiohttp import web

from .behaviour import RETRY_AFTER_SECONDS, Behaviour, parse_behaviour
from .requestlog import LogRecord, RequestLog, key_id
from .wire import MALFORMED_JSON, RATE_HEADERS, bearer, delay, dumps, finish, json_response, str_or_none

__all__ = [
    "CLIENT_SECRET_PREFIX",
    "DEFAULT_ACCESS_TOKEN_TTL",
    "DEFAULT_CODE_TTL",
    "OAuthError",
    "OAuthServer",
    "OAuthState",
    "client_secret_for",
]

CLIENT_SECRET_PREFIX: Final = "secret-"  # noqa: S105 - the sandbox's documented fake secret rule
DEFAULT_ACCESS_TOKEN_TTL: Final = 3600
DEFAULT_CODE_TTL: Final = 60.0


def client_secret_for(client_id: str) -> str:
    """The (only) accepted client secret for ``client_id``: ``"secret-" + client_id``."""
    return CLIENT_SECRET_PREFIX + client_id


@dataclass(slots=True)
class _Grant:
    client_id: str
    scope: str
    revoked: bool = False


@dataclass(slots=True)
class _Code:
    client_id: str
    redirect_uri: str
    challenge: str
    scope: str
    expires_at: float
    grant_id: str | None = None  # set once redeemed


@dataclass(slots=True)
class _AccessToken:
    grant_id: str
    expires_at: float


@dataclass(slots=True)
class _RefreshToken:
    grant_id: str
    client_id: str
    rotated: bool = False


class OAuthError(Exception):
    def __init__(
        self,
        status: int,
        error: str,
        description: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{error}: {description}")
        self.status = status
        self.error = error
        self.description = description
        self.headers = headers or {}


@dataclass
class OAuthState:
    """Codes, grants and tokens of the sandbox authorization server (thread-safe).

    ``access_token_ttl`` / ``code_ttl`` are the configured defaults; :meth:`reset` forgets all
    codes and tokens and restores them.
    """

    access_token_ttl: int = DEFAULT_ACCESS_TOKEN_TTL
    code_ttl: float = DEFAULT_CODE_TTL
    _defaults: tuple[int, float] = field(init=False)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    _codes: dict[str, _Code] = field(init=False, default_factory=dict)
    _grants: dict[str, _Grant] = field(init=False, default_factory=dict)
    _access: dict[str, _AccessToken] = field(init=False, default_factory=dict)
    _refresh: dict[str, _RefreshToken] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._defaults = (self.access_token_ttl, self.code_ttl)

    def reset(self) -> None:
        with self._lock:
            self._codes.clear()
            self._grants.clear()
            self._access.clear()
            self._refresh.clear()
            self.access_token_ttl, self.code_ttl = self._defaults

    # -- authorize ---------------------------------------------------------------------

    def issue_code(self, client_id: str, redirect_uri: str, challenge: str, scope: str) -> str:
        code = "sbx_code_" + secrets.token_urlsafe(24)
        with self._lock:
            self._codes[code] = _Code(client_id, redirect_uri, challenge, scope, time.monotonic() + self.code_ttl)
        return code

    # -- token -------------------------------------------------------------------------

    def _issue(self, grant_id: str, behaviour: Behaviour, *, with_refresh: bool, scope: str) -> dict[str, Any]:
        ttl = behaviour.ttl if behaviour.ttl is not None else self.access_token_ttl
        access = "sbx_at_" + secrets.token_urlsafe(32)
        self._access[access] = _AccessToken(grant_id, time.monotonic() + ttl)
        out: dict[str, Any] = {"access_token": access, "token_type": "Bearer"}
        if not behaviour.noexpiry:
            out["expires_in"] = ttl
        if with_refresh:
            refresh = "sbx_rt_" + secrets.token_urlsafe(32)
            self._refresh[refresh] = _RefreshToken(grant_id, self._grants[grant_id].client_id)
            out["refresh_token"] = refresh
        out["scope"] = scope
        return out

    def exchange_code(
        self,
        client_id: str,
        code: str,
        redirect_uri: str,
        verifier: str,
        behaviour: Behaviour,
    ) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            entry = self._codes.get(code)
            if entry is None or entry.client_id != client_id:
                raise OAuthError(400, "invalid_grant", "Invalid authorization code.")
            if entry.grant_id is not None:
                # RFC 6749 4.1.2: a code used twice revokes what it issued.
                grant = self._grants.get(entry.grant_id)
                if grant is not None:
                    grant.revoked = True
                raise OAuthError(400, "invalid_grant", "Authorization code already used.")
            if now > entry.expires_at:
                del self._codes[code]
                raise OAuthError(400, "invalid_grant", "Authorization code expired.")
            if entry.redirect_uri != redirect_uri:
                raise OAuthError(400, "invalid_grant", "redirect_uri does not match.")
            if _s256(verifier) != entry.challenge:
                # A failed PKCE check does not consume the code.
                raise OAuthError(400, "invalid_grant", "PKCE verification failed.")
            grant_id = secrets.token_hex(8)
            self._grants[grant_id] = _Grant(client_id, entry.scope)
            entry.grant_id = grant_id
            return self._issue(grant_id, behaviour, with_refresh=True, scope=entry.scope)

    def refresh(self, client_id: str, refresh_token: str, behaviour: Behaviour) -> dict[str, Any]:
        with self._lock:
            entry = self._refresh.get(refresh_token)
            grant = self._grants.get(entry.grant_id) if entry is not None else None
            if entry is None or grant is None or entry.client_id != client_id:
                raise OAuthError(400, "invalid_grant", "Invalid refresh token.")
            if grant.revoked:
                raise OAuthError(400, "invalid_grant", "Token has been expired or revoked.")
            if behaviour.revoked:
                grant.revoked = True
                raise OAuthError(400, "invalid_grant", "Token has been expired or revoked.")
            if entry.rotated:
                # Reuse of a rotated refresh token: assume theft, revoke the whole grant.
                grant.revoked = True
                raise OAuthError(400, "invalid_grant", "Refresh token reuse detected; the grant is revoked.")
            if behaviour.norotate:
                return self._issue(entry.grant_id, behaviour, with_refresh=False, scope=grant.scope)
            entry.rotated = True
            return self._issue(entry.grant_id, behaviour, with_refresh=True, scope=grant.scope)

    def revoke(self, token: str) -> bool:
        """Revoke the grant behind an access or refresh token (RFC 7009)."""
        with self._lock:
            at = self._access.get(token)
            rt = self._refresh.get(token)
            grant_id = at.grant_id if at is not None else rt.grant_id if rt is not None else None
            grant = self._grants.get(grant_id) if grant_id is not None else None
            if grant is None:
                return False
            grant.revoked = True
            return True

    def introspect(self, access_token: str) -> _Grant | None:
        """The live grant behind an unexpired access token, else None."""
        with self._lock:
            at = self._access.get(access_token)
            if at is None or time.monotonic() >= at.expires_at:
                return None
            grant = self._grants.get(at.grant_id)
            if grant is None or grant.revoked:
                return None
            return grant


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii", "replace")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


_PKCE_RE: Final = re.compile(r"[A-Za-z0-9\-._~]{43,128}")


def _error_response(exc: OAuthError) -> web.Response:
    payload = dumps({"error": exc.error, "error_description": exc.description}).encode()
    return json_response(payload, exc.status, {"Cache-Control": "no-store", **exc.headers})


class OAuthServer:
    """Handlers of the OAuth routes, bound to one request log and one authorization state."""

    def __init__(self, log: RequestLog, state: OAuthState) -> None:
        self.log = log
        self.state = state

    async def authorize(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        client_id = q.get("client_id") or None
        record = self.log.add(LogRecord("oauth", request.path, request.method, client_id=client_id))
        try:
            if not client_id:
                raise OAuthError(400, "invalid_request", "Missing client_id.")
            b = parse_behaviour(client_id)
            await delay(request, b)
            redirect_uri = q.get("redirect_uri", "")
            parts = urlsplit(redirect_uri)
            if not parts.scheme or not (parts.netloc or parts.path) or parts.fragment:
                raise OAuthError(400, "invalid_request", "Missing or invalid redirect_uri.")
            response_type = q.get("response_type")
            if response_type is None:
                raise OAuthError(400, "invalid_request", "Missing response_type.")
            if response_type != "code":
                raise OAuthError(400, "unsupported_response_type", "Only response_type=code is supported.")
            challenge = q.get("code_challenge", "")
            if not _PKCE_RE.fullmatch(challenge):
                raise OAuthError(400, "invalid_request", "Missing or invalid code_challenge (PKCE required).")
            if q.get("code_challenge_method") != "S256":
                raise OAuthError(400, "invalid_request", "code_challenge_method must be S256.")
        except OAuthError as exc:
            return finish(record, _error_response(exc))
        code = self.state.issue_code(client_id, redirect_uri, challenge, q.get("scope", ""))
        params = [("code", code)]
        if "state" in q:
            params.append(("state", q["state"]))
        query = urlencode(parse_qsl(parts.query, keep_blank_values=True) + params)
        location = urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))
        return finish(record, web.Response(status=302, headers={"Location": location}))

    @staticmethod
    def _client_credentials(request: web.Request, form: Any) -> tuple[str | None, str | None, bool]:
        """(client_id, client_secret, used_basic)."""
        auth = request.headers.get("Authorization", "")
        if auth[:6].lower() == "basic ":
            try:
                decoded = base64.b64decode(auth[6:].strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return None, None, True
            cid, sep, secret = decoded.partition(":")
            if not sep:
                return None, None, True
            return unquote_plus(cid), unquote_plus(secret), True
        return str_or_none(form.get("client_id")), str_or_none(form.get("client_secret")), False

    async def token(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        client_id, secret, used_basic = self._client_credentials(request, form)
        grant_type = str_or_none(form.get("grant_type"))
        refresh_token = str_or_none(form.get("refresh_token"))
        record = self.log.add(
            LogRecord(
                "oauth",
                request.path,
                request.method,
                grant_type=grant_type,
                client_id=client_id,
                refresh_token_id=(key_id(refresh_token) if refresh_token and grant_type == "refresh_token" else None),
            )
        )
        b = parse_behaviour(client_id)
        try:
            await delay(request, b)
            if b.down:
                raise OAuthError(
                    503,
                    "temporarily_unavailable",
                    "The authorization server is temporarily unavailable.",
                )
            if b.error:
                raise OAuthError(500, "server_error", "Internal server error.")
            if b.ratelimit:
                raise OAuthError(
                    429,
                    "rate_limit_exceeded",
                    f"Too many requests; retry after {RETRY_AFTER_SECONDS} seconds.",
                    dict(RATE_HEADERS),
                )
            if not client_id or b.invalid or secret != client_secret_for(client_id):
                raise OAuthError(
                    401,
                    "invalid_client",
                    "Client authentication failed.",
                    {"WWW-Authenticate": 'Basic realm="sandbox"'} if used_basic else None,
                )
            if b.malformed:
                return finish(record, json_response(MALFORMED_JSON))
            if grant_type is None:
                raise OAuthError(400, "invalid_request", "Missing grant_type.")
            if grant_type == "authorization_code":
                code = str_or_none(form.get("code"))
                redirect_uri = str_or_none(form.get("redirect_uri"))
                verifier = str_or_none(form.get("code_verifier"))
                if not code or not redirect_uri or not verifier:
                    raise OAuthError(400, "invalid_request", "code, redirect_uri and code_verifier are required.")
                tokens = self.state.exchange_code(client_id, code, redirect_uri, verifier, b)
            elif grant_type == "refresh_token":
                if not refresh_token:
                    raise OAuthError(400, "invalid_request", "Missing refresh_token.")
                tokens = self.state.refresh(client_id, refresh_token, b)
            else:
                raise OAuthError(400, "unsupported_grant_type", "Unsupported grant_type.")
        except OAuthError as exc:
            return finish(record, _error_response(exc))
        return finish(
            record,
            json_response(dumps(tokens).encode(), 200, {"Cache-Control": "no-store", "Pragma": "no-cache"}),
        )

    async def revoke(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        client_id, _secret, _basic = self._client_credentials(request, form)
        record = self.log.add(LogRecord("oauth", request.path, request.method, client_id=client_id))
        token = str_or_none(form.get("token"))
        if token:
            self.state.revoke(token)
        return finish(record, web.Response(status=200))

    async def userinfo(self, request: web.Request) -> web.StreamResponse:
        token = bearer(request)
        record = self.log.add(LogRecord("oauth", request.path, request.method, key_id(token) if token else None))
        grant = self.state.introspect(token) if token else None
        if grant is None:
            resp = json_response(
                dumps(
                    {
                        "error": "invalid_token",
                        "error_description": "The access token is missing, expired or revoked.",
                    }
                ).encode(),
                401,
                {"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
            return finish(record, resp)
        record.client_id = grant.client_id
        payload = dumps(
            {
                "sub": f"sandbox-user-{grant.client_id}",
                "email": "user@sandbox.invalid",
                "client_id": grant.client_id,
                "scope": grant.scope,
            }
        ).encode()
        return finish(record, json_response(payload))
