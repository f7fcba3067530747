"""Parallel blocks with one shared norm: GPT-J (adjacent-pair rotary) and Phi-1/1.5/2 (partial rotary).

x + attn(ln1(x)) + mlp(ln1(x)); both have a biased unembedding.
"""

import torch

from lens.config import ModelConfig, RotaryConfig
from lens.errors import UnsupportedModelError
from lens.loading.families.base import Checkpoint, Family, rotary_config, token_ids

t = torch.Tensor.t


def gptj_config(hf) -> ModelConfig:
    d_head = hf.n_embd // hf.n_head
    return ModelConfig(
        model_type=hf.model_type, n_layers=hf.n_layer, d_model=hf.n_embd, n_heads=hf.n_head, d_head=d_head,
        d_mlp=hf.n_inner or 4 * hf.n_embd, d_vocab=hf.vocab_size, n_ctx=hf.n_positions,
        act_fn=hf.activation_function, norm="layernorm", norm_eps=hf.layer_norm_epsilon, positions="rotary",
        rotary=RotaryConfig(theta=10000.0, dim=hf.rotary_dim, style="adjacent"),  # GPT-J fixes the base
        parallel_attn_mlp=True, shared_norm=True, tied_embeddings=False, **token_ids(hf))


def gptj_convert(sd, cfg: ModelConfig):
    ck = Checkpoint(sd, "transformer.", cfg.n_layers)
    H, E, D = cfg.n_heads, cfg.d_head, cfg.d_model
    attn, mlp = "h.{i}.attn.", "h.{i}.mlp."
    out = {
        "W_E": ck.get("wte.weight"),
        "W_Q": ck.stack(attn + "q_proj.weight", t), "b_Q": torch.zeros(cfg.n_layers, H * E),
        "W_K": ck.stack(attn + "k_proj.weight", t), "b_K": torch.zeros(cfg.n_layers, H * E),
        "W_V": ck.stack(attn + "v_proj.weight", t), "b_V": torch.zeros(cfg.n_layers, H * E),
        "W_O": ck.stack(attn + "out_proj.weight", t), "b_O": torch.zeros(cfg.n_layers, D),
        "W_in": ck.stack(mlp + "fc_in.weight", t), "b_in": ck.stack(mlp + "fc_in.bias"),
        "W_out": ck.stack(mlp + "fc_out.weight", t), "b_out": ck.stack(mlp + "fc_out.bias"),
        "ln1_w": ck.stack("h.{i}.ln_1.weight"), "ln1_b": ck.stack("h.{i}.ln_1.bias"),
        "ln_final_w": ck.get("ln_f.weight"), "ln_final_b": ck.get("ln_f.bias"),
    }
    return out | ck.unembedding(cfg, "lm_head.weight", "lm_head.bias")


def phi_config(hf) -> ModelConfig:
    if getattr(hf, "qk_layernorm", False):
        raise UnsupportedModelError("Phi with qk_layernorm=True is not supported")
    d_head = hf.hidden_size // hf.num_attention_heads
    return ModelConfig(
        model_type=hf.model_type, n_layers=hf.num_hidden_layers, d_model=hf.hidden_size,
        n_heads=hf.num_attention_heads, n_kv_heads=hf.num_key_value_heads or hf.num_attention_heads, d_head=d_head,
        d_mlp=hf.intermediate_size, d_vocab=hf.vocab_size, n_ctx=hf.max_position_embeddings, act_fn=hf.hidden_act,
        norm="layernorm", norm_eps=hf.layer_norm_eps, positions="rotary",
        rotary=rotary_config(hf.rope_parameters, d_head), parallel_attn_mlp=True, shared_norm=True,
        tied_embeddings=bool(getattr(hf, "tie_word_embeddings", False)), **token_ids(hf))


def phi_convert(sd, cfg: ModelConfig):
    ck = Checkpoint(sd, "model.", cfg.n_layers)
    attn, mlp = "layers.{i}.self_attn.", "layers.{i}.mlp."
    out = {
        "W_E": ck.get("embed_tokens.weight"),
        "W_Q": ck.stack(attn + "q_proj.weight", t), "b_Q": ck.stack(attn + "q_proj.bias"),
        "W_K": ck.stack(attn + "k_proj.weight", t), "b_K": ck.stack(attn + "k_proj.bias"),
        "W_V": ck.stack(attn + "v_proj.weight", t), "b_V": ck.stack(attn + "v_proj.bias"),
        "W_O": ck.stack(attn + "dense.weight", t), "b_O": ck.stack(attn + "dense.bias"),
        "W_in": ck.stack(mlp + "fc1.weight", t), "b_in": ck.stack(mlp + "fc1.bias"),
        "W_out": ck.stack(mlp + "fc2.weight", t), "b_out": ck.stack(mlp + "fc2.bias"),
        "ln1_w": ck.stack("layers.{i}.input_layernorm.weight"), "ln1_b": ck.stack("layers.{i}.input_layernorm.bias"),
        "ln_final_w": ck.get("final_layernorm.weight"), "ln_final_b": ck.get("final_layernorm.bias"),
    }
    return out | ck.unembedding(cfg, "lm_head.weight", "lm_head.bias")


_VERIFIED = "tiny random HF {}, fp32 eager: log_softmax and every layer's residual"
GPTJ = Family("GPT-J", ("gptj",), gptj_config, gptj_convert,
              _VERIFIED.format("GPTJForCausalLM (parallel block, adjacent-pair rotary)"))
PHI = Family("Phi-1/1.5/2", ("phi",), phi_config, phi_convert,
             _VERIFIED.format("PhiForCausalLM (parallel block, partial rotary)"))
