"""Steering: the contrast vector is the naive mean difference, and steer adds it where it says."""

import pytest
import torch
from conftest import TINY_VARIANTS

from lens import HookedTransformer
from lens.analysis.steering import steer, steering_vector

POSITIVE = ["I love this, it is wonderful", "What a great and happy day"]
NEGATIVE = ["I hate this, it is awful", "What a terrible and sad day"]


@pytest.fixture(scope="module")
def tiny():
    return HookedTransformer.from_config(TINY_VARIANTS["llama_like"], seed=1)


def test_the_vector_is_the_mean_difference_of_the_activations(tiny):
    gen = torch.Generator().manual_seed(0)
    pos = [torch.randint(0, 50, (1, n), generator=gen) for n in (5, 7)]
    neg = [torch.randint(0, 50, (1, n), generator=gen) for n in (6, 4)]
    for position in ("mean", "last"):
        vector = steering_vector(tiny, pos, neg, layer=1, position=position)
        expected = []
        for prompts in (pos, neg):
            acts = [tiny.run_with_cache(p)[1]["blocks.1.hook_resid_post"][0] for p in prompts]
            expected.append(torch.stack([a.mean(0) if position == "mean" else a[-1] for a in acts]).mean(0))
        assert vector.shape == (tiny.cfg.d_model,)
        assert (vector - (expected[0] - expected[1])).abs().max() <= 1e-6


def test_coefficient_zero_is_plain_generation_and_shifts_follow_the_vector(tiny):
    prompt = torch.tensor([[3, 14, 15, 9, 2]])
    plain = tiny.generate(prompt, max_new_tokens=8, do_sample=False, verbose=False)
    vector = tiny.W_U[:, 7] / tiny.W_U[:, 7].norm()
    result = steer(tiny, prompt, vector, layer=-1, coefficients=[0.0, 30.0], max_new_tokens=8, tokens=[7])
    zero, big = result.generations
    assert zero.text == str(plain[0, 5:].tolist())
    assert zero.logit_shifts == {"<7>": 0.0}
    assert big.logit_shifts["<7>"] > 0.3 and big.text != zero.text

    # steering only the generated positions leaves the prompt's logits alone
    later = steer(tiny, prompt, vector, layer=-1, coefficients=[30.0], positions="generated", max_new_tokens=8,
                  tokens=[7])
    assert later.generations[0].logit_shifts["<7>"] == 0.0
    assert later.generations[0].text != zero.text


@pytest.mark.parametrize("layer", [0, -1])
def test_shifts_equal_a_steered_forward_minus_a_plain_one(tiny, layer):
    prompt = torch.tensor([[3, 14, 15, 9, 2]])
    vector = torch.randn(tiny.cfg.d_model, generator=torch.Generator().manual_seed(3))
    result = steer(tiny, prompt, vector, layer=layer, coefficients=[2.0, -5.0], max_new_tokens=3, tokens=[7, 11],
                   answer=7, baseline=11)
    plain = tiny(prompt)[0, -1]
    name = f"blocks.{layer % tiny.cfg.n_layers}.hook_resid_post"
    for generation in result.generations:
        steered = tiny.run_with_hooks(prompt, fwd_hooks=[(name, lambda x, point, c=generation.coefficient:
                                                          x + c * vector)])[0, -1]
        moved = steered - plain
        assert abs(generation.logit_shifts["<7>"] - moved[7].item()) < 1e-5
        assert abs(generation.logit_shifts["<11>"] - moved[11].item()) < 1e-5
        assert abs(generation.metric_shift - (moved[7] - moved[11]).item()) < 1e-5


def test_bad_steering_arguments_say_what_is_valid(tiny):
    prompt = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"shape \[d_model\] = \[32\]"):
        steer(tiny, prompt, torch.zeros(16), layer=0)
    with pytest.raises(ValueError, match="layer 3 is out of range for a model of 3 layers: valid values are 0..2"):
        steer(tiny, prompt, torch.zeros(32), layer=3)
    with pytest.raises(ValueError, match="'mean' or 'last'"):
        steering_vector(tiny, [prompt], [prompt], layer=0, position="first")
    with pytest.raises(ValueError, match="positions must be"):
        steer(tiny, prompt, torch.zeros(32), layer=0, positions="everywhere")


@pytest.mark.real_model
def test_steering_a_real_model_towards_love(smollm2):
    prompt = "I think that you are"
    vector = steering_vector(smollm2, POSITIVE, NEGATIVE, layer=12)
    assert vector.shape == (576,)
    result = steer(smollm2, prompt, vector, layer=12, coefficients=[0.0, 6.0], max_new_tokens=12,
                   tokens=[" wonderful", " awful"])
    plain = smollm2.generate(prompt, max_new_tokens=12, do_sample=False, verbose=False)
    assert prompt + result.generations[0].text == plain
    assert result.generations[1].text != result.generations[0].text
    shifts = result.generations[1].logit_shifts
    assert shifts[" wonderful"] - shifts[" awful"] > 0, result.summary()
