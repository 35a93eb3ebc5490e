"""Billing accounts and the append-only credit ledger.

Money is integers in millicredits (1 credit = 1,000 mc). No floats anywhere.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Plan(models.TextChoices):
    FREE = "free", "Free"
    PRO = "pro", "Pro"
    ALPHA = "alpha", "Alpha"


BYOK_PLANS = frozenset({Plan.PRO, Plan.ALPHA})


class BillingAccount(models.Model):
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="billing_account")
    plan = models.CharField(max_length=16, choices=Plan.choices, default=Plan.FREE)
    apex_enabled = models.BooleanField(default=False, help_text="Entitlement: Apex (Fable 5) access.")
    balance = models.BigIntegerField(default=0, help_text="Millicredits; equals the sum of ledger entries.")
    reserved = models.BigIntegerField(default=0, help_text="Millicredits held by open holds.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("id",)
        constraints = [
            models.CheckConstraint(condition=models.Q(reserved__gte=0), name="billing_reserved_non_negative"),
            models.CheckConstraint(
                condition=models.Q(balance__gte=models.F("reserved")), name="billing_available_non_negative"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user} ({self.plan})"

    @property
    def available(self) -> int:
        return self.balance - self.reserved

    @property
    def allows_byok(self) -> bool:
        return self.plan in BYOK_PLANS


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


class LedgerEntry(models.Model):
    """One movement of credits. Append-only: never updated, never deleted."""

    account = models.ForeignKey(BillingAccount, on_delete=models.PROTECT, related_name="entries")
    amount = models.BigIntegerField(help_text="Signed millicredits: credits are positive, charges negative.")
    category = models.CharField(max_length=16, choices=Category.choices)
    balance_after = models.BigIntegerField()
    idempotency_key = models.CharField(max_length=128)
    description = models.CharField(max_length=255, blank=True)
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ("-created_at", "-id")
        constraints = [
            models.UniqueConstraint(fields=["account", "idempotency_key"], name="ledger_idempotency_unique"),
        ]
        indexes = [models.Index(fields=["account", "-created_at", "-id"], name="ledger_account_recent")]
        verbose_name_plural = "ledger entries"

    def __str__(self) -> str:
        return f"{self.category} {self.amount:+d} mc"
