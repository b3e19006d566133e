"""The long-context evaluation's arms through a (patched) nanochat ``GPT``, and a checkpoint's budget.

:class:`NanochatArms` gives ``evaluation.arms.ArmRunner`` the interface it expects of a model
(``wte``, ``head_dim``, ``config.sequence_len``, ``forward(inputs_embeds=, cos_sin=, value_ids=)``)
by calling ``GPT.forward_embeds`` (the patch's pure-tensor forward): the arms build their inputs
with ``context.inputs.model_inputs`` exactly as for the tiny models, training and chat.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..focus.budget import curriculum_budget, smallest_useful_budget
from ..nets import AuxNets


class NanochatArms(nn.Module):
    """A view of nanochat's ``GPT`` for ``ArmRunner`` (no parameters of its own)."""

    uses_value_ids = True

    def __init__(self, gpt: nn.Module) -> None:
        super().__init__()
        self.gpt = gpt
        self.config = gpt.config
        self.head_dim = gpt.config.n_embd // gpt.config.n_head
        self.wte = gpt.transformer["wte"] if hasattr(gpt, "transformer") else gpt.wte

    def forward(self, *, inputs_embeds: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor] | None,
                value_ids: torch.Tensor) -> torch.Tensor:
        """Logits ``[R, W, vocab]`` of ``inputs_embeds [R, W, D]`` (``value_ids [R, W]``, -1 = none)."""
        W = inputs_embeds.shape[1]
        cos, sin = cos_sin if cos_sin is not None else (self.gpt.cos[:, :W], self.gpt.sin[:, :W])
        dtype = self.gpt.cos.dtype
        return self.gpt.forward_embeds(inputs_embeds, value_ids.to(inputs_embeds.device), None,
                                       cos.to(dtype), sin.to(dtype))


def validation_budget(nets: AuxNets) -> int:
    """The checkpoint's budget: ``--mc_wc_budget`` if set, else the final curriculum budget of a
    sequence as long as the model's window (what the aux nets were trained at;
    ``MCController.budget_at`` at the last step, whatever the run's length)."""
    cfg, T = nets.cfg, nets.sequence_len
    if cfg.mc_wc_budget:
        return min(cfg.mc_wc_budget, T)
    floor = smallest_useful_budget(T, cfg.block_size, cfg.training_tail(T))
    return max(min(curriculum_budget(cfg, 1, 1, T, floor), T), floor)
