"""Tiny models with a real (small) tokenizer for the MCP server tests; no tests here.

The tokenizer is a byte-level BPE trained offline on a few IOI-style sentences, so the names
(' Mary', ' John') are single tokens and rarer words split into several.
"""

from __future__ import annotations

import functools
from pathlib import Path

from lens import HookedTransformer, ModelConfig

CORPUS = ["When Mary and John went to the store, John gave a drink to Mary.",
          "When Mary and John went to the store, Mary gave a drink to John.",
          "When Tom and Anna went to the park, Anna gave a ball to Tom.",
          "The Eiffel Tower is in the city of Paris.", "The cat sat on the mat."] * 20
IOI_CLEAN = "When Mary and John went to the store, John gave a drink to"
IOI_CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"
IOI = {"clean": IOI_CLEAN, "corrupted": IOI_CORRUPTED, "answer": " Mary", "baseline": " John"}  # patch-tool args


@functools.cache
def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def tiny_config(**overrides) -> ModelConfig:
    tokenizer = tiny_tokenizer()
    base = {"n_layers": 3, "d_model": 32, "n_heads": 4, "d_head": 8, "d_mlp": 64, "d_vocab": len(tokenizer),
            "n_ctx": 256, "model_type": "llama", "norm": "rmsnorm", "positions": "rotary", "gated_mlp": True,
            "act_fn": "silu", "n_kv_heads": 2, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id}
    return ModelConfig(**(base | overrides))


def tiny_model(seed: int = 0, **overrides) -> HookedTransformer:
    return HookedTransformer.from_config(tiny_config(**overrides), seed=seed, tokenizer=tiny_tokenizer())


def tiny_server(model: HookedTransformer, tmp_path: Path):
    """A server whose default model is `model`, registered as "tiny", plotting under tmp_path."""
    from mcp_server import Settings, create_server
    return create_server(Settings(out_dir=tmp_path / "plots", default_model="tiny"), models={"tiny": model})


def save_tiny_folder(folder: Path, **config) -> Path:
    """A tiny random Llama saved as save_pretrained writes it, with the tokenizer: loadable by path.
    config: LlamaConfig fields to change (hidden_size, num_hidden_layers, ...)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256) | config
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, **shape)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# --- talking to a server through a real MCP client ----------------------------------------------

def run(server, scenario):
    """Connect an in-process mcp.Client to `server` and run `await scenario(client)`."""
    import anyio
    from mcp import Client

    async def main():
        async with Client(server) as client:
            return await scenario(client)
    return anyio.run(main)


async def ok(client, name: str, args: dict, **kwargs) -> dict:
    """The structured result of a call that must succeed."""
    result = await client.call_tool(name, args, **kwargs)
    assert not result.is_error, f"{name}({args}) failed: {result.content[0].text}"
    return result.structured_content


async def refused(client, name: str, args: dict) -> str:
    """The error text of a call that must fail with a tool error."""
    result = await client.call_tool(name, args)
    assert result.is_error, f"{name}({args}) should have failed but returned {result.structured_content}"
    return result.content[0].text


def close(a: float, b: float, rel: float = 2e-4) -> bool:
    """Equal up to the server's rounding to 5 significant figures."""
    return abs(a - b) <= rel * max(abs(a), abs(b)) + 1e-7
