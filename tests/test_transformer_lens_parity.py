"""lens equals TransformerLens hook for hook, on the same random weights with the same processing flags.

Two references, both from TransformerLens 3.9 (the `compare` extra):
- the legacy HookedTransformer (what tutorials use), built from TransformerLens's own weight converter
  of each HF model and its load_and_process_state_dict with the flags;
- the TransformerBridge, which wraps the HF model; `enable_compatibility_mode` gives it
  HookedTransformer's hook names and weight processing.
lens and both load the tiny HF models of hf_models.py, whose every parameter, norms and biases included,
is random: GPT-2 (LayerNorm, learned positions, tied embeddings), Llama (RMSNorm, rotary, GQA, gated
MLP) and Qwen2 (Llama's shape plus qkv biases, so that fold_value_biases has a b_V to move). fp32,
eager attention; every flag alone, none and all.
"""

import copy
import logging

import pytest
import torch
from conftest import max_diff
from hf_models import TINY
from tokenizers import Tokenizer, models
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from lens import HookedTransformer

transformers_log_level = logging.getLogger("transformers").level
TransformerBridge = pytest.importorskip("transformer_lens.model_bridge").TransformerBridge
logging.getLogger("transformers").setLevel(transformers_log_level)  # its import sets ERROR, process-wide
import transformer_lens  # noqa: E402
from transformer_lens_reference import legacy_model  # noqa: E402

TOL = 1e-4
TOKENS = torch.randint(0, TINY["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(0))
FAMILIES = ("gpt2", "llama", "qwen2")
FLAGS = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")
FLAG_SETS = [(), *((flag,) for flag in FLAGS), FLAGS]
REFERENCES = ("legacy", "bridge")  # TransformerLens 3.9's HookedTransformer and its TransformerBridge

# Hooks every block of these families defines in both (lens defines no hook TransformerLens lacks;
# see test_every_lens_hook_is_a_transformer_lens_hook). TransformerLens also has hook_in/hook_out on
# each wrapped HF module (`blocks.0.attn.q.hook_in`, `ln1.hook_out`, ...), `attn.hook_hidden_states`,
# the rotary tables (`attn.hook_cos/sin`, `rotary_emb.*`), `hook_unembed` (the logits, compared as
# such) and, on rotary models, a `hook_pos_embed` that never fires; lens has none of these.
BLOCK_HOOKS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out",
               "hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input", "hook_mlp_in",
               "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_attn_scores", "attn.hook_pattern",
               "attn.hook_z", "attn.hook_result", "ln1.hook_scale", "ln1.hook_normalized", "ln2.hook_scale",
               "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_post")
ROTARY_GATED_HOOKS = ("attn.hook_rot_q", "attn.hook_rot_k", "mlp.hook_pre_linear")
FAMILY_HOOKS = {"gpt2": ((), ("hook_pos_embed",)),  # (in each block, outside the blocks)
                "llama": (ROTARY_GATED_HOOKS, ()), "qwen2": (ROTARY_GATED_HOOKS, ())}

# The bridge with each flag alone, none and all; the legacy model with none and all four (its flags are
# the same processing code as the bridge's compatibility mode).
CASES = [pytest.param(family, flags, reference, id=f"{family}-{'+'.join(flags) or 'none'}-{reference}")
         for reference in REFERENCES for family in FAMILIES
         for flags in (FLAG_SETS if reference == "bridge" else [(), FLAGS])]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A word-level tokenizer over the tiny models' ids (inputs are ids, but a bridge needs one and would
    fetch its model's from the hub). TransformerLens reloads it from its folder to turn BOS on, hence
    the round trip through one."""
    folder = tmp_path_factory.mktemp("tokenizer")
    vocab = {f"t{i}": i for i in range(TINY["vocab_size"])}
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")),
                            bos_token="t1", eos_token="t2", pad_token="t0", unk_token="t0").save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def lens_run(folder, flags):
    """(model, {hook name: tensor} plus "logits", its ActivationCache)."""
    model = HookedTransformer.from_pretrained(str(folder), device="cpu", **{f: f in flags for f in FLAGS})
    with torch.no_grad():  # every hook point, hook_result and the per-head inputs included
        logits, cache = model.run_with_cache(TOKENS, names_filter=list(model.hook_dict))
    return model, {"logits": logits, **dict(cache.items())}, cache


def gqa_refuses_attn_in(model) -> bool:
    """The legacy HookedTransformer has no hook_attn_in under grouped-query attention (it asserts)."""
    return isinstance(model, transformer_lens.HookedTransformer) and model.cfg.n_key_value_heads is not None


def reference_run(model):
    """({hook name: tensor} plus "logits", the ActivationCache) of a TransformerLens model (legacy or
    bridge), every hook, the on-request ones included."""
    # TransformerLens computes these hooks only when asked; hook_attn_in excludes the split q/k/v
    # inputs, so it takes a second forward.
    model.set_use_attn_result(True)
    model.set_use_split_qkv_input(True)
    model.set_use_hook_mlp_in(True)
    with torch.no_grad():
        logits, cache = model.run_with_cache(TOKENS)
        model.set_use_split_qkv_input(False)
        if gqa_refuses_attn_in(model):
            return {"logits": logits, **dict(cache.items())}, cache
        model.set_use_attn_in(True)
        _, attn_in = model.run_with_cache(TOKENS, names_filter=lambda name: name.endswith("hook_attn_in"))
    return {"logits": logits, **dict(cache.items()), **dict(attn_in.items())}, cache


def bridge_run(hf, folder, tokenizer, flags):
    # The bridge runs the HF model it is given and processing rewrites that model's parameters: a copy
    # keeps hf_folder's model, which other tests share, as it is.
    bridge = TransformerBridge.boot_transformers(str(folder), hf_model=copy.deepcopy(hf), tokenizer=tokenizer,
                                                 device="cpu")
    bridge.enable_compatibility_mode(disable_warnings=True, no_processing=not flags, **{f: f in flags for f in FLAGS})
    return reference_run(bridge)


@pytest.fixture(scope="module")
def runs(hf_folder, tokenizer):
    """(family, flags, reference) → (lens model, its activations, TransformerLens's, lens's cache,
    TransformerLens's cache), built once each; activations are {hook name: tensor} plus "logits"."""
    done = {}

    def get(family: str, flags: tuple[str, ...], reference: str = "bridge"):
        if (family, flags, reference) not in done:
            hf, folder = hf_folder(family)
            model, ours, our_cache = lens_run(folder, flags)
            theirs, their_cache = (bridge_run(hf, folder, tokenizer, flags) if reference == "bridge"
                                   else reference_run(legacy_model(family, hf, {f: f in flags for f in FLAGS})))
            done[family, flags, reference] = (model, ours, theirs, our_cache, their_cache)
        return done[family, flags, reference]
    return get


def in_lens_convention(model: HookedTransformer, name: str, ours: torch.Tensor,
                       theirs: torch.Tensor) -> torch.Tensor:
    """TransformerLens's value of a hook, as lens records it where the two conventions differ: ln1 with
    per-head inputs (hook_attn_in / hook_q_input, ...): lens, as the legacy HookedTransformer does,
    normalises each head's copy of the residual, so ln1's hooks gain a head axis [batch, pos, head, d];
    the bridge normalises the residual once. Each head's copy must equal it. (hook_normalized is x / scale,
    before the norm's weight, in all three.)"""
    if ".ln1." in name and ours.dim() == theirs.dim() + 1:
        theirs = theirs.unsqueeze(-2).expand_as(ours)
    return theirs


def mismatch(ours: torch.Tensor, theirs: torch.Tensor) -> str | None:
    """None where the two agree within TOL, else how far apart they are. Masked attention scores are
    -inf in both, and must be so at the same places; the finite entries are compared."""
    if ours.shape != theirs.shape:
        return f"shapes {tuple(ours.shape)} vs {tuple(theirs.shape)}"
    finite = ours.isfinite()
    if not torch.equal(finite, theirs.isfinite()):
        return "not finite at different places"
    return None if (ours[finite] - theirs[finite]).abs().max() <= TOL else max_diff(ours[finite], theirs[finite])


@pytest.mark.parametrize("family, flags, reference", CASES)
def test_log_softmax_matches_transformer_lens(family, flags, reference, runs):
    _, ours, theirs, _, _ = runs(family, flags, reference)
    a, b = ours["logits"].log_softmax(-1), theirs["logits"].log_softmax(-1)
    assert (a - b).abs().max() <= TOL, f"{family} {flags}: log_softmax {max_diff(a, b)}"


@pytest.mark.parametrize("family, flags, reference", CASES)
def test_every_shared_hook_matches_transformer_lens(family, flags, reference, runs):
    model, ours, theirs, _, _ = runs(family, flags, reference)
    shared = sorted(set(model.hook_dict) & set(theirs))
    far = {name: mismatch(ours[name], in_lens_convention(model, name, ours[name], theirs[name])) for name in shared}
    far = {name: how for name, how in far.items() if how is not None}
    detail = "".join(f"\n  {name}: {how}" for name, how in far.items())
    assert not far, f"{family} {flags}: {len(far)} of {len(shared)} hooks differ by more than {TOL}:{detail}"


@pytest.mark.parametrize("reference", REFERENCES)
@pytest.mark.parametrize("family", FAMILIES)
def test_every_lens_hook_is_a_transformer_lens_hook(family, reference, runs):
    """So the comparison above covers every lens hook, and none is a name a TransformerLens user lacks."""
    model, _, theirs, _, _ = runs(family, FLAGS, reference)
    absent = set()  # hooks the reference cannot fire
    if reference == "legacy" and model.cfg.n_kv_heads != model.cfg.n_heads:  # see gqa_refuses_attn_in
        absent = {name for name in model.hook_dict if name.endswith("hook_attn_in")}
    only_lens = set(model.hook_dict) - set(theirs) - absent
    assert sorted(only_lens) == [], f"{family}: lens hooks TransformerLens does not fire"
    in_blocks, outside = FAMILY_HOOKS[family]
    expected = {"hook_embed", "ln_final.hook_scale", "ln_final.hook_normalized", *outside} | {
        f"blocks.{layer}.{hook}" for layer in range(model.cfg.n_layers) for hook in BLOCK_HOOKS + in_blocks}
    expected -= absent
    shared = set(model.hook_dict) & set(theirs)
    assert expected <= shared, f"{family}: not defined by both: {sorted(expected - shared)}"


def close(name: str, ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape, f"{name}: shapes {tuple(ours.shape)} vs {tuple(theirs.shape)}"
    assert (ours - theirs).abs().max() <= TOL, f"{name}: {max_diff(ours, theirs)}"


@pytest.mark.parametrize("flags", [(), FLAGS], ids=["none", "all"])
@pytest.mark.parametrize("family", FAMILIES)
def test_residual_analyses_match_the_legacy_hooked_transformer(family, flags, runs):
    """The logit lens (accumulated_resid through the final norm, recomputed per layer), decompose_resid,
    and, with the weights folded (where TransformerLens's norm-free apply_ln_to_stack and lens's agree),
    the decomposition through the cached final scale and its logit attributions."""
    _, _, _, ours, theirs = runs(family, flags, "legacy")
    for pos_slice in (None, -1, (1, 4)):
        a, labels_a = ours.accumulated_resid(apply_ln=True, pos_slice=pos_slice, return_labels=True)
        b, labels_b = theirs.accumulated_resid(apply_ln=True, pos_slice=pos_slice, return_labels=True)
        assert labels_a == labels_b
        close(f"accumulated_resid(apply_ln=True, pos_slice={pos_slice})", a, b)
        close(f"accumulated_resid(layer=2, incl_mid=True, pos_slice={pos_slice})",
              ours.accumulated_resid(2, incl_mid=True, pos_slice=pos_slice),
              theirs.accumulated_resid(2, incl_mid=True, pos_slice=pos_slice))
        a, labels_a = ours.decompose_resid(pos_slice=pos_slice, return_labels=True)
        b, labels_b = theirs.decompose_resid(pos_slice=pos_slice, return_labels=True)
        assert labels_a == labels_b
        close(f"decompose_resid(pos_slice={pos_slice})", a, b)
        if flags:
            close(f"decompose_resid(apply_ln=True, pos_slice={pos_slice})",
                  ours.decompose_resid(apply_ln=True, pos_slice=pos_slice),
                  theirs.decompose_resid(apply_ln=True, pos_slice=pos_slice))
            stack = ours.decompose_resid(pos_slice=pos_slice)
            close(f"logit_attrs(pos_slice={pos_slice})", ours.logit_attrs(stack, 5, 7, pos_slice=pos_slice),
                  theirs.logit_attrs(stack, 5, 7, pos_slice=pos_slice))
