"""Routing fixtures: users on each plan with credits, keys stored as validated, the sandbox."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvicorn
from django.core.asgi import get_asgi_application
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.services import api_token_create
from byok.keytext import key_fingerprint, key_hint
from byok.models import KeyStatus, ProviderKey, provider_key_purpose
from core.crypto import get_keyring
from credits.models import BillingAccount
from credits.services.accounts import billing_account_ensure
from credits.services.ledger import credit_grant
from routing.gateway.asgi import asgi_application
from sandbox import SandboxServer

STARTING_CREDITS_MC = 10_000_000


@pytest.fixture(autouse=True)
def _providers_are_the_sandbox(sandbox_providers: SandboxServer) -> SandboxServer:
    return sandbox_providers


@pytest.fixture
def make_account(make_user: Callable[..., Any]) -> Callable[..., Any]:
    def make(
        plan: str = "pro", credits_mc: int = STARTING_CREDITS_MC, apex: bool = False, email: str | None = None
    ) -> Any:
        user = make_user(email)
        billing_account_ensure(user=user)
        BillingAccount.objects.filter(user=user).update(plan=plan, apex_enabled=apex)
        if credits_mc:
            credit_grant(user=user, amount=credits_mc, reason="test credits", idempotency_key=f"grant-{user.pk}")
        return user

    return make


@pytest.fixture
def store_key() -> Callable[..., ProviderKey]:
    """Store a key as if it had been validated earlier (a key may be revoked at the provider
    later: the sandbox decides its behaviour from the words in it)."""

    def store(user: Any, provider: str, plaintext: str, status: str = KeyStatus.VALID) -> ProviderKey:
        keyring = get_keyring()
        return ProviderKey.objects.create(
            user=user,
            provider=provider,
            ciphertext=keyring.encrypt(plaintext, purpose=provider_key_purpose(user_id=user.pk, provider=provider)),
            encryption_key_id=keyring.primary_kid,
            hint=key_hint(provider=provider, key=plaintext),
            fingerprint=key_fingerprint(plaintext),
            status=status,
            last_tested_at=timezone.now(),
        )

    return store


@pytest.fixture
def client_for() -> Callable[[Any], APIClient]:
    def make(user: Any) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_token_create(user=user, name='tests').plaintext}")
        return client

    return make


@pytest.fixture
def live_asgi(transactional_db: None) -> Iterator[str]:
    """The real ASGI app (the gateway in front of Django, as `niyra.asgi` builds it) under
    uvicorn on a free loopback port (data must be committed)."""
    app = asgi_application(get_asgi_application())
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on", log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
