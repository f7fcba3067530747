"""A model's one-screen summary: what it is, where it came from, how it runs."""


def summary(model) -> str:
    c, info = model.cfg, model.load_info
    attention = f"{c.n_heads} heads" + (f", {c.n_kv_heads} kv heads (GQA)" if c.n_kv_heads != c.n_heads else "")
    windows = "" if c.sliding_windows is None else \
        f"; sliding window {max(w for w in c.sliding_windows if w)} on {sum(w is not None for w in c.sliding_windows)} layers"
    lines = [
        f"model        {info.get('name', 'random weights')} ({c.model_type})",
        f"source       {info.get('source', 'from_config')}" + (f"  [hub: {info['hub_id']}]" if info.get("hub_id") else ""),
        f"shape        {c.n_layers} layers, d_model {c.d_model}, {attention}, d_head {c.d_head}, "
        f"d_mlp {c.d_mlp}{' (gated)' if c.gated_mlp else ''}"
        f"{f' x {c.n_experts} experts, top {c.experts_per_token}' if c.n_experts else ''}, d_vocab {c.d_vocab}, n_ctx {c.n_ctx}",
        f"parameters   {c.n_params / 1e6:.1f}M, {model.dtype}, on {model.device}",
        f"blocks       {c.norm}{' (1+w)' if c.norm_weight_offset else ''}, {c.positions} positions, {c.act_fn}"
        f"{', parallel attn+MLP' if c.parallel_attn_mlp else ''}{', post-norms' if c.post_norms else ''}{'' if c.pre_norms else ', no pre-norms'}"
        f"{', qk-norm' if c.qk_norm else ''}{windows}",
        f"tokenizer    {'none' if model.tokenizer is None else type(model.tokenizer).__name__}; "
        f"prepends BOS by default: {c.default_prepend_bos}",
        f"processing   {', '.join(info.get('processing', [])) or 'none (weights as in the checkpoint)'}",
    ]
    if "load_seconds" in info:
        lines.append(f"loaded in    {info['load_seconds']} s{' (converted-weights cache)' if info.get('from_cache') else ''}")
    return "\n".join(lines)
