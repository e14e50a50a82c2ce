"""Structured output: a workflow's ``output_schema`` (JSON Schema) as a pydantic model.

``AgentConfig.output_type`` needs a pydantic model; users write JSON Schema. This turns the
common subset into one: scalar types, ``enum``/``const``, arrays, nested objects,
``anyOf``/``oneOf``/type lists (incl. null), local ``$ref`` to ``$defs``, descriptions.
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any, Final, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

from flowrelay_executor.engine.text import function_name
from flowrelay_executor.errors import InvalidWorkflowError

if TYPE_CHECKING:
    from flowrelay_executor.engine.recipes import Recipe

__all__ = ["model_from_schema", "output_type"]

#: Nesting depth up to which output_schema is turned into pydantic models.
_SCHEMA_MAX_DEPTH: Final = 16

#: JSON Schema scalar types and the Python types standing for them.
_SCALARS: Final[dict[str, type]] = {"string": str, "integer": int, "number": float, "boolean": bool}


def output_type(recipe: Recipe) -> type[BaseModel] | None:
    """The pydantic model of ``recipe``'s output schema, or None for plain text."""
    if recipe.output_schema is None:
        return None
    try:
        return model_from_schema(json.loads(recipe.output_schema), _output_model_name(recipe.name))
    except (TypeError, ValueError) as exc:  # e.g. an unhashable enum value
        raise InvalidWorkflowError(
            f"agent '{recipe.name}': output_schema is not supported: {exc}", agent=recipe.name
        ) from exc


def _output_model_name(agent: str) -> str:
    # OpenAI wants ^[a-zA-Z0-9_-]{1,64}$ for a json_schema name.
    return f"{function_name(agent)[:50]}_output"


def model_from_schema(schema: dict[str, Any], name: str) -> type[BaseModel]:
    """A pydantic model for a JSON object schema (what ``AgentConfig.output_type`` needs).

    Supports the common subset: scalar types, ``enum``/``const``, arrays, nested objects,
    ``anyOf``/``oneOf``/type lists (incl. null), local ``$ref`` to ``$defs``, descriptions.
    Properties not in ``required`` become optional (default null).
    """
    defs = {**schema.get("definitions", {}), **schema.get("$defs", {})}
    return _object_model(schema, name, defs, depth=0)


def _object_model(
    schema: dict[str, Any], name: str, defs: dict[str, Any], depth: int
) -> type[BaseModel]:
    required = set(schema.get("required", []))
    fields: dict[str, Any] = {}
    for index, (prop, sub) in enumerate((schema.get("properties") or {}).items()):
        sub = sub if isinstance(sub, dict) else {}
        annotation = _annotation(sub, f"{name}_{function_name(prop)}", defs, depth + 1)
        python_name = prop if _usable_field_name(prop) else f"field_{index}"
        options: dict[str, Any] = {"description": sub.get("description")}
        if python_name != prop:
            options["alias"] = prop
        if prop in required:
            fields[python_name] = (annotation, Field(..., **options))
        else:
            fields[python_name] = (annotation | None, Field(None, **options))
    return create_model(name, __config__=ConfigDict(populate_by_name=True), **fields)


def _usable_field_name(name: str) -> bool:
    # Other names (``1st``, ``_id``, ``schema``, ``model_config``...) become aliases.
    return (
        name.isidentifier()
        and not name.startswith(("_", "model_"))
        and not hasattr(BaseModel, name)
    )


def _annotation(schema: dict[str, Any], name: str, defs: dict[str, Any], depth: int) -> Any:
    if depth > _SCHEMA_MAX_DEPTH:
        return Any
    if ref := schema.get("$ref"):
        target = defs.get(str(ref).rsplit("/", 1)[-1])
        return _annotation(target, name, defs, depth + 1) if isinstance(target, dict) else Any
    if "const" in schema:
        return Literal[schema["const"]]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return Literal[tuple(schema["enum"])]
    for keyword in ("anyOf", "oneOf"):
        if isinstance(schema.get(keyword), list) and schema[keyword]:
            options = [
                _annotation(s, f"{name}_{i}", defs, depth + 1)
                for i, s in enumerate(schema[keyword])
            ]
            return functools.reduce(lambda a, b: Union[a, b], options)  # noqa: UP007
    kind = schema.get("type")
    if isinstance(kind, list):
        options = [_annotation({**schema, "type": k}, name, defs, depth) for k in kind]
        if not options:
            return Any
        return functools.reduce(lambda a, b: Union[a, b], options)  # noqa: UP007
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else None
    if kind in _SCALARS:
        return _SCALARS[kind]
    if kind == "null":
        return type(None)
    if kind == "array":
        items = schema.get("items")
        return (
            list[_annotation(items, f"{name}_item", defs, depth + 1)]
            if isinstance(items, dict)
            else list[Any]
        )
    if kind == "object":
        if schema.get("properties"):
            return _object_model(schema, name, defs, depth)
        extra = schema.get("additionalProperties")
        return (
            dict[str, _annotation(extra, f"{name}_value", defs, depth + 1)]
            if isinstance(extra, dict)
            else dict[str, Any]
        )
    return Any

