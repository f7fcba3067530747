"""Decoders with learned positions besides GPT-2: GPT-Neo (local-attention layers, unscaled scores)
and OPT (pre-norm variants; its position table starts two rows in)."""

import torch

from lens.config import ModelConfig
from lens.errors import UnsupportedModelError
from lens.loading.families.base import Checkpoint, Family, token_ids

t = torch.Tensor.t


def _projections(ck: Checkpoint, attn: str, cfg: ModelConfig, out_name: str) -> dict:
    """Q, K, V and output projections stored as separate nn.Linear weights ([out, in]); absent biases are 0."""
    zeros = (cfg.n_heads * cfg.d_head,)
    return {
        "W_Q": ck.stack(attn + "q_proj.weight", t), "b_Q": ck.stack(attn + "q_proj.bias", zeros=zeros),
        "W_K": ck.stack(attn + "k_proj.weight", t), "b_K": ck.stack(attn + "k_proj.bias", zeros=zeros),
        "W_V": ck.stack(attn + "v_proj.weight", t), "b_V": ck.stack(attn + "v_proj.bias", zeros=zeros),
        "W_O": ck.stack(attn + f"{out_name}.weight", t),
        "b_O": ck.stack(attn + f"{out_name}.bias", zeros=(cfg.d_model,)),
    }


def gpt_neo_config(hf) -> ModelConfig:
    windows = tuple(hf.window_size if kind == "local" else None for kind in hf.attention_layers)
    return ModelConfig(
        model_type=hf.model_type, n_layers=hf.num_layers, d_model=hf.hidden_size, n_heads=hf.num_heads,
        d_head=hf.hidden_size // hf.num_heads, d_mlp=hf.intermediate_size or 4 * hf.hidden_size,
        d_vocab=hf.vocab_size, n_ctx=hf.max_position_embeddings, act_fn=hf.activation_function,
        norm="layernorm", norm_eps=hf.layer_norm_epsilon, positions="learned",
        attn_scale=1.0,  # GPT-Neo does not scale attention scores by 1/sqrt(d_head)
        sliding_windows=windows if any(windows) else None,
        tied_embeddings=bool(getattr(hf, "tie_word_embeddings", True)), **token_ids(hf))


def gpt_neo_convert(sd, cfg: ModelConfig):
    ck = Checkpoint(sd, "transformer.", cfg.n_layers)
    return _projections(ck, "h.{i}.attn.attention.", cfg, "out_proj") | {
        "W_E": ck.get("wte.weight"), "W_pos": ck.get("wpe.weight"),
        "W_in": ck.stack("h.{i}.mlp.c_fc.weight", t), "b_in": ck.stack("h.{i}.mlp.c_fc.bias"),
        "W_out": ck.stack("h.{i}.mlp.c_proj.weight", t), "b_out": ck.stack("h.{i}.mlp.c_proj.bias"),
        "ln1_w": ck.stack("h.{i}.ln_1.weight"), "ln1_b": ck.stack("h.{i}.ln_1.bias"),
        "ln2_w": ck.stack("h.{i}.ln_2.weight"), "ln2_b": ck.stack("h.{i}.ln_2.bias"),
        "ln_final_w": ck.get("ln_f.weight"), "ln_final_b": ck.get("ln_f.bias"),
    } | ck.unembedding(cfg, "lm_head.weight")


def opt_config(hf) -> ModelConfig:
    if not hf.do_layer_norm_before or hf.word_embed_proj_dim != hf.hidden_size:
        raise UnsupportedModelError("OPT with post-layer-norm blocks or a projected embedding (opt-350m) "
                                    "is not supported")
    if not getattr(hf, "layer_norm_elementwise_affine", True):
        raise UnsupportedModelError("OPT without elementwise-affine layer norms is not supported")
    return ModelConfig(
        model_type=hf.model_type, n_layers=hf.num_hidden_layers, d_model=hf.hidden_size,
        n_heads=hf.num_attention_heads, d_head=hf.hidden_size // hf.num_attention_heads, d_mlp=hf.ffn_dim,
        d_vocab=hf.vocab_size, n_ctx=hf.max_position_embeddings, act_fn=hf.activation_function,
        norm="layernorm", norm_eps=1e-5, positions="learned",
        tied_embeddings=bool(getattr(hf, "tie_word_embeddings", True)), **token_ids(hf))


def opt_convert(sd, cfg: ModelConfig):
    ck = Checkpoint(sd, "model.decoder.", cfg.n_layers)
    layer = "layers.{i}."
    return _projections(ck, layer + "self_attn.", cfg, "out_proj") | {
        "W_E": ck.get("embed_tokens.weight"),
        "W_pos": ck.get("embed_positions.weight")[2:],  # OPT offsets every position by 2
        "W_in": ck.stack(layer + "fc1.weight", t), "b_in": ck.stack(layer + "fc1.bias", zeros=(cfg.d_mlp,)),
        "W_out": ck.stack(layer + "fc2.weight", t), "b_out": ck.stack(layer + "fc2.bias", zeros=(cfg.d_model,)),
        "ln1_w": ck.stack(layer + "self_attn_layer_norm.weight"), "ln1_b": ck.stack(layer + "self_attn_layer_norm.bias"),
        "ln2_w": ck.stack(layer + "final_layer_norm.weight"), "ln2_b": ck.stack(layer + "final_layer_norm.bias"),
        "ln_final_w": ck.get("final_layer_norm.weight"), "ln_final_b": ck.get("final_layer_norm.bias"),
    } | ck.unembedding(cfg, "lm_head.weight")


_VERIFIED = "tiny random HF {}, fp32 eager: log_softmax and every layer's residual"
GPT_NEO = Family("GPT-Neo", ("gpt_neo",), gpt_neo_config, gpt_neo_convert,
                 _VERIFIED.format("GPTNeoForCausalLM (local attention layers)"))
OPT = Family("OPT", ("opt",), opt_config, opt_convert, _VERIFIED.format("OPTForCausalLM (pre-norm)"))
