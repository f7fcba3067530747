"""lens.analysis on random models (exact properties) and on SmolLM2 (known results)."""

import pytest
import torch
from conftest import TINY_VARIANTS
from PIL import Image

from lens import HookedTransformer, plots
from lens.analysis import (
    attention_patterns,
    detect_heads,
    direct_logit_attribution,
    induction_loss,
    logit_lens,
    test_prompt,
)
from lens.analysis.heads import _stripe_scores

TOKENS = torch.randint(0, 50, (1, 9), generator=torch.Generator().manual_seed(0))
EIFFEL = "The Eiffel Tower is in the city of"


@pytest.fixture
def tiny():
    return HookedTransformer.from_config(TINY_VARIANTS["llama_like"], seed=2)


def test_stripe_scores_read_the_right_diagonal_with_and_without_bos():
    seq_len, n = 5, 11  # [BOS] r r
    perfect = torch.zeros(1, 1, 1, n, n)  # [layer, batch, head, q, k]
    perfect[..., 0, 0] = 1
    for q in range(1, n):
        perfect[..., q, q - seq_len + 1 if q > seq_len else 0] = 1  # induction from the second copy on
    second_copy = slice(1 + seq_len, n)
    assert _stripe_scores(perfect, seq_len - 1, second_copy, exclude_first_key=True).item() == 1.0
    assert _stripe_scores(perfect, seq_len, second_copy, exclude_first_key=True).item() == 0.0
    half_on_bos = perfect.clone()
    half_on_bos[..., second_copy, 0] = 1  # BOS takes half of every row; excluding it restores 1
    half_on_bos = half_on_bos / half_on_bos.sum(-1, keepdim=True)
    assert abs(_stripe_scores(half_on_bos, seq_len - 1, second_copy, True).item() - 1.0) <= 1e-6
    assert abs(_stripe_scores(half_on_bos, seq_len - 1, second_copy, False).item() - 0.5) <= 1e-6


def test_head_scores_are_a_layer_by_head_table_of_fractions(tiny):
    for kind in ("induction", "duplicate_token"):
        result = detect_heads(tiny, kind, seq_len=6, batch=2)
        scores = torch.tensor(result.scores)
        assert scores.shape == (3, 4) and scores.min() >= 0 and scores.max() <= 1
        assert result.top[0][2] == scores.max().item()
    with pytest.raises(ValueError, match="kind must be"):
        detect_heads(tiny, "copying")


def test_dla_contributions_and_bias_terms_sum_to_the_logit_difference(tiny):
    logits = tiny(TOKENS)[0, -1]
    for by in ("layer", "component", "head", "neuron"):
        result = direct_logit_attribution(tiny, TOKENS, 7, 3, by=by, top_k=5)
        assert abs(result.total - (logits[7] - logits[3]).item()) <= 1e-5
        listed = result.contributions + (result.others or [])
        summed = sum(v for _, v in listed) + result.rest + result.constant
        assert abs(summed - result.total) <= 1e-4, f"{by}: {summed} vs {result.total}"
    by_head = direct_logit_attribution(tiny, TOKENS, 7, by="head", top_k=3)
    grid = by_head.head_grid
    assert len(grid) == 3 and len(grid[0]) == 4
    # heads and the other terms ranked apart: the heads are the top 3 of the grid by |value|
    largest = sorted((abs(v) for row in grid for v in row), reverse=True)[:3]
    assert [abs(v) for _, v in by_head.contributions] == pytest.approx(largest, abs=1e-6)
    assert by_head.others and all(not name.startswith("L") or " " in name for name, _ in by_head.others)


def test_logit_lens_last_reading_is_the_models_prediction(tiny):
    result = logit_lens(tiny, TOKENS, targets=[7], pos=-1)
    probs = tiny(TOKENS)[0, -1].softmax(-1)
    assert len(result.layers) == 4 and result.layers[0].label == "embed"
    assert abs(result.layers[-1].targets[0].prob - probs[7].item()) <= 1e-5
    assert result.layers[-1].targets[0].rank == int((probs > probs[7]).sum())


def test_attention_patterns_return_the_cached_pattern(tiny):
    result = attention_patterns(tiny, TOKENS, [(1, 2)])
    _, cache = tiny.run_with_cache(TOKENS, names_filter=("pattern", 1))
    assert torch.allclose(torch.tensor(result.heads[0].pattern), cache["pattern", 1][0, 2])
    with pytest.raises(ValueError, match="does not exist"):
        attention_patterns(tiny, TOKENS, [(3, 0)])


def image_size(path):
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


def test_plots_write_png_files_of_the_expected_size(tiny, tmp_path):
    dla = direct_logit_attribution(tiny, TOKENS, 7, 3, by="head")
    assert image_size(plots.plot_dla(dla, tmp_path / "dla_head.png")) == (1000, 700)
    bars = direct_logit_attribution(tiny, TOKENS, 7, 3, by="component")
    assert image_size(plots.plot_dla(bars, tmp_path / "dla.png")) == (1000, 500)
    heads = detect_heads(tiny, "induction", seq_len=6, batch=2)
    assert image_size(plots.plot_head_scores(heads, tmp_path / "heads.png")) == (1000, 700)
    lens_result = logit_lens(tiny, TOKENS, targets=[7])
    assert image_size(plots.plot_logit_lens(lens_result, tmp_path / "lens.png")) == (1000, 700)
    patterns = attention_patterns(tiny, TOKENS, [(0, 0), (1, 1), (2, 3), (2, 0)])
    assert image_size(plots.plot_attention(patterns, tmp_path / "attn.png")) == (1500, 1000)
    grid = torch.randn(3, 9).tolist()
    path = plots.plot_layer_position(grid, [str(t) for t in range(9)], "effect", "logit diff", tmp_path / "lp.png")
    assert image_size(path) == (1000, 700)


# --- known results on the real default model --------------------------------------------

@pytest.mark.real_model
def test_smollm2_has_induction_heads(smollm2):
    loss = induction_loss(smollm2, seq_len=40, batch=4)
    assert loss.second_half < loss.first_half / 2, loss.summary()
    heads = detect_heads(smollm2, "induction", seq_len=40, batch=4)
    assert heads.top[0][2] > 0.5 and heads.top[0][2] > 20 * heads.median, heads.summary()
    print(loss.summary(), heads.summary(), sep="\n")


@pytest.mark.real_model
def test_smollm2_previous_token_heads_on_natural_text(smollm2):
    heads = detect_heads(smollm2, "previous_token")
    assert heads.top[0][2] > 0.5 and heads.top[0][2] > 5 * heads.median, heads.summary()
    n = len(smollm2.to_str_tokens(EIFFEL))
    previous = torch.zeros(n, n)
    previous[torch.arange(1, n), torch.arange(0, n - 1)] = 1
    custom = detect_heads(smollm2, previous, prompt=EIFFEL)
    assert torch.tensor(custom.scores).shape == (30, 9)


@pytest.mark.real_model
def test_smollm2_dla_for_paris_adds_up_to_its_logit(smollm2):
    result = direct_logit_attribution(smollm2, EIFFEL, " Paris", by="head")
    logit = smollm2(EIFFEL)[0, -1, smollm2.to_single_token(" Paris")].item()
    listed = result.contributions + (result.others or [])  # by="head": heads, then MLPs and embeddings apart
    summed = sum(v for _, v in listed) + result.rest + result.constant
    assert abs(result.total - logit) <= 1e-4 and abs(summed - logit) <= 1e-3, (result.total, summed, logit)
    print(result.summary())


@pytest.mark.real_model
def test_smollm2_logit_lens_paris_rises_in_the_last_layers(smollm2):
    result = logit_lens(smollm2, EIFFEL, targets=[" Paris"])
    ranks = [layer.targets[0].rank for layer in result.layers]
    assert ranks[-1] == 0 and max(ranks[-3:]) < min(ranks[1:16]), ranks
    assert test_prompt(smollm2, EIFFEL, " Paris").rank == 0


def test_previous_token_scores_refuse_a_prompt_too_short_to_score():
    model = HookedTransformer.from_config(TINY_VARIANTS["gpt2_like"], seed=1)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        detect_heads(model, "previous_token", prompt=torch.tensor([[3]]))
