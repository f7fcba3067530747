"""The dictionary trained offline on smollm2-135m (lens.sae.train.Recipe(), cached; `make` trains it at setup
with `lens prepare`, 53-62 s here; on an empty cache the first test trains it, which took 232 s inside one
pytest run on 2 shared cores): it loads in SAELens, splices without changing the logits, reconstructs held-out text well
(quality thresholds that a weak dictionary fails), and has a city-name feature that is selective on
held-out text and causal (ablating it lowers, adding it raises the probability of a city name)."""

import time

import pytest
import torch

from lens.cli import CITIES, PLACE_PROMPTS
from lens.sae import SAE, max_activating, quality, selective_features, train
from lens.sae.steering import token_set_effect

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def trained(smollm2):
    return train.default_dictionary(smollm2, verbose=False)


@pytest.fixture(scope="module")
def heldout(smollm2):
    return train.heldout_texts(smollm2)


def test_the_trained_dictionary_is_cached_and_reads_the_same_in_sae_lens(smollm2, trained):
    started = time.perf_counter()
    again = train.default_dictionary(smollm2, verbose=False)
    assert time.perf_counter() - started < 5 and train.is_cached(smollm2)
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), again.state_dict().values(),
                                                 strict=True))
    # SAELens's input normalisation was folded into the weights: the saved dictionary reads raw activations
    assert trained.cfg.normalize_activations == "none"
    sae_lens = pytest.importorskip("sae_lens")
    folder = train.cache_dir() / train._key(smollm2, train.Recipe())
    reference = sae_lens.SAE.load_from_disk(folder)
    x = torch.randn(4, 576) * 3
    with torch.no_grad():
        assert (trained(x) - reference(x)).abs().max() <= 1e-4


def test_splicing_the_trained_dictionary_leaves_smollm2_logits_unchanged(smollm2, trained):
    prompt = "I flew from Paris to Tokyo, then on to Berlin."
    with torch.no_grad():
        clean = smollm2(prompt)
        spliced = smollm2(prompt, saes=[trained])
    assert (spliced - clean).abs().max() <= 1e-4, (spliced - clean).abs().max()


def test_the_trained_dictionary_reconstructs_held_out_text(smollm2, trained, heldout):
    # measured on all 85 held-out texts (4,063 tokens): L0 16, EV 0.873, CE loss recovered 0.921, 3.9% dead;
    # here the last 35 (1,610 tokens: 10 docstrings of held-out modules, 25 generated texts): EV 0.868, 0.859
    q = quality(smollm2, trained, heldout[50:])
    assert q.n_tokens > 1500 and q.l0 <= trained.cfg.k + 1e-9
    assert q.explained_variance > 0.8 and q.ce_loss_recovered > 0.8, q.summary()
    assert q.dead_fraction < 0.15, q.summary()
    q_random = quality(smollm2, SAE.random(trained.cfg, seed=0), heldout[50:])
    assert q_random.ce_loss_recovered < 0.5, q_random.summary()


def test_a_city_feature_is_selective_on_held_out_text_and_causal(smollm2, trained, heldout):
    generated = heldout[-len(train.HELDOUT_PROMPTS):]
    city = selective_features(smollm2, trained, generated, CITIES, k=1)[0]
    assert city.on_targets > 5 * city.elsewhere, city  # measured: 34.5 on city names, 2.4 elsewhere
    contexts = max_activating(smollm2, trained, heldout, city.feature, k=6).contexts
    # its strongest contexts over held-out text are place names (measured: 6 of 6 cities or Europe)
    places = set(c.strip() for c in CITIES) | {"Spain", "Europe", "England", "France", "Italy", "Portugal", "Japan"}
    assert sum(c.token.strip() in places for c in contexts) >= 4, contexts
    effect = token_set_effect(smollm2, trained, PLACE_PROMPTS, city.feature, CITIES, coefficient=round(city.on_targets))
    # measured: P(city) 0.087 clean, 0.059 ablated, 0.200 with the decoder direction added × its mean on cities
    assert effect.ablated < 0.85 * effect.clean and effect.steered > 1.5 * effect.clean, effect.summary()
