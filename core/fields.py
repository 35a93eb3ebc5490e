"""Strict DRF fields for JSON APIs: `"stream": "yes"`, `"max_tokens": "12"` or `"name": 0` are
errors, not coercions (DRF's defaults accept HTML-form style strings and numbers)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers


class StrictBooleanField(serializers.BooleanField):
    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class StrictIntegerField(serializers.IntegerField):
    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictFloatField(serializers.FloatField):
    def to_internal_value(self, data: Any) -> float:
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictCharField(serializers.CharField):
    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class QueryParamsSerializer(serializers.Serializer):
    """Query-string filters. A parameter sent empty (`?until=`) is a 400, not "no filter":
    DRF would skip it, so a client's blank variable would silently widen the query."""

    def to_internal_value(self, data: Any) -> Any:
        blank = {name: ["This field may not be blank."] for name, _ in self.fields.items() if data.get(name) == ""}
        if blank:
            raise serializers.ValidationError(blank)
        return super().to_internal_value(data)
