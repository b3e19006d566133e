"""The working context: a legal tiling of the history by tree nodes, its edits, positions, model inputs and
LensNet's utilities of its entries."""

from __future__ import annotations

from .inputs import (
    PAD_LEVEL,
    EntryRows,
    LevelTable,
    ModelInputs,
    TreeSource,
    lens_utilities,
    model_inputs,
    rotary_tables,
)
from .positions import POSITION_SCHEMES, PositionScheme, entry_positions
from .working_context import WorkingContext, WorkingContextError, max_representable_level

__all__ = [
    "PAD_LEVEL",
    "POSITION_SCHEMES",
    "EntryRows",
    "LevelTable",
    "ModelInputs",
    "PositionScheme",
    "TreeSource",
    "WorkingContext",
    "WorkingContextError",
    "entry_positions",
    "lens_utilities",
    "max_representable_level",
    "model_inputs",
    "rotary_tables",
]
