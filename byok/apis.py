"""REST for provider keys: list, add/rotate (PUT), test, disconnect (DELETE).

No response has a key field: output serializers only know the hint and fingerprint. Save and
test are throttled per user where they call the provider (`byok.throttle`, via the services),
since a key-checking endpoint is an oracle worth abusing.
"""

from __future__ import annotations

import logging
from typing import Any

from django.utils.decorators import method_decorator
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.fields import empty
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.auth import request_user
from byok.keytext import MAX_KEY_LENGTH, NON_WRAPPING_CHARACTER
from byok.models import KeyStatus, Provider, ProviderKey
from byok.selectors import key_checks_recent, provider_key_effective_status, provider_key_list
from byok.services import provider_key_disconnect, provider_key_save, provider_key_test
from core.errors import CATALOGUE, KEY_NEEDS_REENTRY
from core.schema import text_pattern

logger = logging.getLogger(__name__)


class KeyCheckOutputSerializer(serializers.Serializer):
    checked_at = serializers.DateTimeField()
    # DRF's metaclass takes declared fields off the class, so this does not replace Field.source.
    source = serializers.CharField(help_text="save, test, scheduled or routed.")  # type: ignore[assignment]
    status = serializers.CharField(help_text="The key's status after the check.")
    error_code = serializers.CharField(help_text="What the provider said when it was not ok; empty when ok.")
    latency_ms = serializers.IntegerField(allow_null=True)


class ProviderKeyOutputSerializer(serializers.Serializer):
    provider = serializers.CharField()
    status = serializers.SerializerMethodField(help_text="valid, invalid, rate_limited, quota_exhausted, ...")
    hint = serializers.CharField(help_text="Prefix and last four characters, e.g. sk-ant-…AbCd.")
    fingerprint = serializers.CharField()
    last_tested_at = serializers.DateTimeField(allow_null=True, help_text="Last save or Test key.")
    last_checked_at = serializers.DateTimeField(allow_null=True, help_text="Last probe, scheduled ones included.")
    next_check_at = serializers.DateTimeField(allow_null=True, help_text="The next scheduled check.")
    last_used_at = serializers.DateTimeField(allow_null=True, help_text="Last routed call (to the minute).")
    rate_limited_until = serializers.DateTimeField(allow_null=True)
    last_error = serializers.SerializerMethodField(help_text="{code, message} of the last problem, or null.")
    checks = serializers.SerializerMethodField(help_text="Recent checks, newest first (a short history).")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    def get_status(self, provider_key: ProviderKey) -> str:
        return provider_key_effective_status(provider_key)

    def get_last_error(self, provider_key: ProviderKey) -> dict[str, str] | None:
        if provider_key_effective_status(provider_key) == KeyStatus.NEEDS_REENTRY:
            spec = KEY_NEEDS_REENTRY
        elif provider_key.last_error_code in CATALOGUE:
            spec = CATALOGUE[provider_key.last_error_code]
        else:
            return None
        return {"code": spec.code, "message": spec.message}

    @extend_schema_field(KeyCheckOutputSerializer(many=True))
    def get_checks(self, provider_key: ProviderKey) -> list[dict[str, Any]]:
        return list(KeyCheckOutputSerializer(key_checks_recent(provider_key=provider_key), many=True).data)


class ProviderKeyListApi(APIView):
    @extend_schema(responses=ProviderKeyOutputSerializer(many=True))
    def get(self, request: Request) -> Response:
        keys = provider_key_list(user=request_user(request))
        return Response(ProviderKeyOutputSerializer(keys, many=True).data)


# The providers Niyra takes keys for; any other path segment is refused (third_party_provider).
PROVIDER_PATH = OpenApiParameter("provider", OpenApiTypes.STR, OpenApiParameter.PATH, enum=list(Provider.values))


@extend_schema_field(
    {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH * 2, "pattern": text_pattern(NON_WRAPPING_CHARACTER)}
)
class PastedKeyField(serializers.CharField):
    """The pasted key. The schema asks for a key; a blank paste (like one of whitespace or
    quotes) still reaches the service, which answers it "paste your key" (`byok.keytext`), the
    same answer the dashboard gives, rather than DRF's "may not be blank"."""

    def run_validation(self, data: Any = empty) -> Any:
        return "" if data == "" else super().run_validation(data)


@method_decorator(sensitive_post_parameters("key"), name="dispatch")
class ProviderKeyApi(APIView):
    """PUT adds or rotates the key for a provider; DELETE disconnects it."""

    class InputSerializer(serializers.Serializer):
        key = PastedKeyField(max_length=MAX_KEY_LENGTH * 2, trim_whitespace=False, write_only=True)

    @extend_schema(parameters=[PROVIDER_PATH], request=InputSerializer, responses=ProviderKeyOutputSerializer)
    @sensitive_variables()
    def put(self, request: Request, provider: str) -> Response:
        payload = self.InputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        provider_key = provider_key_save(
            user=request_user(request), provider=provider, key=payload.validated_data["key"]
        )
        return Response(ProviderKeyOutputSerializer(provider_key).data, headers={"Cache-Control": "no-store"})

    @extend_schema(parameters=[PROVIDER_PATH], responses={204: None})
    def delete(self, request: Request, provider: str) -> Response:
        provider_key_disconnect(user=request_user(request), provider=provider)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ProviderKeyTestApi(APIView):
    @extend_schema(parameters=[PROVIDER_PATH], request=None, responses=ProviderKeyOutputSerializer)
    def post(self, request: Request, provider: str) -> Response:
        provider_key = provider_key_test(user=request_user(request), provider=provider)
        return Response(ProviderKeyOutputSerializer(provider_key).data)
