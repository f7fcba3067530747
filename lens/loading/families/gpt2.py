"""GPT-2: learned positions, LayerNorm, Conv1D weights (already [d_in, d_out]), tied unembedding."""


from lens.config import ModelConfig
from lens.errors import UnsupportedModelError
from lens.loading.families.base import Checkpoint, Family, token_ids


def config(hf) -> ModelConfig:
    if getattr(hf, "scale_attn_by_inverse_layer_idx", False):
        raise UnsupportedModelError("GPT-2 with scale_attn_by_inverse_layer_idx=True is not supported")
    return ModelConfig(
        model_type=hf.model_type, n_layers=hf.n_layer, d_model=hf.n_embd, n_heads=hf.n_head,
        d_head=hf.n_embd // hf.n_head, d_mlp=hf.n_inner or 4 * hf.n_embd, d_vocab=hf.vocab_size,
        n_ctx=hf.n_positions, act_fn=hf.activation_function, norm="layernorm", norm_eps=hf.layer_norm_epsilon,
        positions="learned", tied_embeddings=getattr(hf, "tie_word_embeddings", True), **token_ids(hf))


def convert(sd, cfg: ModelConfig):
    ck = Checkpoint(sd, "transformer.", cfg.n_layers)
    D = cfg.d_model
    qkv_w = ck.stack("h.{i}.attn.c_attn.weight")  # [L, D, 3D], Conv1D is x @ W
    qkv_b = ck.stack("h.{i}.attn.c_attn.bias")
    out = {
        "W_E": ck.get("wte.weight"), "W_pos": ck.get("wpe.weight"),
        "W_Q": qkv_w[..., :D], "W_K": qkv_w[..., D:2 * D], "W_V": qkv_w[..., 2 * D:],
        "b_Q": qkv_b[..., :D], "b_K": qkv_b[..., D:2 * D], "b_V": qkv_b[..., 2 * D:],
        "W_O": ck.stack("h.{i}.attn.c_proj.weight"), "b_O": ck.stack("h.{i}.attn.c_proj.bias"),
        "W_in": ck.stack("h.{i}.mlp.c_fc.weight"), "b_in": ck.stack("h.{i}.mlp.c_fc.bias"),
        "W_out": ck.stack("h.{i}.mlp.c_proj.weight"), "b_out": ck.stack("h.{i}.mlp.c_proj.bias"),
        "ln1_w": ck.stack("h.{i}.ln_1.weight"), "ln1_b": ck.stack("h.{i}.ln_1.bias"),
        "ln2_w": ck.stack("h.{i}.ln_2.weight"), "ln2_b": ck.stack("h.{i}.ln_2.bias"),
        "ln_final_w": ck.get("ln_f.weight"), "ln_final_b": ck.get("ln_f.bias"),
    }
    return out | ck.unembedding(cfg, "lm_head.weight")


FAMILY = Family("GPT-2", ("gpt2",), config, convert,
                "tiny random HF GPT2LMHeadModel, fp32 eager: log_softmax and every layer's residual")
