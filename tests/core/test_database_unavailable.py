"""A request that can't reach PostgreSQL (down, restarting, failing over, no pooled connection in
time) is a 503 `database_unavailable` with Retry-After — JSON on the API, a plain page on the
dashboard — not a 500; a query's own failure stays a 500. (The real outage, with the production
web command and a server that is stopped and started: tests/faults/test_postgres_restart.py.)"""

from __future__ import annotations

import psycopg
import pytest
from django import db
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from django.urls import path
from psycopg import errors as pg_errors
from psycopg_pool import PoolTimeout
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core import errors
from core.dbpool import database_unreachable
from tests.core.test_errors import assert_error

pytestmark = pytest.mark.django_db


def wrapped(cause: Exception) -> db.OperationalError:
    """`cause` as Django raises it (its DatabaseErrorWrapper chains psycopg's error)."""
    error = db.OperationalError(str(cause))
    error.__cause__ = cause
    return error


REFUSED = psycopg.OperationalError('connection failed: connection to server at "10.0.0.1", port 5432 failed')
STATEMENT_TIMEOUT = pg_errors.QueryCanceled("canceling statement due to statement timeout")


@pytest.mark.parametrize(
    ("exc", "unreachable"),
    [
        (REFUSED, True),
        (wrapped(REFUSED), True),
        (wrapped(PoolTimeout("couldn't get a connection after 5.00 sec")), True),
        (wrapped(pg_errors.AdminShutdown("terminating connection due to administrator command")), True),
        (wrapped(pg_errors.CannotConnectNow("the database system is starting up")), True),
        (wrapped(psycopg.InterfaceError("the connection is closed")), True),
        (wrapped(STATEMENT_TIMEOUT), False),
        (wrapped(pg_errors.DeadlockDetected("deadlock detected")), False),
        (db.IntegrityError("duplicate key"), False),
        (RuntimeError("boom"), False),
    ],
)
def test_what_counts_as_the_database_being_unreachable(exc: Exception, unreachable: bool) -> None:
    assert database_unreachable(exc) is unreachable


class UnreachableApi(APIView):
    permission_classes = ()

    def get(self, request: Request) -> Response:
        raise wrapped(REFUSED)


class StatementTimeoutApi(APIView):
    permission_classes = ()

    def get(self, request: Request) -> Response:
        raise wrapped(STATEMENT_TIMEOUT)


def unreachable_view(request: HttpRequest) -> HttpResponse:
    raise wrapped(PoolTimeout("couldn't get a connection after 5.00 sec"))


urlpatterns = [
    path("api/drf-unreachable", UnreachableApi.as_view()),
    path("api/drf-statement-timeout", StatementTimeoutApi.as_view()),
    path("api/plain-unreachable", unreachable_view),
    path("dashboard-unreachable", unreachable_view),
]
handler500 = "core.errors.handler500"


def assert_unavailable(response: HttpResponse) -> None:
    assert response["Retry-After"] == str(errors.DATABASE_RETRY_AFTER_SECONDS)
    assert response["Cache-Control"] == "no-store"


@override_settings(ROOT_URLCONF=__name__)
def test_the_api_says_503_database_unavailable_with_retry_after() -> None:
    client = Client(raise_request_exception=False)

    drf = client.get("/api/drf-unreachable")
    plain = client.get("/api/plain-unreachable")

    for response in (drf, plain):
        assert_error(response, 503, "database_unavailable")
        assert_unavailable(response)


@override_settings(ROOT_URLCONF=__name__)
def test_the_dashboard_says_503_with_a_plain_page() -> None:
    response = Client(raise_request_exception=False).get("/dashboard-unreachable")

    assert response.status_code == 503
    assert response["Content-Type"].startswith("text/html")
    assert "Back in a moment" in response.content.decode()
    assert_unavailable(response)


@override_settings(ROOT_URLCONF=__name__)
def test_a_query_that_fails_on_its_own_is_still_a_500() -> None:
    response = Client(raise_request_exception=False).get("/api/drf-statement-timeout")

    assert_error(response, 500, "internal_error")
