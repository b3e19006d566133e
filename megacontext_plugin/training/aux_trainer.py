"""The aux nets' optimisation state: everything a resumed run restores, but the layout generator.

GistNet and LensNet (``nets.AuxNets``), their AdamW optimizer, LensNet's KL anchor ``lens_prev``
(the policy before the last update: the next step's scores are compared with it), the two EMAs
LensNet's loss reads (the advantage scale and the mean expand pressure) and the optimizer steps
taken. The loss reads the EMAs and hands back the batch's values (``observe``); ``step`` adopts
them after the update, so no micro-batch of a step sees an EMA that step moved.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn

from ..nets import AuxNets, allreduce_gradients


class AuxTrainer:
    """Trains ``nets`` (their knobs: ``nets.cfg``). ``state``/``load_state`` are the checkpoint's
    entries for all of it (``MCController.controller_state`` adds the layout generator's)."""

    def __init__(self, nets: AuxNets) -> None:
        self.nets = nets
        self.lens_prev = copy.deepcopy(nets.lensnet).requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.parameters(), lr=nets.cfg.mc_aux_lr, weight_decay=0.0)
        # EMA state of the stability helpers (None until the first step has been seen)
        self.adv_var_ema: torch.Tensor | None = None
        self.budget_ema: torch.Tensor | None = None
        self.steps_done = 0
        self._pending_ema: tuple[torch.Tensor, torch.Tensor] | None = None

    def parameters(self) -> list[nn.Parameter]:
        return [*self.nets.gistnet.parameters(), *self.nets.lensnet.parameters()]

    def observe(self, adv_var: torch.Tensor, pressure: torch.Tensor) -> None:
        """A micro-batch's advantage scale and mean expand pressure; the next ``step`` adopts the last
        micro-batch's."""
        self._pending_ema = (adv_var.detach(), pressure.detach())

    def step(self) -> None:
        """After ``total.backward()``: all-reduce the grads (DDP), step, refresh the KL anchor and EMAs."""
        allreduce_gradients(self.parameters())
        # The KL anchor is the policy *before* this update: next step's scores are compared with it.
        self.lens_prev.load_state_dict(self.nets.lensnet.state_dict())
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        pending = self._pending_ema
        if pending is not None:
            self.adv_var_ema = pending[0]
            beta = self.nets.cfg.mc_lens_budget_smooth_beta
            prev = self.budget_ema
            self.budget_ema = pending[1] if prev is None else beta * prev + (1 - beta) * pending[1]
            self._pending_ema = None
        self.steps_done += 1

    def state(self) -> dict[str, Any]:
        return {
            "gistnet": self.nets.gistnet.state_dict(),
            "lensnet": self.nets.lensnet.state_dict(),
            "lens_prev": self.lens_prev.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "adv_var_ema": self.adv_var_ema,
            "budget_ema": self.budget_ema,
            "steps_done": self.steps_done,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.nets.load_nets(state)
        self.lens_prev.load_state_dict(state["lens_prev"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.adv_var_ema = state["adv_var_ema"]
        self.budget_ema = state["budget_ema"]
        self.steps_done = state["steps_done"]
