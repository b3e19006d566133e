"""Where refocus starts on a prompt: the layout training's on-policy variants and the evaluation's
``mc`` arm hand to the focus allocator before its first call."""

from __future__ import annotations

from ..context.working_context import WorkingContext


def trained_level(sequence_len: int, horizon: int, block_size: int, prompt_tail: int) -> int:
    """The coarsest gist level LensNet learns to score in a run at ``sequence_len``: that of the
    coarsest layout of the longest training prompt (``sequence_len - horizon`` tokens, the last
    ``prompt_tail`` raw), where on-policy and teacher variants start; at least 1."""
    prompt = max(0, sequence_len - horizon)
    return max(1, int(WorkingContext.coarsest(prompt, block_size, prompt_tail).levels.max(initial=0)))


def start_layout(num_tokens: int, block_size: int, recent_tokens: int, room: int,
                 lens_level: int | None) -> WorkingContext:
    """The coarsest layout of ``num_tokens`` (the last ``recent_tokens`` raw) whose gists are of level
    at most ``lens_level``, the coarsest level LensNet has learned to score, when it fits ``room``
    entries; otherwise (or with ``lens_level`` None) the coarsest layout of all.

    LensNet scores a gist of a level it never trained on close to its neighbours whatever it
    holds, so a key under one is never opened (D26): a longer start at known levels is cheaper
    than an opening that never comes. Beyond the budget's reach the coarser levels are the only
    layout that fits."""
    if lens_level is not None:
        known = WorkingContext.coarsest(num_tokens, block_size, recent_tokens, max_level=lens_level)
        if len(known) <= room:  # also when the cap changes nothing: then it is the coarsest
            return known
    return WorkingContext.coarsest(num_tokens, block_size, recent_tokens)
