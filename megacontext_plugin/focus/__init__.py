"""The focus allocator: LensNet utilities -> legal working-context edits within the budget, and the
budget a run trains at (``budget``)."""

from __future__ import annotations

from .allocator import FocusAllocator, FocusReport, Scorer, Utilities, as_utilities, residency
from .budget import curriculum_budget, minimal_length, smallest_useful_budget
from .config import ALLOCATOR_TYPES, AllocatorType, FocusConfig, FocusError
from .cooldown import CooldownTracker
from .knobs import focus_config
from .selection import EditPlan, select_edits
from .start import (
    PROMPT_ROUNDS,
    fitted_tail,
    lens_view,
    pool_view,
    score_batch_through_view,
    score_through_view,
    start_layout,
    trained_level,
)

__all__ = [
    "ALLOCATOR_TYPES",
    "PROMPT_ROUNDS",
    "AllocatorType",
    "CooldownTracker",
    "EditPlan",
    "FocusAllocator",
    "FocusConfig",
    "FocusError",
    "FocusReport",
    "Scorer",
    "Utilities",
    "as_utilities",
    "curriculum_budget",
    "fitted_tail",
    "focus_config",
    "lens_view",
    "minimal_length",
    "pool_view",
    "residency",
    "score_batch_through_view",
    "score_through_view",
    "select_edits",
    "smallest_useful_budget",
    "start_layout",
    "trained_level",
]
