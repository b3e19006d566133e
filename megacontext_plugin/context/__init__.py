"""The working context: a legal tiling of the history by tree nodes, its edits and positions."""

from __future__ import annotations

from .materialise import PAD_LEVEL, Materialised, MaterialisedBatch, gather_entries, materialise, materialise_batch
from .positions import POSITION_SCHEMES, PositionScheme, entry_positions
from .working_context import WorkingContext, WorkingContextError, max_representable_level

__all__ = [
    "PAD_LEVEL",
    "POSITION_SCHEMES",
    "Materialised",
    "MaterialisedBatch",
    "PositionScheme",
    "WorkingContext",
    "WorkingContextError",
    "entry_positions",
    "gather_entries",
    "materialise",
    "materialise_batch",
    "max_representable_level",
]
