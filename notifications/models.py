"""What Niyra tells a user, once per event: an in-app notification and, unless the user opted
out of its kind, one email.

A notification is recorded by the service that noticed the event, under the event's own key
(``event_key``, unique per user): the same event noticed twice — a replayed task, two workers
racing — records one row and sends one email. The text is written when the event happens, so the
list and the email say the same thing. It never carries a key, a token or a secret.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Kind(models.TextChoices):
    """Every kind of notification, in the order the preferences page lists them."""

    KEY_PROBLEM = "key_problem", "A provider key stopped working"
    KEY_RECOVERED = "key_recovered", "A provider key works again"
    CREDITS_LOW = "credits_low", "Credits running low"
    CREDITS_DEPLETED = "credits_depleted", "Credits used up"
    CREDITS_RECOVERED = "credits_recovered", "Credits topped up again"
    CONNECTION_NEEDS_REAUTH = "connection_needs_reauth", "A connection needs you to reconnect"
    CONNECTION_RECOVERED = "connection_recovered", "A connection works again"


class EmailStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENT = "sent", "Sent"
    OPTED_OUT = "opted_out", "Not sent (opted out)"
    FAILED = "failed", "Failed"


class Notification(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notifications")
    kind = models.CharField(max_length=32, choices=Kind.choices)
    event_key = models.CharField(
        max_length=200, help_text="The event this reports, unique per user: a replay records nothing new."
    )
    title = models.CharField(max_length=200)
    body = models.TextField()
    link = models.CharField(max_length=200, blank=True, help_text="A dashboard path where the user can act on it.")
    created_at = models.DateTimeField(auto_now_add=True)
    read_at = models.DateTimeField(null=True, blank=True)
    email_status = models.CharField(max_length=16, choices=EmailStatus.choices, default=EmailStatus.PENDING)
    emailed_at = models.DateTimeField(null=True, blank=True)
    email_attempts = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ("-created_at", "-id")
        constraints = [
            models.UniqueConstraint(fields=["user", "event_key"], name="notification_event_once_per_user"),
            models.CheckConstraint(condition=models.Q(kind__in=Kind.values), name="notification_kind_known"),
        ]
        indexes = [
            models.Index(fields=["user", "-created_at"], name="notification_user_recent"),
            models.Index(
                fields=["created_at"],
                name="notification_email_pending",
                condition=models.Q(email_status=EmailStatus.PENDING),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} for {self.user_id}: {self.title}"


class EmailOptOut(models.Model):
    """A user's "don't email me about this" for one kind. The in-app list still shows it."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="email_opt_outs")
    kind = models.CharField(max_length=32, choices=Kind.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("user_id", "kind")
        constraints = [
            models.UniqueConstraint(fields=["user", "kind"], name="email_opt_out_once_per_kind"),
            models.CheckConstraint(condition=models.Q(kind__in=Kind.values), name="email_opt_out_kind_known"),
        ]

    def __str__(self) -> str:
        return f"{self.user_id} opted out of {self.kind}"
