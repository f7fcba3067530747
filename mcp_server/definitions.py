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

from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.tools import Tool
from mcp_types import ToolAnnotations
from pydantic import ValidationError

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


def _options(node: dict) -> list[dict]:
    """The options of a (nested) anyOf, flattened."""
    out = []
    for option in node["anyOf"]:
        out += _options(option) if set(option) == {"anyOf"} else [option]
    return out


def _merged(node: dict) -> dict | None:
    """An anyOf of plainly typed options as one node of their types: `anyOf [string, array of string,
    null]` → `type [string, array], items {...}`, the null left out where it is the default (leaving the
    argument out gives it). None where the options cannot merge (an enum beside other types, one type
    twice, keys that would clash)."""
    if "anyOf" not in node:
        return None
    options = _options(node)
    if node.get("default", 0) is None:
        options = [o for o in options if o != {"type": "null"}]
    typed = [o.get("type") for o in options]
    if not all(isinstance(t, str | list) for t in typed):
        return None
    types = [t for each in typed for t in ([each] if isinstance(each, str) else each)]
    keys = [k for o in options for k in o if k != "type"]
    if len(set(types)) != len(types) or len(keys) != len(set(keys)) or ("enum" in keys and len(options) > 1):
        return None
    merged = {k: v for o in options for k, v in o.items() if k != "type"}
    merged["type"] = types[0] if len(types) == 1 else types
    merged.update({k: v for k, v in node.items() if k != "anyOf" and not (k == "default" and v is None)})
    return merged


def compact_schema(node: Any, described: bool = False) -> Any:
    """A JSON schema without titles, null wrappers, guards, or descriptions its parent already gives."""
    if isinstance(node, list):
        return [compact_schema(n, described) for n in node]
    if not isinstance(node, dict):
        return node
    if "anyOf" in node:  # the options compacted first, so nested unions merge from the inside out
        inner = described or "description" in node
        node = {**node, "anyOf": [compact_schema(o, inner) for o in node["anyOf"]]}
        node = _merged(node) or node
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


class LensTool(Tool):
    """The SDK's Tool, except that a list sent where one string goes is refused with how to pass several
    (pydantic alone says "Input should be a valid string")."""

    async def run(self, arguments, context, convert_result: bool = False):
        try:
            self.fn_metadata.validate_arguments(arguments)
        except ValidationError as error:
            hint = list_hint(self.name, error)
            if hint:
                raise ToolError(f"Error executing tool {self.name}: {hint}") from error
        return await super().run(arguments, context, convert_result)


SET_TOOLS = "patch, attribution_patch, path_patch, ablate, logit_attribution, logit_lens, steer (attention_pattern: dataset)"


def list_hint(tool_name: str, error: ValidationError) -> str | None:
    """What to do instead, where the agent sent a list to an argument that takes one string."""
    for problem in error.errors():
        if problem["type"] == "string_type" and isinstance(problem.get("input"), list) and len(problem["loc"]) == 1:
            name = problem["loc"][0]
            return (f"{name} takes one string in {tool_name}, not a list. To run several prompts, call "
                    f"{tool_name} once per prompt, or use a tool that takes lists under its prompt arguments "
                    f"(one entry per row) or dataset=<handle from the dataset tool>: {SET_TOOLS}")
    return None


def definition(fn, annotations: ToolAnnotations) -> Tool:
    """The SDK's Tool for a lens tool function (wrapped by `errors.tool`), its input schema compacted."""
    built = LensTool.from_function(tool(fn), annotations=annotations)
    built.description = " ".join(built.description.split())  # a docstring's line breaks and indents
    built.parameters = compact_schema(built.parameters)
    return built


def size(name: str, description: str | None, input_schema: dict) -> int:
    """Bytes of one definition as compact JSON: what it costs in a model's context."""
    return len(json.dumps({"name": name, "description": description, "inputSchema": input_schema},
                          separators=(",", ":"), ensure_ascii=False))
