"""The move of OAuth connections from byok to their own app keeps every row and ciphertext.

Given a database at the last migration before the move, with a connection (both tokens sealed
with the keyring), a connect flow in progress and the Support group as the data migration made
it; when the move is applied; then the same rows are read through the connections models, the
ciphertexts open with the same purposes, and the permissions (and the Support group's grants)
are the same rows under the app label `connections`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from accounts.models import User
from accounts.support import SUPPORT_GROUP, support_group_sync
from connections.models import OAuthAuthorizationRequest, OAuthConnection
from core.crypto import get_keyring

BEFORE = [("byok", "0003_oauth_verbose_names"), ("connections", None)]
AFTER = [("byok", "0004_oauth_models_to_connections"), ("connections", "0001_initial")]
# The columns added since the move, so that today's model can read the moved row.
SINCE = [("connections", "0003_connection_refresh_margin")]
# The Support group's permissions as the data migration that created it wrote them.
SUPPORT_PERMISSIONS_THEN = importlib.import_module("accounts.migrations.0002_support_group").SUPPORT_PERMISSIONS


def _migrate(targets: Sequence[tuple[str, str | None]]) -> Any:
    """Migrate to `targets`; the historical registry of the whole project at that point: the
    migrations applied now (going back also unapplies what depends on the targets, e.g. later
    routing migrations)."""
    MigrationExecutor(connection).migrate(targets)
    loader = MigrationExecutor(connection).loader
    return loader.project_state(list(loader.applied_migrations)).apps


@pytest.fixture
def before_the_move(transactional_db: None) -> Iterator[Any]:
    """The historical registry before the move; the database is migrated back to the end after."""
    try:
        yield _migrate(BEFORE)
    finally:
        _migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
        ContentType.objects.clear_cache()


def test_the_move_keeps_rows_ciphertexts_and_support_grants(before_the_move: Any) -> None:
    old_apps = before_the_move
    user = User.objects.create_user(email="moved@example.com", password="x")
    keyring = get_keyring()
    now = timezone.now().replace(microsecond=0)
    access = keyring.encrypt("access-token-123", purpose=f"niyra:v1:oauth_access:{user.pk}:gmail")
    refresh = keyring.encrypt("refresh-token-456", purpose=f"niyra:v1:oauth_refresh:{user.pk}:gmail")
    verifier = keyring.encrypt("verifier-789", purpose=f"niyra:v1:oauth_pkce:{user.pk}:slack:{'a' * 64}")
    old_connection = old_apps.get_model("byok", "OAuthConnection").objects.create(
        user_id=user.pk,
        integration="gmail",
        status="needs_reauth",
        access_token_ciphertext=access,
        refresh_token_ciphertext=refresh,
        encryption_key_id=keyring.primary_kid,
        scopes="mail.read mail.send",
        expires_at=now + timedelta(hours=1),
        token_issued_at=now,
        connected_at=now - timedelta(days=3),
        consecutive_failures=2,
        last_error_code="oauth_needs_reauth",
        last_error_reason="invalid_grant",
    )
    old_request = old_apps.get_model("byok", "OAuthAuthorizationRequest").objects.create(
        user_id=user.pk,
        integration="slack",
        state_hash="a" * 64,
        code_verifier_ciphertext=verifier,
        encryption_key_id=keyring.primary_kid,
        redirect_uri="http://testserver/oauth/callback/slack",
        expires_at=now + timedelta(minutes=10),
    )
    group = support_group_sync(apps=old_apps, permissions=SUPPORT_PERMISSIONS_THEN)
    old_content_type = old_apps.get_model("contenttypes", "ContentType").objects.get(
        app_label="byok", model="oauthconnection"
    )
    old_permission_ids = set(
        old_apps.get_model("auth", "Permission")
        .objects.filter(content_type=old_content_type)
        .values_list("pk", flat=True)
    )

    _migrate(AFTER)
    _migrate(SINCE)
    ContentType.objects.clear_cache()

    moved = OAuthConnection.objects.get(pk=old_connection.pk)
    assert (moved.status_changes, moved.status_changed_at) == (0, None)  # the added columns' defaults
    assert (moved.user_id, moved.integration, moved.status, moved.scopes) == (
        user.pk,
        "gmail",
        "needs_reauth",
        "mail.read mail.send",
    )
    assert (moved.expires_at, moved.token_issued_at, moved.connected_at) == (
        now + timedelta(hours=1),
        now,
        now - timedelta(days=3),
    )
    assert (moved.consecutive_failures, moved.last_error_code, moved.last_error_reason) == (
        2,
        "oauth_needs_reauth",
        "invalid_grant",
    )
    assert bytes(moved.access_token_ciphertext) == access and bytes(moved.refresh_token_ciphertext) == refresh
    assert keyring.decrypt(moved.access_token_ciphertext, purpose=moved.access_token_purpose) == "access-token-123"
    assert keyring.decrypt(moved.refresh_token_ciphertext, purpose=moved.refresh_token_purpose) == "refresh-token-456"
    pending = OAuthAuthorizationRequest.objects.get(pk=old_request.pk)
    assert keyring.decrypt(pending.code_verifier_ciphertext, purpose=pending.code_verifier_purpose) == "verifier-789"

    content_type = ContentType.objects.get_for_model(OAuthConnection)
    assert (content_type.pk, content_type.app_label) == (old_content_type.pk, "connections")
    assert not ContentType.objects.filter(app_label="byok", model__in=["oauthconnection", "oauthauthorizationrequest"])
    assert set(Permission.objects.filter(content_type=content_type).values_list("pk", flat=True)) == old_permission_ids
    granted = {
        f"{app_label}.{codename}"
        for app_label, codename in Group.objects.get(pk=group.pk).permissions.values_list(
            "content_type__app_label", "codename"
        )
    }
    assert {"connections.view_oauthconnection", "connections.change_oauthconnection"} <= granted
    assert not {name for name in granted if name.endswith("oauthconnection") and not name.startswith("connections.")}
    assert Group.objects.get(name=SUPPORT_GROUP).pk == group.pk


def test_the_move_is_reversible(before_the_move: Any) -> None:
    """Migrating back puts the content types (and so the grants) under byok again."""
    assert ContentType.objects.filter(app_label="connections").count() == 0
    _migrate(AFTER)
    ContentType.objects.clear_cache()
    assert ContentType.objects.get_for_model(OAuthConnection).app_label == "connections"
