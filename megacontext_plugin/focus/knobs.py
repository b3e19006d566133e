"""The allocator's settings from the run's knobs: the one place ``--allocator_*`` and ``--mc_seed``
become a :class:`FocusConfig` (training's layouts and probe, evaluation's arms, inference's sessions)."""

from __future__ import annotations

from ..config import MCConfig
from .config import FocusConfig


def focus_config(cfg: MCConfig, budget: int, *, recent_tokens: int, max_level: int) -> FocusConfig:
    """``cfg``'s allocator knobs at ``budget`` entries, the last ``recent_tokens`` tokens protected,
    collapses up to ``max_level``; ``--allocator_soft_max_length`` is capped at the budget (0: the budget)."""
    soft = cfg.allocator_soft_max_length
    return FocusConfig(budget=budget, type=cfg.allocator_type,  # type: ignore[arg-type]
                       expand_threshold=cfg.allocator_expand_threshold,
                       collapse_threshold=cfg.allocator_collapse_threshold,
                       max_replacements=cfg.allocator_max_replacements, iterations=cfg.allocator_iterations,
                       soft_max_length=min(soft, budget) if soft else None, recent_tokens=recent_tokens,
                       cooldown=cfg.allocator_cooldown, sample_top_k=cfg.allocator_sample_top_k,
                       sample_temperature=cfg.allocator_sample_temperature, seed=cfg.mc_seed, max_level=max_level,
                       expand_neighbours=cfg.allocator_expand_neighbours)
