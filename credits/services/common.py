"""What every credits service shares: input checks, the parameters' fingerprint, the errors,
and the runner of `credits.ledger_sql` statements on Django's connection.

How each money service works:

1. Validate and price first; bad input raises a 400 and writes nothing.
2. Run the rule's one statement (`credits.ledger_sql`): the check and the write happen in it,
   under the row lock its own UPDATE takes.
3. If it refuses (no row), read to say why: an earlier call with the same idempotency key (the
   same parameters: return its result; others: ``idempotency_conflict``, 409), too few credits,
   a hold resolved already. A reused key makes the statement fail on the unique constraint,
   which undoes it whole; the read then finds the twin's row.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, TypeVar

from django.db import connection, transaction

from core import errors
from credits.ledger_sql import Statement
from credits.models import CreditHold, LedgerEntry
from credits.pricing import MAX_UNITS, PRICE_BOOK_VERSION, Usage

MAX_IDEMPOTENCY_KEY_LENGTH = 128
MAX_MODEL_LENGTH = 64
MAX_REASON_LENGTH = 255
MAX_DETAILS_BYTES = 4_096
MAX_AMOUNT = MAX_UNITS * 1_000  # 1e15 mc: far beyond any real amount, far below bigint
# A statement refused, yet the read after it finds no reason (money arrived in between): the
# statement runs again, at most this many times in all.
MAX_ATTEMPTS = 3


def statement_fetch(statement: Statement) -> tuple[Any, ...] | None:
    """Run one statement on Django's connection and return its first row.

    Outside a transaction it runs in autocommit: the statement is its own transaction, with no
    BEGIN/COMMIT round trips while it holds a row lock. Inside a caller's transaction it gets a
    savepoint, so a statement that fails (a reused key) leaves that transaction usable.
    """
    if connection.in_atomic_block:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(statement.sql, statement.params)
            return cursor.fetchone()
    with connection.cursor() as cursor:
        cursor.execute(statement.sql, statement.params)
        return cursor.fetchone()


# --- Input checks (before any statement) ----------------------------------------------------------


def invalid(field: str, message: str) -> errors.NiyraError:
    return errors.NiyraError(errors.INVALID_INPUT, detail={field: [message]})


def checked_idempotency_key(value: object, field: str = "idempotency_key") -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise invalid(field, f"Required: 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters.")
    return value


def checked_model(model: object, price_key: object) -> tuple[str, str]:
    """The model called (what the user sees) and the price book key it is priced by, which is
    the model itself when the caller names a price key directly (``price_key`` None)."""
    if not isinstance(model, str) or not model.strip() or len(model) > MAX_MODEL_LENGTH:
        raise invalid("model", f"Required: 1 to {MAX_MODEL_LENGTH} characters.")
    if price_key is None:
        return model, model
    if not isinstance(price_key, str):
        raise invalid("price_key", "A price book key.")
    return model, price_key


def checked_amount(value: object, field: str = "amount", *, signed: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(field, "A whole number of millicredits.")
    if signed and (value == 0 or abs(value) > MAX_AMOUNT):
        raise invalid(field, f"A non-zero whole number of millicredits, at most {MAX_AMOUNT:,} either way.")
    if not signed and not 0 < value <= MAX_AMOUNT:
        raise invalid(field, f"A positive whole number of millicredits, at most {MAX_AMOUNT:,}.")
    return value


def checked_reason(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise invalid("reason", "A reason is required.")
    if len(value.strip()) > MAX_REASON_LENGTH:
        raise invalid("reason", f"At most {MAX_REASON_LENGTH} characters.")
    return value.strip()


def checked_details(value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid("details", "An object (JSON dictionary).")
    try:
        size = len(json.dumps(value, separators=(",", ":")))
    except (TypeError, ValueError):
        raise invalid("details", "Only JSON values (strings, numbers, booleans, lists, objects).") from None
    if size > MAX_DETAILS_BYTES:
        raise invalid("details", f"At most {MAX_DETAILS_BYTES:,} bytes of JSON.")
    return value


def fingerprint(**params: Any) -> str:
    """What makes two calls "the same parameters" for idempotency."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# --- Errors -----------------------------------------------------------------------------------------


def idempotency_conflict(idempotency_key: str) -> errors.NiyraError:
    return errors.NiyraError(errors.IDEMPOTENCY_CONFLICT, detail={"idempotency_key": idempotency_key})


Recorded = TypeVar("Recorded", CreditHold, LedgerEntry)


def replay_of(earlier: Recorded | None, draft: Recorded) -> Recorded | None:
    """The idempotency rule: an earlier hold or entry with the draft's key answers the call when
    its parameters (fingerprint) are the same; different parameters are a conflict (409)."""
    if earlier is not None and earlier.fingerprint != draft.fingerprint:
        raise idempotency_conflict(draft.idempotency_key)
    return earlier


def insufficient_credits(*, available: int, required: int) -> errors.NiyraError:
    return errors.NiyraError(errors.INSUFFICIENT_CREDITS, detail={"available": available, "required": required})


# --- Entries -------------------------------------------------------------------------------------


def entry_draft(
    *,
    amount: int,
    category: str,
    idempotency_key: str,
    fingerprint: str,
    description: str,
    model: str = "",
    price_key: str = "",
    units: int | None = None,
    usage: Usage | None = None,
    key_source: str = "",
    details: dict[str, Any] | None = None,
    pricing: dict[str, Any] | None = None,
) -> LedgerEntry:
    """What an entry says, unsaved: its statement adds the account, the balance after it, and
    (for a settlement) the amount charged.

    With ``usage``, the token columns keep input, output and cached tokens (what the usage
    breakdown sums), TTS characters or STT seconds are the entry's ``units``, and
    ``details["usage"]`` keeps every kind the provider reported, so nothing billed is lost.
    """
    context = dict(details or {})
    if usage is not None:
        context["usage"] = usage.as_dict()
        units = units if units is not None else (usage.characters or usage.seconds or None)
    return LedgerEntry(
        amount=amount,
        category=category,
        idempotency_key=idempotency_key,
        fingerprint=fingerprint,
        description=description[:255],
        model=model,
        price_key=price_key,
        units=units,
        input_tokens=usage.input_tokens if usage else None,
        output_tokens=usage.output_tokens if usage else None,
        cached_tokens=usage.cached_tokens if usage else None,
        key_source=key_source,
        details=context,
        pricing={"book": PRICE_BOOK_VERSION} | (pricing or {}),
    )


def usage_text(usage: Usage) -> str:
    """The usage, as an entry's description says it."""
    parts = []
    if usage.input_tokens or usage.output_tokens or not (usage.characters or usage.seconds):
        parts.append(f"{usage.input_tokens:,} in ({usage.cached_tokens:,} cached) / {usage.output_tokens:,} out tokens")
    if usage.characters:
        parts.append(f"{usage.characters:,} characters")
    if usage.seconds:
        parts.append(f"{usage.seconds:,} seconds")
    return ", ".join(parts)
