"""The chat arm's conversations: the first user turn plants a fact, the last one asks for it, and
filler exchanges between them make the conversation about a given length in tokens.

Kinds, in the phrasing the SFT data teaches (``data.conversations``), taken in turn:

- ``passkey``: "Read this text and remember the pass key." over a short text holding
  "The pass key is 48213. Remember it." ... "What is the pass key?" (fact: the 5 digits);
- ``name``: "Remember this. My dog is called kel." ... "What is my dog called?" (fact: the name);
- ``number``: "Read these notes and remember every key and its value." over two pairs such as
  "key wuf -> value 381." ... "What is the value of key wuf?" (fact: the 3-digit value).

The filler exchanges are those of the SFT data (echoes, short stories, small sums). A
conversation's length is its prompt as ``chat_cli`` renders it (BOS, every message between its
role's start and end tokens, then ``<|assistant_start|>``), counted with the run's tokenizer:
exchanges are added while at least :data:`MIN_FILLER_TOKENS` tokens are left to the target, each
sized to what is left, so a conversation ends within about one small exchange of the target
(never shorter than its plant and question).

Scoring (:func:`fact_found`): an answer is right when the fact appears in it as a whole word,
not inside a longer run of letters or digits ("48213" counts in "The pass key is 48213.", not in
"148213"; "kel" not in "kelp").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data import conversations as convs
from ..data import tasks
from ..data.tasks import PASSKEY_DIGITS
from .documents import rng

KINDS = ("passkey", "name", "number")
MIN_FILLER_TOKENS = 12
"""Below this many tokens left to the target no filler exchange is added (a small sum takes about as many)."""
SEED_STREAM = 5
"""``documents.rng``'s stream for chat conversations (the other documents use 1-4)."""
RECALL_PAIRS = 2
EXTRA_CHARS = 200
"""At most this many characters of filler around the planted fact in the first turn (passkey, number)."""

Message = dict[str, str]


@dataclass(frozen=True)
class ChatConversation:
    kind: str
    messages: tuple[Message, ...]
    """User and assistant messages alternating, from the planting user turn to the asking one."""
    fact: str
    reference: str
    """The reply the SFT data teaches for the question (the evaluation scores the model's own)."""
    num_tokens: int
    """Prompt tokens as ``chat_cli`` renders the conversation."""


def _whole_word(fact: str, text: str) -> re.Match[str] | None:
    """The first occurrence of ``fact`` in ``text`` as a whole word (see the module docstring)."""
    return re.search(rf"(?<![0-9A-Za-z]){re.escape(fact)}(?![0-9A-Za-z])", text)


def fact_found(answer: str, fact: str) -> bool:
    """Whether ``fact`` appears in ``answer`` as a whole word (see the module docstring)."""
    return _whole_word(fact, answer) is not None


def _exchange(user: str, assistant: str) -> list[Message]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def _plant(kind: str, gen: np.random.Generator) -> tuple[list[Message], str, str, str]:
    """The planting exchange, the question, the fact and the reference reply."""
    if kind == "passkey":
        fixed = len("The pass key is . Remember it.") + 2 * PASSKEY_DIGITS + len(tasks.PASSKEY_QUERY) + 5
        doc = tasks.make_passkey(gen, fixed + int(gen.integers(0, EXTRA_CHARS + 1)), float(gen.uniform()),
                                 PASSKEY_DIGITS)
        text = doc.text[:doc.query_offset].rstrip()
        return (_exchange(convs.PASSKEY_INTRO + text, convs.PASSKEY_ACK), convs.PASSKEY_QUESTION, doc.answer,
                f"The pass key is {doc.answer}.")
    if kind == "name":
        subject = convs.FACT_SUBJECTS[int(gen.integers(len(convs.FACT_SUBJECTS)))]
        name = convs.FACT_NAMES[int(gen.integers(len(convs.FACT_NAMES)))]
        statement = convs.FACT_INTRO + convs.FACT_STATEMENT.format(subject=subject, name=name)
        return (_exchange(statement, convs.FACT_ACK), convs.FACT_QUESTION.format(subject=subject), name,
                convs.FACT_ANSWER.format(subject=subject, name=name))
    if kind == "number":
        pair = len("key xxx -> value 000.")
        smallest = (pair + 1) * RECALL_PAIRS + pair + 2  # the pairs, the answered query, the separators
        sample = tasks.make_recall(gen, smallest + int(gen.integers(0, EXTRA_CHARS + 1)), RECALL_PAIRS, 1,
                                   depth=float(gen.uniform()))
        key = sample.queries[0].split()[1]
        return (_exchange(convs.RECALL_INTRO + sample.context, convs.RECALL_ACK),
                convs.RECALL_QUESTION.format(key=key), sample.answers[0], f"{sample.queries[0]} {sample.answers[0]}.")
    raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")


def prompt_tokens(messages: Sequence[Message], count: Callable[[str], int]) -> int:
    """Tokens of ``prompt_ids(messages)`` from the contents' token counts: BOS, start and end per message,
    and the final ``<|assistant_start|>``."""
    return 2 + sum(count(m["content"]) + 2 for m in messages)


def make_conversation(gen: np.random.Generator, kind: str, target_tokens: int, count: Callable[[str], int],
                      chars_per_token: float) -> ChatConversation:
    """One conversation of ``kind`` whose prompt is about ``target_tokens`` tokens (``count`` gives a
    text's tokens; ``chars_per_token`` sizes each filler exchange to what is left)."""
    plant, question, fact, reference = _plant(kind, gen)
    ask: list[Message] = [{"role": "user", "content": question}]
    n = prompt_tokens(plant + ask, count)
    filler: list[Message] = []
    while (left := target_tokens - n) >= MIN_FILLER_TOKENS:
        user, assistant = convs.filler_exchange(gen, int((left - 4) * chars_per_token))
        filler += _exchange(user, assistant)
        n += count(user) + count(assistant) + 4
    return ChatConversation(kind, tuple(plant + filler + ask), fact, reference, n)


def make_conversations(seed: int, target_tokens: int, count: int, tokens_of: Callable[[str], int],
                       chars_per_token: float) -> list[ChatConversation]:
    """``count`` conversations of about ``target_tokens`` tokens, the kinds in turn; conversation ``i``
    is seeded from ``(seed, SEED_STREAM, target_tokens, i)``."""
    return [make_conversation(rng(seed, SEED_STREAM, target_tokens, i), KINDS[i % len(KINDS)], target_tokens,
                              tokens_of, chars_per_token) for i in range(count)]


@dataclass(frozen=True)
class ChatTokens:
    """nanochat's chat special tokens, as ``chat_cli`` uses them."""

    bos: int
    user_start: int
    user_end: int
    assistant_start: int
    assistant_end: int

    @classmethod
    def of(cls, tokenizer: Any) -> ChatTokens:
        special = tokenizer.encode_special
        return cls(int(tokenizer.get_bos_token_id()), int(special("<|user_start|>")), int(special("<|user_end|>")),
                   int(special("<|assistant_start|>")), int(special("<|assistant_end|>")))

    def is_start(self, token: int) -> bool:
        return token in (self.user_start, self.assistant_start)

    def is_end(self, token: int) -> bool:
        return token in (self.user_end, self.assistant_end)


def prompt_ids(messages: Sequence[Message], encode: Callable[[str], list[int]], chat: ChatTokens) -> list[int]:
    """The conversation as ``chat_cli`` sends it to ``Engine.generate``: BOS, each message between its
    role's start and end tokens, then ``<|assistant_start|>`` for the answer."""
    ids = [chat.bos]
    for m in messages:
        start, end = ((chat.user_start, chat.user_end) if m["role"] == "user"
                      else (chat.assistant_start, chat.assistant_end))
        ids += [start, *encode(m["content"]), end]
    return [*ids, chat.assistant_start]


def fact_span(messages: Sequence[Message], fact: str, encode: Callable[[str], list[int]]) -> tuple[int, int]:
    """Token span ``[lo, hi)`` in :func:`prompt_ids` of the planted fact (its first whole-word occurrence in
    the planting turn, after BOS and the role token): the content before it and through it, encoded apart.
    Where the text before the fact ends in a space that the fact's first token absorbs in context, ``lo``
    lands on the fact's second token, so the span is inside the fact, never around it."""
    content = messages[0]["content"]
    match = _whole_word(fact, content)
    if match is None:
        raise ValueError(f"the planting turn does not hold the fact {fact!r}")
    lo, hi = len(encode(content[:match.start()])), len(encode(content[:match.end()]))
    return 2 + min(lo, hi - 1), 2 + hi
