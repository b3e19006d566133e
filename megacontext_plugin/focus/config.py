"""Knobs of the focus allocator, validated on construction.

Field names match the ``--allocator_*`` flags without the prefix (``budget`` is
``--mc_wc_budget``; ``seed`` is ``--mc_seed``); ``soft_max_length`` None or 0 means the budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

ALLOCATOR_TYPES: tuple[str, ...] = ("greedy", "stochastic_greedy")
"""Allowed values of ``FocusConfig.type``."""

AllocatorType = Literal["greedy", "stochastic_greedy"]


class FocusError(ValueError):
    """A bad allocator knob, or a scorer that returned unusable utilities."""


def _int_at_least(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise FocusError(f"{name} must be an integer >= {low}, got {value!r}")


def _float_at_least(name: str, value: object, low: float, *, strict: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise FocusError(f"{name} must be a finite number, got {value!r}")
    if value < low or (strict and value == low):
        raise FocusError(f"{name} must be {'>' if strict else '>='} {low}, got {value!r}")


@dataclass(frozen=True)
class FocusConfig:
    """Every allocator knob. See ``FocusAllocator`` for the semantics."""

    budget: int
    """Hard maximum working-context length (W_max). Expansions never take the WC past it."""
    type: AllocatorType = "greedy"
    """``greedy`` (best |utility| first) or ``stochastic_greedy`` (sampled among the top-k)."""
    expand_threshold: float = 0.1
    """Expand an entry only when its utility is strictly above this (>= 0)."""
    collapse_threshold: float = 0.1
    """Collapse a sibling group only when their mean utility is strictly below minus this (>= 0)."""
    max_replacements: int = 8
    """Edits (expansions + collapses) per iteration (>= 1)."""
    iterations: int = 1
    """Rounds per refocus, re-scoring the edited WC between rounds (>= 1)."""
    soft_max_length: int | None = None
    """Target length (<= budget): while the WC is longer, collapses rank ahead of expansions.
    None or 0: the budget."""
    recent_tokens: int = 64
    """Protected tail: entries covering any of the last ``recent_tokens`` tokens are never touched."""
    cooldown: int = 2
    """A node flipped at refocus r may not flip back before refocus r + cooldown (0: no hysteresis)."""
    sample_top_k: int = 8
    """stochastic_greedy: how many of the best candidates (by |utility|) are sampled into a random
    order; the rest follow in greedy order."""
    sample_temperature: float = 0.5
    """stochastic_greedy: the top-k order is sampled from softmax(|utility| / temperature) (> 0)."""
    seed: int = 1337
    """stochastic_greedy: seed of the allocator's numpy Generator."""
    max_level: int | None = None
    """Highest level a collapse may create (None: any level the history has)."""
    expand_neighbours: int = 0
    """The context pass that closes each refocus expands up to this many level-1 gists directly left
    of each level-1 gist the refocus expanded on its own utility, so the words that introduce what
    is expanded come raw with it (a raw island of digits without them reads worse). It takes only
    the room the rounds left, nearest first and best anchor first, and obeys the cooldown (D30).
    Within a round, a level-1 candidate also lends its utility to that many level-1 gists on its
    left, ranked just behind it, where ``max_replacements`` leaves room for them."""

    def __post_init__(self) -> None:
        _int_at_least("budget", self.budget, 1)
        if self.type not in ALLOCATOR_TYPES:
            allowed = ", ".join(repr(t) for t in ALLOCATOR_TYPES)
            raise FocusError(f"unknown allocator type {self.type!r}: expected one of {allowed}")
        _float_at_least("expand_threshold", self.expand_threshold, 0.0)
        _float_at_least("collapse_threshold", self.collapse_threshold, 0.0)
        _int_at_least("max_replacements", self.max_replacements, 1)
        _int_at_least("iterations", self.iterations, 1)
        if self.soft_max_length is not None:
            _int_at_least("soft_max_length", self.soft_max_length, 0)
            if self.soft_max_length > self.budget:
                raise FocusError(
                    f"soft_max_length ({self.soft_max_length}) is larger than the budget ({self.budget}); "
                    "allowed: None or 0 (= the budget) or a length <= the budget"
                )
        _int_at_least("recent_tokens", self.recent_tokens, 0)
        _int_at_least("cooldown", self.cooldown, 0)
        _int_at_least("sample_top_k", self.sample_top_k, 1)
        _float_at_least("sample_temperature", self.sample_temperature, 0.0, strict=True)
        _int_at_least("seed", self.seed, 0)
        if self.max_level is not None:
            _int_at_least("max_level", self.max_level, 1)
        _int_at_least("expand_neighbours", self.expand_neighbours, 0)

    @property
    def target_length(self) -> int:
        """``soft_max_length``, or the budget when it is None or 0."""
        return self.soft_max_length or self.budget
