"""The focus allocator: LensNet utilities -> legal working-context edits within the budget."""

from __future__ import annotations

from .allocator import FocusAllocator, FocusReport, Scorer, Utilities, as_utilities
from .config import ALLOCATOR_TYPES, AllocatorType, FocusConfig, FocusError
from .cooldown import CooldownTracker
from .selection import EditPlan, select_edits
from .start import start_layout, trained_level

__all__ = [
    "ALLOCATOR_TYPES",
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
    "select_edits",
    "start_layout",
    "trained_level",
]
