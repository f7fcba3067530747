"""Activation patching: every function equals the naive loop (one run_with_hooks per patch), plus the
front door's result, errors and the metric contract."""

import itertools

import pytest
import torch
from conftest import TINY_VARIANTS, max_diff

from lens import HookedTransformer, act_name
from lens.patching import (
    TARGETS,
    ablate,
    attribution_patch,
    compat,
    generic_activation_patch,
    get_act_patch_attn_head_all_pos_every,
    get_act_patch_attn_head_by_pos_every,
    get_act_patch_block_every,
    layer_pos_patch_setter,
    logit_diff,
    patch,
)

GEN = torch.Generator().manual_seed(0)
CLEAN = torch.randint(0, 50, (2, 7), generator=GEN)
SHARED_PREFIX = CLEAN.clone()
SHARED_PREFIX[:, 3] = (CLEAN[:, 3] + 11) % 50  # the usual pair: the same prompt but one token
ALL_DIFFERENT = torch.randint(0, 50, (2, 7), generator=GEN)
PAIRS = {"shared_prefix": SHARED_PREFIX, "all_different": ALL_DIFFERENT}


def tl_metric(logits):  # TransformerLens style: logits [batch, pos, d_vocab] → a scalar
    return (logits[:, -1, 7] - logits[:, -1, 3]).mean()


# The naive reference: what each index means, written out per activation layout.
def write(activation, clean, axes, index):
    at = dict(zip(axes, index, strict=True))
    if "src_pos" in at:  # pattern [batch, head, dest, src]
        activation[:, at["head_index"], at["dest_pos"], at["src_pos"]] = \
            clean[:, at["head_index"], at["dest_pos"], at["src_pos"]]
    elif "dest_pos" in at:
        activation[:, at["head_index"], at["dest_pos"]] = clean[:, at["head_index"], at["dest_pos"]]
    elif "head_index" in at:
        activation[:, at["head_index"]] = clean[:, at["head_index"]]
    elif "pos" in at and "head" in at:  # head vectors [batch, pos, head, d]
        activation[:, at["pos"], at["head"]] = clean[:, at["pos"], at["head"]]
    elif "head" in at:
        activation[:, :, at["head"]] = clean[:, :, at["head"]]
    else:
        activation[:, at["pos"]] = clean[:, at["pos"]]
    return activation


def naive(model, corrupted, clean_cache, metric, hook, axes):
    """One forward per index, as TransformerLens's generic_activation_patch does."""
    heads = model.cfg.n_kv_heads if hook in ("k", "v") else model.cfg.n_heads
    sizes = {"layer": model.cfg.n_layers, "pos": corrupted.shape[1], "dest_pos": corrupted.shape[1],
             "src_pos": corrupted.shape[1], "head": heads, "head_index": heads}
    shape = [sizes[a] for a in axes]
    out = torch.empty(shape)
    for index in itertools.product(*(range(s) for s in shape)):
        name = act_name(hook, index[0])
        clean = clean_cache[name]

        def hook_fn(activation, point, index=index, clean=clean):
            return write(activation.clone(), clean, axes[1:], index[1:])
        out[index] = metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, hook_fn)]))
    return out


@pytest.fixture(scope="module", params=["gpt2_like", "llama_like"])  # llama_like: 4 heads, 2 kv heads
def model(request):
    return HookedTransformer.from_config(TINY_VARIANTS[request.param], seed=1)


@pytest.mark.parametrize("variant, pair", [("gpt2_like", "shared_prefix"), ("llama_like", "shared_prefix"),
                                           ("llama_like", "all_different")])
def test_every_transformer_lens_function_equals_the_naive_loop(variant, pair):
    model = HookedTransformer.from_config(TINY_VARIANTS[variant], seed=1)
    corrupted = PAIRS[pair]
    _, clean_cache = model.run_with_cache(CLEAN)
    for name, (hook, axes, _) in compat.FUNCTIONS.items():
        if name == "attn_head_pattern_dest_src_pos" and variant != "gpt2_like":
            continue  # 588 naive forwards; once is enough
        fn = getattr(compat, f"get_act_patch_{name}")
        fast = fn(model, corrupted, clean_cache, tl_metric, progress=False)
        slow = naive(model, corrupted, clean_cache, tl_metric, hook, axes)
        assert fast.shape == slow.shape, name
        assert (fast - slow).abs().max() <= 1e-5, f"{name}: {max_diff(fast, slow)}"


def test_every_functions_stack_the_single_sweeps(model):
    _, clean_cache = model.run_with_cache(CLEAN)
    args = (model, SHARED_PREFIX, clean_cache, tl_metric)
    block = get_act_patch_block_every(*args, progress=False)
    singles = [compat.get_act_patch_resid_pre, compat.get_act_patch_attn_out, compat.get_act_patch_mlp_out]
    assert torch.allclose(block, torch.stack([f(*args, progress=False) for f in singles]), atol=1e-6)
    heads = get_act_patch_attn_head_all_pos_every(*args, progress=False)
    assert heads.shape == (5, 3, 4)
    group = model.cfg.n_heads // model.cfg.n_kv_heads  # query head h reads kv head h // group
    k = compat.get_act_patch_attn_head_k_all_pos(*args, progress=False)
    assert torch.allclose(heads[2], k.repeat_interleave(group, dim=-1), atol=1e-6)
    by_pos = get_act_patch_attn_head_by_pos_every(*args, progress=False)
    pattern = compat.get_act_patch_attn_head_pattern_by_pos(*args, progress=False)  # [layer, head, dest]
    assert by_pos.shape == (5, 3, 7, 4) and torch.allclose(by_pos[4], pattern.transpose(1, 2), atol=1e-6)


def test_generic_activation_patch_takes_an_index_list_and_a_custom_setter(model):
    _, clean_cache = model.run_with_cache(CLEAN)
    rows = [(2, 6), (0, 3), (1, 3)]
    fast, index = generic_activation_patch(model, SHARED_PREFIX, clean_cache, tl_metric, layer_pos_patch_setter,
                                           "resid_pre", index_df=rows, return_index_df=True, progress=False)
    grid = naive(model, SHARED_PREFIX, clean_cache, tl_metric, "resid_pre", ("layer", "pos"))
    assert index == rows and torch.allclose(fast, torch.stack([grid[r] for r in rows]), atol=1e-5)

    def halfway(corrupted, index, clean):  # not a slot write: the engine must not skip positions for it
        return (corrupted + clean) / 2
    fast = generic_activation_patch(model, SHARED_PREFIX, clean_cache, tl_metric, halfway, "mlp_out",
                                    index_axis_names=("layer",), progress=False)
    for layer in range(3):
        name = act_name("mlp_out", layer)
        slow = tl_metric(model.run_with_hooks(
            SHARED_PREFIX, fwd_hooks=[(name, lambda a, h, c=clean_cache[name]: (a + c) / 2)]))
        assert abs(fast[layer] - slow) <= 1e-5


def test_patch_equals_the_naive_loop_for_every_target(model):
    metric = logit_diff(model, 7, 3)  # vectorised, reads only the last position
    _, clean_cache = model.run_with_cache(CLEAN)
    layouts = {"pos": ("layer", "pos"), "head": ("layer", "head"), "pos head": ("layer", "pos", "head")}
    for what, target in TARGETS.items():
        result = patch(model, CLEAN, SHARED_PREFIX, metric, what, progress=False)
        if target.hook == "pattern":
            axes = ("layer", "head_index") if target.axes == ("head",) else ("layer", "head_index", "dest_pos")
            slow = naive(model, SHARED_PREFIX, clean_cache, metric, "pattern", axes)
            slow = slow if target.axes == ("head",) else slow.transpose(1, 2)
        else:
            slow = naive(model, SHARED_PREFIX, clean_cache, metric, target.hook, layouts[" ".join(target.axes)])
        assert (result.tensor - slow).abs().max() <= 1e-5, f"{what}: {max_diff(result.tensor, slow)}"


@pytest.mark.parametrize("variant", list(TINY_VARIANTS))
def test_patch_equals_the_naive_loop_on_every_tiny_architecture(variant):
    # parallel blocks, shared norms, post-norms only, qk-norm, sliding windows, soft-caps' absence...
    model = HookedTransformer.from_config(TINY_VARIANTS[variant], seed=2)
    metric = logit_diff(model, 7, 3)
    _, clean_cache = model.run_with_cache(CLEAN)
    for pair, what, hook, axes in (("shared_prefix", "heads_by_pos", "z", ("layer", "pos", "head")),
                                   ("shared_prefix", "resid_pre", "resid_pre", ("layer", "pos")),
                                   ("all_different", "resid_pre", "resid_pre", ("layer", "pos"))):
        fast = patch(model, CLEAN, PAIRS[pair], metric, what, progress=False).tensor
        slow = naive(model, PAIRS[pair], clean_cache, metric, hook, axes)
        assert (fast - slow).abs().max() <= 1e-5, f"{what} {pair}: {max_diff(fast, slow)}"


def test_patch_scores_normalised_and_hotspots(model):
    result = patch(model, CLEAN, SHARED_PREFIX, logit_diff(model, 7, 3), "resid_pre", progress=False)
    normalised = torch.tensor(result.normalised)
    # Layer 0 at the one differing position turns the corrupted run into the clean one; earlier positions
    # hold the same activation in both runs and change nothing.
    assert abs(normalised[0, 3] - 1) <= 1e-4, normalised[0, 3]
    assert normalised[:, :3].abs().max() == 0
    assert result.tensor.shape == (3, 7) and result.axes == ["layer", "pos"]
    top = result.top[0]
    assert abs(top.effect) == (result.tensor - result.corrupted_value).abs().max().item()
    assert "resid_pre" in result.summary() and top.label in result.summary()


def test_patch_restricts_layers_and_positions(model):
    metric = logit_diff(model, 7, 3)
    full = patch(model, CLEAN, SHARED_PREFIX, metric, "resid_pre", progress=False).tensor
    part = patch(model, CLEAN, SHARED_PREFIX, metric, "resid_pre", positions=[3, -1], layers=[1, 2], progress=False)
    assert part.coords == [[1, 2], [3, 6]] and torch.allclose(part.tensor, full[1:][:, [3, 6]], atol=1e-6)
    # For an all-position target, positions say where each head is patched.
    _, clean_cache = model.run_with_cache(CLEAN)
    heads_at_4 = patch(model, CLEAN, SHARED_PREFIX, metric, "heads", positions=[4], progress=False)
    name = act_name("z", 1)

    def z_at_4(z, point):
        z = z.clone()
        z[:, 4, 2] = clean_cache[name][:, 4, 2]
        return z
    slow = metric(model.run_with_hooks(SHARED_PREFIX, fwd_hooks=[(name, z_at_4)]))
    assert abs(heads_at_4.tensor[1, 2] - slow) <= 1e-5


def test_batch_size_and_memory_budget_do_not_change_results(model):
    metric = logit_diff(model, 7, 3)
    default = patch(model, CLEAN, ALL_DIFFERENT, metric, "heads_by_pos", progress=False).tensor
    for options in ({"batch_size": 1}, {"batch_size": 5}, {"memory_budget": 1}):
        other = patch(model, CLEAN, ALL_DIFFERENT, metric, "heads_by_pos", progress=False, **options).tensor
        assert (other - default).abs().max() <= 1e-5, f"{options}: {max_diff(other, default)}"


def test_tl_metric_and_vectorised_metric_agree(model):
    tl = patch(model, CLEAN, SHARED_PREFIX, tl_metric, "attn_out", progress=False).tensor
    fast = patch(model, CLEAN, SHARED_PREFIX, logit_diff(model, 7, 3), "attn_out", progress=False).tensor
    assert (tl - fast).abs().max() <= 1e-5, max_diff(tl, fast)


def test_a_metric_that_is_not_a_scalar_is_a_clear_error(model):
    with pytest.raises(ValueError, match=r"returned a tensor of shape \(2,\).*one number"):
        patch(model, CLEAN, SHARED_PREFIX, lambda logits: logits[:, -1, 7], "resid_pre", progress=False)
    with pytest.raises(ValueError, match=r"vectorised metric must map"):
        patch(model, CLEAN, SHARED_PREFIX, lambda logits: logits[..., -1, 7].mean(), "resid_pre",
              vectorised_metric=True, progress=False)


def test_prompts_of_different_lengths_are_a_clear_error(model):
    with pytest.raises(ValueError, match="clean prompt has 7 tokens and the corrupted prompt has 6"):
        patch(model, CLEAN, SHARED_PREFIX[:, :6], tl_metric, progress=False)
    _, short_cache = model.run_with_cache(CLEAN[:, :6])
    with pytest.raises(ValueError, match="covers 6 positions and the corrupted tokens have 7"):
        compat.get_act_patch_resid_pre(model, SHARED_PREFIX, short_cache, tl_metric, progress=False)


def test_layers_and_positions_out_of_range_or_empty_are_clear_errors(model):
    n_layers = model.cfg.n_layers
    with pytest.raises(ValueError, match=rf"layer {n_layers} is out of range for a model of {n_layers} layers: "
                                         rf"valid values are 0..{n_layers - 1}"):
        patch(model, CLEAN, SHARED_PREFIX, tl_metric, layers=[0, n_layers], progress=False)
    with pytest.raises(ValueError, match=r"position -8 is out of range for a prompt of 7 tokens"):
        patch(model, CLEAN, SHARED_PREFIX, tl_metric, positions=[-8], progress=False)
    with pytest.raises(ValueError, match="no layers given"):
        attribution_patch(model, CLEAN, SHARED_PREFIX, tl_metric, layers=[])
    with pytest.raises(ValueError, match="position 7 is out of range for a prompt of 7 tokens"):
        ablate(model, CLEAN, tl_metric, positions=[7], progress=False)
    with pytest.raises(ValueError, match="position 9 is out of range for a prompt of 7 tokens"):
        patch(model, CLEAN, SHARED_PREFIX, logit_diff(model, 7, 3, pos=9), progress=False)
    last = patch(model, CLEAN, SHARED_PREFIX, tl_metric, layers=[-1], positions=[-1], progress=False)
    assert last.tensor.shape == (1, 1) and last.coords == [[n_layers - 1], [6]]


def test_an_unknown_target_lists_the_valid_ones(model):
    with pytest.raises(ValueError, match="valid: resid_pre, resid_mid, .*heads_by_pos"):
        patch(model, CLEAN, SHARED_PREFIX, tl_metric, what="neurons")


def test_progress_bar_is_silent_when_asked(model, capsys):
    patch(model, CLEAN, ALL_DIFFERENT, tl_metric, "resid_pre", progress=False)
    assert capsys.readouterr().err == ""
    patch(model, CLEAN, ALL_DIFFERENT, tl_metric, "resid_pre")
    assert "patching resid_pre" in capsys.readouterr().err


IOI_CLEAN = "When John and Mary went to the store, Mary gave a bottle to"
IOI_CORRUPTED = "When John and Mary went to the store, John gave a bottle to"


@pytest.mark.real_model
def test_real_model_patching_equals_the_naive_loop(smollm2):
    clean, corrupted = smollm2.to_tokens(IOI_CLEAN), smollm2.to_tokens(IOI_CORRUPTED)
    metric = logit_diff(smollm2, " John", " Mary")
    _, clean_cache = smollm2.run_with_cache(clean)
    resid = patch(smollm2, clean, corrupted, metric, "resid_pre", layers=[0, 29], positions=[0, 9, 10, 13],
                  progress=False)
    heads = patch(smollm2, clean, corrupted, metric, "heads", layers=[23], progress=False)
    for result, hook, axes in ((resid, "resid_pre", ("pos",)), (heads, "z", ("head",))):
        for i, layer in enumerate(result.coords[0]):
            name = act_name(hook, layer)
            for j, index in enumerate(result.coords[1]):
                def hook_fn(activation, point, index=index, name=name, axes=axes):
                    return write(activation.clone(), clean_cache[name], axes, (index,))
                slow = metric(smollm2.run_with_hooks(corrupted, fwd_hooks=[(name, hook_fn)]))
                fast = result.tensor[i, j]
                assert abs(fast - slow) <= 1e-4, f"{hook} L{layer} {index}: {fast} vs {slow}"
    assert heads.top[0].label == "L23H3"  # the head that moves the indirect object's name here
    assert resid.top[0].label == "L0 @9 ' Mary'/' John'"  # the position the prompts differ at: clean/corrupted
