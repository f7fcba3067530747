"""Training a small dictionary offline: lens supplies activations, SAELens's trainer fits the SAE.

The corpus is text this machine has, with no download:
- documentation: the docstrings of a fixed list of Python standard-library modules (English prose
  about programming, files, dates, networks, numbers);
- generated text: the model's own continuations (sampled with a fixed seed) of varied prompts about
  places, people, food, sport, science and code, so that everyday topics, names of cities and
  countries among them, appear too.
The text is tokenised, concatenated and cut into rows of `context` tokens; the activations at the
hook (first position of each row left out, as SAELens leaves out BOS) feed SAELens's SAETrainer
as a plain iterator of batches. The result is cached like converted weights (LENS_CACHE), keyed by
the model file, the hook and the recipe, so later calls load it in well under a second.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lens.sae.config import DictionaryError
from lens.sae.dictionary import SAE

CORPUS_VERSION = 1
DOC_MODULES = ("json", "collections", "itertools", "functools", "pathlib", "re", "datetime", "random", "statistics",
               "textwrap", "argparse", "logging", "csv", "sqlite3", "calendar", "decimal", "fractions", "string",
               "shutil", "tempfile", "zipfile", "hashlib", "heapq", "bisect", "contextlib", "dataclasses", "enum",
               "threading", "subprocess", "socket", "html", "difflib", "pprint", "copy", "math", "email.message",
               "urllib.parse", "http.client", "smtplib", "ftplib", "locale", "gettext", "zoneinfo", "time", "uuid")
# Held out of training: text to evaluate a dictionary on (lens.sae.quality).
HELDOUT_MODULES = ("os", "pickle", "inspect", "typing", "unittest", "queue", "array", "struct", "gzip", "base64")
PROMPTS = (
    "My favourite city to visit is", "Last summer we travelled from", "The capital of", "She was born in a town near",
    "The flight from London to", "Tourists in Italy often visit", "The largest country in South America is",
    "He moved from Berlin to", "The best food I ate in Japan was", "Our hotel in Paris was", "The train to Madrid",
    "In Canada, winters are", "The population of Tokyo", "The river that flows through Cairo", "Australia is famous for",
    "The conference will be held in", "Growing up in Mumbai, I", "The embassy of France in", "From New York we drove",
    "The weather in Moscow", "My grandmother makes soup with", "The recipe calls for", "The football match ended",
    "The team won the championship after", "In Python, a dictionary", "To install the package, run",
    "The function returns a list of", "The stock market fell because", "The doctor told the patient that",
    "Photosynthesis is the process by which", "The planet Jupiter", "Water boils at", "The history of the Roman Empire",
    "The first world war began in", "My cat likes to", "The children played in the", "The new phone has a camera",
    "The guitar solo in the song", "Bake the cake for", "The election results showed", "Scientists discovered a new",
    "The museum in Amsterdam", "We took a boat from Athens to", "The mountains of Switzerland", "The coffee in Brazil",
    "Students at the university in Boston", "The market in Istanbul sells", "The beaches of Spain and Portugal",
    "The desert between Egypt and Libya", "Cities in China such as Beijing and",
)


@dataclass(frozen=True)
class Recipe:
    """What a trained dictionary depends on, besides the model (all part of the cache key)."""

    hook: str = "blocks.6.hook_resid_post"
    d_sae: int = 1024
    k: int = 16  # TopK: active features per token
    context: int = 64
    generated_tokens: int = 24  # per prompt of PROMPTS, sampled with `seed`; 0 = documentation only
    max_rows: int | None = None  # cap on the corpus, in rows of `context` tokens
    steps: int = 500
    batch: int = 256
    lr: float = 1e-3
    seed: int = 0


# A dictionary that trains in seconds (documentation text only, 8k tokens): for tests and for the demo
# on a machine where the default one is not cached yet. Its numbers are worse; it exercises the path.
QUICK = Recipe(d_sae=256, k=8, generated_tokens=0, max_rows=128, steps=150)


def documentation_texts(modules: tuple[str, ...] = DOC_MODULES) -> list[str]:
    """Docstrings of `modules` and their public members, a paragraph at most 600 characters each."""
    texts = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        objects = [module] + [getattr(module, m) for m in sorted(dir(module)) if not m.startswith("_")]
        for obj in objects:
            doc = inspect.getdoc(obj) if (obj is module or getattr(obj, "__module__", None) == name) else None
            for para in (doc or "").split("\n\n"):
                para = " ".join(para.split())
                if len(para) > 80 and not para.startswith((">>>", "...")):
                    texts.append(para[:600])
    return list(dict.fromkeys(texts))


def generated_texts(model, n_tokens: int, seed: int) -> list[str]:
    out = model.generate(list(PROMPTS), max_new_tokens=n_tokens, do_sample=True, temperature=0.8, top_p=0.95,
                         repetition_penalty=1.2, seed=seed, verbose=False, return_type="str")
    return [t for t in out if t.strip()]


def token_rows(model, texts: list[str], context: int) -> torch.Tensor:
    """[n_rows, context]: the texts tokenised, each starting with BOS, concatenated and cut into rows."""
    ids = []
    for text in texts:
        ids += model.to_tokens(text, prepend_bos=True)[0].tolist()
    n = len(ids) // context
    return torch.tensor(ids[: n * context]).view(n, context)


@torch.no_grad()
def activations(model, hook: str, rows: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """[n_rows * (context - 1), d]: the activations at `hook`, the first position of each row left out."""
    layer = model.hook_dict[hook].layer()
    out = []
    for i in range(0, len(rows), batch):
        _, cache = model.run_with_cache(rows[i:i + batch], names_filter=hook, stop_at_layer=layer + 1)
        out.append(cache[hook][:, 1:].flatten(0, 1).float().cpu())
    return torch.cat(out)


def fit(acts: torch.Tensor, recipe: Recipe, model_name: str | None = None) -> SAE:
    """A TopK SAE fitted to activations [n, d_in] by SAELens's SAETrainer; returned as a lens.SAE."""
    try:
        from sae_lens.config import LoggingConfig, SAETrainerConfig
        from sae_lens.saes.sae import SAEMetadata
        from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
        from sae_lens.training.sae_trainer import SAETrainer
    except ImportError as e:
        raise DictionaryError(f"training a dictionary uses SAELens's trainer (pip install sae-lens): {e}") from e
    torch.manual_seed(recipe.seed)
    sae_cfg = TopKTrainingSAEConfig(d_in=acts.shape[1], d_sae=recipe.d_sae, k=recipe.k,
                                    metadata=SAEMetadata(hook_name=recipe.hook, model_name=model_name))
    training_sae = TopKTrainingSAE(sae_cfg)
    with torch.no_grad():  # start b_dec at the data's median-ish centre (the mean), as is common
        training_sae.b_dec.copy_(acts.mean(0))
    gen = torch.Generator().manual_seed(recipe.seed)

    def batches():
        while True:
            order = torch.randperm(len(acts), generator=gen)
            for i in range(0, len(order) - recipe.batch + 1, recipe.batch):
                yield acts[order[i:i + recipe.batch]]

    trainer_cfg = SAETrainerConfig(total_training_samples=recipe.steps * recipe.batch,
                                   train_batch_size_samples=recipe.batch, lr=recipe.lr, lr_end=recipe.lr / 10,
                                   lr_scheduler_name="cosineannealing", lr_decay_steps=recipe.steps // 3,
                                   logger=LoggingConfig(log_to_wandb=False), dead_feature_window=200,
                                   feature_sampling_window=400)
    trainer = SAETrainer(cfg=trainer_cfg, sae=training_sae, data_provider=batches())
    trained = trainer.fit()
    with tempfile.TemporaryDirectory() as tmp:
        trained.save_inference_model(tmp)
        return SAE.load(tmp)


def cache_dir() -> Path:
    from lens.loading.weight_cache import cache_root
    return cache_root().parent / "dictionaries"


def _key(model, recipe: Recipe) -> str:
    info = model.load_info or {}
    source = Path(info.get("source") or ".")
    stat = source.stat() if source.is_file() else None
    ident = {"model": info.get("name") or model.cfg.model_type, "source": str(source),
             "size": stat.st_size if stat else None, "recipe": asdict(recipe), "corpus": CORPUS_VERSION,
             "python": sys.version_info[:2]}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


def is_cached(model, recipe: Recipe = Recipe()) -> bool:
    return (cache_dir() / _key(model, recipe) / "complete").exists()


def default_dictionary(model, recipe: Recipe = Recipe(), verbose: bool = True) -> SAE:
    """The dictionary `recipe` trains on this model, from the cache or trained now (and cached).

    On SmolLM2-135M with the default recipe, training takes a few minutes of CPU once; a cached
    entry loads in well under a second. `stats.json` in the entry records the corpus and timings."""
    entry = cache_dir() / _key(model, recipe)
    if (entry / "complete").exists():
        try:
            return SAE.load(entry).to(model.device)
        except DictionaryError:
            shutil.rmtree(entry, ignore_errors=True)
    started = time.perf_counter()
    if verbose:
        print(f"training a dictionary at {recipe.hook} (cached in {entry} for next time)...", file=sys.stderr)
    texts = documentation_texts()
    if recipe.generated_tokens:
        texts += generated_texts(model, recipe.generated_tokens, recipe.seed)
    rows = token_rows(model, texts, recipe.context)
    if recipe.max_rows is not None:  # an even spread over the corpus, not just its start
        rows = rows[torch.linspace(0, len(rows) - 1, min(recipe.max_rows, len(rows))).long()]
    acts = activations(model, recipe.hook, rows)
    collected = time.perf_counter()
    sae = fit(acts, recipe, model.load_info.get("name"))
    stats = {"texts": len(texts), "tokens": int(rows.numel()), "training_tokens": len(acts),
             "collect_s": round(collected - started, 1), "fit_s": round(time.perf_counter() - collected, 1),
                      "corpus": "stdlib docstrings" + (" + model-generated continuations of lens.sae.train.PROMPTS"
                                              if recipe.generated_tokens else "")}
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=".tmp-"))
    try:
        sae.save(tmp)
        (tmp / "stats.json").write_text(json.dumps(stats, indent=1))
        (tmp / "complete").write_text("")
        shutil.rmtree(entry, ignore_errors=True)
        tmp.rename(entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if verbose:
        print(f"trained in {stats['collect_s'] + stats['fit_s']:.0f} s: {stats}", file=sys.stderr)
    return sae.to(model.device)
