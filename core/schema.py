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


# Every API operation can answer with the catalogue's error body; document it once, here,
# so the schema (and Schemathesis) know every status a client may see.
ERROR_STATUSES = ("400", "401", "402", "403", "404", "405", "409", "413", "415", "429", "500", "503")
ERROR_COMPONENT = {
    "type": "object",
    "properties": {
        "code": {"type": "string", "description": "Stable error code (niyra/errors.py)."},
        "message": {"type": "string", "description": "What to tell the user."},
        "detail": {"description": "Field errors or context; may be null."},
    },
    "required": ["code", "message", "detail"],
}


def add_error_responses(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: the shared `Error` schema on every operation."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_COMPONENT
    reference = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    for path_item in result.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            for status in ERROR_STATUSES:
                responses.setdefault(status, {"description": "Error (see `code`)", **reference})
    return result
