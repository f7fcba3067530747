"""Reading the skill's markdown (SKILL.md, references/): code blocks, MCP calls, tables, links, headings.

No tests here; tests/test_skill_*.py use these. The conventions the docs follow:

- ```python blocks run, in order, in one namespace per file. What a block prints is checked: against
  the ```text block right after it, line by line, when there is one; otherwise each top-level line
  `print(...)  # text` must print `text`. Either way a line ending in '...' matches any output that
  starts with what precedes it.
- ```mcp blocks hold MCP tool calls in Python call syntax with literal keyword arguments:
  `patch(clean="...", corrupted="...", answer=" John", what="heads")`.
- ```json blocks in references/mcp-tools.md: a call {"tool": ..., "arguments": {...}} and then its result.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKILL = ROOT / "SKILL.md"
REFERENCES = ROOT / "references"
# The MCP server's tools (test_skill_mcp.py checks this against the live server).
TOOL_NAMES = frozenset({
    "list_models", "load_model", "model_info", "tokenize", "release", "run_with_cache", "get_activation",
    "logit_attribution", "logit_lens", "attention_pattern", "detect_heads", "dataset", "patch",
    "attribution_patch", "path_patch", "ablate", "steer", "generate", "features", "find_circuit", "evaluate_circuit",
    "investigate"})


def docs() -> list[Path]:
    return [SKILL, *sorted(REFERENCES.glob("*.md"))]


@dataclass(frozen=True)
class Block:
    lang: str
    line: int  # the line of the block's first code line, 1-based
    code: str
    output: str | None = None  # for a python block: the ```text block right after it


_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", flags=re.DOTALL | re.MULTILINE)


def blocks(text: str, lang: str | None = None) -> list[Block]:
    found = list(_FENCE.finditer(text))
    out = []
    for i, match in enumerate(found):
        if lang is not None and match.group(1) != lang:
            continue
        output = None
        if match.group(1) == "python" and i + 1 < len(found):
            after = found[i + 1]
            if after.group(1) == "text" and not text[match.end():after.start()].strip():
                output = after.group(2)
        out.append(Block(match.group(1), text.count("\n", 0, match.start(2)) + 1, match.group(2), output))
    return out


def outside_code(text: str) -> str:
    """The text with fenced blocks blanked (line numbers kept)."""
    return _FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


# --- python blocks ---------------------------------------------------------------------------

def expected_output(block: Block) -> list[str]:
    if block.output is not None:
        return block.output.splitlines()
    return [line.split("  # ")[-1].strip() for line in block.code.splitlines()
            if line.startswith("print(") and "  # " in line]


def print_matches(got: str, want: str) -> bool:
    if want.endswith("..."):
        return got.startswith(want.removesuffix("..."))
    return got.rstrip() == want.rstrip()


def compiled(block: Block, path: Path):
    """The block compiled so that tracebacks name the markdown file and its line numbers."""
    return compile("\n" * (block.line - 1) + block.code, str(path), "exec")


# --- MCP calls -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Call:
    tool: str
    arguments: dict
    line: int


def mcp_calls(block: Block) -> list[Call]:
    """The calls of an ```mcp block: expression statements `tool(name=literal, ...)`."""
    calls = []
    for statement in ast.parse(block.code).body:
        call = statement.value if isinstance(statement, ast.Expr) else None
        if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name) or call.args:
            raise ValueError(f"line {block.line + statement.lineno - 1}: an mcp block holds calls "
                             f"tool(name=value, ...) only")
        arguments = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
        calls.append(Call(call.func.id, arguments, block.line + statement.lineno - 1))
    return calls


# --- markdown structure ----------------------------------------------------------------------

def headings(text: str) -> list[tuple[int, str]]:
    """(level, title) of every heading outside code."""
    return [(len(m.group(1)), m.group(2).strip())
            for m in re.finditer(r"^(#{1,6})\s+(.*)$", outside_code(text), flags=re.MULTILINE)]


def slug(title: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def links(text: str) -> list[str]:
    return re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", outside_code(text))


def section(text: str, title: str) -> str:
    """The text under the heading `title` up to the next heading of the same or a higher level."""
    lines = text.splitlines(keepends=True)
    start = level = None
    for i, line in enumerate(lines):
        match = re.match(r"^(#{1,6})\s+(.*)$", line)
        if not match:
            continue
        if start is None and match.group(2).strip() == title:
            start, level = i, len(match.group(1))
        elif start is not None and len(match.group(1)) <= level:
            return "".join(lines[start:i])
    if start is None:
        raise KeyError(f"no heading {title!r}")
    return "".join(lines[start:])


def table_rows(text: str) -> list[list[str]]:
    """The body rows of every markdown table in `text` (header and rule rows left out), cells stripped."""
    rows, in_table = [], 0  # in_table: how many lines of the current table were seen
    for line in outside_code(text).splitlines():
        if not line.startswith("|"):
            in_table = 0
            continue
        in_table += 1
        if in_table > 2:  # line 1 is the header, line 2 the rule
            rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
    return rows


def first_code(cell: str) -> str | None:
    match = re.match(r"`([^`]+)`", cell)
    return match.group(1) if match else None


# --- error messages in the source ------------------------------------------------------------

ELLIPSIS = "…"


def _template(node: ast.AST) -> str | None:
    """A string literal or f-string as text, each {formatted value} as '…'."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else ELLIPSIS for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _template(node.left), _template(node.right)
        return None if left is None and right is None else (left or ELLIPSIS) + (right or ELLIPSIS)
    return None


def source_messages(folders=("lens", "mcp_server")) -> dict[str, str]:
    """message template → 'path:line' for every exception built with a string message in the source:
    calls of a name ending in 'Error' (ValueError, ToolError, UnknownHookError, ...) whose first argument
    is a string literal or f-string."""
    found = {}
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if not (isinstance(node, ast.Call) and node.args):
                    continue
                name = node.func.id if isinstance(node.func, ast.Name) else \
                    node.func.attr if isinstance(node.func, ast.Attribute) else ""
                if not name.endswith("Error"):
                    continue
                template = _template(node.args[0])
                if template and template.strip(ELLIPSIS + " "):
                    found.setdefault(template, f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def message_matches(documented: str, template: str) -> bool:
    """Whether a message quoted in the docs (with '…' for the parts that vary) fits a source template:
    its literal pieces appear in the template, in order; or the message is the template with its words
    filled in, where a helper composes one message for several callers (mcp_server.state's handle
    lookup: "no … …; stored: …" documented as "no circuit …; stored: …")."""
    if ELLIPSIS in template and len(re.sub(r"[^A-Za-z]", "", template)) >= 8:
        pattern = ".+".join(re.escape(p) for p in template.split(ELLIPSIS))
        if re.fullmatch(pattern, documented, flags=re.DOTALL):
            return True
    at = 0
    for piece in (p.strip() for p in documented.split(ELLIPSIS)):
        if not piece:
            continue
        found = template.find(piece, at)
        if found < 0:
            return False
        at = found + len(piece)
    return True


def tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every markdown table in `text` as (header cells, body rows)."""
    found, current = [], None
    for line in outside_code(text).splitlines():
        if not line.startswith("|"):
            current = None
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if current is None:
            current = (cells, [])
            found.append(current)
        elif not all(re.fullmatch(r":?-{3,}:?", c) for c in cells):
            current[1].append(cells)
    return found


# --- comparing documented results with live ones ------------------------------------------------

_NUMBER = re.compile(r"([-+]?\d+\.\d+)")


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 2e-3 * max(abs(a), abs(b)) + 1e-6


def _text_fits(documented: str, live: str) -> bool:
    """Equal, except that decimal numbers may differ in their last printed digit."""
    doc_parts, live_parts = _NUMBER.split(documented), _NUMBER.split(live)
    if len(doc_parts) != len(live_parts):
        return False
    for i, (d, l) in enumerate(zip(doc_parts, live_parts, strict=True)):
        if i % 2 == 0:
            if d != l:
                return False
        else:
            decimals = len(d.split(".")[1])
            if abs(float(d) - float(l)) > 1.5 * 10 ** -decimals:
                return False
    return True


def fits(documented, live, where: str = "result") -> list[str]:
    """How a documented (abridged) result differs from a live one; [] when it fits. In the documented
    form a string "..." stands for any string, a string ending in "..." for any string it begins, and an
    element "..." in a list for any number of elements there; numbers match to the server's rounding."""
    if documented == "...":
        return []
    if isinstance(documented, dict):
        if not isinstance(live, dict):
            return [f"{where}: documented an object, got {live!r}"]
        problems = []
        for key, value in documented.items():
            if key not in live:
                problems.append(f"{where}.{key}: documented, but the result has no such field")
            else:
                problems += fits(value, live[key], f"{where}.{key}")
        return problems
    if isinstance(documented, list):
        if not isinstance(live, list):
            return [f"{where}: documented a list, got {live!r}"]
        if "..." in documented:
            cut = documented.index("...")
            head, tail = documented[:cut], documented[cut + 1:]
            if len(live) < len(head) + len(tail):
                return [f"{where}: documented at least {len(head) + len(tail)} items, got {len(live)}"]
            pairs = list(zip(head, live, strict=False)) + list(zip(tail, live[len(live) - len(tail):], strict=True))
        elif len(documented) != len(live):
            return [f"{where}: documented {len(documented)} items, got {len(live)}: {live!r}"[:300]]
        else:
            pairs = list(zip(documented, live, strict=True))
        return [p for i, (d, l) in enumerate(pairs) for p in fits(d, l, f"{where}[{i}]")]
    if isinstance(documented, str):
        if not isinstance(live, str):
            return [f"{where}: documented {documented!r}, got {live!r}"]
        if documented.endswith("..."):
            ok = live.startswith(documented.removesuffix("..."))
        else:
            ok = _text_fits(documented, live)
        return [] if ok else [f"{where}: documented {documented!r}, got {live!r}"]
    if isinstance(documented, bool) or documented is None:
        return [] if documented == live else [f"{where}: documented {documented!r}, got {live!r}"]
    if isinstance(documented, (int, float)) and isinstance(live, (int, float)) and not isinstance(live, bool):
        return [] if _close(documented, live) else [f"{where}: documented {documented!r}, got {live!r}"]
    return [f"{where}: documented {documented!r}, got {live!r}"]
