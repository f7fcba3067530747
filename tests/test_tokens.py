"""Tokenization on the real SmolLM2 and Gemma 3 tokenizers."""

import pytest
import torch

import lens

pytestmark = pytest.mark.real_model


def test_to_single_token_raises_naming_the_pieces(smollm2):
    assert smollm2.to_string([smollm2.to_single_token(" Paris")]) == " Paris"
    with pytest.raises(lens.TokenizationError, match=r"' Eiffel' is 2 tokens, not one: \[' E', 'iffel'\]"):
        smollm2.to_single_token(" Eiffel")


def test_a_list_of_strings_is_padded_and_masked_so_each_row_equals_its_prompt_alone(smollm2):
    prompts = ["The capital of France is", "Hello"]
    for side in ("left", "right"):
        tokens = smollm2.to_tokens(prompts, padding_side=side)
        assert tokens.shape == (2, 5)
        with torch.no_grad():
            batched = smollm2(prompts, padding_side=side)
            alone = smollm2("Hello")
        row = batched[1, -1] if side == "left" else batched[1, 0]
        assert (row.log_softmax(-1) - alone[0, -1].log_softmax(-1)).abs().max() <= 1e-4, side


def test_token_position_and_round_trip(gemma3):
    prompt = "When Mary and John went to the store, John gave a drink to"
    assert gemma3.get_token_position(" John", prompt) == 4
    assert gemma3.get_token_position(" John", prompt, mode="last") == 10
    assert gemma3.to_string(gemma3.to_tokens(prompt, prepend_bos=False)[0]) == prompt
    assert gemma3.to_tokens(prompt)[0, 0].item() == gemma3.cfg.bos_token_id


def test_loss_ignores_padding(smollm2):
    prompts = ["The capital of France is Paris.", "Hi there"]
    batched = smollm2(prompts, return_type="loss", loss_per_token=True, padding_side="left")
    alone = smollm2(prompts[1], return_type="loss", loss_per_token=True)
    n = alone.shape[1]
    assert (batched[1, -n:] - alone[0]).abs().max() <= 1e-4
    assert batched[1, :-n].abs().max() == 0
