"""GPT-NeoX / Pythia: parallel attention+MLP, partial rotary, fused per-head QKV."""

import torch

from lens.config import ModelConfig
from lens.loading.families.base import Checkpoint, Family, rotary_config, token_ids


def config(hf) -> ModelConfig:
    d_head = hf.hidden_size // hf.num_attention_heads
    return ModelConfig(
        model_type=hf.model_type, n_layers=hf.num_hidden_layers, d_model=hf.hidden_size,
        n_heads=hf.num_attention_heads, d_head=d_head, d_mlp=hf.intermediate_size, d_vocab=hf.vocab_size,
        n_ctx=hf.max_position_embeddings, act_fn=hf.hidden_act, norm="layernorm", norm_eps=hf.layer_norm_eps,
        positions="rotary", rotary=rotary_config(hf.rope_parameters, d_head),
        parallel_attn_mlp=hf.use_parallel_residual, tied_embeddings=getattr(hf, "tie_word_embeddings", False),
        **token_ids(hf))


def convert(sd, cfg: ModelConfig):
    ck = Checkpoint(sd, "gpt_neox.", cfg.n_layers)
    H, E, D = cfg.n_heads, cfg.d_head, cfg.d_model
    # query_key_value rows are ordered [head, (q, k, v), d_head]
    qkv_w = ck.stack("layers.{i}.attention.query_key_value.weight").view(-1, H, 3, E, D)
    qkv_b = ck.stack("layers.{i}.attention.query_key_value.bias", zeros=(3 * H * E,)).view(-1, H, 3, E)

    def weight(j):  # [L, H, E, D] -> [L, D, H*E]
        return qkv_w[:, :, j].flatten(1, 2).transpose(1, 2).contiguous()

    def bias(j):
        return qkv_b[:, :, j].flatten(1, 2).contiguous()

    t = torch.Tensor.t
    out = {
        "W_E": ck.get("embed_in.weight"),
        "W_Q": weight(0), "W_K": weight(1), "W_V": weight(2), "b_Q": bias(0), "b_K": bias(1), "b_V": bias(2),
        "W_O": ck.stack("layers.{i}.attention.dense.weight", t),
        "b_O": ck.stack("layers.{i}.attention.dense.bias", zeros=(D,)),
        "W_in": ck.stack("layers.{i}.mlp.dense_h_to_4h.weight", t), "b_in": ck.stack("layers.{i}.mlp.dense_h_to_4h.bias"),
        "W_out": ck.stack("layers.{i}.mlp.dense_4h_to_h.weight", t), "b_out": ck.stack("layers.{i}.mlp.dense_4h_to_h.bias"),
        "ln1_w": ck.stack("layers.{i}.input_layernorm.weight"), "ln1_b": ck.stack("layers.{i}.input_layernorm.bias"),
        "ln2_w": ck.stack("layers.{i}.post_attention_layernorm.weight"),
        "ln2_b": ck.stack("layers.{i}.post_attention_layernorm.bias"),
        "ln_final_w": ck.get("final_layer_norm.weight"), "ln_final_b": ck.get("final_layer_norm.bias"),
    }
    return out | ck.unembedding(cfg, "embed_out.weight")


FAMILY = Family("GPT-NeoX (Pythia)", ("gpt_neox",), config, convert,
                "tiny random HF GPTNeoXForCausalLM, fp32 eager: log_softmax and every layer's residual")
