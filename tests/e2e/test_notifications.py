"""Notifications in a real browser: the unread count in the menu, the list, "Mark all read", and
the email settings page (one box per kind)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from notifications.models import EmailOptOut, Kind
from notifications.services import notification_send

try:
    from playwright.sync_api import expect
except ImportError:  # the conftest skips these tests (or fails them, with NIYRA_REQUIRE_BROWSER=1)
    expect = None

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_the_notifications_list_and_email_settings(
    open_tab: Callable[[], Any], make_customer: Callable[..., Any]
) -> None:
    user = make_customer(plan="pro", credits_mc=50_000)
    notification_send(
        user_id=user.pk,
        kind=Kind.KEY_PROBLEM,
        event_key="e2e:1",
        title="Your OpenAI key is rate limited",
        body="Your vendor limit was hit. Wait or upgrade your tier with the provider.",
        link="/settings/byok/",
    )
    notification_send(
        user_id=user.pk,
        kind=Kind.KEY_RECOVERED,
        event_key="e2e:2",
        title="Your OpenAI key works again",
        body="Niyra routes your OpenAI calls through your key again.",
        link="/settings/byok/",
    )
    tab = open_tab()
    page = tab.page
    tab.login(user.email)

    expect(page.get_by_test_id("unread-count")).to_have_text("2")
    page.get_by_role("link", name="Notifications").click()
    items = page.get_by_test_id("notifications").locator("li")
    expect(items).to_have_count(2)
    expect(items.first).to_contain_text("Your OpenAI key works again")  # newest first
    tab.shot("notifications")

    page.get_by_role("button", name="Mark all read").click()
    expect(page.get_by_test_id("unread-count")).to_have_count(0)
    expect(page.locator(".notification.unread")).to_have_count(0)

    page.get_by_role("link", name="Email settings").click()
    page.get_by_label("A provider key works again").uncheck()
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_contain_text("Saved")
    expect(page.get_by_label("A provider key works again")).not_to_be_checked()
    expect(page.get_by_label("A provider key stopped working")).to_be_checked()
    tab.shot("email-settings")
    assert list(EmailOptOut.objects.filter(user=user).values_list("kind", flat=True)) == [Kind.KEY_RECOVERED]
