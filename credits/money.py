"""Money as people and programs read it. Amounts are integers in millicredits everywhere;
this is the one place they become text."""

from __future__ import annotations

from typing import Final

MILLICREDITS_PER_CREDIT: Final = 1_000
MINUS_SIGN: Final = "\u2212"  # a real minus sign on pages: as wide as the "+" of a credit


def credits_text(millicredits: int, *, for_people: bool = True, signed: bool = False) -> str:
    """Millicredits as credits with exactly three decimals, computed in integers (no float).

    For people (dashboard, admin): thousands separators and a real minus sign,
    1234567 -> "1,234.567", -1500 -> "\u22121.500". For programs (API fields, CSV): neither,
    -1234567 -> "-1234.567". ``signed`` adds "+" to positive amounts (ledger movements).
    """
    value = int(millicredits)
    whole, fraction = divmod(abs(value), MILLICREDITS_PER_CREDIT)
    sign = "+" if signed and value > 0 else ""
    if value < 0:
        sign = MINUS_SIGN if for_people else "-"
    number = f"{whole:,}" if for_people else str(whole)
    return f"{sign}{number}.{fraction:03d}"
