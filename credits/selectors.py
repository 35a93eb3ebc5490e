"""Reads for billing accounts, holds and the ledger."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from django.db.models import BigIntegerField, Count, F, Min, OuterRef, Q, QuerySet, Subquery, Sum, Value
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, Coalesce, TruncDate

from accounts.models import User
from credits.models import USAGE_CATEGORIES, BillingAccount, Category, CreditHold, HoldStatus, KeySource, LedgerEntry
from credits.money import credits_text


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


@dataclass(frozen=True, slots=True)
class OpenHolds:
    count: int
    oldest_created_at: datetime | None


def open_holds_summary() -> OpenHolds:
    """How many holds are open and when the oldest was placed (the sweeper's gauges). It reads
    only the open holds, through the partial index on them (``credit_hold_open_expiry``)."""
    found = CreditHold.objects.filter(status=HoldStatus.OPEN).aggregate(count=Count("id"), oldest=Min("created_at"))
    return OpenHolds(count=found["count"], oldest_created_at=found["oldest"])


# --- Spend over time: per day and category, per model, and the burn rate ---------------------------

SPEND_DAYS = 30
BURN_RATE_DAYS = 7


@dataclass(frozen=True, slots=True)
class DaySpend:
    day: date
    by_category: dict[str, int]  # millicredits spent, every usage category (0 when none)

    @property
    def total(self) -> int:
        return sum(self.by_category.values())


@dataclass(frozen=True, slots=True)
class SpendHistory:
    """Credits spent per UTC day in a window of whole days ending today, oldest day first."""

    days: list[DaySpend]

    @property
    def by_category(self) -> dict[str, int]:
        return {str(c): sum(day.by_category[str(c)] for day in self.days) for c in USAGE_CATEGORIES}

    @property
    def total(self) -> int:
        return sum(day.total for day in self.days)

    def recent_total(self, days: int) -> int:
        """Spent on the last ``days`` days of the window (today included)."""
        return sum(day.total for day in self.days[-days:])


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def spend_per_day(*, user: User, today: date, days: int = SPEND_DAYS) -> SpendHistory:
    """Credits spent per UTC day and usage category over the ``days`` days ending with ``today``
    (every day listed, days without spend at zero), grouped in one query."""
    first = today - timedelta(days=days - 1)
    rows = (
        LedgerEntry.objects.filter(
            account__user_id=user.pk,
            category__in=USAGE_CATEGORIES,
            created_at__gte=_day_start(first),
            created_at__lt=_day_start(today + timedelta(days=1)),
        )
        .annotate(day=TruncDate("created_at", tzinfo=UTC))
        .values("day", "category")
        .annotate(spent=Sum(-F("amount")))
        .order_by()
    )
    spent = {(row["day"], row["category"]): int(row["spent"]) for row in rows}
    return SpendHistory(
        days=[
            DaySpend(
                day=day,
                by_category={str(c): spent.get((day, str(c)), 0) for c in USAGE_CATEGORIES},
            )
            for day in (first + timedelta(days=n) for n in range(days))
        ]
    )


@dataclass(frozen=True, slots=True)
class ModelSpend:
    category: str
    model: str  # empty for usage that is not a model call (tool calls, enrichment, …)
    calls: int
    byok_calls: int
    input_tokens: int
    output_tokens: int
    credits: int  # millicredits spent
    saved: int  # millicredits the user's own key saved (what its calls would have cost)

    @property
    def label(self) -> str:
        return self.model or Category(self.category).label


def spend_per_model(*, user: User, start: datetime, end: datetime) -> list[ModelSpend]:
    """Usage in [start, end) per category and model (the model called, as the ledger shows it):
    calls (on credits and on the user's own keys), tokens, credits spent and what the keys saved.
    Most credits first. One query."""
    rows = (
        LedgerEntry.objects.filter(
            account__user_id=user.pk, category__in=USAGE_CATEGORIES, created_at__gte=start, created_at__lt=end
        )
        .values("category", "model")
        .annotate(
            calls=Count("id"),
            byok_calls=Count("id", filter=Q(key_source=KeySource.BYOK)),
            input_tokens=Coalesce(Sum("input_tokens"), Value(0)),
            output_tokens=Coalesce(Sum("output_tokens"), Value(0)),
            spent=Coalesce(Sum(-F("amount")), Value(0)),
            saved=Coalesce(
                Sum(Cast(KT("pricing__would_cost"), BigIntegerField()), filter=Q(key_source=KeySource.BYOK)), Value(0)
            ),
        )
        .order_by("-spent", "-calls", "category", "model")
    )
    return [
        ModelSpend(
            category=row["category"],
            model=row["model"],
            calls=row["calls"],
            byok_calls=row["byok_calls"],
            input_tokens=int(row["input_tokens"]),
            output_tokens=int(row["output_tokens"]),
            credits=int(row["spent"]),
            saved=int(row["saved"]),
        )
        for row in rows
    ]


@dataclass(frozen=True, slots=True)
class BurnRate:
    """How long the credits last at the recent rate of spend."""

    per_day: int  # millicredits a day over the last BURN_RATE_DAYS days (rounded up)
    available: int  # millicredits

    @property
    def days_left(self) -> int | None:
        """Whole days the available credits last; None when nothing is being spent."""
        if self.per_day <= 0:
            return None
        return max(self.available, 0) // self.per_day

    @property
    def sentence(self) -> str:
        if self.available <= 0:
            return "Your credits are used up: hosted LLM calls stop until you top up; calls on your own keys continue."
        if self.per_day <= 0:
            return f"No credits spent in the last {BURN_RATE_DAYS} days, so there is no rate to forecast from."
        rate = credits_text(self.per_day)
        lead = f"At the last {BURN_RATE_DAYS} days' rate ({rate} credits a day), your credits last"
        days = self.days_left or 0
        if days < 1:
            return f"{lead} less than a day."
        if days > 365:
            return f"{lead} more than a year."
        return f"{lead} about {days} day{'' if days == 1 else 's'}."


def burn_rate(*, history: SpendHistory, available: int) -> BurnRate:
    """The burn rate over the last BURN_RATE_DAYS days of ``history`` (today included)."""
    spent = history.recent_total(BURN_RATE_DAYS)
    return BurnRate(per_day=-(-spent // BURN_RATE_DAYS), available=available)


@dataclass(frozen=True, slots=True)
class LowBalance:
    """What the dashboard's banner says while the balance is below a threshold."""

    available: int  # millicredits
    threshold: int  # the lowest threshold the balance is below; 0: used up

    @property
    def depleted(self) -> bool:
        return self.threshold == 0


def low_balance_for(*, user: User) -> LowBalance | None:
    """The user's low-balance state (from the band the database keeps), or None when the balance
    is above every threshold or there is no account yet. One indexed read."""
    row = (
        BillingAccount.objects.filter(user_id=user.pk, alert_band__isnull=False)
        .values_list("balance", "reserved", "alert_band")
        .first()
    )
    if row is None:
        return None
    balance, reserved, band = row
    return LowBalance(available=balance - reserved, threshold=band or 0)  # never None: filtered above
