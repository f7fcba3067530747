"""TransformerLens's names on lens (lens/compat and the engine's TransformerLens semantics), each checked
against the computation it stands for. The same names are compared with TransformerLens itself in
test_transformer_lens_parity.py and test_transformer_lens_tutorial.py."""

import numpy as np
import pytest
import torch
from conftest import max_diff
from lens.cache.key_value_cache import TransformerLensKeyValueCache

import lens.utils as utils
from lens import FactoredMatrix, HookedTransformer, HookedTransformerConfig, SVDInterpreter
from lens.head_detector import detect_head
from lens.hook_points import HookPoint

TOKENS = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(0))


def toy(**fields) -> HookedTransformer:
    base = dict(n_layers=2, d_model=32, d_head=8, n_ctx=24, d_vocab=50, act_fn="gelu", seed=1)
    return HookedTransformer(HookedTransformerConfig(**(base | fields)))


@pytest.mark.parametrize("fields", [dict(attn_only=True), dict(normalization_type="RMS"),
                                    dict(positional_embedding_type="rotary", n_key_value_heads=2),
                                    dict(d_vocab_out=7), dict(normalization_type="LNPre", gated_mlp=True)],
                         ids=["attn_only", "rms", "rotary_gqa", "d_vocab_out", "lnpre_gated"])
def test_a_transformer_lens_config_builds_the_model_it_describes(fields):
    model = toy(**fields)
    logits, cache = model.run_with_cache(TOKENS)
    assert logits.shape == (2, 9, fields.get("d_vocab_out", 50)) and model.unembed.W_U.shape[-1] == logits.shape[-1]
    assert model.cfg.attn_only == fields.get("attn_only", False) and str(model.cfg.device) == "cpu"
    assert ("blocks.0.hook_mlp_out" in cache) != model.cfg.attn_only
    assert model.cfg.n_key_value_heads == fields.get("n_key_value_heads")
    stack = cache.decompose_resid()  # the components still add up to the final residual
    assert (stack.sum(0) - cache["resid_post", -1]).abs().max() <= 1e-5


def test_unsupported_config_fields_are_errors_not_dropped():
    with pytest.raises(NotImplementedError, match="positional_embedding_type='alibi'"):
        toy(positional_embedding_type="alibi")
    with pytest.raises(NotImplementedError, match="normalization_type=None"):
        toy(normalization_type=None)


def test_hook_normalized_is_before_the_layernorm_weight_and_ln_final_hooks_fire_without_logits():
    model = toy()
    with torch.no_grad():
        model.weights.ln_final_w.normal_()
        model.weights.ln_final_b.normal_()
    _, cache = model.run_with_cache(TOKENS, return_type=None)
    resid = cache["resid_post", -1]
    centred = resid - resid.mean(-1, keepdim=True)
    expected = centred / cache["ln_final.hook_scale"]
    assert (cache["ln_final.hook_normalized"] - expected).abs().max() <= 1e-5
    by_call = model.ln_final(resid)  # callable with its own weights, as TransformerLens's
    assert (by_call - (expected * model.ln_final.w + model.ln_final.b)).abs().max() <= 1e-5


def test_gqa_weights_repeat_the_kv_heads_and_the_raw_ones_keep_their_name():
    model = toy(positional_embedding_type="rotary", n_key_value_heads=2)
    assert model.W_K.shape == (2, 4, 32, 8) and model._W_K.shape == (2, 2, 32, 8)
    assert torch.equal(model.W_V, model._W_V.repeat_interleave(2, dim=1))
    assert torch.equal(model.blocks[1].attn.b_K, model._b_K[1].repeat_interleave(2, dim=0))


def test_an_int_pos_slice_drops_the_position_axis_as_transformer_lens():
    _, cache = toy().run_with_cache(TOKENS)
    dropped, kept = cache.decompose_resid(pos_slice=-1), cache.decompose_resid(pos_slice=[-1])
    assert dropped.shape == kept.shape[:2] + kept.shape[3:] and torch.equal(dropped, kept[:, :, 0])
    assert cache.accumulated_resid(pos_slice=(2, 5)).shape[2] == 3
    assert torch.equal(cache["scale1ln1"], cache["blocks.1.ln1.hook_scale"])
    assert torch.equal(cache["k0a"], cache["blocks.0.attn.hook_k"])


def test_hook_points_take_transformer_lens_hooks_and_reset_removes_them():
    model, seen = toy(), []
    point: HookPoint = model.blocks[0].hook_resid_post
    point.add_hook(lambda x, hook: seen.append(hook.name), level=3)
    assert point.has_hooks() and point.has_hooks(dir="fwd") and not point.has_hooks(dir="bwd")
    assert point.fwd_hooks[0].context_level == 3 and not point.fwd_hooks[0].is_permanent
    model(TOKENS)
    model.reset_hooks()
    model(TOKENS)
    assert seen == ["blocks.0.hook_resid_post"] and not point.has_hooks


def test_a_backward_hook_may_return_a_tuple():
    model = toy()
    doubled = lambda grad, hook: (2 * grad,)
    plain = torch.autograd.grad(model(TOKENS).sum(), model.weights.W_E)[0]
    with model.hooks(bwd_hooks=[("blocks.0.hook_resid_pre", doubled)]):
        hooked = torch.autograd.grad(model(TOKENS).sum(), model.weights.W_E)[0]
    assert (hooked - 2 * plain).abs().max() <= 1e-5, max_diff(hooked, 2 * plain)


def test_a_frozen_kv_cache_is_read_but_not_extended():
    model = toy()
    full = model(TOKENS)
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, 2)
    model(TOKENS[:, :6], past_kv_cache=cache)
    cache.freeze()
    for _ in range(2):  # the same continuation twice: the cache does not grow
        rest = model(TOKENS[:, 6:], past_kv_cache=cache)
        assert (rest - full[:, 6:]).abs().max() <= 1e-5 and cache.length == 6
    cache.unfreeze()
    model(TOKENS[:, 6:], past_kv_cache=cache)
    assert cache.length == 9


def test_factored_matrix_keeps_an_int_row_as_a_dimension_and_asserts_on_bad_shapes():
    fm = FactoredMatrix(torch.randn(5, 3), torch.randn(3, 4))
    assert torch.allclose(fm[1].AB, fm.AB[1:2]) and torch.allclose(fm[:, 2].AB, fm.AB[:, 2:3])
    assert fm.V.shape == (4, 3) and not fm.has_leading_dims
    for bad in (lambda: fm * torch.ones(2), lambda: fm @ torch.ones(5), lambda: fm.BA):
        with pytest.raises(AssertionError):  # TransformerLens's exception; also a ValueError
            bad()


def test_remove_batch_dim_works_in_place_and_batch_slices_select_rows():
    model = toy()
    _, cache = model.run_with_cache(TOKENS)
    row = cache.apply_slice_to_batch_dim(1)
    assert not row.has_batch_dim and torch.equal(row["resid_post", 0], cache["resid_post", 0][1])
    _, single = model.run_with_cache(TOKENS[:1])
    single.remove_batch_dim()
    assert single["embed"].shape == (9, 32)


def test_transformer_lens_processing_is_the_four_flags(hf_folder):
    _, folder = hf_folder("gpt2")
    preset = HookedTransformer.from_pretrained(str(folder), device="cpu", processing="transformer_lens")
    flags = HookedTransformer.from_pretrained(str(folder), device="cpu", fold_ln=True, center_writing_weights=True,
                                              center_unembed=True, fold_value_biases=True)
    assert len(preset.load_info["processing"]) == 4
    assert torch.equal(preset(TOKENS), flags(TOKENS))
    plain = HookedTransformer.from_pretrained_no_processing(str(folder), device="cpu")
    assert plain.load_info["processing"] == []


def test_refactoring_the_attention_factors_keeps_the_outputs():
    model = toy()
    with torch.no_grad():
        for name in ("b_Q", "b_K", "b_V"):
            getattr(model.weights, name).normal_()
    before = model(TOKENS)
    model.process_weights(refactor_factored_attn_matrices=True)
    assert (model(TOKENS) - before).abs().max() <= 1e-4
    gram = model.W_O[0, 0] @ model.W_O[0, 0].T  # [d_head, d_head]: W_O's rows are orthonormal
    assert (gram - torch.eye(8)).abs().max() <= 1e-4


def test_detect_head_scores_a_pattern_as_the_share_of_attention_on_it():
    model = toy()
    _, cache = model.run_with_cache(TOKENS[:1])
    previous = torch.diag(torch.ones(8), -1)
    scores = detect_head(model, TOKENS[:1], previous)  # token ids: a config-built model has no tokenizer
    pattern = cache["pattern", 1][0, 2]
    assert abs(scores[1, 2].item() - ((pattern * previous).sum() / pattern.sum()).item()) <= 1e-5


def test_svd_interpreter_reads_the_ov_singular_vectors_through_w_u():
    model = toy()
    vectors = SVDInterpreter(model).get_singular_vectors("OV", 1, num_vectors=3, head_index=2)
    expected = model.OV[1, 2].V.T[:3] @ model.W_U  # [3, d_vocab]
    assert vectors.shape == (50, 1, 3) and (vectors[:, 0].T - expected).abs().max() <= 1e-5


def test_utils_helpers_give_transformer_lens_values():
    assert utils.get_act_name("pattern", 3) == "blocks.3.attn.hook_pattern"
    assert utils.to_numpy(torch.ones(2, dtype=torch.bfloat16)).dtype == np.float32
    assert utils.is_lower_triangular(torch.ones(3, 3).tril()) and not utils.is_square(torch.ones(2, 3))
    assert utils.Slice(-1).apply(torch.arange(12).view(3, 4), dim=1).tolist() == [3, 7, 11]
    logits = torch.randn(2, 5, 11)
    tokens = torch.randint(0, 11, (2, 5))
    naive = -logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None]).mean()
    assert abs(utils.lm_cross_entropy_loss(logits, tokens).item() - naive.item()) <= 1e-6
