"""Dashboard pages that belong to no single app (the home page)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from credits.selectors import billing_account_for


@login_required
def home(request: HttpRequest) -> HttpResponse:
    account = billing_account_for(user=request.user)  # type: ignore[arg-type]
    return render(request, "dashboard/home.html", {"account": account})
