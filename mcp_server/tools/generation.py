"""generate: continue a prompt (greedy by default, so that a call is reproducible)."""

from __future__ import annotations

from typing import Annotated

import torch
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from mcp_server.schemas import ModelRef, Prompt, ToolResult
from mcp_server.state import state_of
from mcp_server.tools.annotations import READ_ONLY

MaxNewTokens = Annotated[int, Field(ge=1, le=512)]
Temperature = Annotated[float, Field(gt=0, le=10)]
SamplingTopK = Annotated[int | None, Field(ge=1, le=100_000)]
TopP = Annotated[float | None, Field(gt=0, le=1)]
StopStrings = Annotated[list[Annotated[str, Field(min_length=1, max_length=100)]], Field(max_length=10)]


class Generation(ToolResult):
    completion: str = Field(description="the generated text only (without the prompt)")
    n_new_tokens: int
    stopped_by: str = Field(description="'eos', 'stop_string' or 'max_new_tokens'")


def completion_of(model, output: torch.Tensor, n_prompt: int, stop_strings: list[str]) -> tuple[str, int, str]:
    """(text, token count, why it stopped) of the generated part of output [1, pos] (lens pads a
    stopped row with EOS, so the count ends at the first EOS)."""
    new = output[0, n_prompt:].tolist()
    eos = model.cfg.eos_token_id
    n = new.index(eos) + 1 if eos is not None and eos in new else len(new)
    text = model.tokenizer.decode(new[:n], skip_special_tokens=True)
    why = "eos" if n and new[n - 1] == eos else "stop_string" if any(s in text for s in stop_strings) else \
        "max_new_tokens"
    return text, n, why


def generate(
    ctx: Context,
    prompt: Prompt,
    max_new_tokens: MaxNewTokens = 32,
    do_sample: bool = False,
    temperature: Temperature = 1.0,
    top_k: SamplingTopK = None,
    top_p: TopP = None,
    repetition_penalty: Annotated[float, Field(gt=0, le=10)] = 1.0,
    stop_strings: StopStrings = (),
    seed: Annotated[int | None, Field(ge=0, le=2**31 - 1)] = None,
    model: ModelRef = None,
) -> Generation:
    """Continue a prompt (greedy unless do_sample) to EOS, a stop string or max_new_tokens: what the
    model does, before asking why."""
    state = state_of(ctx)
    with state.using(model) as entry:
        m = entry.model
        n_prompt = m.to_tokens(prompt, truncate=False).shape[1]
        if n_prompt + max_new_tokens > m.cfg.n_ctx:
            raise ToolError(f"the prompt is {n_prompt} tokens and max_new_tokens {max_new_tokens}: together past "
                            f"the context window of {m.cfg.n_ctx}; use max_new_tokens <= "
                            f"{max(0, m.cfg.n_ctx - n_prompt)} or a shorter prompt")
        output = m.generate(prompt, max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                            top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
                            stop_strings=stop_strings or None, seed=seed, return_type="tokens", verbose=False)
        text, n_new, why = completion_of(m, output, n_prompt, stop_strings)
    return Generation(model=entry.handle, completion=text, n_new_tokens=n_new, stopped_by=why,
                      interpretation=f"generated {n_new} tokens ({'sampled' if do_sample else 'greedy'}, "
                                     f"stopped by {why}): {text[:120]!r}")


TOOLS = [(generate, READ_ONLY)]
