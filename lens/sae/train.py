"""Training a small dictionary offline: lens supplies activations, SAELens's trainer fits the SAE.

The corpus is text this machine has, with no download:
- documentation: the docstrings of the Python standard library's own source files (read with `ast`,
  nothing imported; every pure-Python module and package but a few held out, see HELDOUT_MODULES):
  English prose about programming, files, dates, networks, numbers, mail, protocols;
- generated text: the model's own continuations (sampled with a fixed seed) of varied prompts about
  places, people, food, sport, science and code, so that everyday topics, names of cities and
  countries among them, appear too.
Each text is tokenised; the texts, joined by blank lines, are cut into rows of `context` tokens that
each start with BOS, and the activations at the hook (BOS left out, as SAELens leaves it out) feed
SAELens's SAETrainer as a plain iterator of batches. The result is cached like converted weights
(LENS_CACHE), keyed by the model file, the hook and the recipe, so later calls load it in well under
a second. Held-out text to evaluate a dictionary on (other modules' docstrings, continuations of
other prompts) comes from `heldout_texts`.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal
from unittest.mock import patch

import torch

from lens.sae.config import DictionaryError
from lens.sae.dictionary import SAE

CORPUS_VERSION = 2
# Held out of training: text to evaluate a dictionary on (lens.sae.quality).
HELDOUT_MODULES = ("os", "pickle", "inspect", "typing", "unittest", "queue", "gzip", "base64", "tarfile", "ssl")
SKIPPED_MODULES = ("idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "pydoc_data", "encodings", "test",
                   "this", "antigravity")  # GUI, test and data modules: little prose
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
HELDOUT_PROMPTS = (  # continued with another seed: held-out everyday text (places among it)
    "Next spring I would like to travel to", "The old bridge in Prague", "Her parents live in a village outside",
    "The busiest airport in Europe is", "We spent a week in Lisbon and", "The streets of Rome at night",
    "The train from Vienna arrived in", "Many people in Sydney", "The festival in Edinburgh", "A weekend in Barcelona",
    "The tallest building in Dubai", "My brother works in Seoul as", "The bakery on our street", "The storm knocked",
    "After the exam the students", "The gardener planted", "The orchestra played", "Our neighbour's dog",
    "The price of bread", "The spacecraft reached", "He opened the file and", "The company hired",
    "In the winter of 1990", "The recipe for pancakes", "The hikers reached the summit of",
)
Normalization = Literal["none", "expected_average_only_in"]


@dataclass(frozen=True)
class Recipe:
    """What a trained dictionary depends on, besides the model (all part of the cache key)."""

    hook: str = "blocks.6.hook_resid_post"
    d_sae: int = 1024
    k: int = 16  # TopK: active features per token
    context: int = 64
    generated_tokens: int = 40  # per prompt of PROMPTS, sampled with `seed`; 0 = documentation only
    max_rows: int | None = 640  # cap on the corpus, in rows of `context` tokens (generated rows all kept)
    steps: int = 800
    batch: int = 256
    lr: float = 2e-3
    # SAELens's input scaling to mean norm sqrt(d_in) while training; it folds the factor into the saved
    # weights (the saved config says "none"), so the dictionary reads raw activations and splices exactly.
    normalize_activations: Normalization = "expected_average_only_in"
    seed: int = 0


# A dictionary that trains in a few seconds (documentation text only, 8k tokens): for tests of the
# training path. Its numbers are worse (see tests/test_sae_real.py); use the default Recipe to read features.
QUICK = Recipe(d_sae=256, k=8, generated_tokens=0, max_rows=128, steps=150, lr=1e-3)


def module_files(names) -> list[Path]:
    """The source files of modules `names` (a package: its own top-level .py files), found without importing."""
    files = []
    for name in names:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is None or not (spec.origin or "").endswith(".py"):
            continue  # built-in or compiled: no source to read
        folders = spec.submodule_search_locations or []
        files += sorted(p for f in folders for p in Path(f).glob("*.py")) if folders else [Path(spec.origin)]
    return files


def documentation_texts(modules: tuple[str, ...] | None = None, limit: int = 600) -> list[str]:
    """Docstrings of `modules` (default: the standard library but SKIPPED_ and HELDOUT_MODULES) and of their
    public classes and functions, read from source with `ast`: paragraphs of prose, at most `limit` characters."""
    if modules is None:
        left_out = set(SKIPPED_MODULES) | set(HELDOUT_MODULES)
        modules = tuple(n for n in sorted(sys.stdlib_module_names) if not n.startswith("_") and n not in left_out)
    texts = []
    for path in module_files(modules):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                          ast.ClassDef)) and not n.name.startswith("_")]
        for node in nodes:
            for para in (ast.get_docstring(node) or "").split("\n\n"):
                para = " ".join(para.split())
                if len(para) > 80 and not para.startswith((">>>", "...")):
                    texts.append(para[:limit])
    return list(dict.fromkeys(texts))


def generated_texts(model, n_tokens: int, seed: int, prompts: tuple[str, ...] = PROMPTS) -> list[str]:
    """The model's sampled continuations (n_tokens each, one batched generation) of `prompts`, prompt included."""
    out = model.generate(list(prompts), max_new_tokens=n_tokens, do_sample=True, temperature=0.8, top_p=0.95,
                         repetition_penalty=1.2, seed=seed, verbose=False, return_type="str")
    return [t for t in out if t.strip()]


def heldout_texts(model, n_docs: int = 60, generated_tokens: int = 40) -> list[str]:
    """Text no recipe trains on: the first `n_docs` docstring paragraphs of HELDOUT_MODULES, then the
    model's continuations of HELDOUT_PROMPTS (seed 1). With the defaults about 4,000 tokens on smollm2;
    generated once per model and cached beside the dictionaries."""
    info = model.load_info or {}
    ident = {"model": info.get("name") or model.cfg.model_type, "n_docs": n_docs, "tokens": generated_tokens,
             "corpus": CORPUS_VERSION, "python": sys.version_info[:2]}
    path = cache_dir() / f"heldout-{hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]}.json"
    if path.exists():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass
    texts = documentation_texts(HELDOUT_MODULES)[:n_docs] + generated_texts(model, generated_tokens, 1,
                                                                             HELDOUT_PROMPTS)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(texts))
    tmp.replace(path)
    return texts


def token_rows(model, texts: list[str], context: int) -> torch.Tensor:
    """[n_rows, context]: BOS, then context - 1 tokens of the texts joined by blank lines, row after row."""
    tokenizer = model.tokenizer
    sep = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    stream = [i for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"] for i in ids + sep]
    n = len(stream) // (context - 1)
    rows = torch.tensor(stream[: n * (context - 1)], dtype=torch.long).view(n, context - 1)
    return torch.cat([torch.full((n, 1), model.cfg.bos_token_id, dtype=torch.long), rows], dim=1)


@torch.no_grad()
def activations(model, hook: str, rows: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """[n_rows * (context - 1), d]: the activations at `hook`, the first position (BOS) of each row left out."""
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
                                    normalize_activations=recipe.normalize_activations,
                                    metadata=SAEMetadata(hook_name=recipe.hook, model_name=model_name))
    training_sae = TopKTrainingSAE(sae_cfg)
    # SAELens's "expected_average_only_in" trains on x × sqrt(d_in) / mean ‖x‖ (its estimate, on a sample)
    scale = acts.shape[1] ** 0.5 / acts.norm(dim=-1).mean() if recipe.normalize_activations != "none" else 1.0
    with torch.no_grad():  # start b_dec at the data's centre (the mean), as is common
        training_sae.b_dec.copy_(acts.mean(0) * scale)
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
                                   feature_sampling_window=400, n_batches_for_norm_estimate=100)
    trainer = SAETrainer(cfg=trainer_cfg, sae=training_sae, data_provider=batches())
    trained = trainer.fit()
    with tempfile.TemporaryDirectory() as tmp:
        trained.save_inference_model(tmp)
        return SAE.load(tmp)


@contextlib.contextmanager
def _quiet_sae_lens():
    """SAELens's trainer without its tqdm progress bars (tqdm reads TQDM_DISABLE only when imported)."""
    from functools import partial

    from tqdm.auto import tqdm
    with contextlib.ExitStack() as stack:
        for name in ("sae_lens.training.sae_trainer", "sae_lens.training.activation_scaler"):
            module = importlib.import_module(name)
            if hasattr(module, "tqdm"):
                stack.enter_context(patch.object(module, "tqdm", partial(tqdm, disable=True)))
        yield


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


def training_summary(model, recipe: Recipe = Recipe()) -> str:
    """What the cached dictionary of `recipe` was trained on, and how long it took (from its stats.json)."""
    stats = json.loads((cache_dir() / _key(model, recipe) / "stats.json").read_text())
    return (f"{stats['training_tokens']:,} tokens of {stats['corpus']} ({stats['generated_tokens']:,} generated), "
            f"in {stats['total_s']:.0f} s")


def default_dictionary(model, recipe: Recipe = Recipe(), verbose: bool = True) -> SAE:
    """The dictionary `recipe` trains on this model, from the cache or trained now (and cached).

    On SmolLM2-135M with the default recipe, training takes about a minute of CPU once; a cached entry
    loads in well under a second. `stats.json` in the entry records the corpus and timings."""
    entry = cache_dir() / _key(model, recipe)
    if (entry / "complete").exists():
        try:
            return SAE.load(entry).to(model.device)
        except DictionaryError:
            shutil.rmtree(entry, ignore_errors=True)
    if verbose:
        print(f"training a dictionary at {recipe.hook} (cached in {entry} for next time)...", file=sys.stderr)
    times, started = {}, time.perf_counter()

    def lap(what):
        nonlocal started
        times[what] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
    docs = token_rows(model, documentation_texts(), recipe.context)
    lap("documentation_s")
    generated = token_rows(model, generated_texts(model, recipe.generated_tokens, recipe.seed), recipe.context) \
        if recipe.generated_tokens else docs[:0]
    lap("generation_s")
    if recipe.max_rows is not None:  # every generated row, then an even spread over the documentation
        keep = max(recipe.max_rows - len(generated), 0)
        docs = docs[torch.linspace(0, len(docs) - 1, min(keep, len(docs))).long()]
    rows = torch.cat([generated, docs])
    acts = activations(model, recipe.hook, rows)
    lap("activations_s")
    with contextlib.ExitStack() as stack:
        if not verbose:  # SAELens's progress bars
            stack.enter_context(_quiet_sae_lens())
        sae = fit(acts, recipe, model.load_info.get("name"))
    lap("fit_s")
    stats = {"training_tokens": len(acts), "generated_tokens": len(generated) * (recipe.context - 1),
             "documentation_tokens": len(docs) * (recipe.context - 1), **times,
             "total_s": round(sum(times.values()), 1),
             "corpus": "docstrings of the Python standard library (lens.sae.train.documentation_texts)"
                       + (" + the model's continuations of lens.sae.train.PROMPTS" if recipe.generated_tokens else "")}
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
        print(f"trained in {stats['total_s']:.0f} s: {stats}", file=sys.stderr)
    return sae.to(model.device)
