"""TransformerLens tutorial code (its Main Demo's moves) runs on lens with the import and the model name
changed, and prints what it prints on TransformerLens.

`main_demo` is written as a TransformerLens user writes it: caching, attention patterns, the logit lens
through W_U, direct logit attribution per head through W_U, an activation-patching loop over layers and
positions, induction scores from a pattern hook, steering a greedy generation with a hook, and
utils.test_prompt. It runs twice on the same weights: on lens (`import lens.utils as utils`,
from_pretrained with processing="transformer_lens") and on TransformerLens 3.9's legacy HookedTransformer
(TransformerLens's own converter and weight processing). The weights: a small random Llama (grouped-query
attention) with SmolLM2's tokenizer, and SmolLM2-135M itself (real_model; the GGUF read by transformers).
"""

import contextlib
import copy
import io
from functools import partial
from pathlib import Path

import pytest
import torch
from conftest import hf_from_gguf
from test_skill_support import _text_fits

import lens
import lens.utils

tl_utils = pytest.importorskip("transformer_lens.utils")
from transformer_lens_reference import legacy_model  # noqa: E402

PROMPT = "The capital of France is Paris. The capital of Italy is"
CORRUPT = "The capital of France is Paris. The capital of Spain is"
ANSWER, WRONG = " Rome", " Madrid"
TOL = 1e-3  # fp32 on 135M parameters, two implementations: logits agree to ~1e-4


def main_demo(utils, model) -> dict:
    """Tutorial code; `utils` is transformer_lens.utils or lens.utils. Returns what it would print."""
    out = {}
    model.set_use_attn_result(True)
    tokens = model.to_tokens(PROMPT)
    logits, cache = model.run_with_cache(tokens)
    out["loss"] = model(tokens, return_type="loss")
    out["pattern"] = cache["pattern", 0, "attn"][0, :, -1]  # every head's attention from the last token
    answer, wrong = model.to_single_token(ANSWER), model.to_single_token(WRONG)

    # The logit lens: each layer's residual through the final norm and W_U.
    accumulated, labels = cache.accumulated_resid(apply_ln=True, pos_slice=-1, return_labels=True)
    layer_logits = accumulated @ model.W_U  # [layer, batch, d_vocab]
    out["logit_lens_prob"] = layer_logits.softmax(-1)[:, 0, answer]
    out["logit_lens_labels"] = labels

    # Direct logit attribution of each head, through the final norm's cached scale and W_U.
    direction = model.tokens_to_residual_directions(answer) - model.tokens_to_residual_directions(wrong)
    per_head, head_labels = cache.stack_head_results(layer=-1, pos_slice=-1, return_labels=True)
    scaled = cache.apply_ln_to_stack(per_head, layer=-1, pos_slice=-1)
    out["dla"] = scaled[:, 0] @ direction
    out["top_head"] = head_labels[int(out["dla"].argmax())]
    by_hand = cache["result", 1][0, -1] / cache["scale"][0, -1]  # [n_heads, d_model], folded weights assumed
    out["dla_by_hand"] = by_hand @ direction

    # Activation patching: the clean residual into the corrupted run, per layer and position.
    corrupt = model.to_tokens(CORRUPT)
    out["differing"] = int((tokens != corrupt)[0].nonzero()[0, 0])  # " Italy" vs " Spain"

    def patch_residual(resid, hook, pos):
        resid[:, pos] = cache[hook.name][:, pos]
        return resid

    layers = range(0, model.cfg.n_layers, max(1, model.cfg.n_layers // 5))
    patched = torch.zeros(len(layers), tokens.shape[1])
    for i, layer in enumerate(layers):
        for pos in range(tokens.shape[1]):
            hook = (utils.get_act_name("resid_pre", layer), partial(patch_residual, pos=pos))
            logits = model.run_with_hooks(corrupt, fwd_hooks=[hook])
            patched[i, pos] = logits[0, -1, answer] - logits[0, -1, wrong]
    out["patching"] = patched

    # Induction scores on repeated random tokens, from a hook on every pattern.
    seq_len = 10
    random = torch.randint(100, 20000, (2, seq_len), generator=torch.Generator().manual_seed(0))
    repeated = torch.cat([random, random], dim=1)
    scores = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)

    def induction_score(pattern, hook):
        stripe = pattern.diagonal(dim1=-2, dim2=-1, offset=1 - seq_len)  # [batch, head, seq_len - 1]
        scores[hook.layer()] = stripe.mean((0, 2))

    model.run_with_hooks(repeated, return_type=None, fwd_hooks=[(lambda name: name.endswith("pattern"),
                                                                  induction_score)])
    out["induction"] = scores

    # Steering: add the answer direction to the residual stream while generating greedily.
    def steer(resid, hook):  # as long as the residual itself at each position: enough to move a greedy choice
        return resid + 2.0 * resid.norm(dim=-1, keepdim=True) * direction / direction.norm()

    with model.hooks(fwd_hooks=[(utils.get_act_name("resid_post", model.cfg.n_layers // 2), steer)]):
        out["steered"] = model.generate(tokens, max_new_tokens=6, do_sample=False, verbose=False)
    out["unsteered"] = model.generate(tokens, max_new_tokens=6, do_sample=False, verbose=False)

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        utils.test_prompt(PROMPT, "Rome", model, top_k=3)
    out["test_prompt"] = printed.getvalue()
    return out


FLAGS = dict(fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True)


def smollm2_tokenizer():
    """SmolLM2's tokenizer: from lens's converted-weights cache when it has the model, else from the GGUF."""
    from transformers import AutoTokenizer

    from lens.loading import weight_cache
    from lens.loading.registry import ALIASES
    gguf = ALIASES["smollm2-135m"].packaged_gguf()
    cached = weight_cache.cache_root() / weight_cache.cache_key(gguf) / "tokenizer"
    if cached.exists():
        return AutoTokenizer.from_pretrained(cached)
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


@pytest.fixture(scope="module")
def tiny_both(tmp_path_factory):
    """A random 4-layer Llama (GQA) over SmolLM2's vocabulary, in lens and in TransformerLens."""
    from transformers import AutoModelForCausalLM, LlamaConfig
    tokenizer = smollm2_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    hf = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    folder = Path(tmp_path_factory.mktemp("tiny_tutorial"))
    hf.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    reference = legacy_model("llama", hf, FLAGS, tokenizer=copy.deepcopy(tokenizer))
    ours = lens.HookedTransformer.from_pretrained(str(folder), device="cpu", processing="transformer_lens")
    with torch.no_grad():
        return main_demo(lens.utils, ours), main_demo(tl_utils, reference)


@pytest.fixture(scope="module")
def smollm2_both(smollm2):
    hf = hf_from_gguf(smollm2.load_info["source"])
    reference = legacy_model("llama", hf, FLAGS, tokenizer=copy.deepcopy(smollm2.tokenizer))
    ours = lens.HookedTransformer.from_pretrained("smollm2-135m", device="cpu", processing="transformer_lens")
    with torch.no_grad():
        return main_demo(lens.utils, ours), main_demo(tl_utils, reference)


def as_text(value) -> str:
    return value if isinstance(value, str) else repr(value)


def same_output(ours: dict, theirs: dict) -> None:
    for key, value in theirs.items():
        mine = ours[key]
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            assert mine.shape == value.shape, f"{key}: shapes {tuple(mine.shape)} vs {tuple(value.shape)}"
            far = (mine.float() - value.float()).abs().max().item()
            assert far <= TOL, f"{key}: max |Δ| {far:.3g}"
        elif isinstance(value, torch.Tensor):
            assert torch.equal(mine, value), f"{key}: {mine.tolist()} vs {value.tolist()}"
        else:
            # printed numbers may differ in their last digit (65.31% vs 65.32%: fp32 sums in another order)
            assert _text_fits(as_text(value), as_text(mine)), f"{key}:\n{as_text(mine)}\nvs\n{as_text(value)}"


def test_the_main_demo_prints_transformer_lens_numbers_on_a_small_llama(tiny_both):
    same_output(*tiny_both)


@pytest.mark.real_model
def test_the_main_demo_prints_transformer_lens_numbers_on_smollm2(smollm2_both):
    same_output(*smollm2_both)


@pytest.mark.real_model
def test_the_main_demo_finds_what_it_should(smollm2_both):
    """Not only equal: the numbers say what the tutorial says (the answer wins late, patching at the
    differing position restores it, steering changes the continuation)."""
    ours, _ = smollm2_both
    assert ours["logit_lens_labels"][-1] == "final_post" and ours["logit_lens_prob"][-1] > ours["logit_lens_prob"][0]
    # At layer 0 the residual holds each token alone: patching the one differing token restores the most.
    assert ours["patching"][0].argmax() == ours["differing"], ours["patching"][0]
    assert not torch.equal(ours["steered"], ours["unsteered"])
    assert "Ranks of the answer tokens" in ours["test_prompt"]
