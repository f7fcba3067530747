"""Residual-stream decompositions of a cache, with TransformerLens's names and semantics.

A "stack" is [component, batch, pos, d_model]: terms that add up to a residual stream.
Norms are linearised by freezing their cached scale: for a norm with input x = Σ_i c_i,
norm(x) = Σ_i (c_i - mean(c_i)) / scale * w  (+ the norm's bias, which belongs to no component).
That keeps per-head and per-neuron terms exact through Gemma's post-norms, and is how
apply_ln_to_stack maps a stack onto the final norm's output. Without weight folding the norm
weight w is applied here (TransformerLens assumes it was folded into the next matrix).
"""

from __future__ import annotations

from typing import Literal

import torch

from lens.slicing import Slice, SliceInput

PosSlice = Slice | SliceInput


def pos_select(x: torch.Tensor, pos_slice: PosSlice, dim: int = -2) -> torch.Tensor:
    """x restricted to pos_slice along its pos axis `dim`, as TransformerLens's Slice: an int drops the axis."""
    return Slice(pos_slice).apply(x, dim)


class ResidualAnalyses:
    """Methods of ActivationCache; `self[...]`, `self.model` come from it."""

    def _layer(self, layer: int | None) -> int:
        n = self.model.cfg.n_layers
        layer = n if layer is None else layer + n + 1 if layer < 0 else layer
        if not 0 <= layer <= n:
            raise ValueError(f"layer={layer} is outside 0..{n} (n_layers={n})")
        return layer

    @property
    def _mlp_reads_mid(self) -> bool:
        """Whether an MLP reads resid_mid (sequential blocks) rather than resid_pre (parallel)."""
        return not (self.model.cfg.parallel_attn_mlp or self.model.cfg.attn_only)

    def _frozen_norm(self, x: torch.Tensor, norm: str, layer: int | None, pos_slice: PosSlice,
                     batch_slice=None) -> torch.Tensor:
        """The linear part of a norm with its cached scale: (x - mean) / scale * w."""
        cfg, w = self.model.cfg, self.model.weights
        if layer is None:
            scale, weight = self["ln_final.hook_scale"], w.ln_final_w
        else:
            scale, weight = self[f"blocks.{layer}.{norm}.hook_scale"], getattr(w, f"{norm}_w")[layer]
        if batch_slice is not None and self.has_batch_dim:
            scale = Slice(batch_slice).apply(scale, 0)
        if cfg.norm == "layernorm":
            x = x - x.mean(-1, keepdim=True)
        return (x / pos_select(scale, pos_slice) * (weight.float() + cfg.norm_weight_offset)).to(x.dtype)

    def apply_ln_to_stack(self, residual_stack: torch.Tensor, layer: int | None = None, mlp_input: bool = False,
                          pos_slice: PosSlice = None, batch_slice=None, has_batch_dim: bool = True,
                          recompute_ln: bool = False) -> torch.Tensor:
        """Each term of a stack as the norm reading it sees it, with the norm's cached scale:
        ln_final for layer None / n_layers, else ln1 of `layer` (ln2 with mlp_input). The norm's weight
        is applied (TransformerLens leaves it to a folded W_U; with fold_ln it is 1, so both agree).
        recompute_ln (final norm only): run the final norm on each term with its own statistics, weight
        and bias included, as TransformerLens's logit lens does. batch_slice: the batch rows the stack
        holds (has_batch_dim=False: it has no batch axis)."""
        layer = self._layer(layer)
        if batch_slice is not None and has_batch_dim:
            residual_stack = Slice(batch_slice).apply(residual_stack, 1)
        if recompute_ln and layer == self.model.cfg.n_layers:
            return torch.stack([self.model.ln_final(term) for term in residual_stack])
        if layer == self.model.cfg.n_layers:
            return self._frozen_norm(residual_stack, "ln_final", None, pos_slice, batch_slice)
        if not self.model.cfg.pre_norms:  # the layer reads the residual without a norm
            return residual_stack
        mlp_norm = self.model.blocks[layer].mlp_norm
        return self._frozen_norm(residual_stack, mlp_norm if mlp_input else "ln1", layer, pos_slice, batch_slice)

    def _finish(self, stack, labels, layer, mlp_input, apply_ln, pos_slice, return_labels, project=None):
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input, pos_slice)
        if project is not None:  # [d_model] → one number per term, [d_model, k] → k numbers
            stack = stack @ project.to(stack.dtype)
        return (stack, labels) if return_labels else stack

    # --- the residual stream at each point, and what wrote it ---------------------------

    def accumulated_resid(self, layer: int | None = None, incl_mid: bool = False, apply_ln: bool = False,
                          pos_slice: PosSlice = None, mlp_input: bool = False, return_labels: bool = False):
        """[n_points, batch, pos, d_model]: resid_pre of layers 0..layer (resid_mid too with
        incl_mid); layer None ends with the final resid_post. Labels '0_pre', '0_mid', ..., 'final_post'.
        apply_ln up to the unembedding (layer None) runs the final norm on each point with its own
        statistics (the logit lens, as TransformerLens 3.x); up to a layer, that layer's cached scale."""
        layer, n = self._layer(layer), self.model.cfg.n_layers
        stack, labels = [], []
        for i in range(min(layer + 1, n)):
            stack.append(self["resid_pre", i])
            labels.append(f"{i}_pre")
            if self._mlp_reads_mid and ((incl_mid and i < layer) or (mlp_input and i == layer)):
                stack.append(self["resid_mid", i])
                labels.append(f"{i}_mid")
        if layer == n:
            stack.append(self["resid_post", n - 1])
            labels.append("final_post")
        stack = pos_select(torch.stack(stack), pos_slice)
        if apply_ln and layer == n:
            stack = self.apply_ln_to_stack(stack, layer, recompute_ln=True)
            return (stack, labels) if return_labels else stack
        return self._finish(stack, labels, layer, mlp_input, apply_ln, pos_slice, return_labels)

    def decompose_resid(self, layer: int | None = None, mlp_input: bool = False,
                        mode: Literal["all", "attn", "mlp"] = "all", apply_ln: bool = False,
                        pos_slice: PosSlice = None, incl_embeds: bool = True, return_labels: bool = False):
        """[n_components, batch, pos, d_model]: embed (and pos_embed), then attn_out and mlp_out of
        each layer before `layer` (mlp_input adds that layer's attn_out); they sum to its input."""
        if mode not in ("all", "attn", "mlp"):
            raise ValueError(f"mode must be 'all', 'attn' or 'mlp', not {mode!r}")
        layer = self._layer(layer)
        stack, labels = [], []
        if incl_embeds:
            for name in ("embed", "pos_embed"):
                if f"hook_{name}" in self.model.hook_dict:
                    stack.append(self[name])
                    labels.append(name)
        for i in range(min(layer + (mlp_input and self._mlp_reads_mid), self.model.cfg.n_layers)):
            if mode != "mlp":
                stack.append(self["attn_out", i])
                labels.append(f"{i}_attn_out")
            if mode != "attn" and i < layer and not self.model.cfg.attn_only:
                stack.append(self["mlp_out", i])
                labels.append(f"{i}_mlp_out")
        stack = pos_select(torch.stack(stack), pos_slice)
        return self._finish(stack, labels, layer, mlp_input, apply_ln, pos_slice, return_labels)

    def _heads(self, i: int, pos_slice: PosSlice) -> torch.Tensor:
        """[n_heads, batch, pos, d_model]: layer i's heads' writes to the residual (no bias)."""
        z = pos_select(self["z", i], pos_slice, dim=-3)  # [batch, (pos,) head, d_head]
        result = torch.einsum("...he,hed->h...d", z, self.model.W_O[i])
        return self._frozen_norm(result, "ln1_post", i, pos_slice) if self.model.cfg.post_norms else result

    def _neurons(self, i: int, pos_slice: PosSlice, neurons: torch.Tensor) -> torch.Tensor:
        """[n_neurons, batch, pos, d_model]: layer i's chosen neurons' writes (no bias)."""
        if self.model.cfg.n_experts:
            raise ValueError("mixture-of-experts layers have no per-neuron decomposition (expert neurons are "
                             "not hook points); use expand_neurons=False or a decomposition by head/layer")
        post = pos_select(self["post", i], pos_slice)[..., neurons]
        result = torch.einsum("...n,nd->n...d", post, self.model.W_out[i][neurons])
        return self._frozen_norm(result, "ln2_post", i, pos_slice) if self.model.cfg.post_norms else result

    def _bias(self, name: str, i: int, pos_slice: PosSlice) -> torch.Tensor:
        """[1, batch, pos, d_model]: a layer's b_O or b_out as the residual receives it."""
        like = pos_select(self["resid_pre", 0], pos_slice)
        bias = getattr(self.model.weights, name)[i].expand_as(like)[None]
        if self.model.cfg.post_norms:
            bias = self._frozen_norm(bias, "ln1_post" if name == "b_O" else "ln2_post", i, pos_slice)
        return bias

    def _remainder(self, stack, layer, pos_slice):
        total = self["resid_post", layer - 1] if layer else self["resid_pre", 0]
        return torch.cat([stack, (pos_select(total, pos_slice) - stack.sum(0))[None]])

    def stack_head_results(self, layer: int | None = None, return_labels: bool = False,
                           incl_remainder: bool = False, pos_slice: PosSlice = None, apply_ln: bool = False):
        """[layer * n_heads, batch, pos, d_model]: each head's write (z @ W_O from the cached hook_z;
        hook_result is not needed). Labels 'L{l}H{h}'. With post-norms (Gemma) each term passes the
        frozen ln1_post, so a layer's heads plus its bias term sum exactly to its attn_out."""
        layer = self._layer(layer)
        heads = [self._heads(i, pos_slice) for i in range(layer)]
        stack = torch.cat(heads) if heads else pos_select(self["resid_pre", 0], pos_slice)[None][:0]
        labels = [f"L{i}H{h}" for i in range(layer) for h in range(self.model.cfg.n_heads)]
        if incl_remainder:
            stack, labels = self._remainder(stack, layer, pos_slice), labels + ["remainder"]
        return self._finish(stack, labels, layer, False, apply_ln, pos_slice, return_labels)

    def stack_neuron_results(self, layer: int | None = None, pos_slice: PosSlice = None,
                             neuron_slice: PosSlice = None, return_labels: bool = False,
                             incl_remainder: bool = False, apply_ln: bool = False,
                             project_output_onto: torch.Tensor | None = None):
        """[layer * n_neurons, batch, pos, d_model]: each MLP neuron's write (post[n] * W_out[n]).
        Labels 'L{l}N{n}'. This is large: restrict it with neuron_slice and pos_slice, or project each
        write onto project_output_onto ([d_model] → a number each, [d_model, k] → k)."""
        layer = self._layer(layer)
        neurons = torch.arange(self.model.cfg.d_mlp)
        neurons = Slice(neuron_slice).apply(neurons).reshape(-1)
        empty = pos_select(self["resid_pre", 0], pos_slice)[None][:0]
        stack = torch.cat([empty] + [self._neurons(i, pos_slice, neurons) for i in range(layer)])
        labels = [f"L{i}N{int(n)}" for i in range(layer) for n in neurons]
        if incl_remainder:
            stack, labels = self._remainder(stack, layer, pos_slice), labels + ["remainder"]
        return self._finish(stack, labels, layer, False, apply_ln, pos_slice, return_labels, project_output_onto)

    def get_full_resid_decomposition(self, layer: int | None = None, mlp_input: bool = False,
                                     expand_neurons: bool = True, apply_ln: bool = False,
                                     pos_slice: PosSlice = None, return_labels: bool = False,
                                     project_output_onto: torch.Tensor | None = None):
        """Every head, every neuron (or each mlp_out with expand_neurons=False), the embeddings and
        one 'bias' term (all b_O and b_out): [n_components, batch, pos, d_model], summing exactly
        to the residual stream entering `layer` (its MLP with mlp_input)."""
        layer, cfg = self._layer(layer), self.model.cfg
        parts, labels = [], []
        n_attn = min(layer + (mlp_input and self._mlp_reads_mid), cfg.n_layers)
        for i in range(n_attn):
            parts.append(self._heads(i, pos_slice))
            labels += [f"L{i}H{h}" for h in range(cfg.n_heads)]
        for i in range(0 if cfg.attn_only else layer):
            if expand_neurons:
                parts.append(self._neurons(i, pos_slice, torch.arange(cfg.d_mlp)))
                labels += [f"L{i}N{n}" for n in range(cfg.d_mlp)]
            else:
                parts.append(pos_select(self["mlp_out", i], pos_slice)[None])
                labels.append(f"{i}_mlp_out")
        embeds, embed_labels = self.decompose_resid(0, incl_embeds=True, pos_slice=pos_slice, return_labels=True)
        parts.append(embeds)
        labels += embed_labels
        bias = sum((self._bias("b_O", i, pos_slice) for i in range(n_attn)),
                   torch.zeros_like(embeds[:1]))
        if expand_neurons and not cfg.attn_only:
            bias = bias + sum((self._bias("b_out", i, pos_slice) for i in range(layer)), torch.zeros_like(bias))
        parts.append(bias)
        labels.append("bias")
        return self._finish(torch.cat(parts), labels, layer, mlp_input, apply_ln, pos_slice, return_labels,
                            project_output_onto)

    def logit_attrs(self, residual_stack: torch.Tensor, tokens, incorrect_tokens=None,
                    pos_slice: PosSlice = None, batch_slice=None, has_batch_dim: bool = True) -> torch.Tensor:
        """Each term's direct contribution to logit(tokens) (minus logit(incorrect_tokens)):
        the stack through the final norm with its cached scale, dotted with the unembedding
        directions. [component, batch, pos]. tokens: a string, an id, or ids [batch].
        The terms sum to the logit (difference) less the final norm's bias and b_U terms."""
        directions = self._unembed_directions(tokens)
        if incorrect_tokens is not None:
            directions = directions - self._unembed_directions(incorrect_tokens)
        scaled = self.apply_ln_to_stack(residual_stack, None, pos_slice=pos_slice, batch_slice=batch_slice,
                                        has_batch_dim=has_batch_dim)
        if directions.dim() == 2 and scaled.dim() == 4:  # one direction per batch row, the pos axis kept
            directions = directions[:, None, :]
        return (scaled * directions).sum(-1)

    # --- TransformerLens's smaller helpers --------------------------------------------------

    def stack_activation(self, activation_name: str, layer: int = -1, sublayer_type: str | None = None
                         ) -> torch.Tensor:
        """[layer, ...]: the activation `activation_name` of each layer before `layer` (-1/None: all)."""
        layer = self._layer(None if layer == -1 else layer)
        return torch.stack([self[(activation_name, i, sublayer_type)] for i in range(layer)])

    def get_neuron_results(self, layer: int, neuron_slice: PosSlice = None, pos_slice: PosSlice = None,
                           project_output_onto: torch.Tensor | None = None) -> torch.Tensor:
        """[batch, pos, n_neurons, d_model]: each neuron's write post[n] * W_out[n] (no bias); with
        project_output_onto [d_model] (or [d_model, k]) its projection, W_out contracted first."""
        post = pos_select(self["post", layer], pos_slice)  # [batch, (pos,) d_mlp]
        post = Slice(neuron_slice).apply(post, -1)
        W_out = Slice(neuron_slice).apply(self.model.blocks[layer].mlp.W_out, 0)  # [n_neurons, d_model]
        if project_output_onto is None:
            return post[..., None] * W_out
        projected = W_out @ project_output_onto
        return post * projected if projected.dim() == 1 else post[..., None] * projected

    def compute_head_results(self) -> None:
        """Add each layer's hook_result [batch, pos, n_heads, d_model] (z @ W_O per head) to the cache
        (once: a cache that has them keeps them)."""
        if "blocks.0.attn.hook_result" in self.cache_dict:
            return
        for i in range(self.model.cfg.n_layers):
            self.cache_dict[f"blocks.{i}.attn.hook_result"] = torch.einsum(
                "...phe,hed->...phd", self["z", i], self.model.W_O[i])

    def tokens_to_residual_directions(self, tokens) -> torch.Tensor:
        """W_U[:, token]: [d_model] for one token (a string or an id), [..., d_model] for ids."""
        return self.model.tokens_to_residual_directions(tokens)

    def _unembed_directions(self, tokens) -> torch.Tensor:
        model = self.model
        if isinstance(tokens, str):
            tokens = model.to_single_token(tokens)
        return model.W_U[:, torch.as_tensor(tokens, device=model.W_U.device)].movedim(0, -1)  # [(batch,) d_model]
