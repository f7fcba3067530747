"""The tool definitions a client sends to its model (name, description, input schema), kept small.

Every byte of a definition sits in the agent's context on every turn, so the published input
schema keeps what tells the agent how to call (types, enums, defaults, meaningful bounds, one
description per argument) and drops what pydantic adds for other readers: titles, the
`anyOf [X, null]` wrapping and `default: null` of optional arguments (leaving one out gives
its default), descriptions repeated on an argument's items, and the guards that only stop
runaway or nonsense input (string lengths and patterns, bounds of 100 or more, lower bounds of
0 or 1). The guards still apply: arguments are validated
by the pydantic model built from the signature, not by this schema.
"""

from __future__ import annotations

import json
from typing import Any

from mcp.server.mcpserver.tools import Tool
from mcp_types import ToolAnnotations

from mcp_server.errors import tool

GUARD = 100  # a numeric bound at least this large is a guard, not usage information
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_STRING_GUARDS = ("maxLength", "minLength", "pattern")


def _is_guard(key: str, value: Any) -> bool:
    if key in _STRING_GUARDS:
        return True
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    if key in ("minimum", "exclusiveMinimum", "minItems"):  # 0 or 1 only refuses nonsense (a count below one)
        return value in (0, 1) or abs(value) >= GUARD
    return key in ("maximum", "maxItems") and abs(value) >= GUARD


def _nullable(node: dict) -> dict | None:
    """`anyOf [X, {type: null}]` as one node: X alone where null is the default (leaving the argument
    out is how to get it), else type [X's type, "null"]; None where X has no plain type."""
    options = node.get("anyOf", [])
    others = [o for o in options if o != {"type": "null"}]
    if len(options) != 2 or len(others) != 1 or not isinstance(others[0].get("type"), str):
        return None
    merged = {**others[0], **{k: v for k, v in node.items() if k != "anyOf"}}
    if "default" in merged and merged["default"] is None:
        del merged["default"]
        return merged
    merged["type"] = [others[0]["type"], "null"]
    if "enum" in merged:
        merged["enum"] = [*merged["enum"], None]
    return merged


def compact_schema(node: Any, described: bool = False) -> Any:
    """A JSON schema without titles, null wrappers, guards, or descriptions its parent already gives."""
    if isinstance(node, list):
        return [compact_schema(n, described) for n in node]
    if not isinstance(node, dict):
        return node
    node = _nullable(node) or node
    out = {}
    for key, value in node.items():
        if key == "title" or _is_guard(key, value) or (key == "description" and described):
            continue
        if key in ("properties", "$defs"):
            out[key] = {name: compact_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") or key in _SUBSCHEMA_LISTS:
            out[key] = compact_schema(value, described or "description" in node)
        else:
            out[key] = value
    return out


def definition(fn, annotations: ToolAnnotations) -> Tool:
    """The SDK's Tool for a lens tool function (wrapped by `errors.tool`), its input schema compacted."""
    built = Tool.from_function(tool(fn), annotations=annotations)
    built.description = " ".join(built.description.split())  # a docstring's line breaks and indents
    built.parameters = compact_schema(built.parameters)
    return built


def size(name: str, description: str | None, input_schema: dict) -> int:
    """Bytes of one definition as compact JSON: what it costs in a model's context."""
    return len(json.dumps({"name": name, "description": description, "inputSchema": input_schema},
                          separators=(",", ":"), ensure_ascii=False))
