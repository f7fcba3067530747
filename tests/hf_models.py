"""Tiny random-weight HF models of every supported family, built offline from configs."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GemmaConfig,
    GPT2Config,
    GPTJConfig,
    GPTNeoConfig,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    Olmo2Config,
    OPTConfig,
    Phi3Config,
    PhiConfig,
    Qwen2Config,
    Qwen3Config,
)

TINY = dict(vocab_size=96, hidden_size=64, intermediate_size=112, num_hidden_layers=3, num_attention_heads=4,
            max_position_embeddings=64)

CONFIGS = {
    "gpt2": lambda: GPT2Config(vocab_size=96, n_positions=64, n_embd=64, n_layer=3, n_head=4),
    "gpt_neox": lambda: GPTNeoXConfig(**TINY, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                                "partial_rotary_factor": 0.25}),
    "gpt_neox_sequential": lambda: GPTNeoXConfig(**TINY, use_parallel_residual=False),
    "gpt_neo": lambda: GPTNeoConfig(vocab_size=96, max_position_embeddings=64, hidden_size=64, num_layers=3,
                                    num_heads=4, window_size=4, attention_types=[[["global", "local"], 1],
                                                                                 [["local"], 1]]),
    "opt": lambda: OPTConfig(vocab_size=96, hidden_size=64, num_hidden_layers=3, ffn_dim=112,
                             max_position_embeddings=64, num_attention_heads=4, word_embed_proj_dim=64,
                             pad_token_id=1, bos_token_id=2, eos_token_id=2),
    "gptj": lambda: GPTJConfig(vocab_size=96, n_positions=64, n_embd=64, n_layer=3, n_head=4, rotary_dim=8),
    "phi": lambda: PhiConfig(**TINY, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                      "partial_rotary_factor": 0.5}),
    "llama": lambda: LlamaConfig(**TINY, num_key_value_heads=2),
    "llama3_rope": lambda: LlamaConfig(**TINY, num_key_value_heads=2, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
    "llama_tied": lambda: LlamaConfig(**TINY, tie_word_embeddings=True),
    "mistral": lambda: MistralConfig(**TINY, num_key_value_heads=2, head_dim=16, sliding_window=4),
    "mixtral": lambda: MixtralConfig(**TINY, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2),
    "qwen2": lambda: Qwen2Config(**TINY, num_key_value_heads=2),
    "qwen3": lambda: Qwen3Config(**TINY, num_key_value_heads=2, head_dim=16),
    "phi3": lambda: Phi3Config(**TINY, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                               rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                "partial_rotary_factor": 0.5}),
    "olmo2": lambda: Olmo2Config(**TINY, num_key_value_heads=2, pad_token_id=1, bos_token_id=None, eos_token_id=2),
    "gemma": lambda: GemmaConfig(**TINY, num_key_value_heads=2, head_dim=16),
    "gemma2": lambda: Gemma2Config(**TINY, num_key_value_heads=2, head_dim=16, sliding_window=4,
                                   query_pre_attn_scalar=12, attn_logit_softcapping=5.0, final_logit_softcapping=3.0,
                                   layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
    "gemma3_text": lambda: Gemma3TextConfig(
        **TINY, num_key_value_heads=1, head_dim=16, sliding_window=4, query_pre_attn_scalar=12,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        rope_parameters={"full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 4.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}),
}


def build(name: str, seed: int = 0):
    """An HF model (eager attention, eval) whose every parameter, biases and norms included, is random."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(CONFIGS[name](), attn_implementation="eager").eval()
    with torch.no_grad():
        for pname, param in model.named_parameters():
            is_norm = "norm" in pname or "ln" in pname.split(".")[-2]
            if is_norm and pname.endswith("weight"):
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            else:
                param.copy_(0.1 * torch.randn_like(param))
    return model


def decoder_layers(model) -> list:
    base = getattr(model, "transformer", None) or getattr(model, "gpt_neox", None) or model.model
    base = getattr(base, "decoder", base)  # OPT
    return list(getattr(base, "h", None) or base.layers)


def layer_outputs(model, tokens, **kwargs) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(logits, each decoder layer's output residual) of an HF forward."""
    outputs = []

    def grab(module, args, output):
        outputs.append(output[0] if isinstance(output, tuple) else output)

    handles = [layer.register_forward_hook(grab) for layer in decoder_layers(model)]
    try:
        with torch.no_grad():
            logits = model(tokens, **kwargs).logits
    finally:
        for h in handles:
            h.remove()
    return logits, outputs
