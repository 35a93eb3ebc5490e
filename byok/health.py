"""Pure parts of the key health monitor: when a key is checked next, what a status change tells
its owner. No I/O; `byok.services` applies them under the key's row lock.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from byok.models import KeyStatus
from core.errors import KEY_INVALID, KEY_NEEDS_REENTRY, KEY_QUOTA_EXHAUSTED, KEY_RATE_LIMITED, ErrorSpec
from notifications.models import Kind
from providers import Provider

# A key in one of these states can't be relied on: reaching one notifies its owner.
BAD_STATUSES = frozenset(
    {KeyStatus.INVALID, KeyStatus.RATE_LIMITED, KeyStatus.QUOTA_EXHAUSTED, KeyStatus.NEEDS_REENTRY}
)
BYOK_PAGE = "/settings/byok/"


def health_interval() -> timedelta:
    return timedelta(seconds=settings.BYOK_HEALTH_INTERVAL_SECONDS)


def first_check_at(*, user_id: int, provider: str, now: datetime) -> datetime:
    """The first scheduled check of a freshly saved key: a stable offset within one interval, from
    a hash of whose key it is, so keys saved together (an import, a launch) come due spread over
    the day instead of all at once."""
    interval = settings.BYOK_HEALTH_INTERVAL_SECONDS
    digest = hashlib.sha256(f"{user_id}:{provider}".encode()).digest()
    return now + timedelta(seconds=int.from_bytes(digest[:8], "big") % max(1, interval))


def rate_limit_end(*, now: datetime, retry_after_seconds: float | None) -> datetime:
    """When a rate limit ends: the provider's Retry-After, else the default (a minute)."""
    seconds = retry_after_seconds if retry_after_seconds and retry_after_seconds > 0 else None
    return now + timedelta(seconds=seconds or settings.BYOK_RATE_LIMITED_DEFAULT_SECONDS)


def routed_observation_is_news(*, observed: str, known: str, limited_until: datetime | None) -> bool:
    """Whether what a routed call saw of the user's key (`observed`, a status) changes what is
    recorded (`known`, and the end of a rate limit). Inside an open rate-limit window neither a
    success nor another 429 is news (they interleave under a limit); past it, a 429 starts a new
    window. The gateway asks this of its cached snapshot before it reports anything, and the
    transition rule asks it again of the row under its lock."""
    if known == KeyStatus.RATE_LIMITED and limited_until is not None and limited_until > timezone.now():
        return observed not in (KeyStatus.VALID, KeyStatus.RATE_LIMITED)
    return observed != known or observed == KeyStatus.RATE_LIMITED


@dataclass(frozen=True, slots=True)
class KeyNotice:
    kind: Kind
    event: str  # the notification's event key; names the status change once
    title: str
    body: str


def key_notice(
    *, key_id: int, provider: str, hint: str, before: str, after: str, change: int, until: datetime | None
) -> KeyNotice | None:
    """What to tell the owner when their key went from `before` to `after` (status change number
    `change`), in the BYOK page's words; None when the change is no news (e.g. unverified → valid).

    The text names the key by its hint (prefix and last four characters, as the page shows it).
    """
    label = Provider(provider).label
    if after in BAD_STATUSES:
        advice = _TROUBLESHOOTING[after].message
        title = _PROBLEM_TITLE[after].format(provider=label)
        when = f" until about {until:%H:%M} UTC" if after == KeyStatus.RATE_LIMITED and until else ""
        body = (
            f"{title}{when} ({hint}).\n\n{advice}\n\n"
            f"Until then, {label} calls on your key may fail (or, if you allowed it, fall back to credits). "
            f"You can test, replace or disconnect the key in Settings → BYOK."
        )
        return KeyNotice(Kind.KEY_PROBLEM, f"key:{key_id}:problem:{change}", title, body)
    if after == KeyStatus.VALID and before in BAD_STATUSES:
        title = f"Your {label} key works again"
        body = f"Your {label} key ({hint}) works again: Niyra routes your {label} calls through it."
        return KeyNotice(Kind.KEY_RECOVERED, f"key:{key_id}:recovered:{change}", title, body)
    return None


# The product page's troubleshooting line for each bad status (the catalogue's messages).
_TROUBLESHOOTING: dict[str, ErrorSpec] = {
    KeyStatus.INVALID: KEY_INVALID,
    KeyStatus.RATE_LIMITED: KEY_RATE_LIMITED,
    KeyStatus.QUOTA_EXHAUSTED: KEY_QUOTA_EXHAUSTED,
    KeyStatus.NEEDS_REENTRY: KEY_NEEDS_REENTRY,
}
_PROBLEM_TITLE: dict[str, str] = {
    KeyStatus.INVALID: "Your {provider} key was rejected",
    KeyStatus.RATE_LIMITED: "Your {provider} key was rate limited",
    KeyStatus.QUOTA_EXHAUSTED: "Your {provider} key is out of quota",
    KeyStatus.NEEDS_REENTRY: "Your {provider} key needs to be pasted again",
}
