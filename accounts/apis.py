"""REST: my API tokens (one small view per operation). "Who am I" (`/api/me`, with the plan)
is credits' `MeApi`."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.auth import request_user
from accounts.selectors import api_token_list
from accounts.services import api_token_create, api_token_revoke
from core.fields import StrictCharField


class TokenOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    prefix = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)

    def get_prefix(self, token: object) -> str:
        return f"niy_{token.prefix}"  # type: ignore[attr-defined]


class TokenListApi(APIView):
    @extend_schema(responses=TokenOutputSerializer(many=True))
    def get(self, request: Request) -> Response:
        return Response(TokenOutputSerializer(api_token_list(user=request_user(request)), many=True).data)


class TokenCreateApi(APIView):
    class InputSerializer(serializers.Serializer):
        name = StrictCharField(max_length=100)

    class OutputSerializer(TokenOutputSerializer):
        token = serializers.CharField(help_text="The token itself. Shown once: store it now.")

    @extend_schema(request=InputSerializer, responses={201: OutputSerializer})
    def post(self, request: Request) -> Response:
        payload = self.InputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        issued = api_token_create(user=request_user(request), name=payload.validated_data["name"])
        data = TokenOutputSerializer(issued.token).data | {"token": issued.plaintext}
        return Response(data, status=status.HTTP_201_CREATED, headers={"Cache-Control": "no-store"})


class TokenRevokeApi(APIView):
    @extend_schema(responses={204: None})
    def delete(self, request: Request, token_id: int) -> Response:
        api_token_revoke(user=request_user(request), token_id=token_id)
        return Response(status=status.HTTP_204_NO_CONTENT)
