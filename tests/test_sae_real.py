"""A dictionary trained offline on smollm2-135m (lens.sae.train.QUICK: seconds to train, then cached):
it loads in SAELens, splices without changing the logits, and its quality numbers are those of a
dictionary that reconstructs the layer (not a random one)."""

import time

import pytest
import torch

from lens.sae import SAE, quality, train

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def trained(smollm2):
    return train.default_dictionary(smollm2, train.QUICK, verbose=False)


def test_the_trained_dictionary_is_cached_and_reads_the_same_in_sae_lens(smollm2, trained):
    started = time.perf_counter()
    again = train.default_dictionary(smollm2, train.QUICK, verbose=False)
    assert time.perf_counter() - started < 5 and train.is_cached(smollm2, train.QUICK)
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), again.state_dict().values(),
                                                 strict=True))
    sae_lens = pytest.importorskip("sae_lens")
    folder = train.cache_dir() / train._key(smollm2, train.QUICK)
    reference = sae_lens.SAE.load_from_disk(folder)
    x = torch.randn(4, 576) * 3
    with torch.no_grad():
        assert (trained(x) - reference(x)).abs().max() <= 1e-5


def test_splicing_the_trained_dictionary_leaves_smollm2_logits_unchanged(smollm2, trained):
    prompt = "I flew from Paris to Tokyo, then on to Berlin."
    with torch.no_grad():
        clean = smollm2(prompt)
        spliced = smollm2(prompt, saes=[trained])
    assert (spliced - clean).abs().max() <= 1e-4, (spliced - clean).abs().max()


def test_the_trained_dictionary_reconstructs_held_out_text_far_better_than_a_random_one(smollm2, trained):
    heldout = train.documentation_texts(train.HELDOUT_MODULES)[:3]
    q = quality(smollm2, trained, heldout)
    q_random = quality(smollm2, SAE.random(trained.cfg, seed=0), heldout)
    assert q.l0 <= trained.cfg.k + 1e-9
    # QUICK is a seconds-long recipe (measured on 40 held-out texts: EV 0.25, CE loss recovered 0.36)
    assert q.explained_variance > q_random.explained_variance + 0.1, (q.summary(), q_random.summary())
    assert q.ce_loss_recovered > q_random.ce_loss_recovered + 0.2, (q.summary(), q_random.summary())
