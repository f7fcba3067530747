"""TransformerLens's `utils` helpers, as `lens.utils`: the same names, arguments and values.

Where lens has the function already it is an alias (get_act_name = lens.act_name); the rest are
small tensor and tokenizer helpers written here.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lens.factored import FactoredMatrix
from lens.hooks import act_name as get_act_name
from lens.slicing import Slice, SliceInput

__all__ = [
    "Slice", "SliceInput", "get_act_name", "to_numpy", "get_corner", "remove_batch_dim", "transpose", "is_square",
    "is_lower_triangular", "composition_scores", "get_offset_position_ids", "get_cumsum_along_dim",
    "repeat_along_head_dimension", "filter_dict_by_prefix", "lm_cross_entropy_loss", "lm_accuracy", "gelu_new",
    "gelu_fast", "solu", "get_device", "get_attention_mask", "get_input_with_manually_prepended_bos",
    "get_tokens_with_bos_removed", "tokenize_and_concatenate", "keep_single_column", "sample_logits",
    "get_nested_attr", "set_nested_attr", "test_prompt", "check_structure", "calc_fan_in_and_fan_out",
    "init_xavier_uniform_", "init_xavier_normal_", "init_kaiming_uniform_", "init_kaiming_normal_",
    "is_library_available", "override_or_use_default_value",
]


# --- tensors -------------------------------------------------------------------------


def to_numpy(tensor) -> np.ndarray:
    """A numpy array of a tensor (detached, on the CPU; bfloat16 as float32), list, tuple or number."""
    if isinstance(tensor, np.ndarray):
        return tensor
    if isinstance(tensor, torch.Tensor):
        tensor = tensor.detach().cpu()
        return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
    if isinstance(tensor, (list, tuple, int, float, bool, str)):
        return np.array(tensor)
    raise ValueError(f"to_numpy takes a tensor, array, list, tuple or number, not {type(tensor).__name__}")


def get_corner(tensor, n: int = 3):
    """The [:n, :n, ...] corner over every dim (a FactoredMatrix's is computed from its factors)."""
    if isinstance(tensor, FactoredMatrix):
        return tensor.get_corner(n)
    return tensor[tuple(slice(n) for _ in range(tensor.ndim))]


def remove_batch_dim(tensor: torch.Tensor) -> torch.Tensor:
    """Drop a leading batch axis of length 1; anything else is returned as it is."""
    return tensor[0] if tensor.shape[0] == 1 else tensor


def transpose(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.transpose(-1, -2)


def is_square(x: torch.Tensor) -> bool:
    return x.ndim == 2 and x.shape[0] == x.shape[1]


def is_lower_triangular(x: torch.Tensor) -> bool:
    return is_square(x) and x.equal(x.tril())


def composition_scores(left: FactoredMatrix, right: FactoredMatrix, broadcast_dims: bool = True) -> torch.Tensor:
    """||left.AB @ right.AB|| / (||left.AB|| ||right.AB||) (Frobenius), from the factors. broadcast_dims:
    every pair of left's and right's leading dims (left's first); else they are matched elementwise."""
    if broadcast_dims:
        n_left, n_right = left.ndim - 2, right.ndim - 2
        left = FactoredMatrix(left.A[(...,) + (None,) * n_right + (slice(None),) * 2],
                              left.B[(...,) + (None,) * n_right + (slice(None),) * 2])
        right = FactoredMatrix(right.A[(None,) * n_left], right.B[(None,) * n_left])
    if left.rdim != right.ldim:
        raise ValueError(f"composition needs left's columns ({left.rdim}) to match right's rows ({right.ldim})")
    return (left @ right).norm() / (left.norm() * right.norm())


def get_offset_position_ids(past_kv_pos_offset: int, attention_mask: torch.Tensor) -> torch.Tensor:
    """[batch, pos] position ids counted from each row's first real token, from past_kv_pos_offset on."""
    positions = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    return positions[:, past_kv_pos_offset:]


def get_cumsum_along_dim(tensor: torch.Tensor, dim: int, reverse: bool = False) -> torch.Tensor:
    if not reverse:
        return tensor.cumsum(dim=dim)
    return tensor.flip(dims=(dim,)).cumsum(dim=dim).flip(dims=(dim,))


def repeat_along_head_dimension(tensor: torch.Tensor, n_heads: int, clone_tensor: bool = True) -> torch.Tensor:
    """[batch, pos, d_model] → [batch, pos, n_heads, d_model]."""
    repeated = tensor[:, :, None].expand(-1, -1, n_heads, -1)
    return repeated.clone() if clone_tensor else repeated


def filter_dict_by_prefix(dictionary: dict, prefix: str) -> dict:
    """The items whose key starts with `prefix`, the prefix (and its '.') removed."""
    prefix = prefix if prefix.endswith(".") else prefix + "."
    return {k[len(prefix):]: v for k, v in dictionary.items() if k.startswith(prefix)}


def get_nested_attr(obj, attr_str: str):
    return functools.reduce(getattr, attr_str.split("."), obj)


def set_nested_attr(obj, attr_str: str, value) -> None:
    *parents, last = attr_str.split(".")
    setattr(functools.reduce(getattr, parents, obj), last, value)


def check_structure(t1: torch.Tensor, t2: torch.Tensor, *, verbose: bool = False) -> None:
    """Print how two tensors' equal rows / columns / values differ (a debugging aid)."""
    if t1.shape != t2.shape:
        print(f"shapes differ: {tuple(t1.shape)} vs {tuple(t2.shape)}")
        return
    same = torch.isclose(t1, t2)
    print(f"{int(same.sum())} of {same.numel()} values are equal" + (f"; differing at {(~same).nonzero().tolist()}"
                                                                      if verbose else ""))


# --- language-model losses and activations ---------------------------------------------


def lm_cross_entropy_loss(logits: torch.Tensor, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None,
                          per_token: bool = False) -> torch.Tensor:
    """Next-token cross-entropy: per_token [batch, pos - 1], else the mean over the real targets."""
    log_probs = F.log_softmax(logits, dim=-1)[..., :-1, :].gather(-1, tokens[..., 1:, None])[..., 0]
    count = log_probs.numel()
    if attention_mask is not None:
        if attention_mask.shape != tokens.shape:
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must match tokens {tuple(tokens.shape)}")
        valid = attention_mask[:, :-1].bool() & attention_mask[:, 1:].bool()
        log_probs = log_probs.masked_fill(~valid, 0.0)
        count = int(valid.sum())
    return -log_probs if per_token else -log_probs.sum() / count


def lm_accuracy(logits: torch.Tensor, tokens: torch.Tensor, per_token: bool = False) -> torch.Tensor:
    correct = logits.argmax(-1)[:, :-1] == tokens[:, 1:]
    return correct if per_token else correct.sum() / correct.numel()


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's tanh approximation of GELU."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def gelu_fast(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def solu(x: torch.Tensor) -> torch.Tensor:
    """SoLU: x * softmax(x) over the last axis."""
    return x * F.softmax(x, dim=-1)


def get_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def sample_logits(final_logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None,
                  temperature: float = 1.0, freq_penalty: float = 0.0, tokens: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """Next tokens [batch] from logits [batch, d_vocab] as lens.generate samples (temperature 0: argmax)."""
    from lens.generation import Sampling
    seen = tokens if tokens is not None else final_logits.new_zeros((final_logits.shape[0], 0), dtype=torch.long)
    sampling = Sampling(do_sample=temperature != 0.0, temperature=temperature or 1.0, top_k=top_k, top_p=top_p,
                        freq_penalty=freq_penalty if tokens is not None else 0.0)
    return sampling.choose(final_logits, seen, torch.ones_like(seen, dtype=torch.bool), None)


# --- initialisers and small helpers (TransformerLens's training utilities) ---------------------


def calc_fan_in_and_fan_out(tensor: torch.Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) in TransformerLens's layouts: [d] → (1, d); [d_in, d_out]; [heads, d_in, d_head] →
    (d_in, heads * d_head)."""
    shape = tensor.shape
    if len(shape) == 1:
        return 1, shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    if len(shape) == 3:
        return shape[1], shape[0] * shape[2]
    raise ValueError(f"fan in and fan out are defined for 1 to 3 dimensions, not for shape {tuple(shape)}")


def init_xavier_uniform_(param: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    fan_in, fan_out = calc_fan_in_and_fan_out(param)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return torch.nn.init.uniform_(param, -bound, bound)


def init_xavier_normal_(param: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    fan_in, fan_out = calc_fan_in_and_fan_out(param)
    return torch.nn.init.normal_(param, mean=0.0, std=gain * math.sqrt(2.0 / (fan_in + fan_out)))


def _kaiming_std(param: torch.Tensor, a: float, nonlinearity: str, gain: float, mode: str) -> float:
    fan_in, fan_out = calc_fan_in_and_fan_out(param)
    return gain * torch.nn.init.calculate_gain(nonlinearity, a) / math.sqrt(fan_in if mode == "fan_in" else fan_out)


def init_kaiming_uniform_(param: torch.Tensor, a: float = 0, nonlinearity: str = "relu", gain: float = 1.0,
                          mode: str = "fan_in") -> torch.Tensor:
    bound = math.sqrt(3.0) * _kaiming_std(param, a, nonlinearity, gain, mode)
    return torch.nn.init.uniform_(param, -bound, bound)


def init_kaiming_normal_(param: torch.Tensor, a: float = 0, nonlinearity: str = "relu", gain: float = 1.0,
                         mode: str = "fan_in") -> torch.Tensor:
    return torch.nn.init.normal_(param, mean=0.0, std=_kaiming_std(param, a, nonlinearity, gain, mode))


def is_library_available(name: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(name) is not None


def override_or_use_default_value(default_flag: Any, override: Any = None) -> Any:
    return default_flag if override is None else override


# --- tokenizers --------------------------------------------------------------------------


def get_attention_mask(tokenizer, tokens: torch.Tensor, prepend_bos: bool, padding_side: str | None = None
                       ) -> torch.Tensor:
    """[batch, pos] 1 at real tokens, 0 at the padding on `padding_side` (the tokenizer's by default). When
    BOS doubles as the pad token, a prepended BOS (the last leading pad) counts as real."""
    mask = torch.ones_like(tokens)
    if tokenizer is None:
        return mask
    side = padding_side or tokenizer.padding_side
    real = tokens.ne(tokenizer.pad_token_id)
    if side == "right":
        mask[get_cumsum_along_dim(real, -1, reverse=True) == 0] = 0
        return mask
    leading = get_cumsum_along_dim(real, -1) == 0
    mask[leading] = 0
    if prepend_bos and tokenizer.bos_token_id == tokenizer.pad_token_id:
        mask[torch.arange(mask.shape[0]), leading.sum(-1) - 1] = 1
    return mask


def get_input_with_manually_prepended_bos(bos_token: str | None, input: str | list[str]) -> str | list[str]:
    if bos_token is None:
        return input
    return bos_token + input if isinstance(input, str) else [bos_token + text for text in input]


def get_tokens_with_bos_removed(tokenizer, tokens: torch.Tensor, padding_side: str | None = None) -> torch.Tensor:
    """tokens [batch, pos] without each row's BOS (the first real token under left padding)."""
    if tokenizer.bos_token_id is None:
        return tokens
    if (padding_side or tokenizer.padding_side) == "right":
        return tokens[..., 1:]
    if tokenizer.bos_token_id == tokenizer.pad_token_id:
        bos_at = (get_cumsum_along_dim(tokens.ne(tokenizer.pad_token_id), -1) == 0).sum(-1) - 1
    else:
        bos_at = (tokens == tokenizer.bos_token_id).int().argmax(-1)
    keep = torch.ones_like(tokens, dtype=torch.bool)
    keep[torch.arange(tokens.shape[0]), bos_at] = False
    return tokens[keep].view(tokens.shape[0], tokens.shape[1] - 1)


def keep_single_column(dataset, col_name: str):
    """A Hugging Face dataset with only column col_name."""
    return dataset.remove_columns([c for c in dataset.features if c != col_name])


def tokenize_and_concatenate(dataset, tokenizer, streaming: bool = False, max_length: int = 1024,
                             column_name: str = "text", add_bos_token: bool = True, num_proc: int | None = 10,
                             set_format: bool = True):
    """A Hugging Face text dataset as rows of `max_length` tokens (column "tokens"): the texts joined with
    EOS between them, cut into rows, each row starting with BOS when add_bos_token."""
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenize_and_concatenate needs a tokenizer with an EOS token (it separates the texts)")
    dataset = keep_single_column(dataset, column_name)
    has_pad = tokenizer.pad_token is not None
    if not has_pad:
        tokenizer.add_special_tokens({"pad_token": "<PAD>"})
    width = max_length - 1 if add_bos_token else max_length

    def rows(examples: dict[str, Any]) -> dict[str, np.ndarray]:
        texts = examples[column_name]
        if not texts:
            return {"tokens": np.zeros((0, max_length), dtype=np.int64)}
        ids: list[int] = []
        for i, row in enumerate(tokenizer(texts, add_special_tokens=False)["input_ids"]):
            ids += ([tokenizer.eos_token_id] if i else []) + list(row)
        if len(ids) < width:  # one short row, padded
            pad = tokenizer.pad_token_id if has_pad else tokenizer.eos_token_id
            ids += [pad] * (width - len(ids))
        n_rows = len(ids) // width
        out = np.asarray(ids[:n_rows * width], dtype=np.int64).reshape(n_rows, width)
        if add_bos_token:
            out = np.concatenate([np.full((n_rows, 1), tokenizer.bos_token_id), out], axis=1)
        return {"tokens": out}

    mapped = dataset.map(rows, batched=True, remove_columns=[column_name],
                         **({} if streaming else {"num_proc": num_proc}))
    if set_format:
        mapped.set_format(type="torch", columns=["tokens"])
    return mapped


# --- a prompt's answer, printed --------------------------------------------------------


def test_prompt(prompt: str, answer: str | list[str], model, prepend_space_to_answer: bool = True,
                print_details: bool = True, prepend_bos: bool | None = None, top_k: int = 10) -> None:
    """Print how the model ranks `answer` (each of its tokens, or the first token of each of several
    answers) after `prompt`, with the top_k tokens, in TransformerLens's format."""
    answers = [answer] if isinstance(answer, str) else list(answer)
    several = len(answers) > 1
    if prepend_space_to_answer:
        answers = [a if a.startswith(" ") else " " + a for a in answers]
    prompt_tokens = model.to_tokens(prompt, prepend_bos=prepend_bos)
    answer_tokens = model.to_tokens(answers, prepend_bos=False)
    if several:
        answer_tokens = answer_tokens[:, :1]
    tokens = torch.cat([prompt_tokens.repeat(answer_tokens.shape[0], 1), answer_tokens], dim=1)
    prompt_str = model.to_str_tokens(prompt, prepend_bos=prepend_bos)
    answer_strs = [model.to_str_tokens(a, prepend_bos=False) for a in answers]
    n_prompt, n_answer = len(prompt_str), 1 if several else len(answer_strs[0])
    if print_details:
        print("Tokenized prompt:", prompt_str)
        print("Tokenized answers:" if several else "Tokenized answer:", answer_strs if several else answer_strs[0])
    with torch.no_grad():
        logits = model(tokens)
    probs = logits.softmax(dim=-1)
    ranks = []
    for index in range(n_prompt, n_prompt + n_answer):
        targets = tokens[:, index]
        target_strs = [a[index - n_prompt] for a in answer_strs]
        token_probs = probs[:, index - 1]
        sorted_probs, order = token_probs.sort(descending=True)
        target_ranks = order.argsort(-1)[torch.arange(len(answers)), targets.cpu()].tolist()
        ranks.append(list(zip(target_strs, target_ranks, strict=True)))
        if print_details:
            print(f"Performance on answer token{'s' if several else ''}:")
            for i in range(len(answers)):
                print(f"Rank: {target_ranks[i]: <8} Logit: {logits[i, index - 1, targets[i]].item():5.2f} "
                      f"Prob: {token_probs[i, targets[i]].item():6.2%} Token: |{target_strs[i]}|")
            for i in range(top_k):
                print(f"Top {i}th token. Logit: {logits[0, index - 1, order[0, i]].item():5.2f} "
                      f"Prob: {sorted_probs[0, i].item():6.2%} Token: |{model.to_string(order[0, i])}|")
    print(f"Ranks of the answer tokens: {ranks if several else [r[0] for r in ranks]}")


test_prompt.__test__ = False  # not a pytest test, whatever its name
