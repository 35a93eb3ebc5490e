"""Who is calling the gateway: an API token -> the caller and their routing snapshot.

One query on the async pool reads the token, its user, the billing account, the routing
preference and the saved keys together (and records the token's use, at most once per
`accounts.services.LAST_USED_RESOLUTION`, in the same statement); the result is cached in
process until PostgreSQL says it changed (`routing.gateway.cache`). Tokens are parsed and
hashed by accounts' own rule (`api_token_prefix`, `hash_token`), and compared in constant time.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import DEFAULT_DB_ALIAS
from django.utils import timezone

from accounts.models import ApiToken, User
from accounts.services import LAST_USED_RESOLUTION, api_token_prefix, hash_token
from byok.models import ProviderKey
from credits import ledger_sql
from credits.ledger_sql import Statement
from routing.credentials import RoutingSnapshot
from routing.gateway import db
from routing.gateway.cache import RoutingCache, routing_cache
from routing.models import RoutingPreference


@dataclass(frozen=True, slots=True)
class Caller:
    """The user a call is for, the token it came with (None: the dashboard's session user), and
    their routing snapshot as cached. The snapshot's balance is not kept current: holds check
    the balance in their own statement; only the plan, Apex and keys matter here, and a change
    to any of them evicts the entry."""

    user_id: int
    token_id: int | None
    snapshot: RoutingSnapshot


TOKENS = ApiToken._meta.db_table
USERS = User._meta.db_table
PREFERENCES = RoutingPreference._meta.db_table
KEYS = ProviderKey._meta.db_table
_KEY_FIELDS = tuple(ProviderKey._meta.concrete_fields)
KEY_NAMES = [field.attname for field in _KEY_FIELDS]
KEY_COLUMNS = ", ".join(f"k.{field.column}" for field in _KEY_FIELDS)
ACCOUNT_COLUMNS = ", ".join(f"a.{column}" for column in ledger_sql.ACCOUNT_COLUMNS)

# The user's routing facts, one row per saved key (at least one row): is_active, the account's
# columns, the fallback setting and its daily cap, the key's columns.
_FACTS = f"""
    u.is_active, {ACCOUNT_COLUMNS}, p.fallback_to_credits, p.fallback_daily_cap_mc, {KEY_COLUMNS}
    FROM {USERS} u
    LEFT JOIN {ledger_sql.ACCOUNTS} a ON a.user_id = u.id
    LEFT JOIN {PREFERENCES} p ON p.user_id = u.id
    LEFT JOIN {KEYS} k ON k.user_id = u.id
"""


def caller_read(*, prefix: str, digest: str, now: datetime) -> Statement:
    """The token with this prefix (if not revoked), with its user's routing facts; its use is
    recorded if the last record is older than the resolution, the hash matches and the user is
    active. The stamp changes no routing fact, so it notifies nobody."""
    sql = f"""
        WITH token AS (
            SELECT id, user_id, token_hash, last_used_at FROM {TOKENS}
            WHERE prefix = %(prefix)s AND revoked_at IS NULL
        ), stamped AS (
            UPDATE {TOKENS} t SET last_used_at = %(now)s
            FROM token JOIN {USERS} owner ON owner.id = token.user_id AND owner.is_active
            WHERE t.id = token.id AND token.token_hash = %(digest)s
                AND (token.last_used_at IS NULL OR token.last_used_at < %(stale)s)
            RETURNING t.id
        )
        SELECT token.id, token.user_id, token.token_hash, token.last_used_at, {_FACTS}
        JOIN token ON token.user_id = u.id
    """  # noqa: S608 - see above
    return Statement(sql, {"prefix": prefix, "digest": digest, "now": now, "stale": now - LAST_USED_RESOLUTION})


def user_read(*, user_id: int) -> Statement:
    return Statement(f"SELECT {_FACTS} WHERE u.id = %(user_id)s", {"user_id": user_id})


def token_stamp(*, token_id: int, now: datetime) -> Statement:
    """Record a cached token's use (guarded: another process may have just done it)."""
    sql = f"""
        UPDATE {TOKENS} SET last_used_at = %(now)s
        WHERE id = %(token_id)s AND (last_used_at IS NULL OR last_used_at < %(stale)s)
    """  # noqa: S608 - see above
    return Statement(sql, {"token_id": token_id, "now": now, "stale": now - LAST_USED_RESOLUTION})


def snapshot_from_rows(rows: list[tuple[Any, ...]]) -> RoutingSnapshot:
    """The snapshot in the rows of `_FACTS` (after the user's is_active)."""
    accounts = len(ledger_sql.ACCOUNT_COLUMNS)
    first = rows[0]
    account = ledger_sql.account_from_row(first[:accounts]) if first[0] is not None else None
    fallback, cap = first[accounts], first[accounts + 1]
    keys: dict[str, ProviderKey] = {}
    for row in rows:
        values = row[accounts + 2 :]
        if values[0] is not None:
            key = ProviderKey.from_db(DEFAULT_DB_ALIAS, KEY_NAMES, list(values))
            keys[key.provider] = key
    return RoutingSnapshot(account=account, keys=keys, fallback_to_credits=bool(fallback), fallback_daily_cap_mc=cap)


async def caller_authenticate(plaintext: str) -> Caller | None:
    """The caller presenting this API token; None if it is unknown, revoked, or its user is
    inactive. Served from the cache when nothing changed since it was read."""
    prefix = api_token_prefix(plaintext) if isinstance(plaintext, str) else None
    if prefix is None:
        return None
    digest = hash_token(plaintext)
    cache: RoutingCache[Caller] = routing_cache()
    usable = cache.usable()
    if usable and (entry := cache.token(digest)) is not None:
        now = timezone.now()
        if entry.stamped_at is None or now - entry.stamped_at > LAST_USED_RESOLUTION:
            entry.stamped_at = now
            await db.execute(token_stamp(token_id=entry.token_id, now=now))
        return entry.value
    epoch, now = cache.epoch, timezone.now()
    rows = await db.fetch_all(caller_read(prefix=prefix, digest=digest, now=now))
    if not rows:
        return None
    token_id, user_id, token_hash, last_used_at, is_active = rows[0][:5]
    if not hmac.compare_digest(token_hash, digest) or not is_active:
        return None
    caller = Caller(user_id=user_id, token_id=token_id, snapshot=snapshot_from_rows([row[5:] for row in rows]))
    stale = last_used_at is None or now - last_used_at > LAST_USED_RESOLUTION
    if usable:
        cache.put_token(
            digest,
            user_id=caller.user_id,
            token_id=token_id,
            value=caller,
            stamped_at=now if stale else last_used_at,
            epoch=epoch,
        )
    return caller


async def caller_for_user(user_id: int) -> Caller | None:
    """The caller for a signed-in user (the dashboard's Try page); None if inactive or gone."""
    cache: RoutingCache[Caller] = routing_cache()
    usable = cache.usable()
    if usable and (cached := cache.user(user_id)) is not None:
        return cached
    epoch = cache.epoch
    rows = await db.fetch_all(user_read(user_id=user_id))
    if not rows or not rows[0][0]:
        return None
    caller = Caller(user_id=user_id, token_id=None, snapshot=snapshot_from_rows([row[1:] for row in rows]))
    if usable:
        cache.put_user(user_id, caller, epoch=epoch)
    return caller
