"""FactoredMatrix agrees with the dense product it stands for; QK/OV are the heads' circuits; composition
scores follow Elhage et al. 2021 with TransformerLens's [l1, h1, l2, h2] (earlier head first) order."""

import pytest
import torch
from conftest import TINY_VARIANTS, max_diff, tiny_config

from lens import FactoredMatrix, HookedTransformer

GEN = torch.Generator().manual_seed(0)


def randn(*shape, dtype=torch.float64):
    return torch.randn(*shape, generator=GEN, dtype=dtype)


def assert_close(actual, expected, tol, what):
    """|actual - expected| <= tol · max(1, |expected|.max()), elementwise."""
    scale = max(1.0, expected.abs().max().item())
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert (actual - expected).abs().max().item() <= tol * scale, f"{what}: {max_diff(actual, expected)}"


@pytest.fixture
def fm():
    """[2, 3] leading dims (A broadcast over the first), ldim 10, mdim 4, rdim 7."""
    return FactoredMatrix(randn(3, 10, 4), randn(2, 3, 4, 7))


@pytest.fixture
def model():
    return HookedTransformer.from_config(TINY_VARIANTS["llama_like"], seed=0)  # 4 heads, 2 kv heads


def test_product_transpose_and_shape_equal_the_dense_ones(fm):
    dense = fm.A @ fm.B  # [2, 3, 10, 7]
    assert tuple(fm.shape) == (2, 3, 10, 7) and fm.ndim == 4 and (fm.ldim, fm.mdim, fm.rdim) == (10, 4, 7)
    assert_close(fm.AB, dense, 1e-12, "AB")
    assert_close(fm.T.AB, dense.mT, 1e-12, "T")
    assert tuple(fm.T.shape) == (2, 3, 7, 10)


def test_reverse_product_is_defined_only_for_square_products(fm):
    with pytest.raises(ValueError, match="ldim == rdim"):
        _ = fm.BA
    square = FactoredMatrix(randn(10, 4), randn(4, 10))
    assert_close(square.BA, square.B @ square.A, 1e-12, "BA")


def test_svd_reconstructs_the_product_and_matches_its_singular_values():
    fm = FactoredMatrix(randn(2, 3, 10, 4, dtype=torch.float32), randn(2, 3, 4, 7, dtype=torch.float32))
    U, S, Vh = fm.svd()  # TransformerLens's convention: AB = U diag(S) Vh^T
    dense = fm.AB
    rebuilt = U @ torch.diag_embed(S) @ Vh.mT
    relative = ((rebuilt - dense).norm() / dense.norm()).item()
    assert relative <= 1e-4, f"relative reconstruction error {relative:.3g}"
    assert_close(S, torch.linalg.svdvals(dense)[..., :4], 1e-4, "S vs svdvals of the dense product")
    eye = torch.eye(4).expand(2, 3, 4, 4)
    assert_close(U.mT @ U, eye, 1e-5, "U^T U")
    assert_close(Vh.mT @ Vh, eye, 1e-5, "Vh^T Vh")
    assert fm.U is U and fm.S is S and fm.Vh is Vh  # computed once


def test_svd_of_a_matrix_wider_inside_than_outside_keeps_the_true_rank():
    fm = FactoredMatrix(randn(5, 8), randn(8, 6))  # mdim 8 > ldim 5: rank 5
    U, S, Vh = fm.svd()
    assert_close(S, torch.linalg.svdvals(fm.AB), 1e-10, "S")
    assert_close(U @ torch.diag_embed(S) @ Vh.mT, fm.AB, 1e-10, "reconstruction")


def test_eigenvalues_are_the_nonzero_eigenvalues_of_the_dense_product():
    fm = FactoredMatrix(randn(2, 12, 4), randn(2, 4, 12))
    dense = torch.linalg.eigvals(fm.AB)  # [2, 12]: 4 nonzero, 8 zero up to rounding
    for batch in range(2):
        nonzero = dense[batch][dense[batch].abs().argsort(descending=True)[:4]]
        ours = fm.eigenvalues[batch]
        # Conjugate pairs share a magnitude, so match each eigenvalue to its nearest instead of sorting.
        gap = max((ours[:, None] - nonzero[None]).abs().min(1).values.max().item(),
                  (nonzero[:, None] - ours[None]).abs().min(1).values.max().item())
        assert gap <= 1e-8 * nonzero.abs().max().item(), f"batch {batch}: eigenvalue gap {gap:.3g}"
        assert dense[batch].abs().sort().values[:8].max() <= 1e-10 * nonzero.abs().max()


def test_norm_is_the_frobenius_norm_of_the_dense_product(fm):
    assert_close(fm.norm(), torch.linalg.matrix_norm(fm.AB), 1e-10, "norm")


@pytest.mark.parametrize("mdim", [4, 9])  # inner dim below and above the outer ones
def test_matmul_with_tensors_equals_the_dense_product(mdim):
    fm = FactoredMatrix(randn(2, 8, mdim), randn(2, mdim, 7))
    right, left = randn(7, 5), randn(3, 8)
    assert_close((fm @ right).AB, fm.AB @ right, 1e-10, "FM @ tensor")
    assert_close((left @ fm).AB, left @ fm.AB, 1e-10, "tensor @ FM")
    assert (fm @ right).mdim == min(mdim, 7) and (left @ fm).mdim == min(mdim, 8)
    vec_r, vec_l = randn(7), randn(8)
    assert_close(fm @ vec_r, (fm.AB @ vec_r[:, None])[..., 0], 1e-10, "FM @ vector")
    assert_close(vec_l @ fm, (vec_l[None] @ fm.AB)[..., 0, :], 1e-10, "vector @ FM")
    with pytest.raises(ValueError, match="cannot multiply"):
        fm @ randn(8, 5)


def test_matmul_of_two_factored_matrices_is_factored_with_the_smaller_inner_dim():
    first, second = FactoredMatrix(randn(3, 16, 4), randn(3, 4, 16)), FactoredMatrix(randn(16, 2), randn(2, 16))
    product = first @ second
    assert isinstance(product, FactoredMatrix) and product.mdim <= 4
    assert_close(product.AB, first.AB @ second.AB, 1e-10, "FM @ FM")
    assert_close((2.5 * first).AB, 2.5 * first.AB, 1e-12, "scalar * FM")


def test_indexing_equals_indexing_the_dense_product(fm):
    dense = fm.AB
    assert_close(fm[1].AB, dense[1], 1e-12, "fm[1]")
    assert_close(fm[1, 2].AB, dense[1, 2], 1e-12, "fm[1, 2]")
    assert_close(fm[:, [0, 2]].AB, dense[:, [0, 2]], 1e-12, "fm[:, [0, 2]]")
    assert_close(fm[0, 1, 2:5, 1:6].AB, dense[0, 1, 2:5, 1:6], 1e-12, "rows and columns")
    assert_close(fm[0, 1, 2].AB, dense[0, 1, 2:3], 1e-12, "an int row stays a dimension of length 1")
    assert_close(fm[0, 1, :, -1].AB, dense[0, 1, :, -1:], 1e-12, "an int column stays a dimension of length 1")
    with pytest.raises(IndexError):
        fm[0, 1, 2, 3, 4]  # more indices than dimensions


def test_get_corner_equals_the_dense_corner(fm):
    assert_close(fm.get_corner(2), fm.AB[:2, :2, :2, :2], 1e-12, "corner")
    single = fm[0, 0]
    assert_close(single.get_corner(3), single.AB[:3, :3], 1e-12, "corner of one matrix")


def test_collapsed_factors_keep_the_norm_of_products():
    fm, other = FactoredMatrix(randn(12, 3), randn(3, 12)), randn(12, 5)
    assert_close(torch.linalg.matrix_norm(fm.collapse_l() @ other), torch.linalg.matrix_norm(fm.AB @ other),
                 1e-10, "collapse_l")
    assert_close(torch.linalg.matrix_norm(other.T @ fm.collapse_r()), torch.linalg.matrix_norm(other.T @ fm.AB),
                 1e-10, "collapse_r")
    assert_close(fm.make_even().AB, fm.AB, 1e-10, "make_even")


def test_svd_of_bfloat16_factors_runs_in_float32():
    fm = FactoredMatrix(randn(10, 4, dtype=torch.bfloat16), randn(4, 10, dtype=torch.bfloat16))
    assert fm.S.dtype == torch.float32
    assert_close(fm.norm(), torch.linalg.matrix_norm(fm.AB.float()), 1e-2, "bf16 norm")


# --- the model's circuits -----------------------------------------------------------


def test_qk_and_ov_are_each_heads_circuit_with_kv_heads_shared_by_their_group(model):
    group = model.cfg.n_heads // model.cfg.n_kv_heads
    assert tuple(model.QK.shape) == (3, 4, 32, 32) and tuple(model.OV.shape) == (3, 4, 32, 32)
    for layer, head in [(0, 0), (1, 1), (2, 2), (2, 3)]:
        qk = model.W_Q[layer, head] @ model._W_K[layer, head // group].T
        ov = model._W_V[layer, head // group] @ model.W_O[layer, head]
        assert torch.equal(model.W_K[layer, head], model._W_K[layer, head // group])  # TransformerLens's GQA view
        assert torch.equal(model.W_V[layer, head], model._W_V[layer, head // group])
        assert_close(model.QK[layer, head].AB, qk, 1e-6, f"QK L{layer}H{head}")
        assert_close(model.OV[layer, head].AB, ov, 1e-6, f"OV L{layer}H{head}")
        assert_close(model.blocks[layer].attn.QK[head].AB, qk, 1e-6, f"blocks[{layer}].attn.QK")
        assert_close(model.blocks[layer].attn.OV[head].AB, ov, 1e-6, f"blocks[{layer}].attn.OV")


def test_qk_gives_the_attention_scores_and_ov_the_head_results_without_rotary():
    model = HookedTransformer.from_config(tiny_config(n_kv_heads=2), seed=3)  # learned positions, zero biases
    tokens = torch.randint(0, 50, (1, 6), generator=GEN)
    names = ["blocks.1.ln1.hook_normalized", "blocks.1.attn.hook_attn_scores", "blocks.1.attn.hook_pattern",
             "blocks.1.attn.hook_result"]
    _, cache = model.run_with_cache(tokens, names_filter=names)
    x = cache[names[0]][0]  # [pos, d_model]
    scores = (x @ model.QK[1] @ x.T).AB / model.cfg.scale  # [n_heads, pos, pos]
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    assert_close(scores[:, causal], cache[names[1]][0][:, causal], 1e-5, "x QK x^T vs attn scores")
    result = cache[names[2]][0] @ (x @ model.OV[1]).AB  # [n_heads, pos, d_model]
    assert_close(result, cache[names[3]][0].transpose(0, 1), 1e-5, "pattern x OV vs hook_result")


# --- composition scores ---------------------------------------------------------------


def naive_score(model, kind, l1, h1, l2, h2):
    """Elhage et al.'s score with dense [d_model, d_model] matrices."""
    ov_early = model.OV[l1, h1].AB
    late = {"Q": model.QK[l2, h2].AB, "K": model.QK[l2, h2].AB.T, "V": model.OV[l2, h2].AB}[kind]
    return torch.linalg.matrix_norm(ov_early @ late) / (torch.linalg.matrix_norm(ov_early)
                                                         * torch.linalg.matrix_norm(late))


@pytest.mark.parametrize("kind", ["Q", "K", "V"])
def test_composition_scores_match_the_dense_formula_and_vanish_unless_the_first_head_is_earlier(model, kind):
    scores = model.all_composition_scores(kind)  # [l1, h1, l2, h2]
    assert tuple(scores.shape) == (3, 4, 3, 4)
    for l1, h1, l2, h2 in [(0, 0, 1, 0), (0, 3, 2, 1), (1, 2, 2, 3), (0, 1, 1, 2)]:
        expected = naive_score(model, kind, l1, h1, l2, h2)
        assert abs(scores[l1, h1, l2, h2].item() - expected.item()) <= 1e-5, \
            f"{kind} L{l1}H{h1}→L{l2}H{h2}: {scores[l1, h1, l2, h2].item():.6f} vs {expected.item():.6f}"
    later_or_same = torch.arange(3)[:, None, None, None] >= torch.arange(3)[None, None, :, None]
    assert scores[later_or_same.expand_as(scores)].abs().max().item() == 0.0
    assert scores.min().item() >= 0.0 and scores.max().item() <= 1.0 + 1e-6, \
        f"scores span [{scores.min().item():.3g}, {scores.max().item():.3g}]"
    assert scores[~later_or_same.expand_as(scores)].min().item() > 0.0


def test_an_earlier_head_writing_what_a_later_query_reads_has_q_score_one_and_k_score_zero(model):
    """Head L0H0 writes along v; head L1H1's query reads v and its key reads w ⟂ v (both rank 1)."""
    d, e = model.cfg.d_model, model.cfg.d_head
    a, v = randn(d, dtype=torch.float32), randn(d, dtype=torch.float32)
    w = randn(d, dtype=torch.float32)
    w = w - (w @ v) / (v @ v) * v
    first_column = torch.zeros(e)
    first_column[0] = 1.0
    with torch.no_grad():  # L0H0 and L1H1 both use kv head 0 (group of 2)
        model._W_V[0, 0] = torch.outer(a, first_column)  # OV of L0H0 = a v^T
        model.W_O[0, 0] = torch.outer(first_column, v)
        model.W_Q[1, 1] = torch.outer(v, first_column)  # QK of L1H1 = v w^T
        model._W_K[1, 0] = torch.outer(w, first_column)
    q, k = model.all_composition_scores("Q"), model.all_composition_scores("K")
    assert abs(q[0, 0, 1, 1].item() - 1.0) <= 1e-5, f"Q score {q[0, 0, 1, 1].item():.6f}, expected 1"
    assert abs(k[0, 0, 1, 1].item()) <= 1e-5, f"K score {k[0, 0, 1, 1].item():.3g}, expected 0"
    assert q[1, 1, 0, 0].item() == 0.0  # the later head cannot feed the earlier one


def test_composition_scores_reject_an_unknown_kind(model):
    with pytest.raises(ValueError, match="'Q', 'K' or 'V'"):
        model.all_composition_scores("O")
