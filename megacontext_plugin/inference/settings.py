"""What a session needs from the knobs and the model, checked once when the runtime opens."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import ConfigError, MCConfig
from ..context import max_representable_level
from ..focus import FocusConfig, focus_config, trained_level

MAX_AUTO_REFOCUS_EVERY = 32
"""``--mc_refocus_every 0`` (the default) is ``budget // 8`` up to this: a refocus every 32 tokens at the
budgets of real models, every 8 at the quality recipe's W = 64, where the chat arm answered more planted
facts than at 16 or 4 (D54)."""


def refocus_interval(budget: int) -> int:
    """The default refocus interval for a working-context budget of ``budget`` entries (D54)."""
    return max(1, min(MAX_AUTO_REFOCUS_EVERY, budget // 8))


@dataclass(frozen=True)
class SessionSettings:
    """What a session needs from the knobs and the model (see ``from_config``)."""

    budget: int
    """W_max: entries the base model attends to (KV-cache capacity)."""
    refocus_every: int
    """Generated tokens between refocuses."""
    headroom: int
    """Entries freed when the WC is full (>= ``refocus_every``)."""
    block_size: int
    protected: int
    """Raw tail never edited: ``max(--allocator_recent_tokens, H)``, the prompt's tail as in training."""
    horizon: int
    """Tail tokens LensNet scores the entries against."""
    position_scheme: str
    rope_gist_sigma: float
    max_level: int
    """Highest gist level (LensNet embeds levels up to its ``max_level``)."""
    focus: FocusConfig
    lens_level: int | None = None
    """The coarsest level LensNet trained on (``focus.trained_level``): room is made at levels up to
    it while that suffices (None: at any level up to ``max_level``)."""

    @classmethod
    def from_config(cls, cfg: MCConfig, sequence_len: int, max_level: int = 16) -> SessionSettings:
        """Settings for a model trained at ``sequence_len``; ``ConfigError`` naming the flags if
        the budget leaves no room for the raw tail, the headroom and the history's gists."""
        cfg = cfg.for_model(sequence_len)
        budget = cfg.wc_budget(sequence_len)
        every = cfg.mc_refocus_every or refocus_interval(budget)
        headroom = max(cfg.mc_wc_headroom or budget // 8, every)
        protected = cfg.prompt_tail(sequence_len)
        K = cfg.block_size
        top = min(max_level, max_representable_level(K))
        gists = 2 * (K - 1)  # the least room for older history (a very long one needs about K-1 per level)
        if protected + headroom + gists > budget:
            raise ConfigError(
                f"the working-context budget ({budget}) leaves no room at inference for the raw tail "
                f"({protected}: --allocator_recent_tokens/--mc_horizon), the headroom ({headroom}: "
                f"--mc_wc_headroom/--mc_refocus_every) and the gists of older history ({gists} with --block_size "
                f"{K}); lower those or raise --mc_wc_budget")
        focus = focus_config(cfg, budget - every, recent_tokens=protected, max_level=top)  # room for the next tokens
        return cls(budget, every, headroom, K, protected, cfg.mc_horizon, cfg.mc_position_scheme,
                   cfg.mc_rope_gist_sigma, top, focus,
                   trained_level(sequence_len, cfg.mc_horizon, K, protected))


