"""Seeded generators of plain-text documents with planted long-range dependencies.

Three tasks plus plain filler:

- :func:`make_passkey`: a key line ``The pass key is 48213. Remember it.`` at a chosen depth inside
  filler, then ``What is the pass key? The pass key is`` -> ``48213``.
- :func:`make_recall`: a few ``key wuf -> value 381.`` pairs early, filler, then ``key wuf -> value``
  queries late (2-4 pairs by default: 8 pairs over 128 symbols was not learnable at tiny scale).
- :func:`make_copy`: a random segment of pseudo-words early, repeated verbatim later (for the
  loss on the second copy against the distance between the copies).

Lengths are targets in characters (``len(sample.text)`` is at most the target and at most
:data:`MAX_SHORTFALL` below it); depths are fractions in [0, 1] of the filler that precedes the
planted item. Filler is made of letters, spaces and periods only, so digits, ``->`` and the
pass-key phrase occur only where planted. Every generator is deterministic for a seed (an
``int`` or a ``numpy.random.Generator``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

SeedLike = int | np.random.Generator

CHARS_PER_TOKEN = 4.0
"""Rough characters per BPE token for English-like text; used only for ``approx_tokens``."""

_FILLER_TEXT = """
    the a small river runs past old stone houses near quiet hill every morning farmer walks with
    his dog along narrow road toward market where people sell bread apples cheese and warm soup
    children play under tall trees while birds sing above green fields clouds drift slowly across
    blue sky in afternoon wind carries smell of rain from distant mountains evening lamps glow
    behind windows cats sleep on soft chairs baker closes shop early because tomorrow brings
    festival music dancing streets fill laughter stories travel between friends who remember long
    summer days by lake boats rest at harbor fishermen mend nets light fades over water night
    returns gently stars appear one after another bright cold north garden
"""
_FILLER_WORDS: tuple[str, ...] = tuple(_FILLER_TEXT.split())
_CONSONANTS = "bdfghjklmnprstvwz"
_VOWELS = "aeiou"

LENGTH_SLACK = max(len(w) for w in _FILLER_WORDS) + 2
"""Most characters a filler run can fall short of its budget (one word and its separators)."""

MAX_SHORTFALL = 3 * (LENGTH_SLACK + 1)
"""Most characters a generated document can fall short of ``num_chars`` (three filler runs)."""

PASSKEY_QUERY = "What is the pass key? The pass key is"
RECALL_QUERY = "key {key} -> value"
_SENTENCE_WORDS = (4, 12)

PASSKEY_DIGITS = 5
RECALL_SHAPE = {"num_pairs": 2, "num_symbols": 16, "value_digits": 3}
"""The passkey and recall documents of the long-context evaluation, and those the tiny models train on
(``training.tiny_recipe``): a model is scored on the shape it learnt."""


# ----------------------------------------------------------------------------------------------
# helpers


def _rng(seed: SeedLike) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int or a numpy Generator, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.random.default_rng(int(seed))


def _check_int(name: str, value: int, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {type(value).__name__}")
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be {bound}, got {value}")


def _check_fraction(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise ValueError(f"{name} must be a number in [0, 1], got {type(value).__name__}")
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def mix_probabilities(mix: Mapping[str, float], kinds: Sequence[str],
                      what: str) -> tuple[tuple[str, ...], np.ndarray]:
    """``(names, probabilities)`` of a kind -> weight ``mix`` over the known ``kinds`` (in their
    order); a ValueError naming ``what`` (e.g. "document kinds") for an unknown kind or bad weights."""
    unknown = sorted(set(mix) - set(kinds))
    if unknown:
        raise ValueError(f"unknown {what} in mix: {unknown}; allowed: {list(kinds)}")
    names = tuple(k for k in kinds if k in mix)
    weights = np.array([float(mix[k]) for k in names])
    if not names or not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(f"mix weights must be finite, >= 0 and not all zero, got {dict(mix)}")
    return names, weights / weights.sum()


def approx_tokens(num_chars: int) -> int:
    """Rough token count for ``num_chars`` characters of English-like text."""
    return round(num_chars / CHARS_PER_TOKEN)


def _sentence(rng: np.random.Generator, budget: int) -> str:
    """One capitalised sentence of at most ``budget`` characters, or '' if not even one word fits."""
    n_words = int(rng.integers(_SENTENCE_WORDS[0], _SENTENCE_WORDS[1] + 1))
    picks = rng.integers(0, len(_FILLER_WORDS), size=n_words)
    words: list[str] = []
    used = 1  # the final period
    for i in picks:
        w = _FILLER_WORDS[int(i)]
        cost = len(w) + (1 if words else 0)
        if used + cost > budget:
            break
        words.append(w)
        used += cost
    if not words:
        return ""
    words[0] = words[0].capitalize()
    return " ".join(words) + "."


def filler(seed: SeedLike, num_chars: int) -> str:
    """Varied filler sentences, ``num_chars - LENGTH_SLACK <= len(result) <= num_chars``."""
    _check_int("num_chars", num_chars, 0)
    rng = _rng(seed)
    out: list[str] = []
    length = 0
    while True:
        sep = 1 if out else 0
        s = _sentence(rng, num_chars - length - sep)
        if not s:
            return " ".join(out)
        out.append(s)
        length += sep + len(s)


def _join(parts: list[str]) -> tuple[str, list[int]]:
    """Join non-empty parts with single spaces; return the text and each part's start offset."""
    text = ""
    offsets: list[int] = []
    for p in parts:
        if text and p:
            text += " "
        offsets.append(len(text))
        text += p
    return text, offsets


def _digits(rng: np.random.Generator, n: int) -> str:
    """``n`` random digits with a non-zero first digit (so it is really an n-digit number)."""
    first = str(int(rng.integers(1, 10)))
    return first + "".join(str(int(d)) for d in rng.integers(0, 10, size=n - 1))


def symbol_pool(num_symbols: int) -> tuple[str, ...]:
    """The first ``num_symbols`` consonant-vowel-consonant pseudo-words (fixed, seed independent)."""
    _check_int("num_symbols", num_symbols, 1, _MAX_SYMBOLS)
    return _SYMBOLS[:num_symbols]


def _all_symbols() -> tuple[str, ...]:
    words = [c1 + v + c2 for c1 in _CONSONANTS for v in _VOWELS for c2 in _CONSONANTS]
    words = [w for w in words if w not in _FILLER_WORDS]
    order = np.random.default_rng(1234).permutation(len(words))
    return tuple(words[int(i)] for i in order)


_SYMBOLS = _all_symbols()
_MAX_SYMBOLS = len(_SYMBOLS)


# ----------------------------------------------------------------------------------------------
# passkey


@dataclass(frozen=True)
class PasskeySample:
    """``prompt`` ends with the query; ``text`` = ``prompt + " " + answer + "."`` (a training doc)."""

    text: str
    prompt: str
    query: str
    answer: str
    depth: float  # requested fraction of the filler before the key line
    actual_depth: float  # realised fraction (within LENGTH_SLACK / filler characters of ``depth``)
    key_offset: int  # character offset of the key line in ``text``
    query_offset: int  # character offset of the query in ``text``
    num_chars: int
    approx_tokens: int


def make_passkey(seed: SeedLike, num_chars: int = 2000, depth: float = 0.5, digits: int = 5) -> PasskeySample:
    """A passkey-retrieval document of about ``num_chars`` characters with the key at ``depth``."""
    _check_int("digits", digits, 1, 32)
    _check_fraction("depth", depth)
    rng = _rng(seed)
    answer = _digits(rng, digits)
    key_line = f"The pass key is {answer}. Remember it."
    fixed = len(key_line) + len(PASSKEY_QUERY) + len(answer) + 5  # 4 spaces and the final period
    _check_int("num_chars", num_chars, fixed)
    budget = num_chars - fixed
    before = filler(rng, round(depth * budget))
    after = filler(rng, budget - round(depth * budget))
    prompt, offs = _join([before, key_line, after, PASSKEY_QUERY])
    text = prompt + " " + answer + "."
    filler_chars = len(before) + len(after)
    actual = len(before) / filler_chars if filler_chars else depth
    return PasskeySample(
        text=text,
        prompt=prompt,
        query=PASSKEY_QUERY,
        answer=answer,
        depth=float(depth),
        actual_depth=actual,
        key_offset=offs[1],
        query_offset=offs[3],
        num_chars=len(text),
        approx_tokens=approx_tokens(len(text)),
    )


# ----------------------------------------------------------------------------------------------
# multi-query associative recall


@dataclass(frozen=True)
class RecallSample:
    """``context`` holds the pairs and filler; ``text`` adds every query with its answer.

    ``prompt_for(i)`` is the context, the first ``i`` queries answered, then query ``i``
    (teacher forcing); ``prompt``/``query``/``answer`` are those of the first query.
    """

    text: str
    context: str
    keys: tuple[str, ...]  # pair keys in the order they are listed
    values: tuple[str, ...]
    queries: tuple[str, ...]  # e.g. "key wuf -> value"
    answers: tuple[str, ...]
    depth: float  # requested fraction of the filler before the pair block
    actual_depth: float
    pairs_offset: int  # character offset of the first pair in ``text``
    queries_offset: int  # character offset of the first query in ``text``
    num_chars: int
    approx_tokens: int

    @property
    def query(self) -> str:
        return self.queries[0]

    @property
    def answer(self) -> str:
        return self.answers[0]

    @property
    def prompt(self) -> str:
        return self.prompt_for(0)

    def prompt_for(self, i: int) -> str:
        if not 0 <= i < len(self.queries):
            raise ValueError(f"query index must be in [0, {len(self.queries) - 1}], got {i}")
        done = [f"{q} {a}." for q, a in zip(self.queries[:i], self.answers[:i], strict=True)]
        return " ".join([self.context, *done, self.queries[i]])


def make_recall(
    seed: SeedLike,
    num_chars: int = 2000,
    num_pairs: int = 3,
    num_queries: int | None = None,
    num_symbols: int = 16,
    value_digits: int = 3,
    depth: float = 0.0,
) -> RecallSample:
    """``num_pairs`` distinct keys from a pool of ``num_symbols``; ``num_queries`` of them asked late."""
    _check_int("num_symbols", num_symbols, 1, _MAX_SYMBOLS)
    _check_int("num_pairs", num_pairs, 1, num_symbols)
    nq = num_pairs if num_queries is None else num_queries
    _check_int("num_queries", nq, 1, num_pairs)
    _check_int("value_digits", value_digits, 1, 32)
    _check_fraction("depth", depth)
    rng = _rng(seed)
    pool = _SYMBOLS[:num_symbols]
    keys = tuple(pool[int(i)] for i in rng.choice(num_symbols, size=num_pairs, replace=False))
    values = tuple(_digits(rng, value_digits) for _ in keys)
    asked = [int(i) for i in rng.choice(num_pairs, size=nq, replace=False)]
    queries = tuple(RECALL_QUERY.format(key=keys[i]) for i in asked)
    answers = tuple(values[i] for i in asked)
    pairs = " ".join(f"key {k} -> value {v}." for k, v in zip(keys, values, strict=True))
    tail = " ".join(f"{q} {a}." for q, a in zip(queries, answers, strict=True))
    fixed = len(pairs) + len(tail) + 3
    _check_int("num_chars", num_chars, fixed)
    budget = num_chars - fixed
    before = filler(rng, round(depth * budget))
    after = filler(rng, budget - round(depth * budget))
    context, offs = _join([before, pairs, after])
    text, toffs = _join([context, tail])
    filler_chars = len(before) + len(after)
    return RecallSample(
        text=text,
        context=context,
        keys=keys,
        values=values,
        queries=queries,
        answers=answers,
        depth=float(depth),
        actual_depth=len(before) / filler_chars if filler_chars else depth,
        pairs_offset=offs[1],
        queries_offset=toffs[1],
        num_chars=len(text),
        approx_tokens=approx_tokens(len(text)),
    )


# ----------------------------------------------------------------------------------------------
# copy segments / repeated entities


@dataclass(frozen=True)
class CopySample:
    """``segment`` occurs at ``first_offset`` and again verbatim at ``second_offset``.

    ``prompt`` is ``text[:second_offset]`` and ``answer`` the segment, so the loss on the
    second copy against ``distance`` measures how far back the model can copy.
    """

    text: str
    prompt: str
    answer: str
    segment: str
    first_depth: float
    second_depth: float
    first_offset: int
    second_offset: int
    distance: int  # second_offset - first_offset, in characters
    num_chars: int
    approx_tokens: int

    @property
    def query(self) -> str:
        return ""


def make_copy(
    seed: SeedLike,
    num_chars: int = 2000,
    segment_words: int = 12,
    first_depth: float = 0.1,
    second_depth: float = 0.9,
) -> CopySample:
    """A segment of ``segment_words`` random pseudo-words planted at two depths of the filler."""
    _check_int("segment_words", segment_words, 1, 4096)
    _check_fraction("first_depth", first_depth)
    _check_fraction("second_depth", second_depth)
    if first_depth > second_depth:
        raise ValueError(f"first_depth ({first_depth}) must be <= second_depth ({second_depth})")
    rng = _rng(seed)
    words = [_SYMBOLS[int(i)] for i in rng.integers(0, _MAX_SYMBOLS, size=segment_words)]
    segment = " ".join(words).capitalize() + "."
    fixed = 2 * len(segment) + 4
    _check_int("num_chars", num_chars, fixed)
    budget = num_chars - fixed
    a = round(first_depth * budget)
    b = round(second_depth * budget) - a
    parts = [filler(rng, a), segment, filler(rng, b), segment, filler(rng, budget - a - b)]
    text, offs = _join(parts)
    return CopySample(
        text=text,
        prompt=text[: offs[3]],
        answer=segment,
        segment=segment,
        first_depth=float(first_depth),
        second_depth=float(second_depth),
        first_offset=offs[1],
        second_offset=offs[3],
        distance=offs[3] - offs[1],
        num_chars=len(text),
        approx_tokens=approx_tokens(len(text)),
    )


def make_filler_document(seed: SeedLike, num_chars: int = 2000) -> str:
    """A plain document of filler sentences (no planted dependency), for mixing into a corpus."""
    return filler(seed, num_chars)
