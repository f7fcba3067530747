"""The `lens` command: `lens demo` (also `python -m lens`) runs the main job on a model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from lens.loading import DEFAULT_MODEL

DEMO_PROMPT = "The Eiffel Tower is in the city of"
DEMO_ANSWER = " Paris"


def demo(model_name: str = DEFAULT_MODEL, prompt: str = DEMO_PROMPT, answer: str = DEMO_ANSWER,
         out_dir: str | Path = "lens-demo", top_k: int = 5, out=sys.stdout) -> list[str]:
    """The tour: summary, top next tokens, a per-layer table (residual norm, logit-lens top token),
    then logit lens, DLA by head and induction heads with their plots, the IOI activation-patching
    sweeps with their heatmaps, and a steering example. Returns the plot paths."""
    from lens import HookedTransformer, plots
    from lens.analysis import detect_heads, direct_logit_attribution, induction_loss, logit_lens

    model = HookedTransformer.from_pretrained(model_name)
    print(model.summary(), file=out)
    print(f"\nprompt: {prompt!r}\ntokens: {model.to_str_tokens(prompt)}", file=out)
    with torch.no_grad():
        logits, cache = model.run_with_cache(prompt, names_filter=lambda n: n.endswith("hook_resid_post"))
    top = logits[0, -1].softmax(-1).topk(top_k)
    print(f"\ntop {top_k} next tokens:", file=out)
    for p, i in zip(top.values, top.indices, strict=True):
        print(f"  {model.to_string([int(i)])!r:>16}  {p.item():.3f}", file=out)
    lens_result = logit_lens(model, prompt, targets=[answer])
    print("\nlayer  |resid_post| at last pos  logit-lens top token (prob)", file=out)
    for layer in range(model.cfg.n_layers):
        (token, p), = lens_result.layers[layer + 1].top[:1]
        norm = cache["resid_post", layer][0, -1].norm().item()
        print(f"{layer:5d}  {norm:24.1f}  {token!r} ({p:.3f})", file=out)

    out_dir = Path(out_dir)
    dla = direct_logit_attribution(model, prompt, answer, by="head")
    heads = detect_heads(model, "induction")
    sections = [  # (what to print, plot path); the logit lens table is above, so only its verdict
        ("logit lens: " + lens_result.summary().splitlines()[-1],
         plots.plot_logit_lens(lens_result, out_dir / "logit_lens.png")),
        (dla.summary(), plots.plot_dla(dla, out_dir / "dla_by_head.png")),
        (induction_loss(model).summary() + "\n" + heads.summary(),
         plots.plot_head_scores(heads, out_dir / "induction_heads.png")),
    ]
    sections += interventions(model, out_dir)
    sections += features(model, out_dir)
    for text, path in sections:
        print(f"\n{text}\nplot: {path}" if path else f"\n{text}", file=out)
    return [path for _, path in sections if path]


IOI_ROWS = 16  # the demo's generated IOI set: rows before filtering (each costs about one prompt's sweep)
STEER_PROMPT = "I think that you are"
STEER_POSITIVE = ["I love this, it is wonderful", "What a great and happy day"]
STEER_NEGATIVE = ["I hate this, it is awful", "What a terrible and sad day"]


def interventions(model, out_dir: Path) -> list[tuple[str, str | None]]:
    """The IOI activation-patching sweeps over a generated IOI set (resid_pre by layer × named position,
    heads by layer × head; name-swap corruption, the rows the model gets right), and an activation-addition
    steering example: (text, plot path) per section."""
    from lens.analysis import steer, steering_vector
    from lens.data import make_dataset
    from lens.patching import patch

    ioi, report = make_dataset(model, "ioi", n=IOI_ROWS, seed=0).filter(model, by="metric")
    sections = [(f"{ioi.summary()}\n{report.summary()}", None)]
    for what, positions in (("resid_pre", ["IO", "S1", "S2", "END"]), ("heads", None)):
        result = patch(model, ioi, what=what, positions=positions, top_k=5, progress=False)
        sections.append((result.summary(), result.plot(out_dir / f"ioi_patch_{what}.png")))
    layer = max(1, model.cfg.n_layers // 7)  # early: a sentiment direction steers there (SmolLM2: layer 4)
    vector = steering_vector(model, STEER_POSITIVE, STEER_NEGATIVE, layer=layer)
    steered = steer(model, STEER_PROMPT, vector, layer=layer, coefficients=[-3.0, 0.0, 3.0], max_new_tokens=12,
                    tokens=[" wonderful", " awful"])
    sections.append((steered.summary(), None))
    sections.append(ioi_circuit(model, out_dir))
    return sections


def ioi_circuit(model, out_dir: Path, n: int = 16) -> tuple[str, str]:
    """Automated circuit discovery on a generated IOI set: the smallest EAP-IG circuit with faithfulness 0.8."""
    from lens.circuits import find_circuit
    from lens.data import make_dataset
    from lens.data.metrics import row_metric

    ps = make_dataset(model, "ioi", n=n, seed=0)
    found = find_circuit(model, ps, metric=row_metric(ps, "logit_diff"), method="eap-ig", faithfulness=0.8)
    found.circuit.save(out_dir / "ioi_circuit.json")
    return f"IOI circuit ({n} prompts):\n" + found.summary(8), found.plot(out_dir / "ioi_circuit.png")


def prepare(model_name: str = DEFAULT_MODEL) -> None:
    """Convert the model's weights, train its default dictionary and generate the held-out text, all cached
    (LENS_CACHE), so that `lens demo` starts from the cache: `make` runs this once when it sets up."""
    from lens import HookedTransformer
    from lens.sae import train

    model = HookedTransformer.from_pretrained(model_name)
    train.default_dictionary(model)
    train.heldout_texts(model)
    print(f"cached: {model_name}'s weights and dictionary ({train.training_summary(model)})")


def investigate_command(args) -> None:
    from lens import HookedTransformer, investigate
    from lens.data import make_dataset

    model = HookedTransformer.from_pretrained(args.model)
    ps = make_dataset(model, args.task, n=args.n, seed=args.seed)
    report = investigate(model, ps, args.metric, args.out)
    print(report.summary())


CITY_TEXT = "I flew from Paris to Tokyo, then on to Berlin and Madrid."
CITIES = [" Paris", " Tokyo", " Berlin", " Madrid", " London", " Rome", " Vienna", " Prague", " Budapest", " Lisbon",
          " Barcelona", " Sydney", " Dubai", " Seoul", " Edinburgh", " Amsterdam", " Moscow", " Cairo", " Boston",
          " Istanbul", " Athens", " Beijing", " Mumbai", " Chicago", " Dublin"]  # one token each in SmolLM2
PLACE_PROMPTS = ["Next year the conference moves to", "I was born in the city of", "Our flight landed in",
                 "The best pizza I ever had was in", "They bought a flat in", "The marathon is held every year in"]


def features(model, out_dir: Path) -> list[tuple[str, str | None]]:
    """The default dictionary on the model (lens.sae.train; about a minute to train once, then cached): its
    quality on held-out text, the features of a sentence, the feature most selective for city names with
    its top contexts over held-out text, and its causal check (ablated, added)."""
    from lens.sae import train
    from lens.sae.quality import quality
    from lens.sae.reading import max_activating, selective_features, top_features
    from lens.sae.steering import token_set_effect

    cached = train.is_cached(model)
    sae = train.default_dictionary(model)
    heldout = train.heldout_texts(model)
    generated = heldout[-len(train.HELDOUT_PROMPTS):]  # everyday text, places among it
    checked = quality(model, sae, heldout[50:])  # the last 10 held-out docstrings and the generated texts
    top = top_features(model, sae, CITY_TEXT, k=3)
    city = selective_features(model, sae, generated, CITIES, k=1)[0]
    contexts = max_activating(model, sae, heldout, city.feature, k=6, window=(6, 2))
    effect = token_set_effect(model, sae, PLACE_PROMPTS, city.feature, CITIES, coefficient=round(city.on_targets))
    how = "cached" if cached else "trained now, cached for next time"
    return [(f"dictionary ({how}): {sae!r}, trained on {train.training_summary(model)}\n{checked.summary()}", None),
            (top.summary(), top.plot(out_dir / "features.png")),
            (f"feature #{city.feature} is the most selective for city names in {len(generated)} held-out texts "
             f"(mean {city.on_targets:.2f} on them, {city.elsewhere:.2f} elsewhere)\n{contexts.summary()}\n"
             f"{effect.summary()}", None)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lens", description="lens: a hooked-transformer interpretability engine")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("demo", help="summary, top next tokens and a per-layer logit-lens table")
    run.add_argument("--model", default=DEFAULT_MODEL, help=f"alias, hub id, folder or .gguf (default {DEFAULT_MODEL})")
    run.add_argument("--prompt", default=DEMO_PROMPT)
    run.add_argument("--answer", default=DEMO_ANSWER, help="the expected next token (one token)")
    run.add_argument("--out", default="lens-demo", help="folder for the plots (default ./lens-demo)")
    sub.add_parser("models", help="list the registry aliases")
    prep = sub.add_parser("prepare", help="fill the cache the demo reads: the model's converted weights and its "
                                          "trained dictionary (about 1.5 min of CPU once)")
    prep.add_argument("--model", default=DEFAULT_MODEL)
    inv = sub.add_parser("investigate", help="the standard battery on a generated prompt set → a Markdown report")
    inv.add_argument("--model", default=DEFAULT_MODEL)
    inv.add_argument("--task", default="ioi", choices=["ioi", "factual", "induction", "greater_than", "agreement"])
    inv.add_argument("--n", type=int, default=50, help="prompts in the set (default 50)")
    inv.add_argument("--seed", type=int, default=0)
    inv.add_argument("--metric", default="logit_diff", choices=["logit_diff", "logit", "prob", "logprob"])
    inv.add_argument("--out", default="lens-investigation", help="folder for report.md and its plots")
    args = parser.parse_args(argv)
    if args.command == "models":
        from lens import list_models
        for m in list_models():
            print(f"{m['alias']:14s} {m['hub_id']:40s} installed={m['installed']}  {m['description']}")
        return
    if args.command == "investigate":
        investigate_command(args)
        return
    if args.command == "prepare":
        prepare(args.model)
        return
    if args.command is None:  # `python -m lens` alone runs the demo
        args = parser.parse_args(["demo"])
    demo(args.model, args.prompt, args.answer, args.out)


if __name__ == "__main__":
    main()
