"""Weight processing leaves log_softmax unchanged and gives the weights the properties it claims."""


import pytest
import torch
from conftest import TINY_VARIANTS, max_diff

from lens import HookedTransformer

TOKENS = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
FLAGS = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")


def randomised(variant: str, tied: bool = False):
    """A tiny model whose biases and norm weights are all random, so no fold can be trivially right."""
    cfg = TINY_VARIANTS[variant]
    if tied:
        cfg = cfg.__class__(**{**cfg.__dict__, "tied_embeddings": True})
    model = HookedTransformer.from_config(cfg, seed=4)
    with torch.no_grad():
        for name, p in model.weights.named_parameters():
            if name.startswith("b_") or name.endswith("_b"):
                p.normal_(std=0.1)
            elif name.endswith("_w"):
                p.normal_(mean=1.0 - cfg.norm_weight_offset, std=0.2)
    return model


@pytest.mark.parametrize("variant", list(TINY_VARIANTS))
@pytest.mark.parametrize("flags", [(f,) for f in FLAGS] + [FLAGS])
def test_processing_leaves_log_softmax_unchanged(variant, flags):
    model = randomised(variant)
    before = model(TOKENS).log_softmax(-1)
    done = model.process_weights(**{f: True for f in flags})
    assert len(done) == len(flags) and all(line.split(":")[0] in flags for line in done)
    after = model(TOKENS).log_softmax(-1)
    assert (after - before).abs().max() <= 1e-4, f"{variant} {flags}: {max_diff(after, before)}"


def test_fold_ln_leaves_weightless_norms():
    for variant in ("gpt2_like", "llama_like", "gemma_like"):
        model = randomised(variant)
        model.process_weights(fold_ln=True)
        w, cfg = model.weights, model.cfg
        for name in ("ln1_w", "ln2_w", "ln_final_w"):
            assert torch.all(getattr(w, name) + cfg.norm_weight_offset == 1), (variant, name)
        if cfg.norm == "layernorm":
            assert w.ln1_b.abs().max() == 0 and w.ln_final_b.abs().max() == 0
            assert model.W_Q.mean(-2).abs().max() <= 1e-6  # readers of a centred input are centred


def test_centred_writing_weights_have_zero_mean_over_d_model():
    model = randomised("gpt2_like")
    model.process_weights(center_writing_weights=True)
    for name in ("W_E", "W_pos", "W_O", "b_O", "W_out", "b_out"):
        assert getattr(model, name).mean(-1).abs().max() <= 1e-6, name


def test_centred_unembedding_has_zero_mean_over_the_vocabulary_and_unties_it():
    model = randomised("gemma_like", tied=True)
    embed = model.W_E.clone()
    before = model(TOKENS).log_softmax(-1)
    model.process_weights(center_unembed=True)
    assert model.W_U.mean(-1).abs().max() <= 1e-6 and abs(model.b_U.mean().item()) <= 1e-6
    assert torch.equal(model.W_E, embed) and not model.cfg.tied_embeddings
    assert all(block.cfg is model.cfg for block in model.blocks)
    assert (model(TOKENS).log_softmax(-1) - before).abs().max() <= 1e-4


def test_fold_value_biases_zeroes_b_V():
    model = randomised("llama_like")  # grouped-query: each kv head serves two query heads
    model.process_weights(fold_value_biases=True)
    assert model.b_V.abs().max() == 0


def test_flags_that_would_not_be_exact_are_skipped_and_say_why():
    model = randomised("llama_like")
    done = model.process_weights(center_writing_weights=True)
    assert "skipped" in done[0] and "RMSNorm" in done[0]
    assert model.load_info["processing"] == done


def test_from_pretrained_applies_the_flags_and_reports_them(hf_folder):
    hf, folder = hf_folder("gpt2")
    plain = HookedTransformer.from_pretrained(str(folder))
    processed = HookedTransformer.from_pretrained(str(folder), **{f: True for f in FLAGS})
    tokens = TOKENS % 96
    diff = (processed(tokens).log_softmax(-1) - plain(tokens).log_softmax(-1)).abs().max()
    assert diff <= 1e-4
    assert [line.split(":")[0] for line in processed.load_info["processing"]] == list(FLAGS)
    assert "fold_ln" in processed.summary()
