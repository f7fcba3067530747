"""Generation: the KV cache is exact, sampling rules match HF's, hooks fire, real models equal HF generate."""

import pytest
import torch
from conftest import TINY_VARIANTS, hf_from_gguf, max_diff

from lens import HookedTransformer, SequenceTooLongError, TokenizationError
from lens.generation import Sampling
from lens.model.kv_cache import KVCache


def random_tokens(batch, n, seed=0, vocab=50):
    return torch.randint(0, vocab, (batch, n), generator=torch.Generator().manual_seed(seed))


def cached_logits(model, tokens, splits, mask=None):
    """Logits of `tokens` run through the KV cache in pieces ending at `splits`."""
    cache = KVCache(model.cfg, tokens.shape[0], tokens.shape[1], model.dtype)
    pieces, start = [], 0
    for end in splits:
        step_mask = None if mask is None else mask[:, start:end]
        pieces.append(model(tokens[:, start:end], attention_mask=step_mask, past_kv_cache=cache))
        start = end
    assert cache.length == tokens.shape[1]
    return torch.cat(pieces, dim=1)


@pytest.mark.parametrize("explicit", [False, True], ids=["sdpa", "explicit"])
def test_cached_steps_equal_one_full_forward(tiny_model, explicit):
    # a prompt, single steps, then a three-token chunk after the cache (offset > 0 with several queries)
    tokens = random_tokens(2, 14)
    hooks = [("blocks.0.attn.hook_pattern", lambda x, hook: None)] if explicit else []
    with torch.no_grad(), tiny_model.hooks(hooks):
        full = tiny_model(tokens)
        stepped = cached_logits(tiny_model, tokens, [5, 6, 7, 8, 11, 12, 13, 14])
    assert (stepped - full).abs().max() <= 1e-5, max_diff(stepped, full)


def test_cached_steps_of_a_left_padded_batch_equal_each_row_alone(tiny_model):
    short, long = random_tokens(1, 6, seed=1), random_tokens(1, 9, seed=2)
    batch = torch.cat([torch.cat([torch.zeros(1, 3, dtype=torch.long), short], 1), long])
    mask = torch.ones_like(batch)
    mask[0, :3] = 0
    extra = random_tokens(2, 4, seed=3)
    tokens, mask = torch.cat([batch, extra], 1), torch.cat([mask, torch.ones_like(extra)], 1)
    with torch.no_grad():
        stepped = cached_logits(tiny_model, tokens, [9, 10, 11, 12, 13], mask)
        alone_short = tiny_model(torch.cat([short, extra[:1]], 1))
        alone_long = tiny_model(torch.cat([long, extra[1:]], 1))
    assert (stepped[0, 3:] - alone_short[0]).abs().max() <= 1e-5, max_diff(stepped[0, 3:], alone_short[0])
    assert (stepped[1] - alone_long[0]).abs().max() <= 1e-5, max_diff(stepped[1], alone_long[0])

def test_a_cached_step_can_start_at_a_later_layer(tiny_model):
    # The prefix fills the cache; the rest runs from layer 1 on the residual stream a full forward has there.
    tokens = random_tokens(2, 12)
    with torch.no_grad():
        full, cache_full = tiny_model.run_with_cache(tokens, names_filter=["blocks.0.hook_resid_post"])
        cache = KVCache(tiny_model.cfg, 2, 12, tiny_model.dtype)
        tiny_model(tokens[:, :7], past_kv_cache=cache)
        resid = cache_full["blocks.0.hook_resid_post"][:, 7:]
        rest = tiny_model(resid, start_at_layer=1, past_kv_cache=cache)
    assert (rest - full[:, 7:]).abs().max() <= 1e-5, max_diff(rest, full[:, 7:])


def test_reading_a_cache_layer_that_a_layer_range_skipped_is_an_error(tiny_model):
    tokens = random_tokens(1, 6)
    cache = KVCache(tiny_model.cfg, 1, 6, tiny_model.dtype)
    with torch.no_grad():
        resid = tiny_model(tokens[:, :4], stop_at_layer=1)
        tiny_model(resid, start_at_layer=1, past_kv_cache=cache)  # layer 0 holds nothing for positions 0..3
        with pytest.raises(ValueError, match="layer 0 of the KV cache holds keys and values for 0 of its 4"):
            tiny_model(tokens[:, 4:], past_kv_cache=cache)



@pytest.mark.parametrize("variant", ["gpt2_like", "llama_like", "gemma_like"])
def test_greedy_tokens_are_the_same_with_and_without_the_kv_cache(variant):
    model = HookedTransformer.from_config(TINY_VARIANTS[variant], seed=1)
    prompt = random_tokens(2, 5)
    kwargs = dict(max_new_tokens=12, do_sample=False, verbose=False)
    with_cache = model.generate(prompt, **kwargs)
    without = model.generate(prompt, use_past_kv_cache=False, **kwargs)
    assert with_cache.shape == (2, 17)
    assert torch.equal(with_cache[:, :5], prompt)
    assert torch.equal(with_cache, without)
    # greedy means: each new token is the argmax of a plain forward over the sequence before it
    logits = model(with_cache[:, :-1])
    assert torch.equal(logits[:, 4:].argmax(-1), with_cache[:, 5:])


def test_hooks_fire_at_every_step_and_know_the_absolute_position():
    model = HookedTransformer.from_config(TINY_VARIANTS["llama_like"], seed=1)
    seen = []

    def record(x, hook):
        seen.append((tuple(x.shape), hook.ctx.positions[0].tolist(), hook.ctx.offset))

    prompt = random_tokens(1, 5)
    model.generate(prompt, max_new_tokens=3, do_sample=False, verbose=False,
                   fwd_hooks=[("blocks.1.hook_resid_post", record)])
    assert seen == [((1, 5, 32), [0, 1, 2, 3, 4], 0), ((1, 1, 32), [5], 5), ((1, 1, 32), [6], 6)]
    assert not model._hooks.hooked(), "generate must remove its hooks"

    patterns = []
    with model.hooks([("blocks.0.attn.hook_pattern", lambda x, hook: patterns.append(x.shape))]):
        model.generate(prompt, max_new_tokens=3, do_sample=False, verbose=False)
    assert patterns == [(1, 4, 5, 5), (1, 4, 1, 6), (1, 4, 1, 7)]

    seen.clear()
    model.generate(prompt, max_new_tokens=2, do_sample=False, verbose=False, use_past_kv_cache=False,
                   fwd_hooks=[("blocks.1.hook_resid_post", record)])
    assert seen == [((1, 5, 32), [0, 1, 2, 3, 4], 0), ((1, 6, 32), [0, 1, 2, 3, 4, 5], 0)]


def test_a_steering_hook_changes_the_generated_tokens():
    model = HookedTransformer.from_config(TINY_VARIANTS["gpt2_like"], seed=1)
    prompt = random_tokens(1, 4)
    plain = model.generate(prompt, max_new_tokens=10, do_sample=False, verbose=False)
    push = model.W_U[:, 7] * 100.0  # push the residual towards token 7

    steered = model.generate(prompt, max_new_tokens=10, do_sample=False, verbose=False,
                             fwd_hooks=[("blocks.2.hook_resid_post", lambda x, hook: x + push)])
    assert not torch.equal(plain, steered)
    assert (steered[0, 4:] == 7).float().mean() > 0.5


def test_sampling_is_reproducible_with_a_seed_and_top_k_1_is_greedy():
    model = HookedTransformer.from_config(TINY_VARIANTS["llama_like"], seed=1)
    prompt = random_tokens(3, 4)
    kwargs = dict(max_new_tokens=10, verbose=False)
    a = model.generate(prompt, seed=5, **kwargs)
    assert torch.equal(a, model.generate(prompt, seed=5, **kwargs))
    assert not torch.equal(a, model.generate(prompt, seed=6, temperature=3.0, **kwargs))
    greedy = model.generate(prompt, do_sample=False, **kwargs)
    assert torch.equal(model.generate(prompt, seed=1, top_k=1, **kwargs), greedy)
    assert torch.equal(model.generate(prompt, seed=1, top_p=1e-6, **kwargs), greedy)


def test_penalties_and_filters_match_hf_logits_processors():
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0)) * 3
    seen = random_tokens(4, 7, seed=1)
    valid = torch.ones_like(seen, dtype=torch.bool)
    ours = Sampling(repetition_penalty=1.7).penalised(logits, seen, valid)
    theirs = RepetitionPenaltyLogitsProcessor(1.7)(seen, logits.clone())
    assert (ours - theirs).abs().max() <= 1e-6
    counts = torch.zeros(4, 50).scatter_add_(1, seen, torch.ones(4, 7))
    assert (Sampling(freq_penalty=0.5).penalised(logits, seen, valid) - (logits - 0.5 * counts)).abs().max() <= 1e-6

    # which tokens survive top-k and top-p: sample many times and compare the support with HF's
    for sampling, warper in [(Sampling(top_k=5), TopKLogitsWarper(5)), (Sampling(top_p=0.6), TopPLogitsWarper(0.6))]:
        support = torch.isfinite(warper(seen, logits.clone()))
        generator = torch.Generator().manual_seed(0)
        drawn = torch.stack([sampling.choose(logits, seen[:, :0], valid[:, :0], generator) for _ in range(400)], 1)
        sampled = torch.zeros(4, 50, dtype=torch.bool).scatter_(1, drawn, True)
        assert not (sampled & ~support).any(), "sampled a token HF's warper removes"
        assert sampled.sum() >= support.sum() * 0.8, "most tokens HF's warper keeps should be drawn"


def test_rows_stop_at_eos_and_are_filled_with_it():
    model = HookedTransformer.from_config(TINY_VARIANTS["gpt2_like"], seed=1)
    prompt = random_tokens(2, 4)
    greedy = model.generate(prompt, max_new_tokens=8, do_sample=False, verbose=False, stop_at_eos=False)
    eos = int(greedy[0, 6])  # the third token row 0 generates becomes "EOS"
    out = model.generate(prompt, max_new_tokens=8, do_sample=False, verbose=False, eos_token_id=eos)
    first_eos = [int((row[4:] == eos).nonzero()[0]) if (row[4:] == eos).any() else None for row in greedy]
    for row, stop in zip(range(2), first_eos, strict=True):
        if stop is not None:
            assert torch.equal(out[row, 4:4 + stop + 1], greedy[row, 4:4 + stop + 1])
            assert (out[row, 4 + stop:] == eos).all()
    if all(stop is not None for stop in first_eos):
        assert out.shape[1] == 4 + max(first_eos) + 1  # generation ends once every row has stopped


def test_generate_stream_yields_the_tokens_generate_returns():
    model = HookedTransformer.from_config(TINY_VARIANTS["llama_like"], seed=1)
    prompt = random_tokens(2, 4)
    full = model.generate(prompt, max_new_tokens=7, do_sample=False, verbose=False)
    chunks = list(model.generate_stream(prompt, max_new_tokens=7, max_tokens_per_yield=3, do_sample=False))
    assert [c.shape[1] for c in chunks] == [3, 3, 1]
    assert torch.equal(torch.cat([prompt, *chunks], 1), full)


def test_bad_generation_arguments_are_errors_that_say_what_is_valid():
    model = HookedTransformer.from_config(TINY_VARIANTS["gpt2_like"], seed=1)
    prompt = random_tokens(1, 4)
    with pytest.raises(ValueError, match="return_type"):
        model.generate(prompt, return_type="text")
    with pytest.raises(ValueError, match="temperature"):
        model.generate(prompt, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(prompt, top_p=1.5)
    with pytest.raises(SequenceTooLongError, match="n_ctx"):
        model.generate(prompt, max_new_tokens=40, verbose=False)
    with pytest.raises(TokenizationError, match="tokenizer"):
        model.generate(prompt, stop_strings=["\n"], verbose=False)


# --- the real models ------------------------------------------------------------------

STORY = "Once upon a time, in a small village by the sea,"


@pytest.mark.real_model
@pytest.mark.parametrize("fixture", ["smollm2", "gemma3"])
def test_greedy_generation_equals_hf_generate_token_for_token(fixture, request):
    model = request.getfixturevalue(fixture)
    hf = hf_from_gguf(model.load_info["source"], attn_implementation="sdpa")
    for prompt in [STORY, "The Eiffel Tower is in the city of"]:
        tokens = model.to_tokens(prompt)
        ours = model.generate(tokens, max_new_tokens=32, do_sample=False, verbose=False)
        with torch.no_grad():
            theirs = hf.generate(tokens, attention_mask=torch.ones_like(tokens), max_new_tokens=32,
                                 do_sample=False, pad_token_id=model.cfg.eos_token_id)
        assert ours.shape == theirs.shape and torch.equal(ours, theirs), \
            f"{model.to_string(ours[0])!r}\n!=\n{model.to_string(theirs[0])!r}"


@pytest.mark.real_model
def test_a_batch_of_prompts_generates_what_each_prompt_does_alone(smollm2):
    prompts = ["The capital of France is", STORY, "def add(a, b):"]
    batch = smollm2.generate(prompts, max_new_tokens=12, do_sample=False, verbose=False)
    alone = [smollm2.generate(p, max_new_tokens=12, do_sample=False, verbose=False) for p in prompts]
    assert batch == alone
    assert batch[0].startswith("The capital of France is Paris")


@pytest.mark.real_model
def test_steering_and_stop_strings_on_the_real_model(smollm2):
    plain = smollm2.generate(STORY, max_new_tokens=16, do_sample=False, verbose=False)
    direction = smollm2.W_U[:, smollm2.to_single_token(" dragon")]
    direction = direction / direction.norm()

    def generate_steered(coefficient):
        hook = ("blocks.10.hook_resid_post", lambda x, hook: x + coefficient * direction)
        return smollm2.generate(STORY, max_new_tokens=16, do_sample=False, verbose=False, fwd_hooks=[hook])
    assert generate_steered(0.0) == plain
    steered = generate_steered(40.0)  # the residual norm there is about 120
    assert steered.startswith(STORY) and steered != plain

    stopped = smollm2.generate(STORY, max_new_tokens=16, do_sample=False, verbose=False, stop_strings=["old"])
    assert plain.startswith(stopped) and stopped.endswith("old") and len(stopped) < len(plain)
    pieces = list(smollm2.generate_stream(STORY, max_new_tokens=16, do_sample=False))
    assert STORY + "".join(pieces) == plain
