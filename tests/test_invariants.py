"""Algebraic facts every forward pass must satisfy, on random models of each block shape."""

import torch
from conftest import TINY_VARIANTS, max_diff

from lens import HookedTransformer

TOKENS = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(0))


def test_residual_stream_is_the_sum_of_what_is_written_to_it(tiny_model):
    _, cache = tiny_model.run_with_cache(TOKENS)
    for layer in range(tiny_model.cfg.n_layers):
        pre, attn, mlp, post = (cache[n, layer] for n in ("resid_pre", "attn_out", "mlp_out", "resid_post"))
        if tiny_model.cfg.parallel_attn_mlp:
            assert (post - (pre + attn + mlp)).abs().max() <= 1e-5
        else:
            assert (cache["resid_mid", layer] - (pre + attn)).abs().max() <= 1e-5
            assert (post - (cache["resid_mid", layer] + mlp)).abs().max() <= 1e-5


def test_attn_out_is_the_sum_over_heads_of_z_times_W_O_plus_b_O(tiny_model):
    _, cache = tiny_model.run_with_cache(TOKENS)
    for layer in range(tiny_model.cfg.n_layers):
        z = cache["z", layer]  # [batch, pos, head, d_head]
        by_heads = torch.einsum("bphe,hed->bpd", z, tiny_model.W_O[layer]) + tiny_model.b_O[layer]
        if tiny_model.cfg.post_norms:  # Gemma normalises the attention output before adding it
            block = tiny_model.blocks[layer]
            by_heads = block.norm("ln1_post", by_heads)
        assert (cache["attn_out", layer] - by_heads).abs().max() <= 1e-5, max_diff(cache["attn_out", layer], by_heads)


def test_pattern_rows_sum_to_one_and_are_causal(tiny_model):
    _, cache = tiny_model.run_with_cache(TOKENS)
    for layer in range(tiny_model.cfg.n_layers):
        pattern = cache["pattern", layer]
        assert (pattern.sum(-1) - 1).abs().max() <= 1e-5
        assert pattern.triu(1).abs().max() == 0


def test_sliding_window_layers_attend_only_within_the_window():
    from conftest import TINY_VARIANTS

    from lens import HookedTransformer
    model = HookedTransformer.from_config(TINY_VARIANTS["gemma_like"], seed=0)
    _, cache = model.run_with_cache(TOKENS)
    window = model.cfg.window(0)
    pattern = cache["pattern", 0][0, 0]  # [q, k]
    q, k = torch.meshgrid(torch.arange(9), torch.arange(9), indexing="ij")
    assert pattern[q - k >= window].abs().max() == 0
    assert cache["pattern", 1][0, 0][8, 0] > 0  # the global layer still sees the first token


def test_sdpa_and_explicit_attention_give_the_same_logits(tiny_model):
    with torch.no_grad():
        fast = tiny_model(TOKENS)
        explicit, _ = tiny_model.run_with_cache(TOKENS, names_filter=[("pattern", i) for i in range(tiny_model.cfg.n_layers)])
    assert (fast - explicit).abs().max() <= 1e-5, max_diff(fast, explicit)


def test_sdpa_and_explicit_attention_give_the_same_gradients(tiny_model):
    def grad_of_W_Q(**kwargs):
        tiny_model.zero_grad()
        tiny_model(TOKENS, return_type="loss", **kwargs).backward()
        return tiny_model.weights.W_Q.grad.clone()

    fast = grad_of_W_Q()
    with tiny_model.hooks(fwd_hooks=[(lambda name: name.endswith("hook_pattern"), lambda x, hook: None)]):
        explicit = grad_of_W_Q()
    assert (fast - explicit).abs().max() <= 1e-5, max_diff(fast, explicit)


def test_a_hook_that_returns_a_modified_tensor_changes_the_output(tiny_model):
    clean = tiny_model(TOKENS)
    zeroed = tiny_model.run_with_hooks(TOKENS, fwd_hooks=[(("mlp_out", 1), lambda x, hook: torch.zeros_like(x))])
    assert (clean - zeroed).abs().max() > 1e-3
    observed = tiny_model.run_with_hooks(TOKENS, fwd_hooks=[(("mlp_out", 1), lambda x, hook: None)])
    assert torch.equal(clean, observed)


def test_a_backward_hook_receives_the_gradient_autograd_gives(tiny_model):
    grads = {}
    loss = tiny_model.run_with_hooks(TOKENS, return_type="loss", bwd_hooks=[
        (("resid_mid" if not tiny_model.cfg.parallel_attn_mlp else "resid_pre", 1),
         lambda g, hook: grads.__setitem__(hook.name, g.clone()))])
    loss.backward()
    (name, hook_grad), = grads.items()
    # The same gradient by autograd directly: cache the activation with grad and differentiate.
    store = {}

    def keep(x, hook):
        x.retain_grad()
        store["x"] = x
    loss2 = tiny_model.run_with_hooks(TOKENS, return_type="loss", fwd_hooks=[(name, keep)])
    (expected,) = torch.autograd.grad(loss2, store["x"])
    assert (hook_grad - expected).abs().max() <= 1e-6, max_diff(hook_grad, expected)


def test_stop_and_start_at_layer_split_the_forward_exactly(tiny_model):
    full = tiny_model(TOKENS)
    middle = tiny_model(TOKENS, stop_at_layer=2)
    _, cache = tiny_model.run_with_cache(TOKENS, names_filter=("resid_pre", 2))
    assert torch.equal(middle, cache["resid_pre", 2])
    rest = tiny_model(middle, start_at_layer=2)
    assert (rest - full).abs().max() <= 1e-6


def test_loss_is_the_mean_next_token_cross_entropy(tiny_model):
    logits, loss = tiny_model(TOKENS, return_type="both")
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), TOKENS[:, 1:].flatten())
    assert abs(loss.item() - expected.item()) <= 1e-5
    per_token = tiny_model(TOKENS, return_type="loss", loss_per_token=True)
    assert per_token.shape == (2, 8) and abs(per_token.mean().item() - expected.item()) <= 1e-5


def test_rms_norm_keeps_float64_precision():
    # RMSNorm upcasts half precision to fp32 as HF does, but must not round fp64 down to it.
    model = HookedTransformer.from_config(TINY_VARIANTS["llama_like"], seed=0, dtype=torch.float64)
    x = torch.randn(2, 5, model.cfg.d_model, dtype=torch.float64) * 3
    w = model.weights.ln1_w[0]
    naive = x / (x.pow(2).mean(-1, keepdim=True) + model.cfg.norm_eps).sqrt() * w
    norm = model.blocks[0].ln1
    fast = norm(x, w)
    with model.hooks([("blocks.0.ln1.hook_scale", lambda scale, hook: None)]):  # the hooked path
        hooked = norm(x, w)
    assert fast.dtype == hooked.dtype == torch.float64
    assert (fast - naive).abs().max() <= 1e-12, max_diff(fast, naive)
    assert (hooked - naive).abs().max() <= 1e-12, max_diff(hooked, naive)
