"""OpenAPI schema generation (drf-spectacular) tuned to the one-APIView-per-operation style."""

from __future__ import annotations

from typing import Any, Literal

from drf_spectacular.extensions import OpenApiSerializerFieldExtension
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


# --- Request constraints DRF enforces but drf-spectacular leaves out --------------------------
# So that a request the schema allows is one the API accepts (Schemathesis' positive data).


def text_pattern(required_character: str = "") -> str:
    """A pattern for DRF's text: no NUL character anywhere (every CharField refuses one) and, if
    given, at least one character of the class ``required_character`` (e.g. ``[^\\s]``)."""
    if not required_character:
        return "^[^\\u0000]*$"
    return f"^[^\\u0000]*{required_character}[^\\u0000]*$"


class CharFieldExtension(OpenApiSerializerFieldExtension):
    """A CharField refuses NUL characters; a non-blank one refuses "" and, when it trims,
    whitespace alone: say so."""

    target_class = "rest_framework.fields.CharField"
    match_subclasses = True

    def map_serializer_field(self, auto_schema: Any, direction: Any) -> Any:
        schema = auto_schema._map_serializer_field(self.target, direction, bypass_extensions=True)
        if direction != "request" or schema.get("type") != "string" or "enum" in schema or "pattern" in schema:
            return schema
        if self.target.allow_blank:
            schema["pattern"] = text_pattern()
        else:
            schema.setdefault("minLength", 1)
            schema["pattern"] = text_pattern("[^\\s\\u0000]" if self.target.trim_whitespace else "")
        return schema


class ListSerializerExtension(OpenApiSerializerFieldExtension):
    """`many=True` with `allow_empty=False` / `max_length`: minItems and maxItems."""

    target_class = "rest_framework.serializers.ListSerializer"
    match_subclasses = True

    def map_serializer_field(self, auto_schema: Any, direction: Any) -> Any:
        schema = auto_schema._map_serializer_field(self.target, direction, bypass_extensions=True)
        if direction == "request" and schema.get("type") == "array":
            if not self.target.allow_empty:
                schema.setdefault("minItems", 1)
            if self.target.max_length is not None:
                schema.setdefault("maxItems", self.target.max_length)
        return schema
