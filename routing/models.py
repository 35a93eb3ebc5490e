"""The routed-call log: one row per LLM call Niyra dispatched, whoever paid for it."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from core.errors import CATALOGUE, message_parts
from credits.models import KeySource

OUTCOME_OK = "ok"


def outcome_label(outcome: str) -> str:
    """A routed call's outcome in words: the catalogue message's title, as its badges elsewhere
    say it ("Quota exhausted — Top up…" -> "Quota exhausted"; "Not enough credits. Top up…" ->
    "Not enough credits"). Outcomes outside the catalogue ("client_disconnected") read as words."""
    if outcome == OUTCOME_OK:
        return "OK"
    spec = CATALOGUE.get(outcome)
    if spec is None:
        return outcome.replace("_", " ").capitalize()
    return message_parts(spec.message)[0].partition(". ")[0].rstrip(".")


class RoutedCall(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="routed_calls")
    model = models.CharField(max_length=64)
    provider = models.CharField(max_length=16)
    kind = models.CharField(max_length=16, default="chat")
    key_source = models.CharField(max_length=16, choices=KeySource.choices)
    stream = models.BooleanField(default=False)
    tokens_in = models.PositiveIntegerField(default=0)
    tokens_out = models.PositiveIntegerField(default=0)
    tokens_cached = models.PositiveIntegerField(default=0)
    tokens_cache_write = models.PositiveIntegerField(default=0)
    tokens_reasoning = models.PositiveIntegerField(default=0)
    usage = models.JSONField(default=dict, blank=True, help_text="Everything the provider reported (non-zero kinds).")
    surface = models.CharField(max_length=32, blank=True, default="", help_text="The API called, e.g. openai.chat.")
    credits_charged = models.BigIntegerField(default=0, help_text="Millicredits posted for this call.")
    credits_would_cost = models.BigIntegerField(
        default=0, help_text="Millicredits the usage costs at the price book's rates (what a BYOK call saved)."
    )
    balance_after = models.BigIntegerField(
        null=True,
        blank=True,
        help_text="The account's balance in millicredits after this call's ledger entry (none: no entry written).",
    )
    latency_ms = models.PositiveIntegerField(default=0)
    outcome = models.CharField(max_length=48, default=OUTCOME_OK, help_text="'ok' or an error catalogue code.")
    fell_back = models.BooleanField(
        default=False,
        help_text="Served on credits after the user's own key was rate-limited or out of quota (opt-in fallback).",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-created_at",)
        indexes = [models.Index(fields=["user", "-created_at"], name="routedcall_user_recent")]

    def __str__(self) -> str:
        return f"{self.model} via {self.key_source} ({self.outcome})"

    @property
    def outcome_label(self) -> str:
        return outcome_label(self.outcome)


class RoutingPreference(models.Model):
    """Per-user routing choices. Absent row = defaults (no fallback)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="routing_preference")
    fallback_to_credits = models.BooleanField(
        default=False,
        help_text="When the user's own key is rate-limited or out of quota, retry the call on credits.",
    )
    fallback_daily_cap_mc = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text="At most this many millicredits a UTC day on the fallback to credits (empty: no cap).",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("id",)
        constraints = [
            # A cap of nothing would be "fallback off" said twice: off is fallback_to_credits=False.
            models.CheckConstraint(
                condition=models.Q(fallback_daily_cap_mc__gt=0), name="routingpreference_cap_positive"
            )
        ]

    def __str__(self) -> str:
        return f"routing preferences of {self.user}"


class FallbackSpend(models.Model):
    """What the fallback to credits has taken from a user's daily cap on one UTC day.

    ``used_mc`` is raised by a fallback's worst-case hold before the call (refused past the cap,
    atomically: `routing.gateway.ledger.fallback_reserve`) and lowered to what was charged when
    the call closes, so the calls charged on a day never add up to more than its cap."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="fallback_spend")
    day = models.DateField(help_text="The UTC day.")
    used_mc = models.BigIntegerField(default=0, help_text="Millicredits held or charged on fallback that day.")

    class Meta:
        ordering = ("-day",)
        constraints = [models.UniqueConstraint(fields=["user", "day"], name="fallbackspend_user_day")]

    def __str__(self) -> str:
        return f"fallback spend of {self.user} on {self.day}"
