"""Low-balance alerts: the user's thresholds, and turning the crossings the database recorded
into notifications.

The crossings themselves are not found here: the trigger `credits_balance_alert` (migration
0005) inserts one `BalanceAlert` row per crossing in the transaction that moved the balance,
whichever statement did (services, the gateway's async settle, admin grants), so nothing on the
money path waits for this module. The beat task sends them (`balance_alerts_dispatch`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from django.db import transaction
from django.utils import timezone

from accounts.models import User
from accounts.services import audit_event_record
from credits.models import MAX_ALERT_THRESHOLDS, AlertKind, BalanceAlert, BillingAccount
from credits.money import credits_text
from credits.services.accounts import billing_account_ensure
from credits.services.common import invalid
from notifications.models import Kind
from notifications.services import notification_send

logger = logging.getLogger(__name__)

MAX_ALERT_THRESHOLD = 1_000_000_000  # one million credits, in millicredits
CREDITS_LINK = "/credits/"
DISPATCH_BATCH = 500

_KINDS = {
    AlertKind.LOW: Kind.CREDITS_LOW,
    AlertKind.DEPLETED: Kind.CREDITS_DEPLETED,
    AlertKind.RECOVERED: Kind.CREDITS_RECOVERED,
}


def checked_alert_thresholds(value: object) -> list[int]:
    """Distinct whole millicredits from 1 mc to a million credits, at most MAX_ALERT_THRESHOLDS of
    them; highest first (the order the trigger and the page read them in)."""
    field = "thresholds"
    if not isinstance(value, list | tuple):
        raise invalid(field, "A list of amounts in millicredits (1 credit = 1,000).")
    if len(value) > MAX_ALERT_THRESHOLDS:
        raise invalid(field, f"At most {MAX_ALERT_THRESHOLDS} thresholds.")
    for amount in value:
        if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= MAX_ALERT_THRESHOLD:
            raise invalid(
                field,
                f"Each threshold is a whole number of millicredits from 1 to {MAX_ALERT_THRESHOLD:,} "
                f"(0.001 to {credits_text(MAX_ALERT_THRESHOLD, compact=True)} credits).",
            )
    if len(set(value)) != len(value):
        raise invalid(field, "Each threshold once: two are the same amount.")
    return sorted(value, reverse=True)


@transaction.atomic
def credit_alert_thresholds_set(*, user: User, thresholds: Sequence[int], actor: User | None = None) -> BillingAccount:
    """Set the amounts below which the user is told their credits are low (an empty list: only
    "used up"). The alert band follows at once, quietly: a threshold set above today's balance
    shows the banner but sends nothing (no balance crossed it). Audited when it changes."""
    wanted = checked_alert_thresholds(list(thresholds) if isinstance(thresholds, tuple) else thresholds)
    billing_account_ensure(user=user)
    account = BillingAccount.objects.select_for_update().get(user_id=user.pk)
    previous = list(account.alert_thresholds)
    if previous != wanted:
        account.alert_thresholds = wanted
        account.save(update_fields=["alert_thresholds", "updated_at"])
        account.refresh_from_db(fields=["alert_band", "alert_warned"])  # set by the trigger
        audit_event_record(
            actor=actor or user,
            subject=user,
            event="credits.alert_thresholds_changed",
            details={"from": previous, "to": wanted},
        )
    return account


def _alert_text(alert: BalanceAlert) -> tuple[str, str]:
    balance = credits_text(alert.balance)
    if alert.kind == AlertKind.DEPLETED:
        return (
            "Your credits are used up",
            "Your credits are used up — hosted LLM calls stop; calls on your own keys continue. "
            "Top up to use hosted models again; the Credits page shows where your credits went.",
        )
    if alert.kind == AlertKind.RECOVERED:
        return (
            "Your credits are topped up again",
            f"Your balance is {balance} credits, above your alert thresholds again: hosted LLM calls run as usual.",
        )
    threshold = credits_text(alert.band_to or 0, compact=True)
    return (
        f"Your credits are below {threshold}",
        f"Your balance is {balance} credits, below the {threshold} credits you asked to hear about. "
        "Top up, or see where your credits go (per day and per model) on the Credits page.",
    )


def balance_alerts_dispatch(*, limit: int = DISPATCH_BATCH) -> int:
    """Notify the users of up to ``limit`` crossings not yet sent, oldest first; returns how many.

    Each alert row is locked (skip_locked: two workers split the rows, never share one) and marked
    dispatched in the transaction that records its notification, whose event key is the row's id:
    a replayed or redelivered task sends nothing more. Only the alert rows are locked, never the
    account (the one hot row per user).
    """
    with transaction.atomic():
        alerts = list(
            BalanceAlert.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("account")
            .filter(dispatched_at__isnull=True)
            .order_by("id")[:limit]
        )
        now = timezone.now()
        for alert in alerts:
            title, body = _alert_text(alert)
            notification_send(
                user_id=alert.account.user_id,
                kind=_KINDS[AlertKind(alert.kind)],
                event_key=f"credits:{alert.account_id}:alert:{alert.pk}",
                title=title,
                body=body,
                link=CREDITS_LINK,
            )
            alert.dispatched_at = now
        BalanceAlert.objects.bulk_update(alerts, ["dispatched_at"])
    if alerts:
        logger.info("credits.balance_alerts_dispatched count=%s", len(alerts))
    return len(alerts)
