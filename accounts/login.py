"""Sign-in throttling for the dashboard and the admin login.

Attempts are counted per client IP and email, and per client IP, in fixed windows in the shared
cache. Each attempt is counted *before* the password is checked (an atomic increment), so a
burst of parallel guesses cannot slip past the limit; a successful sign-in gives its count
back, so only failures add up. Past a limit the password is not checked at all (a refused
attempt reveals nothing) until the window ends; the dashboard answers 429 with Retry-After.

Per IP *and* email, so a stranger cannot lock a user out from elsewhere; per IP (higher), so one
address cannot spray passwords across many emails.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from typing import Any

from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from redis.exceptions import RedisError

from accounts.metrics import SIGNIN, throttle_refusal_record
from core import errors

logger = logging.getLogger(__name__)


def client_ip(request: HttpRequest) -> str:
    """The client's address: the header the proxy in front of Niyra sets (CLIENT_IP_HEADER, e.g.
    Fly's `Fly-Client-IP`), else the socket's peer. Never a header the client may write itself."""
    header = settings.CLIENT_IP_HEADER
    value = request.headers.get(header, "").strip() if header else ""
    return value or str(request.META.get("REMOTE_ADDR", ""))


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def _increment(key: str, timeout: int) -> int:
    cache.add(key, 0, timeout)
    try:
        return int(cache.incr(key))
    except ValueError:  # expired between add and incr: this attempt starts a new count
        cache.set(key, 1, timeout)
        return 1


class SignInAttempts:
    """The counters for one sign-in attempt (an email from a client address)."""

    def __init__(self, request: HttpRequest, *, email: str) -> None:
        window = settings.LOGIN_THROTTLE_WINDOW_SECONDS
        now = time.time()
        bucket = int(now // window)
        ip = client_ip(request)
        self.retry_after = max(1, math.ceil((bucket + 1) * window - now))
        self._timeout = window + 60  # outlives its window a little; the key names the window
        self._counters = (
            (f"signin:{bucket}:ip-email:{_digest(ip, email.strip().lower())}", settings.LOGIN_FAILURES_PER_IP_EMAIL),
            (f"signin:{bucket}:ip:{_digest(ip)}", settings.LOGIN_FAILURES_PER_IP),
        )

    def start(self) -> bool:
        """Count this attempt; False when it is over a limit (then check no password). While the
        cache is down, sign-in is not throttled (logged): an outage of the cache must not lock
        everyone out, and each attempt still costs a full password hash."""
        try:
            counts = [(_increment(key, self._timeout), limit) for key, limit in self._counters]
        except (RedisError, OSError) as exc:
            logger.warning("sign-in throttle skipped: the cache is unavailable (%s)", type(exc).__name__)
            return True
        return all(count <= limit for count, limit in counts)

    def succeeded(self) -> None:
        for key, _ in self._counters:
            with contextlib.suppress(ValueError, RedisError, OSError):  # window ended, or cache down
                cache.decr(key)


class _ThrottledSignIn(AuthenticationForm):
    retry_after: int | None = None

    def clean(self) -> dict[str, Any]:
        email = self.cleaned_data.get("username")
        if self.request is None or not email or not self.cleaned_data.get("password"):
            return super().clean()  # nothing to check a password against: no attempt
        attempts = SignInAttempts(self.request, email=email)
        if not attempts.start():
            throttle_refusal_record(scope=SIGNIN)
            self.retry_after = attempts.retry_after
            raise ValidationError(errors.LOGIN_THROTTLED.message, code=errors.LOGIN_THROTTLED.code)
        cleaned = super().clean()  # a wrong password raises: the attempt stays counted
        attempts.succeeded()
        return cleaned


class ThrottledAuthenticationForm(_ThrottledSignIn):
    """The dashboard's sign-in form."""


class ThrottledAdminAuthenticationForm(_ThrottledSignIn, AdminAuthenticationForm):
    """The admin's sign-in form (staff only, as Django's), with the same budget."""


class LoginView(auth_views.LoginView):
    authentication_form = ThrottledAuthenticationForm
    redirect_authenticated_user = True

    def form_invalid(self, form: Any) -> HttpResponse:
        response = super().form_invalid(form)
        if isinstance(form, _ThrottledSignIn) and form.retry_after is not None:
            response.status_code = errors.LOGIN_THROTTLED.status
            response["Retry-After"] = str(form.retry_after)
        return response
