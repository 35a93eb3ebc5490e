"""REST for OAuth connections: the configured integrations, the user's connections, connect
(start) and disconnect. No response carries a token or a ciphertext."""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.auth import request_user
from connections import oauth
from connections.models import OAuthConnection
from connections.selectors import connection_health, connection_list
from connections.services import connection_connect_start, connection_disconnect
from core.errors import CATALOGUE


class OAuthIntegrationOutputSerializer(serializers.Serializer):
    name = serializers.CharField()
    display_name = serializers.CharField(source="label")
    scopes = serializers.ListField(child=serializers.CharField())
    supports_revocation = serializers.BooleanField()


class OAuthConnectionOutputSerializer(serializers.Serializer):
    """What a user may know about a connection: never a token, never a ciphertext."""

    integration = serializers.CharField()
    status = serializers.CharField(help_text="active, needs_reauth (reconnect) or error (gave up refreshing).")
    scopes = serializers.SerializerMethodField()
    expires_at = serializers.DateTimeField(allow_null=True, help_text="When the current access token expires.")
    last_refreshed_at = serializers.DateTimeField(allow_null=True)
    next_refresh_at = serializers.SerializerMethodField(
        help_text="About when Niyra refreshes it next; null when nothing is scheduled (reconnect needed, "
        "gave up, or the access doesn't expire)."
    )
    consecutive_failures = serializers.IntegerField()
    status_changed_at = serializers.DateTimeField(
        allow_null=True, help_text="When it last stopped working or started working again."
    )
    last_error = serializers.SerializerMethodField(help_text="{code, message, reason, at} of the last problem or null.")
    connected_at = serializers.DateTimeField()

    def get_scopes(self, connection: OAuthConnection) -> list[str]:
        return connection.scopes.split()

    @extend_schema_field(serializers.DateTimeField(allow_null=True))
    def get_next_refresh_at(self, connection: OAuthConnection) -> str | None:
        at = connection_health(connection).next_refresh_at
        return serializers.DateTimeField().to_representation(at) if at else None

    def get_last_error(self, connection: OAuthConnection) -> dict[str, Any] | None:
        spec = CATALOGUE.get(connection.last_error_code)
        if spec is None:
            return None
        return {
            "code": spec.code,
            "message": spec.message,
            "reason": connection.last_error_reason,
            "at": serializers.DateTimeField().to_representation(connection.last_error_at)
            if connection.last_error_at
            else None,
        }


class OAuthIntegrationListApi(APIView):
    @extend_schema(responses=OAuthIntegrationOutputSerializer(many=True))
    def get(self, request: Request) -> Response:
        return Response(OAuthIntegrationOutputSerializer(list(oauth.integrations().values()), many=True).data)


class OAuthConnectionListApi(APIView):
    @extend_schema(responses=OAuthConnectionOutputSerializer(many=True))
    def get(self, request: Request) -> Response:
        connections = connection_list(user=request_user(request))
        return Response(OAuthConnectionOutputSerializer(connections, many=True).data)


class OAuthConnectionApi(APIView):
    """DELETE disconnects (and revokes the grant at the provider when it supports revocation)."""

    @extend_schema(responses={204: None})
    def delete(self, request: Request, integration: str) -> Response:
        connection_disconnect(user=request_user(request), integration=integration)
        return Response(status=status.HTTP_204_NO_CONTENT)


class OAuthConnectStartApi(APIView):
    """Start connecting (or reconnecting): returns the provider URL to send the browser to.

    The provider redirects back to `/oauth/callback/<integration>`, which finishes the flow in
    the browser (signed in as the same user) and lands on the dashboard.
    """

    class OutputSerializer(serializers.Serializer):
        authorize_url = serializers.URLField()

    @extend_schema(request=None, responses=OutputSerializer)
    def post(self, request: Request, integration: str) -> Response:
        redirect_uri = request.build_absolute_uri(reverse("oauth-callback", kwargs={"integration": integration}))
        url = connection_connect_start(user=request_user(request), integration=integration, redirect_uri=redirect_uri)
        return Response(self.OutputSerializer({"authorize_url": url}).data, headers={"Cache-Control": "no-store"})
