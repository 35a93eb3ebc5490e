"""REST: balance, ledger, usage breakdown (users) and the metering endpoint (service tokens).

Amounts are integers in millicredits (1 credit = 1,000 mc). Serializers check shape only; the
rules (positive units, known categories, key length, enough credits) live in the services.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import permissions, serializers, status
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.auth import request_user
from accounts.models import ApiToken, TokenKind, User
from core import errors
from core.fields import QueryParamsSerializer, StrictIntegerField
from credits.models import MAX_ALERT_THRESHOLDS, USAGE_CATEGORIES, Category
from credits.selectors import billing_account_for, credit_balance, ledger_entries_for, usage_breakdown
from credits.services.alerts import MAX_ALERT_THRESHOLD, credit_alert_thresholds_set
from credits.services.ledger import credit_charge

DEFAULT_USAGE_PERIOD = timedelta(days=30)
MAX_USAGE_PERIOD = timedelta(days=366)


class IsServiceToken(permissions.BasePermission):
    """Only a Niyra subsystem's service token; a user's own token gets 403."""

    message = "Usage events need a service token."

    def has_permission(self, request: Request, view: Any) -> bool:
        token = request.auth
        return isinstance(token, ApiToken) and token.kind == TokenKind.SERVICE


class LedgerEntryOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    category = serializers.CharField()
    amount = serializers.IntegerField(help_text="Signed millicredits.")
    balance_after = serializers.IntegerField(help_text="Millicredits.")
    description = serializers.CharField()
    idempotency_key = serializers.CharField()
    model = serializers.CharField(
        help_text="The model called (e.g. claude-opus-4-6); empty for entries that are not model calls."
    )
    price_key = serializers.CharField(
        help_text="The price book's key the call was priced by (e.g. claude-opus-4, shared by Opus 4.6 to 4.8)."
    )
    units = serializers.IntegerField(allow_null=True)
    input_tokens = serializers.IntegerField(allow_null=True)
    output_tokens = serializers.IntegerField(allow_null=True)
    cached_tokens = serializers.IntegerField(allow_null=True)
    key_source = serializers.CharField()
    hold_id = serializers.IntegerField(allow_null=True)
    flagged = serializers.BooleanField()
    details = serializers.JSONField()


class BalanceApi(APIView):
    class OutputSerializer(serializers.Serializer):
        plan = serializers.CharField()
        apex_enabled = serializers.BooleanField()
        available = serializers.IntegerField(help_text="Millicredits you can spend now: balance - reserved.")
        reserved = serializers.IntegerField(help_text="Millicredits held for calls in progress.")
        balance = serializers.IntegerField(help_text="Millicredits.")
        unit = serializers.CharField()

    @extend_schema(responses=OutputSerializer)
    def get(self, request: Request) -> Response:
        balance = credit_balance(user=request_user(request))
        data = {
            "plan": balance.plan,
            "apex_enabled": balance.apex_enabled,
            "available": balance.available,
            "reserved": balance.reserved,
            "balance": balance.balance,
            "unit": "millicredit",
        }
        return Response(self.OutputSerializer(data).data)


class LedgerPagination(CursorPagination):
    # The order the balance moved in (`ledger_entries_for`); unique, so the cursor is stable.
    ordering = ("-id",)
    page_size = 50
    page_size_query_param = "limit"
    max_page_size = 200


class LedgerPageSerializer(serializers.Serializer):
    next = serializers.URLField(allow_null=True, help_text="The next page (cursor link), or null.")
    previous = serializers.URLField(allow_null=True)
    results = LedgerEntryOutputSerializer(many=True)


class LedgerListApi(APIView):
    class FilterSerializer(QueryParamsSerializer):
        category = serializers.ChoiceField(choices=Category.choices, required=False)
        since = serializers.DateTimeField(required=False, help_text="Inclusive.")
        until = serializers.DateTimeField(required=False, help_text="Exclusive.")
        # Read by LedgerPagination; validated here so a bad value is a 400, not the default page.
        cursor = serializers.CharField(required=False, help_text="From a `next` or `previous` link.")
        limit = serializers.IntegerField(
            required=False, min_value=1, max_value=LedgerPagination.max_page_size, help_text="Page size (default 50)."
        )

    @extend_schema(parameters=[FilterSerializer], responses=LedgerPageSerializer)
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        criteria = {k: v for k, v in filters.validated_data.items() if k not in ("cursor", "limit")}
        entries = ledger_entries_for(user=request_user(request), **criteria)
        paginator = LedgerPagination()
        page = paginator.paginate_queryset(entries, request, view=self)
        return paginator.get_paginated_response(LedgerEntryOutputSerializer(page, many=True).data)


class UsageBreakdownApi(APIView):
    class FilterSerializer(QueryParamsSerializer):
        start = serializers.DateTimeField(required=False, help_text="Inclusive; default 30 days before end.")
        end = serializers.DateTimeField(required=False, help_text="Exclusive; default now.")

    class VolumeSerializer(serializers.Serializer):
        calls = serializers.IntegerField()
        input_tokens = serializers.IntegerField()
        output_tokens = serializers.IntegerField()
        cached_tokens = serializers.IntegerField()
        credits = serializers.IntegerField(help_text="Millicredits (always 0 for BYOK).")

    class OutputSerializer(serializers.Serializer):
        start = serializers.DateTimeField()
        end = serializers.DateTimeField()
        by_category = serializers.DictField(child=serializers.IntegerField(), help_text="Millicredits spent.")
        total = serializers.IntegerField(help_text="Millicredits spent.")
        llm_share = serializers.DecimalField(max_digits=5, decimal_places=4, help_text="LLM part of the total, 0 to 1.")
        hosted_llm = serializers.DictField()
        byok_llm = serializers.DictField()

    @extend_schema(parameters=[FilterSerializer], responses=OutputSerializer)
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        end = filters.validated_data.get("end") or timezone.now()
        start = filters.validated_data.get("start") or end - DEFAULT_USAGE_PERIOD
        if not start < end or end - start > MAX_USAGE_PERIOD:
            # Each date is well formed; together they are not a period this report covers.
            raise errors.NiyraError(errors.INVALID_PERIOD, detail={"start": start, "end": end})
        usage = usage_breakdown(user=request_user(request), start=start, end=end)
        data = {
            "start": usage.start,
            "end": usage.end,
            "by_category": usage.by_category,
            "total": usage.total,
            "llm_share": usage.llm_share,
            "hosted_llm": self.VolumeSerializer(usage.hosted_llm).data,
            "byok_llm": self.VolumeSerializer(usage.byok_llm).data,
        }
        return Response(self.OutputSerializer(data).data)


class AlertThresholdsOutputSerializer(serializers.Serializer):
    thresholds = serializers.ListField(
        child=serializers.IntegerField(),
        help_text="Millicredits, highest first: you are notified when your balance falls below each.",
    )
    below = serializers.IntegerField(
        allow_null=True,
        help_text="Null while the balance is above every threshold; else the lowest threshold it is below "
        "(millicredits), 0 when the credits are used up.",
    )


def _alerts_data(thresholds: list[int], band: int | None) -> dict[str, Any]:
    return AlertThresholdsOutputSerializer({"thresholds": thresholds, "below": band}).data


@extend_schema_field(
    {
        "type": "array",
        "items": {"type": "integer", "minimum": 1, "maximum": MAX_ALERT_THRESHOLD},
        "maxItems": MAX_ALERT_THRESHOLDS,
        "uniqueItems": True,
    }
)
class AlertThresholdsField(serializers.ListField):
    """The schema states the rules; the service (`checked_alert_thresholds`) enforces them."""


class AlertThresholdsApi(APIView):
    """Low-balance alerts: read or replace the thresholds (one notification per crossing, plus
    "used up" and "recovered")."""

    class InputSerializer(serializers.Serializer):
        thresholds = AlertThresholdsField(
            child=StrictIntegerField(),
            allow_empty=True,
            help_text="Millicredits (1 credit = 1,000), at most 5, each once; [] to hear only when credits run out.",
        )

    @extend_schema(responses=AlertThresholdsOutputSerializer)
    def get(self, request: Request) -> Response:
        account = billing_account_for(user=request_user(request))
        return Response(_alerts_data(list(account.alert_thresholds), account.alert_band))

    @extend_schema(request=InputSerializer, responses=AlertThresholdsOutputSerializer)
    def put(self, request: Request) -> Response:
        payload = self.InputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        account = credit_alert_thresholds_set(
            user=request_user(request), thresholds=payload.validated_data["thresholds"]
        )
        return Response(_alerts_data(list(account.alert_thresholds), account.alert_band))


@extend_schema_field({"type": "string", "enum": [c.value for c in USAGE_CATEGORIES if c != Category.LLM]})
class MeteredCategoryField(serializers.CharField):
    """Any other text is refused by the service as unknown_category (with the list), not here."""


class UsageEventCreateApi(APIView):
    """Metering for other Niyra subsystems: charge one usage event to a user."""

    permission_classes = (IsServiceToken,)

    class InputSerializer(serializers.Serializer):
        user = serializers.CharField(help_text="The user's id or email.")
        category = MeteredCategoryField()
        units = StrictIntegerField()
        idempotency_key = serializers.CharField(trim_whitespace=False)
        details = serializers.DictField(required=False, default=dict)

    @extend_schema(request=InputSerializer, responses={201: LedgerEntryOutputSerializer})
    def post(self, request: Request) -> Response:
        payload = self.InputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        entry = credit_charge(
            user=_user_from(data["user"]),
            category=data["category"],
            units=data["units"],
            idempotency_key=data["idempotency_key"],
            details=data["details"],
        )
        return Response(LedgerEntryOutputSerializer(entry).data, status=status.HTTP_201_CREATED)


def _user_from(reference: str) -> User:
    reference = reference.strip()
    if reference.isdigit():
        user = User.objects.filter(pk=int(reference)).first()
    else:
        user = User.objects.filter(email__iexact=reference).first()
    if user is None:
        raise errors.NiyraError(errors.USER_NOT_FOUND, detail={"user": reference[:254]})
    return user


class MeApi(APIView):
    """Who am I: the signed-in user with their plan and entitlements."""

    class OutputSerializer(serializers.Serializer):
        id = serializers.IntegerField()
        email = serializers.EmailField()
        plan = serializers.CharField()
        apex_enabled = serializers.BooleanField()

    @extend_schema(responses=OutputSerializer)
    def get(self, request: Request) -> Response:
        user = request_user(request)
        account = billing_account_for(user=user)
        data = {
            "id": user.pk,
            "email": user.email,
            "plan": account.plan,
            "apex_enabled": account.apex_enabled,
        }
        return Response(self.OutputSerializer(data).data)
