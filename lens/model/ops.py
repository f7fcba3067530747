"""Tensor operations shared by the components."""

import torch


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x [..., d_in] @ w [d_in, d_out] + b, as one fused matmul (addmm)."""
    return torch.addmm(b, x.reshape(-1, x.shape[-1]), w).view(*x.shape[:-1], w.shape[-1])
