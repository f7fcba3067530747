"""Seeded generators of prompt sets for the standard tasks, yielding only rows valid for the model's tokenizer.

    ps = make_dataset(model, "ioi", n=50, seed=0)                     # IOI, name-swap corruption
    ps = make_dataset(model, "factual", n=30, corruption="noise")     # causal tracing on the subject

Tasks, their sources and their rows (answer / baseline are single tokens of this tokenizer; names, years and
numbers are drawn from the ones that are):
- "ioi": indirect object identification (Wang et al. 2022, "Interpretability in the Wild", their templates).
  "When Mary and John went to the store, John gave a drink to" → " Mary" (the indirect object, IO) vs
  " John" (the subject, S). ABBA and BABA orders alternate. corruption "swap" (default): S2 becomes the IO
  name (the answer flips); "abc": S2 becomes a third name C. Positions IO, S1, S2, END.
- "factual": factual recall (Meng et al. 2022, "Locating and Editing Factual Associations in GPT"): country
  → capital, "The capital of France is" → " Paris" vs another country's capital; corrupted with another
  country of the same token count ("subject"), or by noise on the subject's embeddings ("noise", causal
  tracing). Positions subject (a span), END.
- "induction": repeated random tokens (Olsson et al. 2022, "In-context Learning and Induction Heads"):
  [BOS] r_1..r_k r_1..r_m → r_{m+1}; corrupted: the first copy replaced by other random tokens, baseline the
  token that followed r_m there. Positions first_copy, source (r_{m+1} in the first copy), END.
- "greater_than": year spans (Hanna et al. 2023, "How does GPT-2 compute greater-than?"): "The war lasted
  from the year 1732 to the year 17" → a larger year; corrupted with the year 1701 (their "01" baseline).
  Tokenizers that split digits (SmolLM2, Gemma) answer the tens digit: answer the digit one above YY's
  tens digit, baseline the one below; two-digit tokenizers answer YY+1 vs YY-1. Positions YY, END.
- "agreement": subject-verb agreement (Linzen et al. 2016; Finlayson et al. 2021, "Causal Analysis of
  Syntactic Agreement Mechanisms"): "The author near the cabinets" → " is" vs " are"; corrupted with the
  subject's other number (plural ↔ singular, same token count), answer and baseline swap with it.
  Positions subject, attractor, END.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Literal

from lens import tokens as tok
from lens.data.prompt_set import PromptSet, check_row

Task = Literal["ioi", "factual", "induction", "greater_than", "agreement"]

NAMES = ("Mary", "John", "Tom", "James", "Dan", "Sid", "Martin", "Amy", "Paul", "Kate", "Anna", "Mark", "Lisa",
         "David", "Sarah", "Michael", "Jane", "Peter", "Laura", "Alex", "Emma", "George", "Rachel", "Steve", "Jack",
         "Adam", "Chris", "Ben", "Sam", "Max", "Eric", "Tim", "Joe", "Bob", "Ann", "Lucy", "Rose", "Grace", "Henry",
         "Jacob", "Daniel", "Andrew", "Robert", "Richard", "Thomas", "Charles", "Joseph", "Emily", "Alice", "Helen",
         "Susan", "Karen", "Nancy", "Betty", "Frank", "Scott", "Kevin", "Brian", "Jason", "Ryan", "Gary", "Larry")
PLACES = ("store", "garden", "restaurant", "school", "hospital", "office", "house", "station", "park", "market")
OBJECTS = ("drink", "ring", "kiss", "bone", "basketball", "computer", "necklace", "snack", "apple", "book")
# Wang et al. 2022's IOI templates (a selection): {IO} and {S} in the first clause, {S2} the repeated subject.
IOI_TEMPLATES = (
    "When {A} and {B} went to the {place}, {S2} gave a {object} to",
    "After {A} and {B} went to the {place}, {S2} gave a {object} to",
    "Then, {A} and {B} went to the {place}. {S2} gave a {object} to",
    "While {A} and {B} were working at the {place}, {S2} gave a {object} to",
    "Friends {A} and {B} found a {object} at the {place}. {S2} gave it to",
    "Then, {A} and {B} had a long argument, and afterwards {S2} said to",
    "When {A} and {B} got a {object} at the {place}, {S2} decided to give it to",
    "The {place} {A} and {B} went to had a {object}. {S2} gave it to",
)
CAPITALS = (("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
            ("China", "Beijing"), ("Russia", "Moscow"), ("Egypt", "Cairo"), ("Canada", "Ottawa"),
            ("Greece", "Athens"), ("Portugal", "Lisbon"), ("Poland", "Warsaw"), ("Austria", "Vienna"),
            ("Sweden", "Stockholm"), ("Norway", "Oslo"), ("Ireland", "Dublin"), ("Kenya", "Nairobi"),
            ("Peru", "Lima"), ("Cuba", "Havana"), ("Thailand", "Bangkok"), ("England", "London"),
            ("Hungary", "Budapest"), ("Belgium", "Brussels"), ("Denmark", "Copenhagen"), ("Finland", "Helsinki"),
            ("Turkey", "Ankara"), ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Syria", "Damascus"),
            ("Chile", "Santiago"), ("Venezuela", "Caracas"), ("Australia", "Canberra"), ("Indonesia", "Jakarta"),
            ("the Philippines", "Manila"), ("Vietnam", "Hanoi"), ("South Korea", "Seoul"), ("Ukraine", "Kyiv"),
            ("the Czech Republic", "Prague"), ("Scotland", "Edinburgh"), ("Wales", "Cardiff"),
            ("Morocco", "Rabat"), ("Afghanistan", "Kabul"), ("Pakistan", "Islamabad"), ("Bangladesh", "Dhaka"),
            ("Nepal", "Kathmandu"), ("Lebanon", "Beirut"), ("Jordan", "Amman"), ("Qatar", "Doha"),
            ("Senegal", "Dakar"), ("Ghana", "Accra"), ("Uganda", "Kampala"), ("Iceland", "Reykjavik"),
            ("Latvia", "Riga"), ("Lithuania", "Vilnius"), ("Romania", "Bucharest"), ("Bulgaria", "Sofia"),
            ("Serbia", "Belgrade"), ("Croatia", "Zagreb"), ("Switzerland", "Bern"), ("the Netherlands", "Amsterdam"))
FACT_TEMPLATES = ("The capital of {X} is", "The capital city of {X} is", "{X}'s capital city is",
                  "The government of {X} is based in the city of")
YEAR_NOUNS = ("war", "expedition", "contract", "dynasty", "trial", "reign", "project", "drought", "siege", "voyage")
YEAR_TEMPLATE = "The {noun} lasted from the year {XX}{YY} to the year {XX}"
AGREEMENT_NOUNS = (("author", "authors"), ("pilot", "pilots"), ("doctor", "doctors"), ("farmer", "farmers"),
                   ("teacher", "teachers"), ("dog", "dogs"), ("manager", "managers"), ("senator", "senators"),
                   ("officer", "officers"), ("student", "students"), ("painter", "painters"), ("driver", "drivers"),
                   ("lawyer", "lawyers"), ("singer", "singers"), ("cat", "cats"), ("king", "kings"))
AGREEMENT_ATTRACTORS = ("cabinet", "cabinets", "tree", "trees", "house", "houses", "car", "cars", "door", "doors")
AGREEMENT_TEMPLATES = ("The {noun} near the {attractor}", "The {noun} next to the {attractor}",
                       "The {noun} behind the {attractor}")
SOURCES = {
    "ioi": "Wang et al. 2022, Interpretability in the Wild (IOI templates)",
    "factual": "Meng et al. 2022, Locating and Editing Factual Associations in GPT (country → capital)",
    "induction": "Olsson et al. 2022, In-context Learning and Induction Heads (repeated random tokens)",
    "greater_than": "Hanna et al. 2023, How does GPT-2 compute greater-than? (year spans)",
    "agreement": "Finlayson et al. 2021, Causal Analysis of Syntactic Agreement Mechanisms",
}


def _single(model, words) -> list[str]:
    """The words whose leading-space form is one token of this tokenizer."""
    return [w for w in words if len(tok.encode(model.tokenizer, " " + w)) == 1]


def _n_tokens(model, text: str) -> int:
    return len(tok.encode(model.tokenizer, text))


def _ioi(model, rng: random.Random, corruption: str = "swap"):
    names = _single(model, NAMES)
    if len(names) < 3:
        raise ValueError("this tokenizer has fewer than 3 single-token names; IOI needs them")
    if corruption not in ("swap", "abc"):
        raise ValueError(f"IOI corruption is 'swap' (S2 becomes the IO name) or 'abc' (a third name), "
                         f"not {corruption!r}")
    for i in range(10 ** 6):
        io, s, c = rng.sample(names, 3)
        template = rng.choice(IOI_TEMPLATES)
        order = ("IO", "S1") if i % 2 == 0 else ("S1", "IO")  # ABBA, BABA
        first = {"IO": io, "S1": s}
        fill = {"place": rng.choice(PLACES), "object": rng.choice(OBJECTS), "A": first[order[0]],
                "B": first[order[1]]}
        clean, spans = _fill(template, {**fill, "S2": s}, {"A": order[0], "B": order[1], "S2": "S2"})
        corrupted, _ = _fill(template, {**fill, "S2": io if corruption == "swap" else c}, {})
        yield dict(clean=clean, corrupted=corrupted, answer=" " + io, baseline=" " + s, positions=spans)


def _fill(template: str, values: dict[str, str], named: dict[str, str]) -> tuple[str, dict[str, str]]:
    """The template filled, and {position name: the filled word with its occurrence context} for `named`
    slots, located later by character offsets (spans returned as (start, stop) character ranges)."""
    out, spans, rest = "", {}, template
    while "{" in rest:
        before, after = rest.split("{", 1)
        key, rest = after.split("}", 1)
        out += before
        if key in named:
            spans[named[key]] = (len(out), len(out) + len(values[key]))
        out += values[key]
    return out + rest, spans


def _factual(model, rng: random.Random, corruption: str = "subject"):
    if corruption not in ("subject", "noise"):
        raise ValueError(f"factual corruption is 'subject' (another country) or 'noise' (causal tracing), "
                         f"not {corruption!r}")
    pairs = [(x, c) for x, c in CAPITALS if _single(model, [c])]
    for _ in range(10 ** 6):
        (x, cap), (y, other) = rng.sample(pairs, 2)
        template = rng.choice(FACT_TEMPLATES)
        clean, spans = _fill(template, {"X": x}, {"X": "subject"})
        corrupted = None
        if corruption == "subject":
            corrupted, _ = _fill(template, {"X": y}, {})
            if _n_tokens(model, clean) != _n_tokens(model, corrupted):
                continue
        yield dict(clean=clean, corrupted=corrupted, answer=" " + cap, baseline=" " + other, positions=spans)


def _induction(model, rng: random.Random, length: int = 12):
    special = set(model.tokenizer.all_special_ids) if model.tokenizer is not None else set()
    vocab = [i for i in range(model.cfg.d_vocab) if i not in special]
    bos = [model.cfg.bos_token_id] if model.cfg.bos_token_id is not None and model.cfg.default_prepend_bos else []
    while True:
        first, other = rng.sample(vocab, length), rng.sample(vocab, length)
        m = rng.randrange(length // 2, length - 1)  # the second copy runs r_1..r_m, so END is r_m
        clean = bos + first + first[:m]
        corrupted = bos + other + first[:m]
        offset = len(bos)
        yield dict(clean=clean, corrupted=corrupted, answer=first[m], baseline=other[m],
                   positions={"first_copy": (offset, offset + length), "source": offset + m})


def _greater_than(model, rng: random.Random):
    digits_split = _n_tokens(model, " 1732") > 2 or len(tok.encode(model.tokenizer, "32")) > 1
    centuries = [xx for xx in range(11, 20) if digits_split or _single(model, [str(xx)])]
    while True:
        xx, yy = rng.choice(centuries), rng.randrange(12, 90)
        clean, spans = _fill(YEAR_TEMPLATE, {"noun": rng.choice(YEAR_NOUNS), "XX": str(xx), "YY": f"{yy:02d}"},
                             {"YY": "YY"})
        corrupted = clean.replace(f"{xx}{yy:02d}", f"{xx}01", 1)
        if digits_split:  # the next token is the tens digit
            tens = yy // 10
            answer, baseline = str(min(tens + 1, 9)), str(tens - 1)
        else:
            answer, baseline = f"{yy + 1:02d}", f"{yy - 1:02d}"
        yield dict(clean=clean, corrupted=corrupted, answer=answer, baseline=baseline, positions=spans)


def _agreement(model, rng: random.Random):
    while True:
        singular, plural = rng.choice(AGREEMENT_NOUNS)
        plural_row = rng.random() < 0.5
        noun, other = (plural, singular) if plural_row else (singular, plural)
        fill = {"attractor": rng.choice(AGREEMENT_ATTRACTORS)}
        template = rng.choice(AGREEMENT_TEMPLATES)
        clean, spans = _fill(template, {**fill, "noun": noun}, {"noun": "subject", "attractor": "attractor"})
        corrupted, _ = _fill(template, {**fill, "noun": other}, {})
        answer, baseline = (" are", " is") if plural_row else (" is", " are")
        yield dict(clean=clean, corrupted=corrupted, answer=answer, baseline=baseline, positions=spans)


GENERATORS: dict[str, Callable] = {"ioi": _ioi, "factual": _factual, "induction": _induction,
                                   "greater_than": _greater_than, "agreement": _agreement}


def make_dataset(model, task: Task, n: int = 50, seed: int = 0, corruption: str | None = None,
                 max_tries: int | None = None) -> PromptSet:
    """A seeded prompt set of n rows for `task` (see the module docstring), every row checked as
    PromptSet.from_lists checks it; rows this tokenizer cannot represent are skipped and counted in
    `dropped`. corruption: IOI "swap" / "abc"; factual "subject" / "noise"; the others have one kind."""
    if task not in GENERATORS:
        raise ValueError(f"task must be one of {', '.join(GENERATORS)}, not {task!r}")
    if n < 1:
        raise ValueError(f"n must be at least 1, not {n}")
    if task != "induction":
        tok.require_tokenizer(model.tokenizer)
    options = {} if corruption is None else {"corruption": corruption}
    if corruption is not None and task not in ("ioi", "factual"):
        raise ValueError(f"the {task} task has one corruption; leave corruption unset")
    rng = random.Random(seed)
    rows, dropped, seen = [], Counter(), set()
    generator = GENERATORS[task](model, rng, **options)
    for _ in range(max_tries or 50 * n):
        raw = next(generator)
        key = (str(raw["clean"]), str(raw["corrupted"]))
        if key in seen:
            continue
        seen.add(key)
        text = isinstance(raw["clean"], str)  # text rows carry character spans; token rows token positions
        specs = {name: _char_span(model, raw["clean"], span) if text else span
                 for name, span in raw["positions"].items()}
        failed = next((spec for spec in specs.values() if isinstance(spec, str)), None)
        row = failed or check_row(model, raw["clean"], raw["corrupted"], raw["answer"], raw["baseline"], specs)
        if isinstance(row, str):
            dropped[row] += 1
            continue
        rows.append(row)
        if len(rows) == n:
            break
    noise = task == "factual" and corruption == "noise"
    pad = next(i for i in (model.cfg.pad_token_id, model.cfg.eos_token_id, 0) if i is not None)
    return PromptSet(rows, dict(dropped), "noise" if noise else "prompt", "subject", task, pad, SOURCES[task])


def _char_span(model, text: str, span: tuple[int, int]) -> tuple[int, int] | str:
    """A character span of `text` as a token span (BOS counted), by the tokenizer's offsets."""
    encoded = model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    start, stop = span
    hit = [i for i, (a, b) in enumerate(encoded["offset_mapping"]) if a < stop and b > start and b > a]
    if not hit:
        return "named substring not in the prompt"
    bos = 1 if model.cfg.default_prepend_bos else 0
    return (hit[0] + bos, hit[-1] + 1 + bos)
