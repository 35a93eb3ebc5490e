"""Deterministic values for JSON schemas: the arguments of the sandbox's tool calls and its
structured (json_schema) outputs, so tests can predict them exactly.

Rules (:func:`sample_for`): ``enum`` -> its first value, ``const`` -> the constant, string ->
``"sandbox"``, integer -> ``1``, number -> ``1.5``, boolean -> ``true``, null -> ``null``, object
-> its *required* properties (each sampled), array -> one sampled item (``minItems`` items when
more are required). ``anyOf`` / ``oneOf`` / ``allOf`` take their first branch; a list of types its
first non-null type; local ``$ref`` (``#/$defs/...``, ``#/definitions/...``) is followed. Numbers
respect ``minimum`` / ``maximum``. A schema with no type gives ``"sandbox"``.

:func:`strict_problem` applies OpenAI's strict-mode rules (every object closes
``additionalProperties`` and requires all of its properties).
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["SAMPLE_STRING", "sample_for", "split_pieces", "strict_problem"]

SAMPLE_STRING: Final = "sandbox"
_MAX_DEPTH: Final = 32


def _resolve(schema: Any, root: Any, depth: int) -> Any:
    ref = schema.get("$ref") if isinstance(schema, dict) else None
    if not isinstance(ref, str) or not ref.startswith("#/") or depth > _MAX_DEPTH:
        return schema
    target: Any = root
    for part in ref[2:].split("/"):
        if not isinstance(target, dict) or part not in target:
            return {}
        target = target[part]
    return _resolve(target, root, depth + 1)


def _number(schema: dict[str, Any], default: float) -> float:
    low, high = schema.get("minimum"), schema.get("maximum")
    value = default
    if isinstance(low, int | float) and value < low:
        value = low
    if isinstance(high, int | float) and value > high:
        value = high
    return value


def _sample(schema: Any, root: Any, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        return None
    schema = _resolve(schema, root, depth)
    if not isinstance(schema, dict):
        return SAMPLE_STRING
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        branches = schema.get(combinator)
        if isinstance(branches, list) and branches:
            return _sample(branches[0], root, depth + 1)
    stype = schema.get("type")
    if isinstance(stype, list):
        stype = next((t for t in stype if t != "null"), "null")
    if stype is None and isinstance(schema.get("properties"), dict):
        stype = "object"
    if stype == "object":
        props = schema.get("properties")
        props = props if isinstance(props, dict) else {}
        required = schema.get("required")
        names = [n for n in required if isinstance(n, str)] if isinstance(required, list) else []
        return {name: _sample(props.get(name, {}), root, depth + 1) for name in names}
    if stype == "array":
        low = schema.get("minItems")
        count = low if type(low) is int and low > 1 else 1
        high = schema.get("maxItems")
        if type(high) is int:
            count = min(count, high)
        return [_sample(schema.get("items", {}), root, depth + 1) for _ in range(count)]
    if stype == "integer":
        return int(_number(schema, 1))
    if stype == "number":
        return _number(schema, 1.5)
    if stype == "boolean":
        return True
    if stype == "null":
        return None
    return SAMPLE_STRING


def sample_for(schema: Any) -> Any:
    """The sandbox's deterministic value for ``schema`` (see the module's rules)."""
    return _sample(schema, schema, 0)


def strict_problem(schema: Any, context: tuple[str, ...] = ()) -> str | None:
    """Why ``schema`` breaks OpenAI's strict-mode rules (in the API's words), or None."""
    if not isinstance(schema, dict):
        return None
    stype = schema.get("type")
    if stype == "object" or (isinstance(stype, list) and "object" in stype):
        if schema.get("additionalProperties") is not False:
            return f"In context={context}, 'additionalProperties' is required to be supplied and to be false."
        props = schema.get("properties")
        props = props if isinstance(props, dict) else {}
        required = schema.get("required")
        required = required if isinstance(required, list) else []
        missing = [name for name in props if name not in required]
        if missing:
            return (
                f"In context={context}, 'required' is required to be supplied and to be an array including "
                f"every key in properties. Missing '{missing[0]}'."
            )
        for name, sub in props.items():
            problem = strict_problem(sub, (*context, "properties", name))
            if problem:
                return problem
    subs: list[Any] = [schema.get("items")]
    for key in ("anyOf", "$defs", "definitions"):
        branches = schema.get(key)
        if isinstance(branches, dict):
            subs.extend(branches.values())
        elif isinstance(branches, list):
            subs.extend(branches)
    for sub in subs:
        problem = strict_problem(sub, context)
        if problem:
            return problem
    return None


def split_pieces(text: str, pieces: int = 4) -> list[str]:
    """``text`` in up to ``pieces`` consecutive parts (concatenating to it), for streamed JSON."""
    if len(text) <= pieces:
        return [text]
    size = -(-len(text) // pieces)
    return [text[i : i + size] for i in range(0, len(text), size)]
