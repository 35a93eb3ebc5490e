"""Users (email is the login), hashed API tokens and the audit trail of privileged actions."""

from __future__ import annotations

from typing import Any, ClassVar

from django.conf import settings
from django.contrib.auth.models import AbstractUser, UserManager
from django.db import models


class NiyraUserManager(UserManager["User"]):
    def create_user(  # type: ignore[override]
        self, email: str, password: str | None = None, **extra: Any
    ) -> User:
        extra.setdefault("username", email)
        return super().create_user(email=email, password=password, **extra)

    def create_superuser(  # type: ignore[override]
        self, email: str, password: str | None = None, **extra: Any
    ) -> User:
        extra.setdefault("username", email)
        return super().create_superuser(email=email, password=password, **extra)


class User(AbstractUser):
    """A Niyra user. Signs in with their email; `username` mirrors it for Django's admin."""

    email = models.EmailField(unique=True)

    USERNAME_FIELD = "email"
    REQUIRED_FIELDS: ClassVar[list[str]] = []

    objects = NiyraUserManager()  # type: ignore[misc]

    class Meta:
        ordering = ("id",)

    def __str__(self) -> str:
        return self.email


class TokenKind(models.TextChoices):
    USER = "user", "User token (acts as its owner)"
    SERVICE = "service", "Service token (other Niyra subsystems: metering)"


class ApiToken(models.Model):
    """A personal API token. Only a lookup prefix and a SHA-256 of the whole token are stored.

    Tokens are 256-bit random strings, so a fast hash is enough: there is nothing to brute-force
    (unlike passwords). The plaintext is shown once, at creation.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=16, choices=TokenKind.choices, default=TokenKind.USER)
    prefix = models.CharField(max_length=12, unique=True)
    token_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at", "-id")

    def __str__(self) -> str:
        return f"{self.name} (niy_{self.prefix}_…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class AuditEvent(models.Model):
    """Who did what to whom, when, and how it went. Never holds a secret (hints only)."""

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    subject = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_events"
    )
    event = models.CharField(max_length=64, db_index=True)
    target = models.CharField(max_length=100, blank=True)
    outcome = models.CharField(max_length=64, default="ok")
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ("-created_at", "-id")

    def __str__(self) -> str:
        return f"{self.event} {self.target} ({self.outcome})"
