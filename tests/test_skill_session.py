"""A scripted agent session: the MCP calls of SKILL.md's IOI workflow, in its order, on smollm2-135m.

The script reads each answer the way the checklist tells an agent to (the fields it names), derives
what the next call needs from it (the head to look at, its layer, the input to path-patch into), and
checks that SKILL.md's next call asks for exactly that. So the workflow is one an agent can follow from
the tool results alone, and the concrete heads and layers SKILL.md quotes are the ones the tools find.
"""

from __future__ import annotations

import re

import pytest
from test_mcp_support import ok, run
from test_skill_support import SKILL, blocks, mcp_calls, section

from mcp_server import Settings, create_server

WORKFLOW = "Workflow 2: trace an IOI-style circuit"
HEAD = re.compile(r"^L(\d+)H(\d+)$")


def workflow_calls():
    text = section(SKILL.read_text(), WORKFLOW)
    (block,) = blocks(text, "mcp")
    return text, mcp_calls(block)


def field(result: dict, path: str):
    """result['heads'][0]['keys'][-1][0] for 'heads[0].keys[-1][0]'; '[]' means the first item."""
    value = result
    for name, index in re.findall(r"([A-Za-z_]+)|\[(-?\d*)\]", path):
        value = value[name] if name else value[int(index) if index else 0]
    return value


class Session:
    """Runs SKILL.md's calls one by one and keeps what each step found."""

    def __init__(self, client, text: str, calls):
        self.client, self.text, self.calls, self.step = client, text, list(calls), 0
        self.found: dict = {}

    async def next(self, tool: str, reads: list[str]) -> tuple[dict, dict]:
        """The next call of the workflow, which must be `tool`; its result must have the fields the
        checklist tells the agent to read, and the checklist must name them."""
        assert self.step < len(self.calls), f"SKILL.md's IOI workflow ends before {tool}"
        call = self.calls[self.step]
        self.step += 1
        assert call.tool == tool, f"step {self.step} of SKILL.md's IOI workflow is {call.tool}, the session expects {tool}"
        result = await ok(self.client, call.tool, call.arguments)
        for path in reads:
            named = path if f"`{path}`" in self.text else re.split(r"[.\[\]]+", path.strip("[]."))[-1]
            assert f"`{named}`" in self.text, f"SKILL.md's IOI checklist no longer tells the agent to read {path}"
            field(result, path)  # raises if the result lacks it
        return call.arguments, result


def normalised_of(result: dict, label: str) -> float:
    spots = {h["label"]: h for h in result["hotspots"]}
    assert label in spots, f"{label} is not among the hotspots {list(spots)}"
    return spots[label]["normalised"]


@pytest.mark.real_model
def test_an_agent_following_the_ioi_workflow_finds_what_each_next_step_needs(tmp_path):
    text, calls = workflow_calls()
    server = create_server(Settings(out_dir=tmp_path / "plots"))

    async def agent(client):
        s = Session(client, text, calls)

        # 1. Direct logit attribution by head: candidates are heads with positive contributions.
        args, dla = await s.next("logit_attribution", ["contributions", "total"])
        assert dla["total"] > 1, f"the model does not prefer the answer: total {dla['total']}"
        candidates = [c["component"] for c in dla["contributions"] if HEAD.match(c["component"]) and c["value"] > 0]
        assert candidates, f"no head writes the answer directly: {dla['contributions']}"

        # 2. Head patching: keep the head both methods pick.
        args, heads = await s.next("patch", ["hotspots[].label", "hotspots[].normalised"])
        assert args["what"] == "heads"
        causal = [h["label"] for h in heads["hotspots"][:3] if (h["normalised"] or 0) > 0.3]
        both = [h for h in candidates if h in causal]
        assert both, f"attribution picks {candidates}, patching {causal}: no head in common"
        head = both[0]
        layer, index = map(int, HEAD.match(head).groups())

        # 3. Where it looks: the key position the last token attends to most.
        args, pattern = await s.next("attention_pattern", ["heads[0].keys[-1][0]", "tokens.str_tokens"])
        assert args["heads"] == [head], f"SKILL.md looks at {args['heads']}; the tools point at {head}"
        key = field(pattern, "heads[0].keys[-1][0]")
        tokens = pattern["tokens"]["str_tokens"]
        clean = args["prompt"]
        corrupted = calls[1].arguments["corrupted"]
        assert clean != corrupted
        changed = [i for i, (a, b) in enumerate(zip(clean.split(), corrupted.split(), strict=True)) if a != b]
        assert tokens[key].strip() == clean.split()[changed[0]], (
            f"{head} attends to {tokens[key]!r}; the workflow says it reads the repeated name")

        # 4. Which input of that head carries the difference: q, k, v of its layer.
        best = {}
        for letter in ("q", "k", "v"):
            args, result = await s.next("patch", ["hotspots[].label", "hotspots[].normalised"])
            assert args["what"] == letter and args["layers"] == [layer], (
                f"SKILL.md patches {args['what']} of layers {args['layers']}; the head found is in layer {layer}")
            best[letter] = max(result["hotspots"], key=lambda h: h["normalised"] or 0)
        group = 9 // 3  # smollm2: 9 query heads share 3 kv heads
        assert best["v"]["label"] == f"L{layer}KV{index // group}" and best["v"]["normalised"] > 0.3, best["v"]
        assert max(best["q"]["normalised"], best["k"]["normalised"]) < 0.2, (best["q"], best["k"])
        receiver = f"{head}.v"

        # 5. What feeds that input: no single head, the MLPs (MLP0) do.
        args, from_heads = await s.next("path_patch", ["hotspots"])
        assert args["receivers"] == [receiver] and args["senders"] == "heads", args
        assert max(abs(h["normalised"]) for h in from_heads["hotspots"]) < 0.05, from_heads["hotspots"][:3]
        args, from_mlps = await s.next("path_patch", ["hotspots"])
        assert args["receivers"] == [receiver] and args["senders"] == "mlps", args
        assert from_mlps["hotspots"][0]["label"] == "L0" and from_mlps["hotspots"][0]["normalised"] > 0.3

        # 6. Necessity: ablating the candidates lowers the metric, the head found most.
        args, one_by_one = await s.next("ablate", ["hotspots[].effect"])
        assert args["components"][0] == head
        effects = {h["label"]: h["effect"] for h in one_by_one["hotspots"]}
        assert all(e < 0 for e in effects.values()), effects
        assert min(effects, key=effects.get) == head, effects
        args, together = await s.next("ablate", ["hotspots[].effect"])
        assert args.get("together") is True
        assert together["hotspots"][0]["effect"] < min(effects.values()), (together["hotspots"], effects)

        # 7. The OV side: attribution to the attended name alone, with no baseline.
        args, alone = await s.next("logit_attribution", ["contributions"])
        assert "baseline" not in args and args["answer"] == tokens[key], args
        written = {c["component"]: c["value"] for c in alone["contributions"]}
        assert written.get(head, 0) < -1, f"{head} should push the name it attends to down: {written}"

        assert s.step == len(s.calls), f"SKILL.md's IOI workflow has calls the session did not expect: {s.calls[s.step:]}"
        return head

    assert run(server, agent) == "L23H3"
