"""Dictionaries (lens/sae): SAELens's format read natively, equal to SAELens itself, and spliced into a model."""

import json

import pytest
import torch
from conftest import TINY_VARIANTS, max_diff, tiny_config

from lens import HookedTransformer
from lens.sae import SAE, DictionaryError, SAEConfig

sae_lens = pytest.importorskip("sae_lens")

D = 32  # tiny_config's d_model


def _sae_lens_dictionary(architecture: str, tmp_path, hook="blocks.1.hook_resid_post", d_in=D, d_sae=64,
                         seed=0, **fields):
    """A random dictionary built and saved by SAELens itself; returns (SAELens's loaded copy, its folder)."""
    from sae_lens import SAE as SLSAE
    from sae_lens.registry import get_sae_class

    torch.manual_seed(seed)
    metadata = sae_lens.saes.sae.SAEMetadata(hook_name=hook, model_name="tiny")
    if architecture == "batchtopk":  # trained as BatchTopK, saved for inference as JumpReLU
        from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
        cfg = BatchTopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=4, metadata=metadata, **fields)
        sae = BatchTopKTrainingSAE(cfg)
        sae.topk_threshold = torch.tensor(0.01, dtype=torch.double)
    else:
        cls, cfg_cls = get_sae_class(architecture)
        cfg = cfg_cls(d_in=d_in, d_sae=d_sae, metadata=metadata, **fields)
        sae = cls(cfg)
    with torch.no_grad():  # SAELens initialises biases to zero; make every parameter count
        for name, p in sae.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.randn_like(p) * 0.1 + (0.2 if name == "threshold" else 0.0))
            elif name == "W_skip":
                p.copy_(torch.randn_like(p) * 0.05)
    folder = tmp_path / architecture
    (sae.save_inference_model if architecture == "batchtopk" else sae.save_model)(folder)
    return SLSAE.load_from_disk(folder), folder


ARCHITECTURES = {
    "standard": {},
    "standard_no_b_dec_in": {"apply_b_dec_to_input": False},
    "standard_layer_norm": {"normalize_activations": "layer_norm"},
    "standard_constant_norm": {"normalize_activations": "constant_norm_rescale"},
    "topk": {"k": 5},
    "topk_rescaled": {"k": 5, "rescale_acts_by_decoder_norm": True},
    "batchtopk": {},
    "jumprelu": {},
    "gated": {},
}


@pytest.mark.parametrize("variant", list(ARCHITECTURES))
def test_lens_reads_sae_lens_dictionaries_and_computes_what_sae_lens_does(variant, tmp_path):
    architecture = variant.split("_")[0]
    reference, folder = _sae_lens_dictionary(architecture, tmp_path, **ARCHITECTURES[variant])
    sae = SAE.load(folder)
    expected_arch = "jumprelu" if architecture == "batchtopk" else architecture
    assert sae.cfg.architecture == expected_arch and sae.cfg.hook_name == "blocks.1.hook_resid_post"
    x = torch.randn(3, 7, D) * 2
    with torch.no_grad():
        acts, ref_acts = sae.encode(x), reference.encode(x)
        assert (acts - ref_acts).abs().max() <= 1e-5, f"encode: {max_diff(acts, ref_acts)}"
        assert (acts != 0).any() and (acts == 0).any(), "a test dictionary should be sparse but not dead"
        out, ref_out = sae.decode(acts), reference.decode(ref_acts)
        assert (out - ref_out).abs().max() <= 1e-5, f"decode: {max_diff(out, ref_out)}"
        fwd, ref_fwd = sae(x), reference(x)
        assert (fwd - ref_fwd).abs().max() <= 1e-5, f"forward: {max_diff(fwd, ref_fwd)}"


@pytest.mark.parametrize("architecture", ["transcoder", "skip_transcoder", "jumprelu_transcoder",
                                          "jumprelu_skip_transcoder"])
def test_lens_transcoders_equal_sae_lens(architecture, tmp_path):
    reference, folder = _sae_lens_dictionary(architecture, tmp_path, hook="blocks.1.hook_mlp_in", d_out=D,
                                             apply_b_dec_to_input=False)
    raw = json.loads((folder / "cfg.json").read_text())
    raw["metadata"]["hook_name_out"] = "blocks.1.hook_mlp_out"
    (folder / "cfg.json").write_text(json.dumps(raw))
    sae = SAE.load(folder)
    assert sae.cfg.out_hook == "blocks.1.hook_mlp_out" and sae.cfg.d_out == D
    x = torch.randn(2, 5, D)
    with torch.no_grad():
        for ours, theirs, what in [(sae.encode(x), reference.encode(x), "encode"), (sae(x), reference(x), "forward")]:
            assert (ours - theirs).abs().max() <= 1e-5, f"{what}: {max_diff(ours, theirs)}"


def test_sae_lens_reads_what_lens_saves(tmp_path):
    sae = SAE.random(SAEConfig("topk", D, 48, "blocks.0.hook_resid_pre", k=3), seed=2)
    reference = sae_lens.SAE.load_from_disk(sae.save(tmp_path / "d"))
    x = torch.randn(4, D)
    with torch.no_grad():
        assert (sae(x) - reference(x)).abs().max() <= 1e-5


def test_hub_loading_without_the_hub_is_a_clear_error():
    with pytest.raises(DictionaryError, match="gemma-scope-2-270m-pt-res.*(hub|reach|offline)"):
        SAE.from_pretrained("gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_small")
    with pytest.raises(DictionaryError, match="no release 'gemma-scope-2-270m-pt-ress'.*gemma-scope-2-270m-pt-res"):
        SAE.from_pretrained("gemma-scope-2-270m-pt-ress", "x")


def test_bad_dictionaries_are_clear_errors(tmp_path):
    model = HookedTransformer.from_config(tiny_config(), seed=0)
    wrong_hook = SAE.random(SAEConfig("standard", D, 16, "blocks.7.hook_resid_post"))
    with pytest.raises(DictionaryError, match=r"blocks\.7\.hook_resid_post.*no hook point"):
        model.add_sae(wrong_hook)
    wrong_width = SAE.random(SAEConfig("standard", 2304, 16, "blocks.1.hook_resid_post", model_name="gemma-2-2b"))
    with pytest.raises(DictionaryError, match=r"d_in=2304.*blocks\.1\.hook_resid_post.*width 32.*gemma-2-2b"):
        model.add_sae(wrong_width)
    with pytest.raises(DictionaryError, match="no cfg.json"):
        SAE.load(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps({"architecture": "matching_pursuit", "d_in": 4, "d_sae": 8,
                                                   "metadata": {"hook_name": "blocks.0.hook_resid_post"}}))
    with pytest.raises(DictionaryError, match="architecture.*matching_pursuit.*valid: standard"):
        SAE.load(tmp_path)
    assert model.attached_saes == {} and not any("hook_sae" in n for n in model.hook_dict)


def _tiny_saes(model):
    cfg = model.cfg
    return [SAE.random(SAEConfig("standard", cfg.d_model, 64, "blocks.1.hook_resid_post"), seed=1),
            SAE.random(SAEConfig("topk", cfg.d_model, 40, "blocks.0.hook_attn_out", k=6), seed=2),
            SAE.random(SAEConfig("jumprelu", cfg.n_heads * cfg.d_head, 30, "blocks.2.attn.hook_z",
                                 reshape_activations="hook_z"), seed=3),
            SAE.random(SAEConfig("skip_transcoder", cfg.d_model, 50, "blocks.1.hook_mlp_in", d_out=cfg.d_model,
                                 hook_name_out="blocks.1.hook_mlp_out", apply_b_dec_to_input=False), seed=4)]


@pytest.mark.parametrize("variant", ["gpt2_like", "gemma_like"])
def test_splicing_with_the_error_term_leaves_the_logits_unchanged(variant):
    model = HookedTransformer.from_config(TINY_VARIANTS[variant], seed=1)
    tokens = torch.randint(0, 50, (2, 9))
    clean = model(tokens)
    saes = _tiny_saes(model)
    with model.saes(saes):
        spliced = model(tokens)
        _, cache = model.run_with_cache(tokens)
    assert (spliced - clean).abs().max() <= 1e-5, max_diff(spliced, clean)
    for sae in saes:
        acts = cache[f"{sae.cfg.hook_name}.hook_sae_acts_post"]
        assert acts.shape == (2, 9, sae.cfg.d_sae) and (acts > 0).any()
        x = cache[f"{sae.cfg.hook_name}.hook_sae_input"]
        recons = cache[f"{sae.cfg.hook_name}.hook_sae_recons"]
        error = cache[f"{sae.cfg.hook_name}.hook_sae_error"]
        if not sae.cfg.is_transcoder:  # error = input - reconstruction (hook_z: error per head, as SAELens)
            torch.testing.assert_close(recons + error.flatten(2), x, atol=1e-5, rtol=0)
    assert model.attached_saes == {} and not any("hook_sae" in n for n in model.hook_dict)
    assert (model(tokens) - clean).abs().max() == 0


def test_splicing_without_the_error_term_replaces_the_activation_by_the_reconstruction():
    model = HookedTransformer.from_config(tiny_config(), seed=1)
    sae = SAE.random(SAEConfig("standard", D, 64, "blocks.1.hook_resid_post"), seed=1)
    tokens = torch.randint(0, 50, (2, 9))
    _, clean_cache = model.run_with_cache(tokens, names_filter="blocks.1.hook_resid_post")
    with model.saes(sae, use_error_term=False):
        logits, cache = model.run_with_cache(tokens)
    assert "blocks.1.hook_resid_post.hook_sae_error" not in cache
    with torch.no_grad():
        expected = sae(clean_cache["blocks.1.hook_resid_post"])
    torch.testing.assert_close(cache["blocks.1.hook_resid_post"], expected, atol=1e-6, rtol=0)
    expected_logits = model(expected, start_at_layer=2)
    torch.testing.assert_close(logits, expected_logits, atol=1e-5, rtol=0)
    assert (logits - model(tokens)).abs().max() > 1e-3


@pytest.mark.parametrize("edit", ["zero", "clamp", "add"])
def test_editing_a_feature_changes_the_output_by_its_decoder_change_even_with_the_error_term(edit):
    model = HookedTransformer.from_config(tiny_config(), seed=1)
    sae = SAE.random(SAEConfig("standard", D, 64, "blocks.1.hook_resid_post"), seed=1)
    tokens = torch.randint(0, 50, (1, 9))
    name = "blocks.1.hook_resid_post.hook_sae_acts_post"
    with model.saes(sae):
        _, cache = model.run_with_cache(tokens, names_filter=[name, "blocks.1.hook_resid_post"])
        acts = cache[name]
        f = int(acts[0].sum(0).argmax())
        new = {"zero": 0.0, "clamp": 5.0, "add": float(acts[0, 3, f]) + 2.0}[edit]

        def fn(a, hook):
            a = a.clone()
            if edit == "add":
                a[:, 3, f] += 2.0
            else:
                a[:, :, f] = new
            return a
        with model.hooks([(name, fn)]):
            edited, edited_cache = model.run_with_cache(tokens, names_filter="blocks.1.hook_resid_post")
    delta = fn(acts, None) - acts  # [1, pos, d_sae]
    expected = cache["blocks.1.hook_resid_post"] + delta @ sae.W_dec
    torch.testing.assert_close(edited_cache["blocks.1.hook_resid_post"], expected, atol=1e-5, rtol=0)
    assert (edited - model(tokens)).abs().max() > 1e-4


def test_saes_argument_splices_for_one_call_and_hooks_can_name_features():
    model = HookedTransformer.from_config(tiny_config(), seed=1)
    sae = SAE.random(SAEConfig("standard", D, 64, "blocks.1.hook_resid_post"), seed=1)
    tokens = torch.randint(0, 50, (1, 6))
    clean = model(tokens)
    torch.testing.assert_close(model(tokens, saes=[sae]), clean, atol=1e-5, rtol=0)
    zeroed = model.run_with_hooks(tokens, saes=[sae], fwd_hooks=[
        ("blocks.1.hook_resid_post.hook_sae_acts_post", lambda a, hook: torch.zeros_like(a))])
    assert (zeroed - clean).abs().max() > 1e-4
    assert model.attached_saes == {}
    model.add_sae(sae)
    assert model.attached_saes == {"blocks.1.hook_resid_post": sae}
    with pytest.raises(DictionaryError, match="already spliced"):
        model.add_sae(SAE.random(SAEConfig("standard", D, 8, "blocks.1.hook_resid_post")))
    model.reset_saes()
    assert model.attached_saes == {}


def test_hub_loading_without_sae_lens_is_a_clear_error(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "sae_lens.loading.pretrained_saes_directory", None)
    with pytest.raises(DictionaryError, match="needs SAELens.*SAE.load"):
        SAE.from_pretrained("gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_small")


def test_a_dictionary_on_one_head_reads_and_writes_that_head_only():
    model = HookedTransformer.from_config(tiny_config(), seed=1)
    sae = SAE.random(SAEConfig("standard", 8, 24, "blocks.1.attn.hook_z", hook_head_index=2), seed=5)
    tokens = torch.randint(0, 50, (1, 7))
    _, clean = model.run_with_cache(tokens, names_filter="blocks.1.attn.hook_z")
    with model.saes(sae, use_error_term=False):
        _, cache = model.run_with_cache(tokens, names_filter=["blocks.1.attn.hook_z",
                                                              "blocks.1.attn.hook_z.hook_sae_input"])
    z, z_clean = cache["blocks.1.attn.hook_z"], clean["blocks.1.attn.hook_z"]
    torch.testing.assert_close(cache["blocks.1.attn.hook_z.hook_sae_input"], z_clean[:, :, 2], atol=0, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(z[:, :, 2], sae(z_clean[:, :, 2]), atol=1e-6, rtol=0)
    keep = [0, 1, 3]
    assert torch.equal(z[:, :, keep], z_clean[:, :, keep])
    with pytest.raises(DictionaryError, match="head 7 of blocks.1.attn.hook_z, which has 4 heads"):
        model.add_sae(SAE.random(SAEConfig("standard", 8, 24, "blocks.1.attn.hook_z", hook_head_index=7)))
