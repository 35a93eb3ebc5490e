"""Billing accounts, the append-only credit ledger and two-phase credit holds.

Money is integers in millicredits (1 credit = 1,000 mc). No floats anywhere. Invariants, kept by
the statements of `credits.ledger_sql` under a row lock on the account and checked by
`manage.py reconcile_ledger`:

* ``balance == sum(entries.amount)``
* ``reserved == sum(open holds.amount)``
* ``balance - reserved >= 0``

What one row can say about itself is a CHECK constraint, so the database refuses a write that
breaks it whatever the code does: ``balance >= reserved >= 0``, a hold holds something, is
resolved exactly when it is no longer open, records a requested amount exactly when settled; a
settlement never credits; only a settlement is flagged; an entry on the user's own key (BYOK)
costs nothing. A trigger keeps the ledger append-only (see the migrations).
"""

from __future__ import annotations

from typing import Any, NoReturn

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models


class Plan(models.TextChoices):
    FREE = "free", "Free"
    PRO = "pro", "Pro"
    ALPHA = "alpha", "Alpha"


BYOK_PLANS = frozenset({Plan.PRO, Plan.ALPHA})

# Low-balance alerts: "tell me when my credits fall below …", in millicredits (100 and 20 credits,
# i.e. $1 and $0.20 of provider list price). Reaching zero ("depleted") is always an alert.
DEFAULT_ALERT_THRESHOLDS = (100_000, 20_000)
MAX_ALERT_THRESHOLDS = 5


def default_alert_thresholds() -> list[int]:
    return list(DEFAULT_ALERT_THRESHOLDS)


class BillingAccount(models.Model):
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="billing_account")
    plan = models.CharField(max_length=16, choices=Plan.choices, default=Plan.FREE)
    apex_enabled = models.BooleanField(default=False, help_text="Entitlement: Apex (Fable 5) access.")
    balance = models.BigIntegerField(default=0, help_text="Millicredits; equals the sum of ledger entries.")
    reserved = models.BigIntegerField(default=0, help_text="Millicredits held by open holds.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # Kept by the database trigger `credits_balance_alert` (migration 0005) on every change of the
    # balance, whatever path moved it; services only ever set the thresholds.
    alert_thresholds = ArrayField(
        models.BigIntegerField(),
        default=default_alert_thresholds,
        size=MAX_ALERT_THRESHOLDS,
        help_text="Millicredits, highest first: a balance falling below one is a low-balance alert.",
    )
    alert_band = models.BigIntegerField(
        null=True,
        blank=True,
        editable=False,
        help_text="Where the balance stands: empty = above every threshold; N = below the threshold N "
        "(millicredits, the lowest it is below); 0 = used up.",
    )
    alert_warned = models.BooleanField(
        default=False,
        editable=False,
        help_text="A low or used-up alert went out since the balance was last above every threshold.",
    )

    class Meta:
        ordering = ("id",)
        constraints = [
            models.CheckConstraint(condition=models.Q(reserved__gte=0), name="billing_reserved_non_negative"),
            models.CheckConstraint(
                condition=models.Q(balance__gte=models.F("reserved")), name="billing_available_non_negative"
            ),
        ]
        permissions = [
            ("grant_credits", "Can grant and adjust credits (with a reason)"),
            ("change_plan", "Can change a billing plan"),
            ("manage_apex", "Can grant or revoke Apex access"),
        ]

    def __str__(self) -> str:
        return f"{self.user} ({self.plan})"

    @property
    def available(self) -> int:
        return self.balance - self.reserved

    @property
    def allows_byok(self) -> bool:
        return self.plan in BYOK_PLANS

    @property
    def is_low(self) -> bool:
        return self.alert_band is not None

    @property
    def is_depleted(self) -> bool:
        return self.alert_band == 0


class Category(models.TextChoices):
    LLM = "llm", "LLM"
    EMBEDDINGS = "embeddings", "Embeddings"
    TOOL_CALL = "tool_call", "Tool calls"
    VOICE_TTS = "voice_tts", "Voice (TTS)"
    VOICE_STT = "voice_stt", "Voice (STT)"
    ENRICHMENT = "enrichment", "Enrichment"
    TELEPHONY = "telephony", "Telephony"
    GRANT = "grant", "Grant"
    PURCHASE = "purchase", "Purchase"
    ADJUSTMENT = "adjustment", "Adjustment"
    REFUND = "refund", "Refund"


# What usage costs (debits), as opposed to what adds credits; LLM first (usually most of the
# spend), then what BYOK never covers, in the product page's order.
USAGE_CATEGORIES = (
    Category.LLM,
    Category.EMBEDDINGS,
    Category.TOOL_CALL,
    Category.VOICE_TTS,
    Category.VOICE_STT,
    Category.ENRICHMENT,
    Category.TELEPHONY,
)


class KeySource(models.TextChoices):
    PLATFORM = "platform", "Platform key (credits)"
    BYOK = "byok", "User's own key (no credits)"


class HoldStatus(models.TextChoices):
    OPEN = "open", "Open"
    SETTLED = "settled", "Settled"
    VOIDED = "voided", "Voided"
    EXPIRED = "expired", "Expired"


class CreditHold(models.Model):
    """A reservation of a worst-case amount before a hosted call (two-phase charging).

    Open holds count towards the account's ``reserved``. A hold resolves exactly once: settled
    (one ledger entry posts the actual cost), voided (nothing posted), or expired by the sweeper.
    An expired hold may still be settled once, late (the call did finish): see `credit_settle`.
    """

    # No index of its own: the unique (account, idempotency_key) index leads with it.
    account = models.ForeignKey(BillingAccount, on_delete=models.PROTECT, related_name="holds", db_index=False)
    category = models.CharField(max_length=16, choices=Category.choices)
    amount = models.BigIntegerField(help_text="Millicredits reserved (the worst case).")
    status = models.CharField(max_length=8, choices=HoldStatus.choices, default=HoldStatus.OPEN)
    idempotency_key = models.CharField(max_length=128)
    fingerprint = models.CharField(max_length=64, help_text="Hash of the parameters, to tell a replay from a reuse.")
    model = models.CharField(max_length=64, blank=True, help_text="The model called, as the caller named it.")
    price_key = models.CharField(max_length=64, blank=True, help_text="The price book's key it is priced by.")
    input_tokens_estimate = models.BigIntegerField(null=True, blank=True)
    max_tokens = models.BigIntegerField(null=True, blank=True)
    details = models.JSONField(default=dict, blank=True)
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    requested_amount = models.BigIntegerField(
        null=True, blank=True, help_text="Millicredits the settlement asked for (may exceed the hold: see overrun)."
    )
    overrun = models.BooleanField(default=False, help_text="Settled for more than was held (an estimate was wrong).")
    resolution_key = models.CharField(max_length=128, blank=True)
    resolution_fingerprint = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ("-created_at", "-id")
        constraints = [
            models.UniqueConstraint(fields=["account", "idempotency_key"], name="credit_hold_idempotency_unique"),
            models.CheckConstraint(condition=models.Q(amount__gt=0), name="credit_hold_amount_positive"),
            models.CheckConstraint(condition=models.Q(status__in=HoldStatus.values), name="credit_hold_status_known"),
            models.CheckConstraint(
                condition=models.Q(status=HoldStatus.OPEN, resolved_at__isnull=True)
                | (~models.Q(status=HoldStatus.OPEN) & models.Q(resolved_at__isnull=False)),
                name="credit_hold_resolved_iff_not_open",
            ),
            models.CheckConstraint(
                condition=models.Q(status=HoldStatus.SETTLED, requested_amount__isnull=False, requested_amount__gte=0)
                | (~models.Q(status=HoldStatus.SETTLED) & models.Q(requested_amount__isnull=True)),
                name="credit_hold_requested_iff_settled",
            ),
            models.CheckConstraint(
                condition=models.Q(overrun=False)
                | models.Q(status=HoldStatus.SETTLED, requested_amount__gt=models.F("amount")),
                name="credit_hold_overrun_only_above_hold",
            ),
        ]
        indexes = [
            models.Index(
                fields=["expires_at"], condition=models.Q(status=HoldStatus.OPEN), name="credit_hold_open_expiry"
            ),
        ]

    def __str__(self) -> str:
        return f"hold #{self.pk} {self.amount} mc ({self.status})"

    @property
    def is_open(self) -> bool:
        return self.status == HoldStatus.OPEN


class LedgerEntryQuerySet(models.QuerySet["LedgerEntry"]):
    """The ledger is append-only: the bulk write paths are closed too."""

    def update(self, **kwargs: Any) -> NoReturn:
        raise TypeError("The ledger is append-only: post a reversing entry instead of updating.")

    def delete(self) -> NoReturn:
        raise TypeError("The ledger is append-only: post a reversing entry instead of deleting.")


class LedgerEntry(models.Model):
    """One movement of credits. Append-only: never updated, never deleted (also enforced by a
    database trigger). Corrections are new reversing entries (`credit_adjust`).

    ``idempotency_key`` is unique per account among direct entries (charges, grants,
    adjustments, usage records). A settlement entry carries its hold's key and is unique per
    hold instead, so the two namespaces can't collide.
    """

    # No index of its own: the account indexes below lead with it (every index costs each insert).
    account = models.ForeignKey(BillingAccount, on_delete=models.PROTECT, related_name="entries", db_index=False)
    amount = models.BigIntegerField(help_text="Signed millicredits: credits are positive, charges negative.")
    category = models.CharField(max_length=16, choices=Category.choices)
    balance_after = models.BigIntegerField()
    idempotency_key = models.CharField(max_length=128)
    fingerprint = models.CharField(max_length=64, help_text="Hash of the parameters, to tell a replay from a reuse.")
    hold = models.OneToOneField(
        CreditHold, null=True, blank=True, on_delete=models.PROTECT, related_name="entry", help_text="Settled hold."
    )
    description = models.CharField(max_length=255, blank=True)
    # What the user sees is the model called (Opus 4.6, 4.7 and 4.8 apart); how it was priced is
    # the price key (all three: claude-opus-4-5).
    model = models.CharField(max_length=64, blank=True, help_text="The model called (e.g. claude-opus-4-6).")
    price_key = models.CharField(
        max_length=64, blank=True, help_text="The price book's key it was priced by (e.g. claude-opus-4)."
    )
    units = models.BigIntegerField(null=True, blank=True)
    input_tokens = models.BigIntegerField(null=True, blank=True)
    output_tokens = models.BigIntegerField(null=True, blank=True)
    cached_tokens = models.BigIntegerField(null=True, blank=True)
    key_source = models.CharField(max_length=8, choices=KeySource.choices, blank=True)
    details = models.JSONField(default=dict, blank=True, help_text="What the caller said it was for.")
    pricing = models.JSONField(default=dict, blank=True, help_text="How the amount was computed; who acted.")
    flagged = models.BooleanField(default=False, help_text="Charged less than asked (overrun or late settlement).")
    # No index of its own: every read by date is one account's (`ledger_account_recent`).
    created_at = models.DateTimeField(auto_now_add=True)

    objects = LedgerEntryQuerySet.as_manager()

    class Meta:
        # By id: the order in which the balance moved (see `credits.ledger_sql`).
        ordering = ("-id",)
        constraints = [
            models.UniqueConstraint(
                fields=["account", "idempotency_key"],
                condition=models.Q(hold__isnull=True),
                name="ledger_idempotency_unique",
            ),
            models.CheckConstraint(condition=models.Q(balance_after__gte=0), name="ledger_balance_after_non_negative"),
            models.CheckConstraint(
                condition=models.Q(hold__isnull=True) | models.Q(amount__lte=0), name="ledger_settlement_never_credits"
            ),
            models.CheckConstraint(
                condition=models.Q(flagged=False) | models.Q(hold__isnull=False), name="ledger_only_settlements_flagged"
            ),
            models.CheckConstraint(
                condition=~models.Q(key_source=KeySource.BYOK) | models.Q(amount=0), name="ledger_byok_costs_nothing"
            ),
        ]
        indexes = [
            # The statement, newest first (by id: see `ordering`).
            models.Index(fields=["account", "-id"], name="ledger_account_statement"),
            # One account's entries in a period (the usage breakdown, date filters).
            models.Index(fields=["account", "-created_at", "-id"], name="ledger_account_recent"),
        ]
        verbose_name_plural = "ledger entries"

    def __str__(self) -> str:
        return f"{self.category} {self.amount:+d} mc"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise TypeError("The ledger is append-only: post a reversing entry instead of updating.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("The ledger is append-only: post a reversing entry instead of deleting.")


class AlertKind(models.TextChoices):
    LOW = "low", "Below a threshold"
    DEPLETED = "depleted", "Used up"
    RECOVERED = "recovered", "Above every threshold again"


class BalanceAlert(models.Model):
    """One crossing of a low-balance threshold: an outbox row, inserted by the database trigger
    `credits_balance_alert` in the transaction that moved the balance (so exactly one per
    crossing, whatever code path moved the money: the account's row lock orders every change).
    The beat task `credits.tasks.balance_alerts_dispatch` turns each into one notification.

    Append-only but for ``dispatched_at``, set once when the notification is recorded.
    """

    account = models.ForeignKey(BillingAccount, on_delete=models.CASCADE, related_name="alerts")
    kind = models.CharField(max_length=16, choices=AlertKind.choices)
    band_from = models.BigIntegerField(null=True, blank=True, help_text="The band before (see alert_band).")
    band_to = models.BigIntegerField(null=True, blank=True, help_text="The band after (see alert_band).")
    balance = models.BigIntegerField(help_text="Millicredits, right after the crossing.")
    created_at = models.DateTimeField()
    dispatched_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-id",)
        constraints = [
            models.CheckConstraint(condition=models.Q(kind__in=AlertKind.values), name="balance_alert_kind_known"),
        ]
        indexes = [
            models.Index(fields=["id"], condition=models.Q(dispatched_at__isnull=True), name="balance_alert_pending"),
        ]

    def __str__(self) -> str:
        return f"alert #{self.pk} {self.kind} ({self.account_id})"
