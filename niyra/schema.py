"""OpenAPI schema generation (drf-spectacular) tuned to the one-APIView-per-operation style."""

from __future__ import annotations

from typing import Any, Literal

from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema


class AutoSchema(SpectacularAutoSchema):
    def get_serializer_name(self, serializer: Any, direction: Literal["request", "response"]) -> str:
        """Name nested `InputSerializer`/`OutputSerializer` classes after their view.

        `MeApi.OutputSerializer` becomes `MeOutput`, so every API's nested serializers get
        distinct component names instead of colliding as "Input" and "Output".
        """
        name = super().get_serializer_name(serializer, direction)
        outer, _, _inner = type(serializer).__qualname__.rpartition(".")
        if outer and "<locals>" not in outer:
            return outer.split(".")[-1].removesuffix("Api") + name
        return name
