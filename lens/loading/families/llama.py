"""Llama-like decoders: Llama 2/3 (and SmolLM2), Mistral (sliding window), Qwen2 (qkv biases),
and Gemma 3 text (qk-norm, pre+post norms, 1+w RMSNorm, embedding scale, local/global RoPE).

They share HF's key names; the differences are config fields and a few extra tensors.
"""

import math

import torch

from lens.config import ModelConfig
from lens.loading.families.base import Checkpoint, Family, hf_get, rotary_config, sliding_windows, token_ids


def _common(hf) -> dict:
    d_head = hf_get(hf, "head_dim", default=hf.hidden_size // hf.num_attention_heads)
    return dict(
        model_type=hf.model_type, n_layers=hf.num_hidden_layers, d_model=hf.hidden_size,
        n_heads=hf.num_attention_heads, n_kv_heads=hf_get(hf, "num_key_value_heads", default=hf.num_attention_heads),
        d_head=d_head, d_mlp=hf.intermediate_size, d_vocab=hf.vocab_size, n_ctx=hf.max_position_embeddings,
        gated_mlp=True, norm="rmsnorm", norm_eps=hf.rms_norm_eps, positions="rotary",
        sliding_windows=sliding_windows(hf, hf.num_hidden_layers),
        tied_embeddings=bool(getattr(hf, "tie_word_embeddings", False)), **token_ids(hf))


def config(hf) -> ModelConfig:
    return ModelConfig(act_fn=hf.hidden_act, rotary=rotary_config(hf.rope_parameters), **_common(hf))


def gemma3_config(hf) -> ModelConfig:
    rope = hf.rope_parameters
    return ModelConfig(
        act_fn=hf.hidden_activation, norm_weight_offset=1.0, post_norms=True, qk_norm=True,
        rotary=rotary_config(rope["full_attention"]), local_rotary=rotary_config(rope["sliding_attention"]),
        attn_scale=math.sqrt(hf.query_pre_attn_scalar), embed_scale=math.sqrt(hf.hidden_size),
        attn_logit_softcap=hf.attn_logit_softcapping, final_logit_softcap=hf.final_logit_softcapping,
        **_common(hf))


def convert(sd, cfg: ModelConfig):
    ck = Checkpoint(sd, "model.", cfg.n_layers)
    H, K, E, D, M = cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_model, cfg.d_mlp
    t = torch.Tensor.t
    attn, mlp = "layers.{i}.self_attn.", "layers.{i}.mlp."
    out = {
        "W_E": ck.get("embed_tokens.weight"),
        "W_Q": ck.stack(attn + "q_proj.weight", t), "b_Q": ck.stack(attn + "q_proj.bias", zeros=(H * E,)),
        "W_K": ck.stack(attn + "k_proj.weight", t), "b_K": ck.stack(attn + "k_proj.bias", zeros=(K * E,)),
        "W_V": ck.stack(attn + "v_proj.weight", t), "b_V": ck.stack(attn + "v_proj.bias", zeros=(K * E,)),
        "W_O": ck.stack(attn + "o_proj.weight", t), "b_O": ck.stack(attn + "o_proj.bias", zeros=(D,)),
        "W_gate": ck.stack(mlp + "gate_proj.weight", t),
        "W_in": ck.stack(mlp + "up_proj.weight", t), "b_in": ck.stack(mlp + "up_proj.bias", zeros=(M,)),
        "W_out": ck.stack(mlp + "down_proj.weight", t), "b_out": ck.stack(mlp + "down_proj.bias", zeros=(D,)),
        "ln1_w": ck.stack("layers.{i}.input_layernorm.weight"),
        "ln_final_w": ck.get("norm.weight"),
    }
    if cfg.post_norms:  # Gemma: post_attention_layernorm is the attention output's norm
        out |= {"ln1_post_w": ck.stack("layers.{i}.post_attention_layernorm.weight"),
                "ln2_w": ck.stack("layers.{i}.pre_feedforward_layernorm.weight"),
                "ln2_post_w": ck.stack("layers.{i}.post_feedforward_layernorm.weight")}
    else:
        out["ln2_w"] = ck.stack("layers.{i}.post_attention_layernorm.weight")
    if cfg.qk_norm:
        out |= {"q_norm_w": ck.stack(attn + "q_norm.weight"), "k_norm_w": ck.stack(attn + "k_norm.weight")}
    return out | ck.unembedding(cfg, "lm_head.weight")


_VERIFIED = "tiny random HF {}, fp32 eager: log_softmax and every layer's residual"
LLAMA = Family("Llama (Llama 2/3, SmolLM2)", ("llama",), config, convert,
               _VERIFIED.format("LlamaForCausalLM (default and llama3 RoPE)")
               + "; SmolLM2-135M GGUF vs HF's GGUF load")
MISTRAL = Family("Mistral", ("mistral",), config, convert, _VERIFIED.format("MistralForCausalLM (sliding window)"))
QWEN2 = Family("Qwen2", ("qwen2",), config, convert, _VERIFIED.format("Qwen2ForCausalLM (qkv biases)"))
GEMMA3 = Family("Gemma 3 (text)", ("gemma3_text",), gemma3_config, convert,
                _VERIFIED.format("Gemma3ForCausalLM (local/global layers)") + "; Gemma-3-270M GGUF vs HF's GGUF load")
