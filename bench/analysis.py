"""detect_heads and direct_logit_attribution as multiples of one forward pass on the same input."""

from __future__ import annotations

import torch

from bench.timing import compare
from lens import HookedTransformer
from lens.analysis import detect_heads, direct_logit_attribution
from lens.analysis.heads import repeated_tokens

PROMPT = "The Eiffel Tower is in the city of"


def run(repeats: int = 7) -> list[dict]:
    model = HookedTransformer.from_pretrained("smollm2-135m", device="cpu")
    prompt_tokens = model.to_tokens(PROMPT)
    induction_tokens, _ = repeated_tokens(model, seq_len=40, batch=4)
    t = compare({
        "forward_prompt": lambda: model(prompt_tokens),
        "dla_head": lambda: direct_logit_attribution(model, PROMPT, " Paris", by="head"),
        "dla_neuron": lambda: direct_logit_attribution(model, PROMPT, " Paris", by="neuron"),
        "forward_repeated": lambda: model(induction_tokens),
        "detect_induction": lambda: detect_heads(model, "induction", seq_len=40, batch=4),
    }, repeats=repeats)
    return [
        {"what": "direct_logit_attribution(by='head')", "input": f"1 x {prompt_tokens.shape[1]}",
         "ms": 1e3 * t["dla_head"], "forward_ms": 1e3 * t["forward_prompt"], "ratio": t["dla_head"] / t["forward_prompt"]},
        {"what": "direct_logit_attribution(by='neuron')", "input": f"1 x {prompt_tokens.shape[1]}",
         "ms": 1e3 * t["dla_neuron"], "forward_ms": 1e3 * t["forward_prompt"],
         "ratio": t["dla_neuron"] / t["forward_prompt"]},
        {"what": "detect_heads('induction')", "input": f"4 x {induction_tokens.shape[1]}",
         "ms": 1e3 * t["detect_induction"], "forward_ms": 1e3 * t["forward_repeated"],
         "ratio": t["detect_induction"] / t["forward_repeated"]},
    ]


def report(rows: list[dict]) -> str:
    lines = ["analysis (smollm2-135m)                   input      time   one forward   ratio"]
    lines += [f"{r['what']:40s} {r['input']:>8s} {r['ms']:7.1f}ms {r['forward_ms']:9.1f}ms {r['ratio']:7.2f}x"
              for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    print(report(run()))
