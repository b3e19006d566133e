"""The token stream the ``generate`` hook returns: nanochat ``Engine.generate``'s contract over MC sessions.

It yields ``(token_column, token_masks)`` exactly as upstream does: one column per step with a
token for every row, mask 1 = sampled, 0 = forced (the calculator tool's output). Upstream's
semantics are kept: sampling (temperature 0 = argmax, ``top_k``, one seeded generator on the
model's device, one draw for all rows per step), a row completes on ``<|assistant_end|>`` or
``<|bos|>``, the stream stops when every row completed or after ``max_tokens`` columns, and a
python block (``<|python_start|>`` ... ``<|python_end|>``) is evaluated by the host's calculator
(``use_calculator`` of the Engine's own module, when it has one) and its result forced in
between ``<|output_start|>`` and ``<|output_end|>``.

One departure (D49): a role token sampled inside an answer (``<|user_start|>``, ``<|user_end|>``,
``<|assistant_start|>``: the model leaving its turn) is replaced by ``<|assistant_end|>`` (mask 0,
not what was sampled) and completes the row, so no client is streamed a role token and the
session's history holds a closed turn, not a turn the model invented for the user.

Each row is an ``MCSession`` (``num_samples`` rows decode in lockstep, each with its own
working context and KV cache). A generated token is appended to the row's history before the
column is yielded, so a caller that stops early (or a killed process) never loses what it saw.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .session import MCSession


def sample_next_token(logits_BV: torch.Tensor, rng: torch.Generator | None, temperature: float = 1.0,
                      top_k: int | None = None) -> torch.Tensor:
    """Next token ``[B, 1]`` from logits ``[B, V]``: nanochat's ``sample_next_token`` semantics."""
    if temperature < 0.0:
        raise ValueError("temperature must be non-negative")
    if temperature == 0.0:
        return torch.argmax(logits_BV, dim=-1, keepdim=True)
    if top_k is not None and top_k > 0:
        vals_BK, idx_BK = torch.topk(logits_BV, min(top_k, logits_BV.size(-1)), dim=-1)
        probs_BK = F.softmax(vals_BK / temperature, dim=-1)
        return idx_BK.gather(1, torch.multinomial(probs_BK, num_samples=1, generator=rng))
    probs_BV = F.softmax(logits_BV / temperature, dim=-1)
    return torch.multinomial(probs_BV, num_samples=1, generator=rng)


@dataclass(frozen=True)
class SpecialTokens:
    """The chat tokens the stream's state machine reacts to (ids in the host's tokenizer)."""

    assistant_end: int
    bos: int
    python_start: int | None = None
    python_end: int | None = None
    output_start: int | None = None
    output_end: int | None = None
    roles: frozenset[int] = frozenset()
    """``<|user_start|>``, ``<|user_end|>``, ``<|assistant_start|>``: never part of an answer."""

    @classmethod
    def from_tokenizer(cls, tokenizer: object) -> SpecialTokens:
        def special(name: str) -> int | None:
            try:
                return int(tokenizer.encode_special(name))  # type: ignore[attr-defined]
            except Exception:  # a tokenizer without tool tokens: no tool use
                return None

        end = special("<|assistant_end|>")
        bos = int(tokenizer.get_bos_token_id())  # type: ignore[attr-defined]
        roles = (special(name) for name in ("<|user_start|>", "<|user_end|>", "<|assistant_start|>"))
        return cls(bos if end is None else end, bos, special("<|python_start|>"), special("<|python_end|>"),
                   special("<|output_start|>"), special("<|output_end|>"),
                   frozenset(r for r in roles if r is not None and end is not None))

    def ends_row(self, token: int) -> bool:
        """Whether ``token`` completes a row (upstream's rule: ``<|assistant_end|>`` or ``<|bos|>``)."""
        return token in (self.assistant_end, self.bos)

    def leaves_turn(self, token: int) -> bool:
        """Whether ``token`` is a role token: sampled inside an answer, it becomes ``<|assistant_end|>`` (D49)."""
        return token in self.roles


@dataclass
class _Row:
    forced: deque[int] = field(default_factory=deque)
    in_python: bool = False
    expr: list[int] = field(default_factory=list)
    completed: bool = False


Calculator = Callable[[str], object]


def _tool_result(row: _Row, token: int, specials: SpecialTokens, tokenizer: object,
                 calculator: Calculator | None) -> None:
    """Upstream's tool-use state machine for one row after ``token``."""
    if token == specials.python_start:
        row.in_python, row.expr = True, []
    elif token == specials.python_end and row.in_python:
        row.in_python = False
        if row.expr and calculator is not None and specials.output_start is not None:
            result = calculator(tokenizer.decode(row.expr))  # type: ignore[attr-defined]
            if result is not None:
                row.forced.append(specials.output_start)
                row.forced.extend(tokenizer.encode(str(result)))  # type: ignore[attr-defined]
                row.forced.append(specials.output_end)  # type: ignore[arg-type]
        row.expr = []
    elif row.in_python:
        row.expr.append(token)


def decode_stream(sessions: Sequence[MCSession], first_logits: Callable[[], Sequence[torch.Tensor]],
                  max_tokens: int | None, temperature: float, top_k: int | None, seed: int,
                  specials: SpecialTokens, tokenizer: object, calculator: Calculator | None,
                  device: torch.device) -> Iterator[tuple[list[int], list[int]]]:
    """Yield ``(token_column, token_masks)`` for ``len(sessions)`` rows (see the module docstring).

    ``first_logits()`` ingests the prompt and returns each row's next-token logits ``[V]``; it
    runs on the first ``next()``, as upstream's prefill does.
    """
    rng = torch.Generator(device=device)
    rng.manual_seed(seed)
    rows = [_Row() for _ in sessions]
    with torch.inference_mode():
        logits_BV = torch.stack(list(first_logits()))
    generated = 0
    try:
        while True:
            if max_tokens is not None and generated >= max_tokens:
                break
            if all(row.completed for row in rows):
                break
            with torch.inference_mode():
                sampled = sample_next_token(logits_BV, rng, temperature, top_k)[:, 0].tolist()
            column: list[int] = []
            masks: list[int] = []
            for row, session, token in zip(rows, sessions, sampled, strict=True):  # rows, not tokens
                forced = len(row.forced) > 0
                if forced:
                    token = row.forced.popleft()
                elif specials.leaves_turn(token):  # the model left its turn: the answer ends here (D49)
                    token, forced = specials.assistant_end, True
                column.append(token)
                masks.append(0 if forced else 1)
                if specials.ends_row(token):
                    row.completed = True
                _tool_result(row, token, specials, tokenizer, calculator)
                session.accept(token)  # stored before the caller sees it
            yield column, masks
            generated += 1
            with torch.inference_mode():
                logits_BV = torch.stack([session.advance() for session in sessions])
    finally:
        for session in sessions:
            if not session.closed:
                session.flush()


def ending_at_role_tokens(stream: Iterator[tuple[list[int], list[int]]], specials: SpecialTokens
                          ) -> Iterator[tuple[list[int], list[int]]]:
    """Upstream's own decode (a prompt that fits the window), with the one departure of the MC stream
    (D49): a role token in a row becomes ``<|assistant_end|>`` (mask 0) and completes the row; the
    stream ends when every row completed. A completed row's later tokens are upstream's, which its
    callers ignore, as they do after ``<|assistant_end|>``."""
    completed: list[bool] | None = None
    for column, masks in stream:
        if completed is None:
            completed = [False] * len(column)
        column, masks = list(column), list(masks)
        for i, token in enumerate(column):
            if completed[i]:
                continue
            if specials.leaves_turn(token):
                column[i], masks[i] = specials.assistant_end, 0
            completed[i] = specials.ends_row(column[i])
        yield column, masks
        if all(completed):
            return


def without_terminal(stream: Iterator[tuple[list[int], list[int]]], specials: SpecialTokens
                     ) -> Iterator[tuple[list[int], list[int]]]:
    """A one-row stream without the token that ends it (``<|assistant_end|>`` or ``<|bos|>``):
    ``chat_cli`` prints every token it gets, and appends ``<|assistant_end|>`` to the conversation
    itself when the answer does not end with it. Tool tokens stay: they are part of the conversation."""
    for column, masks in stream:
        if len(column) == 1 and specials.ends_row(column[0]):
            return
        yield column, masks

