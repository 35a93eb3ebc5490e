"""REST: my notifications (newest first), marking them read, and which kinds are emailed.
One small view per operation; writes go through notifications.services."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.auth import request_user
from core.fields import QueryParamsSerializer
from notifications.models import Kind
from notifications.selectors import email_kinds_enabled, notification_list
from notifications.services import email_preferences_set, notifications_mark_read


class NotificationOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    kind = serializers.ChoiceField(choices=Kind.choices)
    title = serializers.CharField()
    body = serializers.CharField()
    link = serializers.CharField(help_text="A dashboard path where you can act on it (may be empty).")
    created_at = serializers.DateTimeField()
    read_at = serializers.DateTimeField(allow_null=True)
    email_status = serializers.CharField(help_text="pending, sent, opted_out or failed.")


class NotificationPagination(CursorPagination):
    ordering = ("-id",)  # newest first; unique, so the cursor is stable
    page_size = 50
    page_size_query_param = "limit"
    max_page_size = 200


class NotificationPageSerializer(serializers.Serializer):
    next = serializers.URLField(allow_null=True, help_text="The next page (cursor link), or null.")
    previous = serializers.URLField(allow_null=True)
    results = NotificationOutputSerializer(many=True)


class NotificationListApi(APIView):
    class FilterSerializer(QueryParamsSerializer):
        unread = serializers.BooleanField(required=False, help_text="Only notifications not yet read.")
        cursor = serializers.CharField(required=False, help_text="From a `next` or `previous` link.")
        limit = serializers.IntegerField(required=False, min_value=1, max_value=NotificationPagination.max_page_size)

    @extend_schema(parameters=[FilterSerializer], responses=NotificationPageSerializer)
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        rows = notification_list(user=request_user(request))
        if filters.validated_data.get("unread"):
            rows = rows.filter(read_at__isnull=True)
        paginator = NotificationPagination()
        page = paginator.paginate_queryset(rows, request, view=self)
        return paginator.get_paginated_response(NotificationOutputSerializer(page, many=True).data)


class NotificationsReadApi(APIView):
    class InputSerializer(serializers.Serializer):
        ids = serializers.ListField(
            child=serializers.IntegerField(min_value=1),
            required=False,
            max_length=500,
            help_text="Which to mark read; all unread ones when absent.",
        )

    class OutputSerializer(serializers.Serializer):
        marked = serializers.IntegerField(help_text="How many were unread and are read now.")

    @extend_schema(request=InputSerializer, responses=OutputSerializer)
    def post(self, request: Request) -> Response:
        payload = self.InputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        marked = notifications_mark_read(user=request_user(request), notification_ids=payload.validated_data.get("ids"))
        return Response({"marked": marked})


class EmailPreferencesApi(APIView):
    class PreferencesSerializer(serializers.Serializer):
        emailed_kinds = serializers.ListField(
            child=serializers.ChoiceField(choices=Kind.choices),
            allow_empty=True,
            help_text="The kinds Niyra emails you about; every other kind is only listed.",
        )

    @extend_schema(responses=PreferencesSerializer)
    def get(self, request: Request) -> Response:
        kinds = email_kinds_enabled(user=request_user(request))
        return Response({"emailed_kinds": [kind for kind in Kind.values if kind in kinds]})

    @extend_schema(request=PreferencesSerializer, responses=PreferencesSerializer)
    def put(self, request: Request) -> Response:
        payload = self.PreferencesSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        kinds = email_preferences_set(user=request_user(request), emailed_kinds=payload.validated_data["emailed_kinds"])
        return Response({"emailed_kinds": [kind for kind in Kind.values if kind in kinds]})
