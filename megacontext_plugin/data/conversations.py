"""Seeded chat conversations for nanochat's mid-training and chat SFT, offline (CustomJSON JSONL).

Our patch makes ``scripts/mid_train.py`` and ``scripts/chat_sft.py`` read conversations from
``$NANOCHAT_TASK_DIR/{mid_train,mid_val,sft_train,sft_val}.jsonl`` instead of downloading
SmolTalk, MMLU, GSM8K and ARC. Each line is one JSON array of messages in nanochat's
``CustomJSON`` format: ``[{"role": "user", "content": "..."}, {"role": "assistant", ...}, ...]``,
at least two messages, roles alternating from ``user``, string contents (:func:`check_messages`
mirrors nanochat's asserts; :func:`validate_jsonl` applies them to a file, with line numbers).

Kinds (every answer is checkable, see :attr:`Conversation.answers`):

- ``passkey``: the user pastes a :func:`~megacontext_plugin.data.tasks.make_passkey` document and
  asks for the pass key (in the same turn, or a few turns later); the assistant answers
  ``The pass key is 48213.``.
- ``recall``: the user pastes key/value pairs hidden in filler
  (:func:`~megacontext_plugin.data.tasks.make_recall`) and asks for one value per turn; the
  assistant answers ``key wuf -> value 381.``, the corpus's own phrasing.
- ``fact``: the first turn states one to three facts (``My dog is called kel.``); several
  exchanges later (sums, echoing a sentence, reading a story) the user asks for them.
- ``arithmetic``: short ``What is 23 + 58?`` -> ``23 + 58 = 81.`` exchanges.
- ``identity``: fixed "who are you" exchanges (nanochat with MegaContext memory).

Lengths are controlled in characters, assuming :data:`CHARS_PER_TOKEN` = 2.3 characters per
token: measured on these files with the 512-token vocabulary that nanochat's ``tok_train``
learns from 1M characters of our corpus (a 512 vocabulary splits finer than the ~4 characters per
token of a large English one; 3 would under-count by ~25%). With ``max_seq_len`` (the
``--max-seq-len`` nanochat will use) and ``length_factor``, a conversation's content (the sum of
its messages' characters) lies in ``[64, length_factor x max_seq_len]`` tokens at that rate;
rendering adds two special tokens per message and a BOS. ``passkey``, ``recall`` and ``fact``
draw their length log-uniformly in that range, so with the defaults (256, 4) about half of them
fit one ``max_seq_len`` window (rendered: ~90 to ~1100 tokens, median ~270) and the rest need
MegaContext's memory (plain nanochat mid-training crops them). ``arithmetic`` and ``identity``
stay near the lower end.

Every conversation is seeded from ``(seed, split, index)``, so the files are the same bytes for
a seed, and validation splits never share a stream with training splits.

Written by ``megacontext tasks`` (``data.tasks_cli``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megacontext_plugin.data import tasks

CHARS_PER_TOKEN = 2.3
"""Assumed characters per token of the offline 512-vocabulary tokenizer (measured 2.2-2.3 on these files)."""

MIN_TOKENS = 64
"""Shortest conversation, in (assumed) tokens of content."""

MIN_MAX_TOKENS = 4 * MIN_TOKENS
"""Smallest allowed longest conversation (``max_seq_len x length_factor``), in tokens."""

SPLITS = ("mid_train", "mid_val", "sft_train", "sft_val")
"""The four files, ``<split>.jsonl``, in the order they are written; the index seeds the split."""

KINDS = ("passkey", "recall", "fact", "arithmetic", "identity")
MID_MIX: dict[str, float] = {"passkey": 0.3, "recall": 0.25, "fact": 0.2, "arithmetic": 0.15, "identity": 0.1}
SFT_MIX: dict[str, float] = {"passkey": 0.25, "recall": 0.2, "fact": 0.25, "arithmetic": 0.2, "identity": 0.1}

DEFAULT_COUNTS: dict[str, int] = {"mid_train": 3000, "mid_val": 200, "sft_train": 1500, "sft_val": 200}
"""Rows per file: ``mid_train`` outlasts 30 steps x batch 2 x 256 tokens with gradient accumulation
up to ~30 before an epoch ends; ``sft_train`` covers ~45 steps of nanochat's default 32 examples."""

PASSKEY_QUESTION = "What is the pass key?"
RECALL_QUESTION = "What is the value of key {key}?"
FACT_QUESTION = "What is my {subject} called?"
FACT_ANSWER = "Your {subject} is called {name}."
FACT_STATEMENT = "My {subject} is called {name}."
FACT_INTRO, FACT_ACK = "Remember this. ", "I will remember."
PASSKEY_INTRO, PASSKEY_ACK = "Read this text and remember the pass key.\n\n", "I have read the text."
RECALL_INTRO, RECALL_ACK = "Read these notes and remember every key and its value.\n\n", "I have read the notes."

IDENTITY: tuple[tuple[str, str], ...] = (
    ("Who are you?",
     "I am nanochat, a small chat model. I was trained with MegaContext, a memory that lets me "
     "read text much longer than my window."),
    ("What is your name?",
     "My name is nanochat. I am a small language model with MegaContext memory."),
    ("What is MegaContext?",
     "MegaContext is a long context memory. It keeps a tree of short gists of old text and brings "
     "back the parts I need to answer."),
    ("Who made you?",
     "I am built on nanochat by Andrej Karpathy, and the MegaContext plugin adds my long context "
     "memory."),
    ("How long a text can you read?",
     "My window is small, but MegaContext keeps much longer text in memory, so I can find a pass key "
     "or a value far back in the text."),
    ("Can you do math?",
     "I can do small sums, like 12 + 7 = 19. I am a tiny model, so I can make mistakes."),
    ("Hello!",
     "Hello! I am nanochat. Give me a text and ask me about it, or ask me a small sum."),
)
"""Fixed identity exchanges (question, answer)."""

FACT_SUBJECTS = ("dog", "cat", "boat", "garden", "shop", "house", "friend", "river", "farmer", "baker",
                  "festival", "market", "lake", "harbor", "hill", "chair")
FACT_NAMES = tasks.symbol_pool(64)
_MARGIN = 64  # characters kept free below max_chars: padding exchanges may overshoot a target by up to 60

Message = dict[str, str]


# ----------------------------------------------------------------------------------------------
# lengths and conversations


@dataclass(frozen=True)
class Lengths:
    """Content length range of a conversation, in characters (``CHARS_PER_TOKEN`` per token)."""

    max_seq_len: int = 256
    length_factor: float = 4.0

    def __post_init__(self) -> None:
        if isinstance(self.max_seq_len, bool) or not isinstance(self.max_seq_len, int) or self.max_seq_len < MIN_TOKENS:
            raise ValueError(f"max_seq_len must be an int >= {MIN_TOKENS}, got {self.max_seq_len!r}")
        f = self.length_factor
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) or not 1.0 <= f <= 64.0:
            raise ValueError(f"length_factor must be a number in [1, 64], got {f!r}")
        if self.max_tokens < MIN_MAX_TOKENS:  # room for the longest fixed parts (4 recall questions)
            raise ValueError(
                f"max_seq_len x length_factor must be >= {MIN_MAX_TOKENS} tokens, got {self.max_tokens} "
                f"({self.max_seq_len} x {self.length_factor:g})"
            )

    @property
    def max_tokens(self) -> int:
        return int(self.max_seq_len * self.length_factor)

    @property
    def min_chars(self) -> int:
        return math.ceil(MIN_TOKENS * CHARS_PER_TOKEN)

    @property
    def max_chars(self) -> int:
        return int(self.max_tokens * CHARS_PER_TOKEN)

    def draw(self, rng: np.random.Generator) -> int:
        """A target content length, log-uniform in ``[min_chars + slack, max_chars - margin]``."""
        lo = self.min_chars + tasks.MAX_SHORTFALL
        hi = max(lo, self.max_chars - _MARGIN)
        return round(math.exp(rng.uniform(math.log(lo), math.log(hi))))


@dataclass(frozen=True)
class Conversation:
    """One chat; ``answers`` are the planted values the assistant recalls, in the order asked."""

    kind: str
    messages: tuple[Message, ...]
    answers: tuple[str, ...] = ()

    def to_json(self) -> str:
        """The JSONL line (no newline): a JSON array of ``{"role", "content"}`` objects."""
        return json.dumps(list(self.messages), ensure_ascii=False, separators=(",", ":"))


def _chat(*pairs: tuple[str, str]) -> list[Message]:
    out: list[Message] = []
    for user, assistant in pairs:
        out += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return out


def _chars(messages: Sequence[Message]) -> int:
    return sum(len(m["content"]) for m in messages)


# ----------------------------------------------------------------------------------------------
# exchanges used as padding between a fact and its question


def _sum_exchange(rng: np.random.Generator) -> tuple[str, str]:
    """``What is a op b?`` -> ``a op b = c.`` with small non-negative numbers."""
    op = "+-*"[int(rng.integers(0, 3))]
    hi = 13 if op == "*" else 100
    a, b = (int(x) for x in rng.integers(0, hi, size=2))
    if op == "-" and b > a:
        a, b = b, a
    result = a + b if op == "+" else a - b if op == "-" else a * b
    return f"What is {a} {op} {b}?", f"{a} {op} {b} = {result}."


def _text_exchange(rng: np.random.Generator, budget: int) -> tuple[str, str] | None:
    """Echo a filler sentence back, or read a filler story; ``None`` if ``budget`` is too small."""
    if rng.random() < 0.5:
        prefix = "Say this back: "
        text = tasks.filler(rng, min((budget - len(prefix)) // 2, int(rng.integers(30, 200))))
        return (prefix + text, text) if text else None
    prefix, reply = "Here is a story. ", "Thank you for the story."
    text = tasks.filler(rng, min(budget - len(prefix) - len(reply), int(rng.integers(60, 700))))
    return (prefix + text, reply) if text else None


def filler_exchange(rng: np.random.Generator, budget: int) -> tuple[str, str]:
    """One exchange of padding of at most about ``budget`` characters: mostly an echo or a story, else a sum."""
    pair = _text_exchange(rng, budget) if budget > 80 and rng.random() < 0.7 else None
    return pair or _sum_exchange(rng)


def _padding(rng: np.random.Generator, budget: int, at_least: int) -> list[Message]:
    """At least ``at_least`` exchanges of sums, echoes and stories, about ``budget`` characters."""
    pairs: list[tuple[str, str]] = []
    left = budget
    while left > 40 or len(pairs) < at_least:
        pair = filler_exchange(rng, left)
        pairs.append(pair)
        left -= len(pair[0]) + len(pair[1])
    return _chat(*pairs)


# ----------------------------------------------------------------------------------------------
# the five kinds


def _passkey_document(rng: np.random.Generator, budget: int, digits: int) -> tasks.PasskeySample:
    """A passkey document whose text before the query is at most ``budget`` characters (if it can be)."""
    query_and_answer = len(tasks.PASSKEY_QUERY) + digits + 3  # " <query> <answer>."
    smallest = len("The pass key is . Remember it.") + 2 * digits + len(tasks.PASSKEY_QUERY) + 5
    return tasks.make_passkey(rng, max(budget + query_and_answer, smallest), float(rng.uniform()), digits)


def _passkey(rng: np.random.Generator, lengths: Lengths) -> Conversation:
    """A document with a planted pass key; the question in the same turn or a few exchanges later."""
    target = lengths.draw(rng)
    digits = int(rng.integers(3, 7))
    single = bool(rng.random() < 0.5)
    intro, ack = PASSKEY_INTRO, PASSKEY_ACK
    between = [] if single else _padding(rng, 0, int(rng.integers(0, 3)))
    reply_len = len("The pass key is .") + digits
    fixed = len(PASSKEY_QUESTION) + reply_len + (2 if single else len(intro) + len(ack) + _chars(between))
    sample = _passkey_document(rng, target - fixed, digits)
    doc = sample.text[: sample.query_offset].rstrip()
    reply = f"The pass key is {sample.answer}."
    if single:
        messages = _chat((f"{doc}\n\n{PASSKEY_QUESTION}", reply))
    else:
        messages = _chat((intro + doc, ack)) + between + _chat((PASSKEY_QUESTION, reply))
    return Conversation("passkey", tuple(messages), (sample.answer,))


def _recall(rng: np.random.Generator, lengths: Lengths) -> Conversation:
    """Key/value pairs in filler; one question per turn, answered ``key wuf -> value 381.``."""
    target = lengths.draw(rng)
    num_pairs = int(rng.integers(2, 5))
    num_queries = int(rng.integers(1, num_pairs + 1))
    single = bool(rng.random() < 0.5)
    intro, ack = RECALL_INTRO, RECALL_ACK
    pair_len = len("key xxx -> value 000.")  # every key is 3 letters, every value 3 digits
    exchange = len(RECALL_QUESTION.format(key="xxx")) + pair_len
    fixed = num_queries * exchange + (2 if single else len(intro) + len(ack))
    tail = num_queries * (pair_len + 1) - 1  # make_recall's answered queries after the context
    smallest = (pair_len + 1) * num_pairs + tail + 2
    num_chars = max(target - fixed + tail + 1, smallest)
    sample = tasks.make_recall(rng, num_chars, num_pairs, num_queries, depth=float(rng.uniform()))
    asks = [
        (RECALL_QUESTION.format(key=q.split()[1]), f"{q} {a}.")
        for q, a in zip(sample.queries, sample.answers, strict=True)
    ]
    if single:
        first = (f"{sample.context}\n\n{asks[0][0]}", asks[0][1])
        messages = _chat(first, *asks[1:])
    else:
        messages = _chat((intro + sample.context, ack), *asks)
    return Conversation("recall", tuple(messages), sample.answers)


def _fact(rng: np.random.Generator, lengths: Lengths) -> Conversation:
    """One to three facts in the first turn, at least two unrelated exchanges, then the questions."""
    target = lengths.draw(rng)
    n = int(rng.integers(1, 4))
    subjects = [FACT_SUBJECTS[int(i)] for i in rng.choice(len(FACT_SUBJECTS), size=n, replace=False)]
    names = [FACT_NAMES[int(i)] for i in rng.choice(len(FACT_NAMES), size=n, replace=False)]
    statement = FACT_INTRO + " ".join(FACT_STATEMENT.format(subject=s, name=m)
                                      for s, m in zip(subjects, names, strict=True))
    order = [int(i) for i in rng.permutation(n)]
    asks = [(FACT_QUESTION.format(subject=subjects[i]), FACT_ANSWER.format(subject=subjects[i], name=names[i]))
            for i in order]
    head = _chat((statement, FACT_ACK))
    tail = _chat(*asks)
    middle = _padding(rng, target - _chars(head) - _chars(tail), at_least=2)
    return Conversation("fact", tuple(head + middle + tail), tuple(names[i] for i in order))


def _short_target(rng: np.random.Generator, lengths: Lengths) -> int:
    hi = max(lengths.min_chars, min(2 * lengths.min_chars, lengths.max_chars - _MARGIN))
    return int(rng.integers(lengths.min_chars, hi + 1))


def _arithmetic(rng: np.random.Generator, lengths: Lengths) -> Conversation:
    """Small sums, one per exchange, until the conversation is at least ``min_chars`` long."""
    target = _short_target(rng, lengths)
    pairs: list[tuple[str, str]] = []
    while sum(len(q) + len(a) for q, a in pairs) < target:
        pairs.append(_sum_exchange(rng))
    answers = tuple(a.rsplit(" ", 1)[1].rstrip(".") for _, a in pairs)
    return Conversation("arithmetic", tuple(_chat(*pairs)), answers)


def _identity(rng: np.random.Generator, lengths: Lengths) -> Conversation:
    """Fixed identity exchanges in a seeded order, until at least ``min_chars`` long."""
    target = _short_target(rng, lengths)
    pairs: list[tuple[str, str]] = []
    for i in rng.permutation(len(IDENTITY)):
        if pairs and sum(len(q) + len(a) for q, a in pairs) >= target:
            break
        pairs.append(IDENTITY[int(i)])
    return Conversation("identity", tuple(_chat(*pairs)))


_MAKERS: dict[str, Callable[[np.random.Generator, Lengths], Conversation]] = {
    "passkey": _passkey,
    "recall": _recall,
    "fact": _fact,
    "arithmetic": _arithmetic,
    "identity": _identity,
}


def make_conversation(kind: str, seed: tasks.SeedLike, lengths: Lengths | None = None) -> Conversation:
    """One conversation of ``kind`` (see :data:`KINDS`), deterministic for ``seed``."""
    if kind not in _MAKERS:
        raise ValueError(f"unknown conversation kind {kind!r}; allowed: {list(KINDS)}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return _MAKERS[kind](rng, lengths or Lengths())




def generate_conversations(
    seed: int, split: str, count: int, mix: Mapping[str, float] | None = None, lengths: Lengths | None = None
) -> Iterator[Conversation]:
    """``count`` conversations of ``split``; conversation ``i`` is seeded from ``(seed, split, i)``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    mix = (MID_MIX if split.startswith("mid") else SFT_MIX) if mix is None else mix
    names, probs = tasks.mix_probabilities(mix, KINDS, "conversation kinds")
    lengths = lengths or Lengths()
    for i in range(count):
        rng = np.random.default_rng([seed, SPLITS.index(split), i])
        yield _MAKERS[names[int(rng.choice(len(names), p=probs))]](rng, lengths)


# ----------------------------------------------------------------------------------------------
# nanochat's CustomJSON rules


def check_messages(messages: object) -> None:
    """Raise ``ValueError`` unless ``messages`` passes nanochat's ``CustomJSON`` asserts."""
    if not isinstance(messages, list):
        raise ValueError(f"expected a JSON array of messages, got {type(messages).__name__}")
    if len(messages) < 2:
        raise ValueError(f"a conversation needs at least 2 messages, got {len(messages)}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"message {i} must be an object with 'role' and 'content', got {type(message).__name__}")
        for key in ("role", "content"):
            if key not in message:
                raise ValueError(f"message {i} has no {key!r} field")
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise ValueError(
                f"message {i} has role {message['role']!r} but should be {expected!r} (roles alternate from 'user')"
            )
        if not isinstance(message["content"], str):
            raise ValueError(f"message {i} content must be a string, got {type(message['content']).__name__}")


def validate_jsonl(path: str | os.PathLike[str]) -> int:
    """Check every non-blank line of a CustomJSON file; the number of conversations, or ``ValueError``."""
    count = 0
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line:  # nanochat skips blank lines
                continue
            try:
                check_messages(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON: {exc.msg} (column {exc.colno})") from None
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: {exc}") from None
            count += 1
    return count


# ----------------------------------------------------------------------------------------------
# the task directory


def _write_split(path: Path, conversations: Iterator[Conversation]) -> dict[str, int]:
    """Write one JSONL file; conversations per kind."""
    kinds = dict.fromkeys(KINDS, 0)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for conv in conversations:
            check_messages(list(conv.messages))
            f.write(conv.to_json() + "\n")
            kinds[conv.kind] += 1
    return {k: v for k, v in kinds.items() if v}


def write_task_dir(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    mid_train: int = DEFAULT_COUNTS["mid_train"],
    mid_val: int = DEFAULT_COUNTS["mid_val"],
    sft_train: int = DEFAULT_COUNTS["sft_train"],
    sft_val: int = DEFAULT_COUNTS["sft_val"],
    lengths: Lengths | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Write ``<split>.jsonl`` for the four splits into ``out_dir``; conversations per file name.

    Each file is written to ``<name>.tmp`` and validated; only when all four are ready are they
    renamed into place (``os.replace``), replacing older files of the same names. Other files in
    ``out_dir`` are left alone. ``progress`` gets one line per file (name, rows, bytes, kinds).
    """
    counts = {"mid_train": mid_train, "mid_val": mid_val, "sft_train": sft_train, "sft_val": sft_val}
    for name, value in (("seed", seed), *counts.items()):
        lo = 0 if name == "seed" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    lengths = lengths or Lengths()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    tmps = [out / f"{split}.jsonl.tmp" for split in SPLITS]
    try:
        kinds = [_write_split(tmp, generate_conversations(seed, s, counts[s], None, lengths))
                 for s, tmp in zip(SPLITS, tmps, strict=True)]
        for tmp in tmps:
            validate_jsonl(tmp)
        for split, tmp, per_kind in zip(SPLITS, tmps, kinds, strict=True):
            path = out / f"{split}.jsonl"
            verb = "overwrote" if path.exists() and path.stat().st_size > 0 else "wrote"
            os.replace(tmp, path)
            if progress is not None:
                shown = " ".join(f"{k}={v}" for k, v in per_kind.items())
                progress(f"{verb} {path}: {counts[split]} conversations, {path.stat().st_size:,} bytes ({shown})")
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
    return {f"{split}.jsonl": counts[split] for split in SPLITS}
