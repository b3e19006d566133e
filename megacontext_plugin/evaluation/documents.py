"""The evaluation's documents: seeded passkey and recall documents at a length in characters
(``data.tasks``), where a passkey's answer sits in its prompt, and a twin with other key digits."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..data import tasks
from ..data.tasks import PASSKEY_DIGITS, RECALL_SHAPE
from .codec import BYTES, Codec


def rng(seed: int, *parts: int) -> np.random.Generator:
    """The generator of one document (or draw) of an evaluation seeded ``seed``."""
    return np.random.default_rng([seed, *parts])


def make_passkey_docs(seed: int, length: int, depths: Sequence[float], samples: int) -> list[tasks.PasskeySample]:
    out = []
    for di, depth in enumerate(depths):
        for s in range(samples):
            out.append(tasks.make_passkey(rng(seed, 1, length, di, s), num_chars=length, depth=depth,
                                          digits=PASSKEY_DIGITS))
    return out


def make_recall_docs(seed: int, length: int, count: int) -> list[tasks.RecallSample]:
    out = []
    for s in range(count):
        gen = rng(seed, 2, length, s)
        out.append(tasks.make_recall(gen, num_chars=length, depth=float(gen.uniform(0, 1)), **RECALL_SHAPE))
    return out


def passkey_fits(length: int) -> bool:
    try:
        tasks.make_passkey(0, num_chars=length, digits=PASSKEY_DIGITS)
    except ValueError:
        return False
    return True


def recall_fits(length: int) -> bool:
    try:
        tasks.make_recall(0, num_chars=length, **RECALL_SHAPE)
    except ValueError:
        return False
    return True


def answer_span(doc: tasks.PasskeySample, codec: Codec = BYTES) -> tuple[int, int]:
    """The prefix tokens ``[lo, hi)`` that hold the key's digits in the key line (exact for bytes; for a
    BPE tokenizer, the tokens of the text before and through the digits, which may differ from the
    whole prompt's tokenization by a token at either edge)."""
    first = key_start(doc)
    return (len(codec.prefix(doc.prompt[:first])), len(codec.prefix(doc.prompt[:first + len(doc.answer)])))


def key_start(doc: tasks.PasskeySample) -> int:
    """The character offset in ``doc.prompt`` of the key's digits in the key line."""
    return doc.prompt.index(doc.answer, doc.key_offset)


def twin_passkey(doc: tasks.PasskeySample, rng: np.random.Generator) -> tasks.PasskeySample:
    """``doc`` with other key digits (each one changed) in its key line and answer; everything else,
    the filler and the key line's position, is the same."""
    first = key_start(doc)
    answer = "".join(str((int(c) + int(rng.integers(1, 10))) % 10) for c in doc.answer)
    prompt = doc.prompt[:first] + answer + doc.prompt[first + len(doc.answer):]
    after = doc.text[len(doc.prompt):].replace(doc.answer, answer, 1)  # the answer after the query
    return dataclasses.replace(doc, prompt=prompt, answer=answer, text=prompt + after)


def read_text_file(path: Path) -> str:
    """A user's text file for ``--documents``; ValueError (one line) when it is missing, not a file,
    binary (a NUL byte) or not UTF-8."""
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    if not path.is_file():
        raise ValueError(f"{path}: not a file")
    data = path.read_bytes()
    if b"\0" in data:
        raise ValueError(f"{path}: a binary file (it holds NUL bytes); --documents takes text files")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}); --documents takes text files") from None


def text_documents(token_ids: Sequence[Sequence[int]], bos: Sequence[int], num_tokens: int,
                   limit: int) -> list[torch.Tensor]:
    """Up to ``limit`` documents ``ids[num_tokens]`` (``bos``, then consecutive tokens of one text):
    each tokenized text (``token_ids``, encoded once by the caller for every length) is cut into as many
    full documents as it holds, taken round-robin over the texts (the first document of every text,
    then the second, ...) so that no one file dominates."""
    body = num_tokens - len(bos)
    pieces = [[torch.tensor([*bos, *ids[i:i + body]], dtype=torch.long) for i in range(0, len(ids) - body + 1, body)]
              for ids in token_ids]
    out: list[torch.Tensor] = []
    for k in range(max((len(p) for p in pieces), default=0)):
        out += [p[k] for p in pieces if k < len(p)]
    return out[:limit]
