"""TransformerLens 3.9's legacy HookedTransformer built offline from an HF model, for the parity and
tutorial tests (TransformerLens's own config reader wants hub-only fields)."""

import transformer_lens
from transformer_lens.pretrained import weight_conversions


def legacy_config(family: str, hf, prepend_bos: bool = False) -> transformer_lens.HookedTransformerConfig:
    """TransformerLens's config of the tiny HF model, with the fields its own converter of that
    architecture sets (its convert_hf_model_config reads hub-only fields, e.g. GPT-2's n_ctx)."""
    c = hf.config
    if family == "gpt2":
        fields = dict(d_model=c.n_embd, d_head=c.n_embd // c.n_head, n_heads=c.n_head, d_mlp=4 * c.n_embd,
                      n_layers=c.n_layer, n_ctx=c.n_positions, eps=c.layer_norm_epsilon, d_vocab=c.vocab_size,
                      act_fn=c.activation_function, normalization_type="LN", original_architecture="GPT2LMHeadModel")
    else:
        fields = dict(d_model=c.hidden_size, d_head=c.hidden_size // c.num_attention_heads,
                      n_heads=c.num_attention_heads, d_mlp=c.intermediate_size, n_layers=c.num_hidden_layers,
                      n_ctx=c.max_position_embeddings, eps=c.rms_norm_eps, d_vocab=c.vocab_size, act_fn=c.hidden_act,
                      n_key_value_heads=c.num_key_value_heads, normalization_type="RMS",
                      positional_embedding_type="rotary", rotary_adjacent_pairs=False,
                      rotary_dim=c.hidden_size // c.num_attention_heads, rotary_base=c.rope_parameters["rope_theta"],
                      final_rms=True, gated_mlp=True,
                      original_architecture={"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[family])
    return transformer_lens.HookedTransformerConfig(**fields, device="cpu", default_prepend_bos=prepend_bos)


def legacy_model(family: str, hf, flags: dict[str, bool], tokenizer=None,
                 prepend_bos: bool = False) -> transformer_lens.HookedTransformer:
    """TransformerLens's legacy model of an HF model: its own weight converter, then
    load_and_process_state_dict with the processing flags (fold_ln, ...: bool)."""
    cfg = legacy_config(family, hf, prepend_bos)
    convert = {"gpt2": weight_conversions.convert_gpt2_weights, "llama": weight_conversions.convert_llama_weights,
               "qwen2": weight_conversions.convert_qwen2_weights}[family]
    state_dict = {k: v.detach().clone() for k, v in convert(hf, cfg).items()}  # processing edits it in place
    model = transformer_lens.HookedTransformer(cfg, tokenizer=tokenizer)
    model.load_and_process_state_dict(state_dict, **flags)
    return model


