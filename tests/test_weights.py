"""Weight properties are views with TransformerLens shapes: reading them is free, editing them is real."""

import torch
from conftest import TINY_VARIANTS

from lens import HookedTransformer

TOKENS = torch.randint(0, 50, (1, 6), generator=torch.Generator().manual_seed(0))


def test_weight_shapes_follow_transformer_lens():
    model = HookedTransformer.from_config(TINY_VARIANTS["llama_like"], seed=0)
    L, H, K, D, E, M, V = 3, 4, 2, 32, 8, 48, 50
    expected = {"W_Q": (L, H, D, E), "W_K": (L, H, D, E), "W_V": (L, H, D, E), "W_O": (L, H, E, D),
                "_W_K": (L, K, D, E), "_W_V": (L, K, D, E), "_b_K": (L, K, E),
                "b_Q": (L, H, E), "b_K": (L, H, E), "b_O": (L, D), "W_in": (L, D, M), "W_gate": (L, D, M),
                "W_out": (L, M, D), "b_in": (L, M), "b_out": (L, D), "W_E": (V, D), "W_U": (D, V), "b_U": (V,)}
    for name, shape in expected.items():
        assert tuple(getattr(model, name).shape) == shape, name
    attn, mlp = model.blocks[1].attn, model.blocks[1].mlp
    assert attn.W_Q.shape == (H, D, E) and attn.W_O.shape == (H, E, D) and mlp.W_out.shape == (M, D)
    gpt2 = HookedTransformer.from_config(TINY_VARIANTS["gpt2_like"], seed=0)
    assert gpt2.W_pos.shape == (32, D)


def test_weight_properties_share_storage_with_the_parameters():
    model = HookedTransformer.from_config(TINY_VARIANTS["llama_like"], seed=0)
    for name in ("W_Q", "_W_K", "_W_V", "W_O", "b_Q", "W_in", "W_out", "W_E"):
        assert getattr(model, name).untyped_storage().data_ptr() == \
            getattr(model.weights, name.removeprefix("_")).untyped_storage().data_ptr(), name
    assert torch.equal(model.blocks[2].attn.W_Q, model.W_Q[2])


def test_editing_a_head_through_its_view_changes_the_forward():
    model = HookedTransformer.from_config(TINY_VARIANTS["llama_like"], seed=0)
    before = model(TOKENS)
    _, cache = model.run_with_cache(TOKENS, names_filter=("z", 1))
    with torch.no_grad():
        model.blocks[1].attn.W_O[3] = 0  # silence head 3 of layer 1
    after, cache_after = model.run_with_cache(TOKENS, names_filter=("attn_out", 1))
    expected = torch.einsum("bphe,hed->bpd", cache["z", 1], model.W_O[1]) + model.b_O[1]
    assert (cache_after["attn_out", 1] - expected).abs().max() <= 1e-5
    assert (after - before).abs().max() > 1e-4


def test_tied_unembedding_is_a_view_of_the_embedding():
    cfg = TINY_VARIANTS["gemma_like"]
    model = HookedTransformer.from_config(cfg.__class__(**{**cfg.__dict__, "tied_embeddings": True}), seed=0)
    assert model.W_U.data_ptr() == model.W_E.data_ptr() and torch.equal(model.W_U, model.W_E.T)
