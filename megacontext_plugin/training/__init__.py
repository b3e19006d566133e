"""Training MegaContext inside the base model's loop: variants, packing, losses, curriculum, FLOPs."""

from ..focus.budget import curriculum_budget
from .controller import MCBatch, MCController, MCLosses
from .curriculum import AutoBatchPlan, auto_batch
from .flops import StepFlops, mc_step_flops, vanilla_step_flops

__all__ = [
    "AutoBatchPlan",
    "MCBatch",
    "MCController",
    "MCLosses",
    "StepFlops",
    "auto_batch",
    "curriculum_budget",
    "mc_step_flops",
    "vanilla_step_flops",
]
