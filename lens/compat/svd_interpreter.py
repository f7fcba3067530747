"""TransformerLens's SVDInterpreter: the top singular directions of a head's OV circuit or an MLP's
input / output weights, read out through the unembedding as [d_vocab, 1, num_vectors]."""

from __future__ import annotations

from typing import Literal

import torch

from lens.errors import InvalidArgumentError

VectorType = Literal["OV", "w_in", "w_out"]


class SVDInterpreter:
    def __init__(self, model):
        self.model, self.cfg = model, model.cfg

    def get_singular_vectors(self, vector_type: VectorType, layer_index: int, num_vectors: int = 10,
                             head_index: int | None = None) -> torch.Tensor:
        """The first num_vectors right singular vectors of the matrix, each as logits over the vocabulary."""
        if vector_type not in ("OV", "w_in", "w_out"):
            raise InvalidArgumentError(f"vector_type must be 'OV', 'w_in' or 'w_out', not {vector_type!r}")
        if not 0 <= layer_index < self.cfg.n_layers:
            raise InvalidArgumentError(f"Layer index must be between 0 and {self.cfg.n_layers - 1} but got {layer_index}")
        if vector_type == "OV":
            if head_index is None:
                raise InvalidArgumentError("Head index optional only for w_in and w_out, got OV")
            if not 0 <= head_index < self.cfg.n_heads:
                raise InvalidArgumentError(f"Head index must be between 0 and {self.cfg.n_heads - 1} but got {head_index}")
            right = self.model.OV[layer_index, head_index].V.T  # [k, d_model], rows are the directions
        else:
            if vector_type == "w_in":
                block = self.model.blocks[layer_index]
                norm = getattr(block, block.mlp_norm, None)  # its scale multiplies what W_in reads
                matrix = block.mlp.W_in.T * (1 if norm is None else norm.w)  # [d_mlp, d_model]
            else:
                matrix = self.model.blocks[layer_index].mlp.W_out  # [d_mlp, d_model]
            right = torch.linalg.svd(matrix.float())[2]  # [d_model, d_model], rows are the directions
        W_U = self.model.W_U.float()
        return torch.stack([right[i].float() @ W_U for i in range(num_vectors)], dim=1).unsqueeze(1)
