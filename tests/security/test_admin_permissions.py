"""The admin, role by role, over every admin URL and every admin action (enumerated from the
admin site, so a new ModelAdmin or admin URL fails these tests until it is given expectations).

tests/accounts/test_admin_support.py walks through what Support does; this file checks the
whole surface:

* signed out, or signed in without staff status: every admin page sends to the admin sign-in;
* staff without the Support group (or any permission): 403 on every model page and every action,
  404 on the app pages, an empty index; nothing changes;
* Support: exactly the model pages its view permissions open, view-only; exactly the actions
  accounts.support lists (no `delete_selected` anywhere, so no ledger or audit row can go);
  no add, change, delete or password page; no page it can open shows a ciphertext, a key, a
  token, a token hash or a password hash;
* staff with one permission (view billing accounts) cannot run the actions that need another.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.core.cache import cache
from django.db.models import Model
from django.test import Client, RequestFactory
from django.urls import reverse

from accounts.models import ApiToken, AuditEvent, User
from accounts.services import api_token_create
from accounts.support import SUPPORT_PERMISSIONS, support_group_sync
from byok.models import ProviderKey
from byok.services import provider_key_save
from connections.models import OAuthAuthorizationRequest, OAuthConnection
from core.crypto import get_keyring
from credits.models import BillingAccount, CreditHold, LedgerEntry
from credits.services.holds import credit_hold
from credits.services.ledger import credit_charge
from notifications.models import Kind
from notifications.services import notification_send
from sandbox import SandboxServer, anthropic_key
from tests.security.test_idor import (
    Route,
    all_routes,
    assert_unchanged,
    connect,
    consent,
    make_pro,
    sandbox_integration,
    snapshot,
)

pytestmark = pytest.mark.django_db

MODEL_VIEWS = ("changelist", "add", "history", "delete", "change")

# What Support may run, per model (accounts.support); every other model: nothing.
SUPPORT_ACTIONS: dict[str, set[str]] = {
    "credits.billingaccount": {"grant_credits", "adjust_credits", "change_plan", "grant_apex", "revoke_apex"},
    "credits.ledgerentry": {"export_csv"},
    "byok.providerkey": {"disconnect"},
    "connections.oauthconnection": {"refresh_now"},
}


@dataclass
class Site:
    customer: User
    support: User
    staff: User  # staff, no group, no permission
    user: User  # not staff
    secrets: list[str]  # what no admin page may show
    objects: dict[str, Model]  # one object per registered model


@pytest.fixture
def site(make_user: Callable[..., Any], settings: Any, sandbox: SandboxServer) -> Iterator[Site]:
    sandbox_integration(settings, sandbox)
    cache.clear()
    customer = make_pro(make_user, "customer@example.com", 2_000_000)
    key = anthropic_key()
    provider_key_save(user=customer, provider="anthropic", key=key)
    connection = connect(customer)
    consent(customer)  # a pending connect request (its PKCE verifier is encrypted too)
    issued = api_token_create(user=customer, name="customer-cli")
    credit_charge(user=customer, category="tool_call", units=2, idempotency_key="admin-charge")
    credit_hold(user=customer, amount=500, idempotency_key="admin-hold")
    support: User = make_user("support@niyra.ai", is_staff=True)
    support.groups.add(support_group_sync())

    keyring = get_keyring()
    connection.refresh_from_db()
    secrets = [
        key,
        key[-12:],
        issued.plaintext,
        issued.token.token_hash,
        customer.password,
        support.password,
        keyring.decrypt(connection.access_token_ciphertext, purpose=connection.access_token_purpose),
    ]
    for row in (
        *ProviderKey.objects.values_list("ciphertext", flat=True),
        *OAuthConnection.objects.values_list("access_token_ciphertext", flat=True),
        *OAuthConnection.objects.values_list("refresh_token_ciphertext", flat=True),
        *OAuthAuthorizationRequest.objects.values_list("code_verifier_ciphertext", flat=True),
    ):
        if row:
            sealed = bytes(row)
            secrets += [sealed.hex(), base64.b64encode(sealed).decode(), repr(sealed)[2:40]]
    yield Site(
        customer=customer,
        support=support,
        staff=make_user("intern@niyra.ai", is_staff=True),
        user=make_user("someone@example.com"),
        secrets=secrets,
        objects={
            "accounts.user": customer,
            "accounts.apitoken": issued.token,
            "accounts.auditevent": AuditEvent.objects.filter(subject=customer).order_by("pk")[0],
            "auth.group": Group.objects.get(name="Support"),
            "byok.providerkey": ProviderKey.objects.get(user=customer),
            "connections.oauthconnection": connection,
            "credits.billingaccount": BillingAccount.objects.get(user=customer),
            "credits.ledgerentry": LedgerEntry.objects.filter(account__user=customer).order_by("pk")[0],
            "credits.credithold": CreditHold.objects.get(account__user=customer),
            "notifications.notification": notification_send(
                user_id=customer.pk,
                kind=Kind.KEY_PROBLEM,
                event_key="admin",
                title="Key rejected",
                body="Paste it again.",
            ),
        },
    )
    cache.clear()


def _everything(site: Site) -> dict[str, list[dict[str, Any]]]:
    rows = snapshot(site.customer, site.support, site.staff, site.user)
    rows["memberships"] = [dict(r) for r in User.groups.through.objects.order_by("pk").values()]
    rows["group_permissions"] = [dict(r) for r in Group.permissions.through.objects.order_by("pk").values()]
    rows["user_permissions"] = [dict(r) for r in User.user_permissions.through.objects.order_by("pk").values()]
    return rows


def _client(user: User | None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def _admin_routes() -> list[Route]:
    return [r for r in all_routes() if r.is_admin and r.name]


def _model_urls() -> dict[str, tuple[str, str]]:
    """URL name -> (model label, view) for the pages of every registered ModelAdmin."""
    return {
        f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}": (model._meta.label_lower, view)
        for model in admin.site._registry
        for view in MODEL_VIEWS
    }


def _model_pages(site: Site) -> list[tuple[str, str, str]]:
    """(model label, view, url) for every model page of every registered ModelAdmin."""
    pages = []
    for route in _admin_routes():
        if route.name not in _model_urls():
            continue
        label, view = _model_urls()[route.name]
        kwargs = {"object_id": site.objects[label].pk} if "object_id" in route.params else {}
        pages.append((label, view, reverse(route.name, kwargs=kwargs)))
    return pages


def _other_pages(site: Site) -> dict[str, str]:
    """Every admin URL that is not a model page."""
    user_type = ContentType.objects.get_for_model(User)
    return {
        "admin:index": reverse("admin:index"),
        "admin:login": reverse("admin:login"),
        "admin:logout": reverse("admin:logout"),
        "admin:password_change": reverse("admin:password_change"),
        "admin:password_change_done": reverse("admin:password_change_done"),
        "admin:jsi18n": reverse("admin:jsi18n"),
        "admin:autocomplete": reverse("admin:autocomplete")
        + "?app_label=credits&model_name=billingaccount&field_name=user&term=customer",
        "admin:view_on_site": reverse("admin:view_on_site", args=[user_type.pk, site.customer.pk]),
        "admin:app_list": reverse("admin:app_list", kwargs={"app_label": "credits"}),
        "admin:auth_user_password_change": reverse("admin:auth_user_password_change", args=[site.customer.pk]),
    }


def _actions() -> list[tuple[str, str, str]]:
    """(model label, action name, changelist URL) for every action of every ModelAdmin."""
    found = []
    for model, model_admin in admin.site._registry.items():
        url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
        names = {a if isinstance(a, str) else a.__name__ for a in model_admin.actions or ()}
        names |= {name for name, _ in admin.site.actions}  # delete_selected, site-wide
        found += [(model._meta.label_lower, name, url) for name in sorted(names)]
    return found


def _post_action(client: Client, url: str, action: str, pk: Any) -> Any:
    form = {"apply": "1", "submission": "s", "amount": "5", "reason": "x", "plan": "alpha", "post": "yes"}
    return client.post(url, {"action": action, "_selected_action": [pk], "index": 0, **form})


def _assert_not_run(response: Any, changelist: str, what: Any) -> None:
    """Django refuses an action it doesn't offer this user: back to the list with "No action
    selected." when the list offers others, or the list itself when it offers none."""
    if response.status_code == 302:
        assert response["Location"] == changelist, what
    else:
        assert response.status_code == 200, what
        assert response.templates[0].name == "admin/change_list.html", what


def test_every_admin_model_and_url_has_expectations(site: Site) -> None:
    registered = {model._meta.label_lower for model in admin.site._registry}
    assert registered == set(site.objects), "a new ModelAdmin: give it an object here and expectations below"
    assert set(SUPPORT_ACTIONS) <= registered
    assert set(_model_urls()) <= {r.name for r in _admin_routes()}
    other = {r.name for r in _admin_routes() if r.name not in _model_urls()}
    assert other == set(_other_pages(site)), "a new admin URL: say who may open it"


# --- signed out or not staff ----------------------------------------------------------------------


@pytest.mark.parametrize("who", ["anonymous", "not staff"])
def test_without_staff_status_every_admin_page_and_action_sends_to_sign_in(site: Site, who: str) -> None:
    client = _client(None if who == "anonymous" else site.user)
    before = _everything(site)
    pages = [url for _, _, url in _model_pages(site)] + [
        url for name, url in _other_pages(site).items() if name not in {"admin:login", "admin:jsi18n", "admin:logout"}
    ]

    for url in pages:
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/"), url
    for label, action, url in _actions():
        response = _post_action(client, url, action, site.objects[label].pk)
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/"), (label, action)
    for _, view, url in _model_pages(site):
        if view in ("change", "delete", "add"):
            assert client.post(url, {"is_superuser": "on", "post": "yes"}).status_code == 302, url

    assert_unchanged(before, _everything(site), who)


# --- staff without the group ----------------------------------------------------------------------


def test_staff_without_permissions_get_403_on_every_model_page_and_action(site: Site) -> None:
    client = _client(site.staff)
    before = _everything(site)

    for _label, view, url in _model_pages(site):
        assert client.get(url).status_code == 403, url
        if view in ("change", "delete", "add"):
            assert client.post(url, {"is_superuser": "on", "post": "yes", "amount": "1"}).status_code == 403, url
    for label, action, url in _actions():
        assert _post_action(client, url, action, site.objects[label].pk).status_code == 403, (label, action)

    assert_unchanged(before, _everything(site), "staff without permissions")


def test_staff_without_permissions_see_no_app_and_no_one_elses_password_page(site: Site) -> None:
    client = _client(site.staff)
    pages = _other_pages(site)

    index = client.get(pages["admin:index"])
    assert index.status_code == 200 and not index.context["app_list"]
    for app_label in ("accounts", "auth", "byok", "credits"):
        assert client.get(reverse("admin:app_list", kwargs={"app_label": app_label})).status_code == 404
    assert client.get(pages["admin:auth_user_password_change"]).status_code == 403
    assert client.get(pages["admin:autocomplete"]).status_code == 403
    assert client.get(pages["admin:view_on_site"]).status_code == 404
    assert client.get(pages["admin:password_change"]).status_code == 200  # their own password only


# --- Support: exactly its pages and actions -------------------------------------------------------


def _support_views() -> set[str]:
    return {f"{app}.{model}" for app, model, codename in SUPPORT_PERMISSIONS if codename.startswith("view_")}


def test_support_opens_exactly_the_pages_its_view_permissions_allow_and_sees_no_secret(site: Site) -> None:
    client = _client(site.support)
    before = _everything(site)
    viewable = _support_views()
    assert "accounts.apitoken" not in viewable and "auth.group" not in viewable
    shown: list[Any] = []

    for label, view, url in _model_pages(site):
        allowed = label in viewable and view in ("changelist", "change", "history")
        response = client.get(url)
        assert response.status_code == (200 if allowed else 403), f"{url}: {response.status_code}"
        if view in ("change", "delete", "add"):
            post = client.post(url, {"is_superuser": "on", "post": "yes", "balance": "999999", "amount": "1"})
            assert post.status_code == 403, f"POST {url}: {post.status_code}"
        if allowed and view == "change":
            assert 'name="_save"' not in response.content.decode(), f"{url} is editable"
        if allowed:
            shown.append(response)
        if allowed and view == "changelist":
            shown.append(client.get(url, {"q": site.customer.email}))
    export = _post_action(
        client, reverse("admin:credits_ledgerentry_changelist"), "export_csv", site.objects["credits.ledgerentry"].pk
    )
    assert export.status_code == 200 and export["Content-Type"] == "text/csv"
    shown.append(export)

    for response in shown:
        text = response.content.decode(errors="replace")
        leaked = [secret for secret in site.secrets if secret in text]
        assert not leaked, f"{response.request['PATH_INFO']} shows {leaked}"
    assert_unchanged(before, _everything(site), "support browsing")


def test_support_has_exactly_the_support_actions(site: Site) -> None:
    request = RequestFactory().get("/admin/")
    request.user = site.support

    for model, model_admin in admin.site._registry.items():
        label = model._meta.label_lower
        available = set(model_admin.get_actions(request)) if model_admin.has_view_permission(request) else set()
        assert available == SUPPORT_ACTIONS.get(label, set()), label


def test_support_cannot_run_any_other_action_and_nothing_changes(site: Site) -> None:
    client = _client(site.support)
    before = _everything(site)

    for label, action, url in _actions():
        if action in SUPPORT_ACTIONS.get(label, set()):
            continue
        response = _post_action(client, url, action, site.objects[label].pk)
        if label in _support_views():
            _assert_not_run(response, url, (label, action))
        else:
            assert response.status_code == 403, (label, action)

    assert_unchanged(before, _everything(site), "support running other actions")
    assert LedgerEntry.objects.filter(account__user=site.customer).count() == 2  # no delete_selected


def test_support_cannot_grant_itself_more(site: Site) -> None:
    client = _client(site.support)
    group = Group.objects.get(name="Support")
    before = _everything(site)
    everything = list(Permission.objects.values_list("pk", flat=True))

    responses = [
        client.post(reverse("admin:accounts_user_change", args=[site.support.pk]), {"is_superuser": "on"}),
        client.post(
            reverse("admin:auth_group_change", args=[group.pk]), {"name": "Support", "permissions": everything}
        ),
        client.post(reverse("admin:auth_group_add"), {"name": "Root", "permissions": everything}),
        client.post(reverse("admin:auth_user_password_change", args=[site.customer.pk]), {"password1": "x" * 20}),
    ]

    assert [r.status_code for r in responses] == [403] * 4
    assert_unchanged(before, _everything(site), "support escalating")


# --- one permission is not another --------------------------------------------------------------------


def test_viewing_accounts_does_not_allow_their_actions(site: Site, make_user: Callable[..., Any]) -> None:
    viewer: User = make_user("viewer@niyra.ai", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_billingaccount"))
    client = _client(viewer)
    account = site.objects["credits.billingaccount"]
    before = _everything(site)

    assert client.get(reverse("admin:credits_billingaccount_changelist")).status_code == 200
    url = reverse("admin:credits_billingaccount_changelist")
    for action in sorted(SUPPORT_ACTIONS["credits.billingaccount"]):
        _assert_not_run(_post_action(client, url, action, account.pk), url, action)

    assert_unchanged(before, _everything(site), "viewer running actions")
    assert not AuditEvent.objects.filter(actor=viewer).exists()
    assert not ApiToken.objects.filter(user=viewer).exists()
