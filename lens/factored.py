"""FactoredMatrix: a product A @ B kept as its two thin factors, and head composition scores.

A head's QK circuit W_Q W_K^T and OV circuit W_V W_O are [d_model, d_model] matrices of rank
d_head. Kept factored, their SVD, norm and eigenvalues cost O(d_model · d_head²) instead of
O(d_model³), and a stack over [n_layers, n_heads] fits in memory. Axis names:
leading dims (e.g. [n_layers, n_heads], broadcast between A and B), ldim (rows of A @ B),
mdim (the inner, factored dimension), rdim (columns of A @ B). Semantics follow TransformerLens.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from lens.errors import ShapeMismatchError

if TYPE_CHECKING:
    from lens.model.transformer import HookedTransformer

CompositionKind = Literal["Q", "K", "V"]


def _linalg_dtype(t: Tensor) -> Tensor:
    """QR, SVD and eig have no half-precision kernels; run them in float32."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


class FactoredMatrix:
    """The matrix A @ B, A: [..., ldim, mdim], B: [..., mdim, rdim], never formed unless asked (`.AB`)."""

    def __init__(self, A: Tensor, B: Tensor):
        if A.ndim < 2 or B.ndim < 2 or A.shape[-1] != B.shape[-2]:
            raise ShapeMismatchError(f"FactoredMatrix needs A [..., ldim, mdim] and B [..., mdim, rdim]; got A "
                             f"{tuple(A.shape)}, B {tuple(B.shape)}")
        leading = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
        self.A = A.broadcast_to(leading + A.shape[-2:])  # [..., ldim, mdim], a view
        self.B = B.broadcast_to(leading + B.shape[-2:])  # [..., mdim, rdim], a view

    ldim = property(lambda self: self.A.shape[-2], doc="rows of A @ B")
    mdim = property(lambda self: self.A.shape[-1], doc="the inner dimension, at most the rank")
    rdim = property(lambda self: self.B.shape[-1], doc="columns of A @ B")
    shape = property(lambda self: self.A.shape[:-2] + (self.ldim, self.rdim), doc="[..., ldim, rdim]")
    ndim = property(lambda self: len(self.shape))
    pair = property(lambda self: (self.A, self.B))
    has_leading_dims = property(lambda self: self.A.ndim > 2, doc="whether it is a stack of matrices")

    @property
    def AB(self) -> Tensor:
        """The dense product [..., ldim, rdim]: the one operation here that costs ldim · rdim memory."""
        return self.A @ self.B

    @property
    def BA(self) -> Tensor:
        """The reverse product [..., mdim, mdim]; defined only for a square A @ B."""
        if self.ldim != self.rdim:
            raise ShapeMismatchError(f"B @ A needs a square A @ B (ldim == rdim); this one is {tuple(self.shape)}")
        return self.B @ self.A

    @property
    def T(self) -> FactoredMatrix:
        return FactoredMatrix(self.B.mT, self.A.mT)

    # --- products ---------------------------------------------------------------

    def __matmul__(self, other: Tensor | FactoredMatrix) -> FactoredMatrix | Tensor:
        if isinstance(other, FactoredMatrix):
            return (self @ other.A) @ other.B
        if other.ndim == 1:  # a vector: the result is a vector, nothing is left to factor
            if other.shape[-1] != self.rdim:
                raise ShapeMismatchError(f"cannot multiply a FactoredMatrix {tuple(self.shape)} by {tuple(other.shape)}")
            return (self.A @ (self.B @ other.unsqueeze(-1))).squeeze(-1)
        if other.shape[-2] != self.rdim:
            raise ShapeMismatchError(f"cannot multiply a FactoredMatrix {tuple(self.shape)} by {tuple(other.shape)}")
        # The inner dimension stays min(mdim, rdim): fold `other` into B, or B into A when B is not wider.
        if self.rdim > self.mdim:
            return FactoredMatrix(self.A, self.B @ other)
        return FactoredMatrix(self.AB, other)

    def __rmatmul__(self, other: Tensor) -> FactoredMatrix | Tensor:
        if other.ndim == 1:
            if other.shape[-1] != self.ldim:
                raise ShapeMismatchError(f"cannot multiply {tuple(other.shape)} by a FactoredMatrix {tuple(self.shape)}")
            return ((other.unsqueeze(-2) @ self.A) @ self.B).squeeze(-2)
        if other.shape[-1] != self.ldim:
            raise ShapeMismatchError(f"cannot multiply {tuple(other.shape)} by a FactoredMatrix {tuple(self.shape)}")
        if self.ldim > self.mdim:
            return FactoredMatrix(other @ self.A, self.B)
        return FactoredMatrix(other, self.AB)

    def __mul__(self, scalar: float | Tensor) -> FactoredMatrix:
        if isinstance(scalar, Tensor) and scalar.numel() != 1:
            raise ShapeMismatchError(f"a FactoredMatrix multiplies by a scalar only, not a tensor of shape "
                             f"{tuple(scalar.shape)}; for a matrix product use @")
        return FactoredMatrix(self.A * scalar, self.B)

    __rmul__ = __mul__

    # --- spectrum ---------------------------------------------------------------

    @cached_property
    def _svd(self) -> tuple[Tensor, Tensor, Tensor]:
        # A = Qa Ra and B^T = Qb Rb, so A @ B = Qa (Ra Rb^T) Qb^T: only the small core needs an SVD.
        Qa, Ra = torch.linalg.qr(_linalg_dtype(self.A))  # [..., ldim, ka], [..., ka, mdim]
        Qb, Rb = torch.linalg.qr(_linalg_dtype(self.B).mT)  # [..., rdim, kb], [..., kb, mdim]
        Uc, S, Vhc = torch.linalg.svd(Ra @ Rb.mT, full_matrices=False)  # core [..., ka, kb]
        return Qa @ Uc, S, Qb @ Vhc.mT

    def svd(self) -> tuple[Tensor, Tensor, Tensor]:
        """(U [..., ldim, k], S [..., k], Vh [..., rdim, k]) with A @ B = U @ diag(S) @ Vh^T, k = min(ldim,
        mdim, rdim), S descending. As in TransformerLens, Vh holds the right singular vectors as columns
        (it is torch's Vh transposed), so `Vh[..., :, 0]` is the top right singular vector."""
        return self._svd

    U = property(lambda self: self._svd[0], doc="[..., ldim, k] left singular vectors")
    S = property(lambda self: self._svd[1], doc="[..., k] singular values, descending")
    Vh = property(lambda self: self._svd[2], doc="[..., rdim, k] right singular vectors (columns)")
    V = Vh  # TransformerLens's name for the same [..., rdim, k]

    @cached_property
    def eigenvalues(self) -> Tensor:
        """[..., mdim] complex: the eigenvalues of B @ A. If B A v = λ v then A B (A v) = λ (A v), so these
        are the eigenvalues of A @ B, less the ldim - mdim zeros that its low rank adds."""
        return torch.linalg.eigvals(_linalg_dtype(self.BA))

    def norm(self) -> Tensor:
        """[...] the Frobenius norm, sqrt of the sum of squared singular values."""
        return self.S.pow(2).sum(-1).sqrt()

    def collapse_l(self) -> Tensor:
        """[..., k, rdim] diag(S) Vh^T: A @ B with its orthonormal left factor U dropped, so
        ||(A @ B) @ M|| = ||collapse_l() @ M|| for any M."""
        return self.S[..., :, None] * self.Vh.mT

    def collapse_r(self) -> Tensor:
        """[..., ldim, k] U diag(S): A @ B with its orthonormal right factor dropped."""
        return self.U * self.S[..., None, :]

    def make_even(self) -> FactoredMatrix:
        """The same matrix as U sqrt(S) @ sqrt(S) Vh^T: both factors carry the same scale."""
        root = self.S.sqrt()
        return FactoredMatrix(self.U * root[..., None, :], root[..., :, None] * self.Vh.mT)

    # --- indexing ---------------------------------------------------------------

    def __getitem__(self, idx) -> FactoredMatrix:
        """Index the leading dims first (`model.OV[3, 5]`: layer 3, head 5; `model.OV[3]`: layer 3), then,
        given more indices, the rows and the columns with slices or index lists; an int there keeps
        that row or column as a dimension of length 1 (as TransformerLens), so the result stays a matrix."""
        idx = idx if isinstance(idx, tuple) else (idx,)
        if any(i is None or i is Ellipsis for i in idx):
            raise IndexError("FactoredMatrix indexing takes no None or ..., only one index per dimension")
        if len(idx) > self.ndim:
            raise IndexError(f"{len(idx)} indices for a FactoredMatrix of {self.ndim} dimensions")
        n_leading = self.ndim - 2
        leading, matrix = idx[:n_leading], idx[n_leading:]
        matrix = tuple(slice(i, i + 1 or None) if isinstance(i, int) else i for i in matrix)
        A, B = self.A[leading], self.B[leading]
        if len(matrix) >= 1:
            A = A[..., matrix[0], :]
        if len(matrix) == 2:
            B = B[..., matrix[1]]
        return FactoredMatrix(A, B)

    def unsqueeze(self, dim: int) -> FactoredMatrix:
        """A new leading dim of size 1 at position 0 <= dim <= number of leading dims."""
        if not 0 <= dim <= self.ndim - 2:
            raise ValueError(f"unsqueeze inserts a leading dim: 0 <= dim <= {self.ndim - 2}, not {dim}")
        return FactoredMatrix(self.A.unsqueeze(dim), self.B.unsqueeze(dim))

    def get_corner(self, k: int = 3) -> Tensor:
        """The dense [:k, :k, ...] corner over every dim, leading ones included (as TransformerLens's
        get_corner), computed from k rows of A and k columns of B only."""
        corner = self[tuple(slice(k) for _ in range(self.ndim))]
        return corner.AB

    def __repr__(self) -> str:
        return f"FactoredMatrix(shape={tuple(self.shape)}, mdim={self.mdim})"


# --- attention circuits ----------------------------------------------------------


def expand_kv_heads(w: Tensor, n_heads: int) -> Tensor:
    """[..., n_kv_heads, d_model, d_head] → [..., n_heads, d_model, d_head]: with grouped-query
    attention, query head h reads kv head h // (n_heads // n_kv_heads)."""
    group = n_heads // w.shape[-3]
    return w if group == 1 else w.repeat_interleave(group, dim=-3)


def qk_circuit(W_Q: Tensor, W_K: Tensor) -> FactoredMatrix:
    """W_Q [..., n_heads, d_model, d_head], W_K [..., n_kv_heads, d_model, d_head] → W_Q W_K^T
    [..., n_heads, d_model(query side), d_model(key side)]: score = x_q @ QK @ x_k^T (no rotary)."""
    return FactoredMatrix(W_Q, expand_kv_heads(W_K, W_Q.shape[-3]).mT)


def ov_circuit(W_V: Tensor, W_O: Tensor) -> FactoredMatrix:
    """W_V [..., n_kv_heads, d_model, d_head], W_O [..., n_heads, d_head, d_model] → W_V W_O
    [..., n_heads, d_model, d_model]: a head writes pattern-weighted x @ OV to the residual stream."""
    return FactoredMatrix(expand_kv_heads(W_V, W_O.shape[-3]), W_O)


@torch.no_grad()
def composition_scores(model: HookedTransformer, kind: CompositionKind) -> Tensor:
    """[n_layers, n_heads, n_layers, n_heads] (TransformerLens's order): entry [l1, h1, l2, h2] is how much
    the output of the earlier head (l1, h1) feeds the `kind` input of the later head (l2, h2), zero unless
    l1 < l2. Elhage et al. 2021 ("A Mathematical Framework for Transformer Circuits"):
    ||M1 M2||_F / (||M1||_F ||M2||_F), M1 = OV of the earlier head, and, in the row-vector convention
    (x @ W), M2 = QK of the later head for "Q" (its query reads x @ OV), QK^T for "K" (its key reads
    x @ OV), OV for "V". The same as HookedTransformer.all_composition_scores in TransformerLens."""
    if kind not in ("Q", "K", "V"):
        raise ValueError(f"kind must be 'Q', 'K' or 'V', not {kind!r}")
    later = {"Q": model.QK, "K": model.QK.T, "V": model.OV}[kind]
    # Dropping M1's orthonormal left factor and M2's orthonormal right factor leaves ||M1 M2|| unchanged,
    # so each pair needs a [k, k] product (k <= d_head) rather than a [d_model, d_model] one.
    x = model.OV.collapse_l()  # [n_layers, n_heads, k, d_model]
    y = later.collapse_r()  # [n_layers, n_heads, d_model, k]
    x_norm, y_norm = torch.linalg.matrix_norm(x), torch.linalg.matrix_norm(y)  # [n_layers, n_heads]
    n_layers, n_heads = x.shape[:2]
    scores = x.new_zeros(n_layers, n_heads, n_layers, n_heads)
    for l2 in range(1, n_layers):  # one later layer at a time bounds memory by n_layers · n_heads² · k²
        pair_norm = torch.linalg.matrix_norm(x[:l2, :, None] @ y[l2])  # [l2, n_heads, n_heads]
        scores[:l2, :, l2] = pair_norm / (x_norm[:l2, :, None] * y_norm[l2])
    return scores
