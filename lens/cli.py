"""The `lens` command: `lens demo` (also `python -m lens`) runs the main job on a model."""

from __future__ import annotations

import argparse
import sys

import torch

from lens.loading import DEFAULT_MODEL

DEMO_PROMPT = "The Eiffel Tower is in the city of"


def demo(model_name: str = DEFAULT_MODEL, prompt: str = DEMO_PROMPT, top_k: int = 5, out=sys.stdout) -> None:
    """Model summary, the top next tokens, and per layer: residual norm and the logit-lens top token."""
    from lens import HookedTransformer

    model = HookedTransformer.from_pretrained(model_name)
    print(model.summary(), file=out)
    print(f"\nprompt: {prompt!r}\ntokens: {model.to_str_tokens(prompt)}", file=out)
    with torch.no_grad():
        logits, cache = model.run_with_cache(prompt, names_filter=lambda n: n.endswith("hook_resid_post"))
        probs = logits[0, -1].softmax(-1)
        top = probs.topk(top_k)
        print(f"\ntop {top_k} next tokens:", file=out)
        for p, i in zip(top.values, top.indices):
            print(f"  {model.to_string([int(i)])!r:>16}  {p.item():.3f}", file=out)
        print("\nlayer  |resid_post| at last pos  logit-lens top token (prob)", file=out)
        for layer in range(model.cfg.n_layers):
            resid = cache["resid_post", layer][:, -1:]
            lens_probs = model.unembed(resid)[0, -1].softmax(-1)
            p, i = lens_probs.max(-1)
            print(f"{layer:5d}  {resid.norm().item():24.1f}  {model.to_string([int(i)])!r} ({p.item():.3f})", file=out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lens", description="lens: a hooked-transformer interpretability engine")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("demo", help="summary, top next tokens and a per-layer logit-lens table")
    run.add_argument("--model", default=DEFAULT_MODEL, help=f"alias, hub id, folder or .gguf (default {DEFAULT_MODEL})")
    run.add_argument("--prompt", default=DEMO_PROMPT)
    sub.add_parser("models", help="list the registry aliases")
    args = parser.parse_args(argv)
    if args.command == "models":
        from lens import list_models
        for m in list_models():
            print(f"{m['alias']:14s} {m['hub_id']:40s} installed={m['installed']}  {m['description']}")
        return
    demo(getattr(args, "model", DEFAULT_MODEL), getattr(args, "prompt", DEMO_PROMPT))


if __name__ == "__main__":
    main()
