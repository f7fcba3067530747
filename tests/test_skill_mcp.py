"""references/mcp-tools.md and every MCP call the skill writes agree with the live server: tool names,
argument and result-field lists, defaults, the arguments of each written call, and (on smollm2-135m) the
result of every example call."""

from __future__ import annotations

import ast
import json
import re

import jsonschema
import pytest
from test_mcp_support import run
from test_skill_docs import inline_calls, is_elided
from test_skill_support import (
    REFERENCES,
    TOOL_NAMES,
    blocks,
    docs,
    first_code,
    fits,
    headings,
    mcp_calls,
    section,
    tables,
)

from mcp_server import Settings, create_server

TOOLS_DOC = REFERENCES / "mcp-tools.md"


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> dict:
    """tool name → Tool (name, description, input and output schema), from a server with no model loaded."""
    server = create_server(Settings(out_dir=tmp_path_factory.mktemp("plots")))
    return {tool.name: tool for tool in run(server, lambda client: client.list_tools()).tools}


def tool_section(name: str) -> str:
    return section(TOOLS_DOC.read_text(), name)


def documented_table(name: str, first_header: str) -> list[list[str]]:
    found = [rows for header, rows in tables(tool_section(name)) if header and header[0] == first_header]
    assert len(found) <= 1, f"mcp-tools.md, {name}: more than one {first_header!r} table"
    return found[0] if found else []


def resolve(schema: dict, node: dict) -> dict:
    """A schema node with $ref and optional (anyOf with null) unwrapped."""
    if "$ref" in node:
        return resolve(schema, schema["$defs"][node["$ref"].split("/")[-1]])
    if "anyOf" in node:
        for option in node["anyOf"]:
            if option.get("type") != "null":
                return resolve(schema, option)
    return node


def field_exists(schema: dict, path: str) -> bool:
    """Whether `a[].b.c` names a field of the output schema."""
    node = schema
    for part in re.findall(r"[^.\[\]]+|\[\]", path):
        node = resolve(schema, node)
        if part == "[]":
            if "items" not in node:
                return False
            node = node["items"]
        else:
            if part not in node.get("properties", {}):
                return False
            node = node["properties"][part]
    return True


# --- the tool list and each tool's tables --------------------------------------------------------

def test_the_skill_knows_exactly_the_server_tools_and_documents_each(live):
    assert set(live) == TOOL_NAMES, f"server tools {sorted(live)} vs the skill's {sorted(TOOL_NAMES)}"
    documented = {title for level, title in headings(TOOLS_DOC.read_text()) if level == 3}
    assert TOOL_NAMES <= documented, f"mcp-tools.md has no section for {sorted(TOOL_NAMES - documented)}"


@pytest.mark.parametrize("name", sorted(TOOL_NAMES))
def test_documented_arguments_and_defaults_are_the_live_input_schema(live, name):
    schema = live[name].input_schema
    rows = documented_table(name, "argument")
    documented = {first_code(row[0]): row[1] for row in rows}
    assert set(documented) == set(schema["properties"]), (
        f"{name}: documented {sorted(documented)}, the server takes {sorted(schema['properties'])}")
    required = set(schema.get("required", []))
    for argument, default in documented.items():
        if argument in required:
            assert default == "required", f"{name}.{argument} is required, the table says {default}"
        else:
            value = json.loads(first_code(default))
            assert value == schema["properties"][argument].get("default"), (
                f"{name}.{argument}: documented default {value!r}, "
                f"the server's is {schema['properties'][argument].get('default')!r}")


@pytest.mark.parametrize("name", sorted(TOOL_NAMES))
def test_documented_result_fields_are_the_live_output_schema(live, name):
    schema = live[name].output_schema
    fields = [first_code(row[0]) for row in documented_table(name, "field")]
    top = {f for f in fields if not re.search(r"[.\[]", f)}
    assert top == set(schema["properties"]), (
        f"{name}: documented {sorted(top)}, the result has {sorted(schema['properties'])}")
    for path in fields:
        assert field_exists(schema, path), f"{name}: documented field {path!r} is not in the output schema"


# --- every MCP call written in the skill ---------------------------------------------------------

def written_calls():
    """(file, line, tool, arguments, complete): ```mcp calls are complete; inline `tool(a=...)` may elide."""
    calls = []
    for path in docs():
        text = path.read_text()
        for block in blocks(text, "mcp"):
            calls += [(path.name, c.line, c.tool, c.arguments, True) for c in mcp_calls(block)]
        for span, call in inline_calls(text):
            name = ast.unparse(call.func)
            if name in TOOL_NAMES and (not call.args or is_elided(call)):
                arguments = {kw.arg: kw.value for kw in call.keywords if kw.arg}
                calls.append((path.name, span, name, arguments, False))
        for block in blocks(text, "json"):
            value = json.loads(block.code)
            if isinstance(value, dict) and "tool" in value:
                calls.append((path.name, block.line, value["tool"], value["arguments"], True))
    return calls


def test_every_mcp_call_written_in_the_skill_fits_the_tool_schema(live):
    calls = written_calls()
    assert len(calls) > 30, len(calls)
    for file, where, tool, arguments, complete in calls:
        assert tool in live, f"{file} ({where}): no tool {tool!r}"
        schema = live[tool].input_schema
        unknown = set(arguments) - set(schema["properties"])
        assert not unknown, f"{file} ({where}): {tool} has no argument {sorted(unknown)}"
        if complete:
            try:
                jsonschema.validate(arguments, schema)
            except jsonschema.ValidationError as error:
                pytest.fail(f"{file} ({where}): {tool}({arguments}) is refused: {error.message}")


# --- the examples, run ----------------------------------------------------------------------------

def examples() -> list[tuple[str, dict, object]]:
    """(tool, arguments, documented result) of each example in mcp-tools.md, in the file's order."""
    found = []
    for level, title in headings(TOOLS_DOC.read_text()):
        if level != 3:
            continue
        json_blocks = [json.loads(b.code) for b in blocks(section(TOOLS_DOC.read_text(), title), "json")]
        for call, result in zip(json_blocks[::2], json_blocks[1::2], strict=True):
            assert call["tool"] == title, f"the example under {title} calls {call['tool']}"
            found.append((title, call["arguments"], result))
    return found


def test_every_tool_has_an_example():
    assert {tool for tool, _, _ in examples()} == TOOL_NAMES


@pytest.mark.real_model
def test_every_example_call_gives_the_documented_result_on_smollm2(tmp_path):
    """One server session, the examples in the file's order (a cache handle made by one example is read
    by the next), on the default model."""
    server = create_server(Settings(out_dir=tmp_path / "plots"))

    async def scenario(client):
        outcomes = []
        for tool, arguments, documented in examples():
            result = await client.call_tool(tool, arguments)
            text = result.content[0].text if result.content else ""
            outcomes.append((tool, result.is_error, text, result.structured_content, documented))
        return outcomes

    problems = []
    for tool, is_error, text, structured, documented in run(server, scenario):
        if is_error:
            problems.append(f"{tool}: the example failed: {text}")
        else:
            problems += [f"{tool}: {p}" for p in fits(documented, structured, "result")]
    assert not problems, "\n".join(problems)


# --- regenerating the examples ----------------------------------------------------------------------
# When the server's results change on purpose, `python tests/test_skill_mcp.py` reruns every example on
# smollm2-135m and rewrites the results in references/mcp-tools.md, abridged where they were abridged.

def reabridge(documented, live):
    """The live result cut the way the documented one is."""
    if documented == "..." or live is None:
        return documented if documented == "..." else live
    if isinstance(documented, dict) and isinstance(live, dict):
        return {key: reabridge(value, live[key]) for key, value in documented.items() if key in live}
    if isinstance(documented, list) and isinstance(live, list):
        if "..." in documented:
            cut = documented.index("...")
            head, tail = documented[:cut], documented[cut + 1:]
            tail_live = live[len(live) - len(tail):] if tail else []
            return ([reabridge(d, l) for d, l in zip(head, live, strict=False)] + ["..."]
                    + [reabridge(d, l) for d, l in zip(tail, tail_live, strict=True)])
        if len(documented) == len(live):
            return [reabridge(d, l) for d, l in zip(documented, live, strict=True)]
        return live
    if isinstance(documented, str) and isinstance(live, str) and documented.endswith("..."):
        return live[:len(documented) - 3] + "..."
    return live


def formatted(result) -> str:
    """One top-level field per line, as mcp-tools.md writes results."""
    if not isinstance(result, dict):
        return json.dumps(result, ensure_ascii=False)
    lines = [f"{json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}" for key, value in result.items()]
    return "{" + ",\n ".join(lines) + "}"


def regenerate() -> None:
    import tempfile
    from pathlib import Path

    server = create_server(Settings(out_dir=Path(tempfile.mkdtemp()) / "plots"))

    async def scenario(client):
        return [(await client.call_tool(tool, arguments)) for tool, arguments, _ in examples()]

    text = TOOLS_DOC.read_text()
    seen: dict[str, int] = {}  # a section may hold several examples: call, result, call, result, ...
    for (tool, _, documented), result in zip(examples(), run(server, scenario), strict=True):
        if result.is_error:
            raise SystemExit(f"{tool}: the example fails: {result.content[0].text}")
        k = seen[tool] = seen.get(tool, -1) + 1
        old = [b.code for b in blocks(section(text, tool), "json")][2 * k + 1]
        text = text.replace(old, formatted(reabridge(documented, result.structured_content)) + "\n", 1)
    TOOLS_DOC.write_text(text)
    print(f"rewrote the example results in {TOOLS_DOC}")


if __name__ == "__main__":
    regenerate()
