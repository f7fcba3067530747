"""Feature analyses (lens/sae): quality numbers against a hand computation, attribution against exact
patching, direct attribution summing to the layer's total, ablation and steering on features."""

import pytest
import torch
from conftest import TINY_VARIANTS

from lens import HookedTransformer
from lens.patching import logit_diff, patch
from lens.sae import SAE, SAEConfig
from lens.sae.attribution import ablate_features, direct_attribution, feature_patch
from lens.sae.quality import quality
from lens.sae.reading import max_activating, top_features
from lens.sae.steering import steer_feature


@pytest.fixture
def setup():
    model = HookedTransformer.from_config(TINY_VARIANTS["llama_like"], seed=1)
    sae = SAE.random(SAEConfig("standard", 32, 64, "blocks.1.hook_resid_post"), seed=1)
    return model, sae


@torch.no_grad()
def test_quality_numbers_equal_a_hand_computation(setup):
    model, sae = setup
    texts = [torch.randint(0, 50, (10,), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    q = quality(model, sae, texts)
    xs, xh, l0, clean, spliced, zero = [], [], [], [], [], []
    for t in texts:
        tokens = t[None]
        logits, cache = model.run_with_cache(tokens, names_filter="blocks.1.hook_resid_post")
        x = cache["blocks.1.hook_resid_post"][0, 1:]
        with torch.no_grad():
            acts = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
            recons = acts @ sae.W_dec + sae.b_dec
            full = torch.relu((cache["blocks.1.hook_resid_post"][0] - sae.b_dec) @ sae.W_enc + sae.b_enc) @ sae.W_dec \
                + sae.b_dec
        xs.append(x), xh.append(recons), l0.append((acts > 0).sum(-1).float())

        def ce(lg, tokens=tokens):
            return torch.nn.functional.cross_entropy(lg[0, :-1], tokens[0, 1:], reduction="none")
        clean.append(ce(logits))
        spliced.append(ce(model(full[None], start_at_layer=2)))
        zero.append(ce(model(torch.zeros_like(full[None]), start_at_layer=2)))
    x, x_hat = torch.cat(xs).double(), torch.cat(xh).double()
    ev = 1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    lc, ls, lz = (float(torch.cat(v).mean()) for v in (clean, spliced, zero))
    assert abs(q.l0 - float(torch.cat(l0).double().mean())) < 1e-9
    assert abs(q.explained_variance - float(ev)) < 1e-5, (q.explained_variance, float(ev))
    assert abs(q.loss_clean - lc) < 1e-5 and abs(q.loss_spliced - ls) < 1e-5 and abs(q.loss_zero_ablated - lz) < 1e-5
    assert abs(q.ce_loss_recovered - (lz - ls) / (lz - lc)) < 1e-5
    assert "CE loss recovered" in q.summary()


def test_direct_attribution_of_features_and_error_sums_to_the_layers_total(setup):
    model, sae = setup
    sae.cfg.hook_name = "blocks.2.hook_resid_post"  # the last layer: its direct path is the whole effect
    tokens = torch.randint(0, 50, (1, 8), generator=torch.Generator().manual_seed(0))
    r = direct_attribution(model, sae, tokens, answer=3, wrong=7, top_k=100)
    assert abs(r.sum_of_features + r.error_term + r.bias - r.total) < 1e-4
    assert abs(sum(f.score for f in r.features) - r.sum_of_features) < 1e-4  # top_k covers every active feature
    logits = model(tokens)[0, -1].detach()
    # at the last layer with a frozen norm, the total is the logit difference less b_U (zero here)
    assert abs(r.total - float(logits[3] - logits[7])) < 1e-4


def test_feature_attribution_patching_is_the_first_order_term_of_exact_patching(setup):
    model, sae = setup
    gen = torch.Generator().manual_seed(3)
    clean, corrupted = torch.randint(0, 50, (1, 7), generator=gen), torch.randint(0, 50, (1, 7), generator=gen)
    metric = logit_diff(model, 3, 7)
    r = feature_patch(model, sae, clean, corrupted, metric, top_k=5)
    assert r.features and all(f.exact is not None for f in r.features)
    name = "blocks.1.hook_resid_post.hook_sae_acts_post"
    for f in r.features:  # exact = one run_with_hooks per patch; estimate → exact for a small patch
        def write(eps, f=f):
            def hook(a, point):
                a = a.clone()
                a[:, f.position, f.feature] = f.corrupted + eps * (f.clean - f.corrupted)
                return a
            return hook
        with torch.no_grad(), model.saes(sae):
            base = float(metric(model(corrupted)))
            naive = float(metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, write(1.0))]))) - base
            eps = 1e-3
            small = (float(metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, write(eps))]))) - base) / eps
        assert abs(naive - f.exact) < 1e-4, (naive, f.exact)
        assert abs(small - f.attribution) < 2e-2 * max(1.0, abs(f.attribution)), (small, f.attribution)


def test_lens_patching_engine_patches_features_like_any_hook(setup):
    model, sae = setup
    gen = torch.Generator().manual_seed(4)
    clean, corrupted = torch.randint(0, 50, (1, 6), generator=gen), torch.randint(0, 50, (1, 6), generator=gen)
    metric = logit_diff(model, 3, 7)
    with model.saes(sae):  # resid_pre patching with a dictionary spliced equals it without (error term on)
        spliced = patch(model, clean, corrupted, metric, what="resid_pre", progress=False)
    plain = patch(model, clean, corrupted, metric, what="resid_pre", progress=False)
    assert (torch.tensor(spliced.scores) - torch.tensor(plain.scores)).abs().max() < 1e-4


def test_ablating_features_goes_through_the_engine_and_matches_hooks(setup):
    model, sae = setup
    tokens = torch.randint(0, 50, (1, 6), generator=torch.Generator().manual_seed(5))
    metric = logit_diff(model, 3, 7)
    top = top_features(model, sae, tokens, k=2)
    feats = sorted({f for t in top.rows[0] for f, _ in t.features})[:3]
    r = ablate_features(model, sae, tokens, feats, metric)
    name = "blocks.1.hook_resid_post.hook_sae_acts_post"

    def zero(a, point):
        a = a.clone()
        a[..., feats] = 0
        return a
    with torch.no_grad():
        expected = float(metric(model.run_with_hooks(tokens, saes=[sae], fwd_hooks=[(name, zero)])))
    assert abs(r.effects[-1].value - expected) < 1e-5 and r.effects[-1].features == feats
    assert abs(r.base_value - float(metric(model(tokens)))) < 1e-5


def test_top_features_and_max_activating_contexts_agree(setup):
    model, sae = setup
    texts = [torch.randint(0, 50, (9,), generator=torch.Generator().manual_seed(i)) for i in range(4)]
    top = top_features(model, sae, texts, k=3)
    f, a = top.rows[2][4].features[0]
    ctx = max_activating(model, sae, texts, f, k=50)
    assert any(c.text_index == 2 and c.position == 4 and abs(c.activation - a) < 1e-4 for c in ctx.contexts)
    assert ctx.contexts[0].activation >= ctx.contexts[-1].activation > 0
    assert "[[" in ctx.summary()


def test_steering_a_feature_by_adding_or_clamping_changes_generation_logits(setup):
    model, sae = setup
    tokens = torch.randint(0, 50, (6,), generator=torch.Generator().manual_seed(6))
    added = steer_feature(model, sae, tokens, feature=5, mode="add", coefficients=[0.0, 20.0], max_new_tokens=3,
                          tokens=[3])
    assert added.generations[0].logit_shifts["<3>"] == 0.0 and added.generations[1].logit_shifts["<3>"] != 0.0
    clamped = steer_feature(model, sae, tokens, feature=5, mode="clamp", coefficients=[10.0], max_new_tokens=3,
                            tokens=[3])
    assert clamped.generations[0].logit_shifts["<3>"] != 0.0
    assert model.attached_saes == {}
