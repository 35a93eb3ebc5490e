"""The low-balance banner on every dashboard page (templates/credits/_low_balance_banner.html):
one indexed read per page for a signed-in user, nothing for anyone else."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from credits.selectors import low_balance_for


def low_balance(request: HttpRequest) -> dict[str, Any]:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {"low_balance": low_balance_for(user=user)}
