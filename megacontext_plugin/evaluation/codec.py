"""How the long-context evaluation turns its documents into token ids and reads the answers back.

The tiny models read bytes (:data:`BYTES`); a nanochat run reads its own tokenizer's ids
(:func:`tokenizer_codec`), with its BOS in front of every history as nanochat trains. An answer
is scored by teacher forcing: the continuation is ``" " + answer`` then ``"."``, and what the
model predicts for the answer's tokens (argmax at each position) is decoded and compared.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..data import tasks


@dataclass(frozen=True)
class Codec:
    name: str
    """What the tokens are, for the result's settings (``bytes (vocab 256)``, ``nanochat tokenizer (vocab N)``)."""
    encode: Callable[[str], list[int]]
    decode: Callable[[Sequence[int]], str]
    bos: tuple[int, ...] = ()
    """Ids put in front of every history (nanochat's documents start with BOS)."""
    chars_per_token: float = 1.0
    """Characters per token of the seeded documents: a length in tokens becomes ``x * this`` characters."""
    byte_level: bool = field(default=False)

    def prefix(self, text: str) -> torch.Tensor:
        return torch.tensor([*self.bos, *self.encode(text)], dtype=torch.long)

    def answer(self, answer: str) -> tuple[torch.Tensor, int]:
        """The continuation's ids and how many of the first ones cover ``" " + answer``."""
        head = self.encode(" " + answer)
        return torch.tensor([*head, *self.encode(".")], dtype=torch.long), len(head)

    def predicted(self, argmax: Any, n_answer: int, answer: str) -> str:
        """The answer as the model predicted it (teacher forcing): bytes compare character by character
        after the space; a tokenizer's prediction is decoded and the leading space dropped."""
        if self.byte_level:
            return "".join(chr(int(t)) for t in argmax[1:1 + len(answer)])
        text = self.decode([int(t) for t in argmax[:n_answer]])
        return text[1:] if text.startswith(" ") else text


BYTES = Codec("bytes (vocab 256)", lambda text: list(text.encode("utf-8")),
              lambda ids: bytes(int(i) for i in ids).decode("utf-8", errors="replace"), byte_level=True)


def tokenizer_codec(tokenizer: Any, seed: int = 0) -> Codec:
    """A nanochat tokenizer (``encode(str) -> list[int]``, ``decode``, ``get_bos_token_id``); the
    characters-per-token ratio is measured on one seeded filler document."""
    sample = tasks.make_filler_document(np.random.default_rng([seed, 99]), 4000)
    ratio = len(sample) / max(1, len(tokenizer.encode(sample)))
    vocab = tokenizer.get_vocab_size() if hasattr(tokenizer, "get_vocab_size") else "?"
    return Codec(f"nanochat tokenizer (vocab {vocab})", tokenizer.encode, tokenizer.decode,
                 (int(tokenizer.get_bos_token_id()),), ratio)
