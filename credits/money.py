"""Money as people and programs read it. Amounts are integers in millicredits everywhere;
this is the one place they become text."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Final

MILLICREDITS_PER_CREDIT: Final = 1_000
MINUS_SIGN: Final = "\u2212"  # a real minus sign on pages: as wide as the "+" of a credit


def credits_text(millicredits: int, *, for_people: bool = True, signed: bool = False, compact: bool = False) -> str:
    """Millicredits as credits with exactly three decimals, computed in integers (no float).

    For people (dashboard, admin): thousands separators and a real minus sign,
    1234567 -> "1,234.567", -1500 -> "\u22121.500". For programs (API fields, CSV): neither,
    -1234567 -> "-1234.567". ``signed`` adds "+" to positive amounts (ledger movements).
    ``compact`` drops the fraction's trailing zeros, for round amounts people chose (thresholds):
    100000 -> "100", 12500 -> "12.5".
    """
    value = int(millicredits)
    whole, fraction = divmod(abs(value), MILLICREDITS_PER_CREDIT)
    sign = "+" if signed and value > 0 else ""
    if value < 0:
        sign = MINUS_SIGN if for_people else "-"
    number = f"{whole:,}" if for_people else str(whole)
    decimals = f"{fraction:03d}".rstrip("0") if compact else f"{fraction:03d}"
    return f"{sign}{number}.{decimals}" if decimals else f"{sign}{number}"


def credits_parse(text: str) -> int:
    """Credits as people type them ("100", "12.5", "1,000") as millicredits; ValueError if it is
    not a number of credits with at most three decimals."""
    cleaned = text.strip().replace(",", "").replace("_", "")
    try:
        value = Decimal(cleaned) * MILLICREDITS_PER_CREDIT
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite():
        raise ValueError(f"{text.strip()!r} is not a number of credits.")
    if value != value.to_integral_value():
        raise ValueError(f"{text.strip()!r}: at most three decimals (1 credit = 1,000 millicredits).")
    return int(value)
