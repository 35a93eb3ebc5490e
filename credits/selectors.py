"""Reads for billing accounts, holds and the ledger."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.db.models import Count, F, OuterRef, Q, QuerySet, Subquery, Sum, Value
from django.db.models.functions import Coalesce

from accounts.models import User
from credits.models import USAGE_CATEGORIES, BillingAccount, Category, CreditHold, HoldStatus, KeySource, LedgerEntry


def billing_account_for(*, user: User) -> BillingAccount:
    """The user's billing account; for a user who has none yet, an unsaved one as it would be
    created (free plan, no Apex, zero balance), so callers read plan and balance either way.

    Only reads: the services that need the row (the first money movement, a plan change) create
    it (`credits.services.accounts.billing_account_ensure`).
    """
    account = BillingAccount.objects.filter(user_id=user.pk).first()
    return account if account is not None else BillingAccount(user=user)


@dataclass(frozen=True, slots=True)
class Balance:
    plan: str
    apex_enabled: bool
    balance: int
    reserved: int

    @property
    def available(self) -> int:
        return self.balance - self.reserved


def credit_balance(*, user: User) -> Balance:
    account = billing_account_for(user=user)
    return Balance(
        plan=account.plan, apex_enabled=account.apex_enabled, balance=account.balance, reserved=account.reserved
    )


def ledger_entries_for(
    *,
    user: User,
    category: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> QuerySet[LedgerEntry]:
    """The user's entries, newest first; ``since`` inclusive, ``until`` exclusive.

    Newest by id, the order in which the balance moved (see `credits.ledger_sql`), so each
    entry's ``balance_after`` is the next one's plus its amount.
    """
    entries = LedgerEntry.objects.filter(account__user_id=user.pk)
    if category:
        entries = entries.filter(category=category)
    if since is not None:
        entries = entries.filter(created_at__gte=since)
    if until is not None:
        entries = entries.filter(created_at__lt=until)
    return entries.order_by("-id")


@dataclass(frozen=True, slots=True)
class TokenVolume:
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    credits: int = 0  # millicredits


@dataclass(frozen=True, slots=True)
class UsageBreakdown:
    start: datetime
    end: datetime
    by_category: dict[str, int] = field(default_factory=dict)  # millicredits spent, per usage category
    total: int = 0
    hosted_llm: TokenVolume = field(default_factory=TokenVolume)
    byok_llm: TokenVolume = field(default_factory=TokenVolume)

    @property
    def llm_share(self) -> Decimal:
        """The LLM part of the total spend, 0 to 1 (four decimals; 0 when nothing was spent)."""
        if not self.total:
            return Decimal("0")
        return (Decimal(self.by_category.get(Category.LLM, 0)) / Decimal(self.total)).quantize(Decimal("0.0001"))


def _volume(entries: QuerySet[LedgerEntry]) -> TokenVolume:
    row = entries.aggregate(
        calls=Count("id"),
        input_tokens=Coalesce(Sum("input_tokens"), Value(0)),
        output_tokens=Coalesce(Sum("output_tokens"), Value(0)),
        cached_tokens=Coalesce(Sum("cached_tokens"), Value(0)),
        credits=Coalesce(Sum(-F("amount")), Value(0)),
    )
    return TokenVolume(**{name: int(value) for name, value in row.items()})


def usage_breakdown(*, user: User, start: datetime, end: datetime) -> UsageBreakdown:
    """Credits spent per usage category in [start, end), the LLM share of the total, and LLM token
    volume split by key source (BYOK calls are counted with their tokens, at zero cost)."""
    entries = LedgerEntry.objects.filter(account__user_id=user.pk, created_at__gte=start, created_at__lt=end)
    spent = (
        entries.filter(category__in=USAGE_CATEGORIES)
        .values("category")
        .annotate(total=Sum(-F("amount")))
        .order_by("category")
    )
    by_category = {str(category): 0 for category in sorted(USAGE_CATEGORIES)}
    by_category.update({row["category"]: int(row["total"]) for row in spent})
    llm = entries.filter(category=Category.LLM)
    return UsageBreakdown(
        start=start,
        end=end,
        by_category=by_category,
        total=sum(by_category.values()),
        hosted_llm=_volume(llm.exclude(key_source=KeySource.BYOK)),
        byok_llm=_volume(llm.filter(key_source=KeySource.BYOK)),
    )


@dataclass(frozen=True, slots=True)
class LedgerMismatch:
    account_id: int
    email: str
    balance: int
    entries_sum: int
    reserved: int
    open_holds_sum: int
    last_balance_after: int | None

    @property
    def problems(self) -> list[str]:
        found = []
        if self.balance != self.entries_sum:
            found.append(f"balance {self.balance} != sum of entries {self.entries_sum}")
        if self.reserved != self.open_holds_sum:
            found.append(f"reserved {self.reserved} != sum of open holds {self.open_holds_sum}")
        if self.last_balance_after is not None and self.last_balance_after != self.balance:
            found.append(f"balance {self.balance} != latest entry's balance_after {self.last_balance_after}")
        if self.balance < self.reserved:
            found.append(f"available {self.balance - self.reserved} < 0")
        return found


def ledger_mismatches() -> list[LedgerMismatch]:
    """Every account whose balance, reserved amount or latest entry disagrees with the ledger.

    One statement, so it reads one consistent snapshot even while money is moving.
    """
    entries = LedgerEntry.objects.filter(account=OuterRef("pk")).order_by()
    entries_sum = entries.values("account").annotate(total=Sum("amount")).values("total")
    last_after = entries.order_by("-id").values("balance_after")[:1]
    open_holds = (
        CreditHold.objects.filter(account=OuterRef("pk"), status=HoldStatus.OPEN)
        .order_by()
        .values("account")
        .annotate(total=Sum("amount"))
        .values("total")
    )
    rows = (
        BillingAccount.objects.annotate(
            entries_sum=Coalesce(Subquery(entries_sum), Value(0)),
            open_holds_sum=Coalesce(Subquery(open_holds), Value(0)),
            last_balance_after=Subquery(last_after),
        )
        .filter(
            ~Q(balance=F("entries_sum"))
            | ~Q(reserved=F("open_holds_sum"))
            | (Q(last_balance_after__isnull=False) & ~Q(last_balance_after=F("balance")))
            | Q(balance__lt=F("reserved"))
        )
        .values_list("pk", "user__email", "balance", "entries_sum", "reserved", "open_holds_sum", "last_balance_after")
        .order_by("pk")
    )
    return [LedgerMismatch(*row) for row in rows]
