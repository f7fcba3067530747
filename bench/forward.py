"""lens forward vs HF forward (sdpa), and lens run_with_cache of every hook vs HF eager forward."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from bench.timing import compare
from lens import HookedTransformer


def hf_pair(hf_sdpa_loader):
    """(HF sdpa model, HF eager model) sharing one set of weights."""
    sdpa = hf_sdpa_loader("sdpa")
    eager = hf_sdpa_loader("eager")
    eager.load_state_dict(sdpa.state_dict())
    return sdpa, eager


def default_model():
    from transformers import AutoModelForCausalLM
    model = HookedTransformer.from_pretrained("smollm2-135m", device="cpu")
    gguf = Path(model.load_info["source"])

    def load(impl):
        return AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                    attn_implementation=impl).eval()
    return "smollm2-135m", model, load


def gpt2_small_random():
    from transformers import AutoModelForCausalLM, GPT2Config
    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp())
    AutoModelForCausalLM.from_config(GPT2Config()).save_pretrained(folder)
    model = HookedTransformer.from_pretrained(str(folder), device="cpu")

    def load(impl):
        return AutoModelForCausalLM.from_pretrained(folder, attn_implementation=impl).eval()
    return "gpt2-small (random)", model, load


def run(shapes=((1, 64), (8, 128)), repeats: int = 7) -> list[dict]:
    rows = []
    for name, model, load in (default_model(), gpt2_small_random()):
        hf_sdpa, hf_eager = hf_pair(load)
        for batch, seq in shapes:
            tokens = torch.randint(100, model.cfg.d_vocab - 100, (batch, seq), generator=torch.Generator().manual_seed(0))
            with torch.no_grad():  # same weights, same answer: a benchmark of different models would be void
                diff = (model(tokens).log_softmax(-1) - hf_sdpa(tokens).logits.log_softmax(-1)).abs().max().item()
            # default arguments bind this iteration's model and tokens into each timed call
            t = compare({
                "lens": lambda m=model, x=tokens: m(x),
                "hf_sdpa": lambda m=hf_sdpa, x=tokens: m(x),
                "lens_cache": lambda m=model, x=tokens: m.run_with_cache(x),
                "hf_eager": lambda m=hf_eager, x=tokens: m(x),
            }, repeats=repeats)
            rows.append({"model": name, "shape": f"{batch}x{seq}", "max_dlogprob": diff,
                         "lens_ms": 1e3 * t["lens"], "hf_sdpa_ms": 1e3 * t["hf_sdpa"],
                         "forward_ratio": t["lens"] / t["hf_sdpa"],
                         "cache_ms": 1e3 * t["lens_cache"], "hf_eager_ms": 1e3 * t["hf_eager"],
                         "cache_ratio": t["lens_cache"] / t["hf_eager"]})
    return rows


def report(rows: list[dict]) -> str:
    lines = ["model                 shape   lens fwd  HF sdpa  ratio (≤1.10)   lens cache-all  HF eager  ratio (≤1.50)"]
    for r in rows:
        lines.append(f"{r['model']:20s} {r['shape']:>7s} {r['lens_ms']:8.1f}ms {r['hf_sdpa_ms']:7.1f}ms "
                     f"{r['forward_ratio']:8.2f}x      {r['cache_ms']:11.1f}ms {r['hf_eager_ms']:8.1f}ms "
                     f"{r['cache_ratio']:8.2f}x   (max |Δ log p| {r['max_dlogprob']:.1e})")
    return "\n".join(lines)
