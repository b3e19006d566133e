"""One training stage inside the host's loop: the state the plugin's training hooks read and write.

``TrainingRun`` owns the controller (aux nets, optimizer, EMAs), the optimizer step the host is
at, whether the curriculum anneals (base_train) or sits at its final budget (later stages, D18),
the last step's loss metrics and the telemetry monitor. The hooks call one method each:
``before_forward`` -> :meth:`forward_batch`, ``extra_loss`` -> :meth:`aux_losses`,
``after_optimizer_step`` -> :meth:`after_optimizer_step`, ``on_step_telemetry`` ->
:meth:`step_metrics`, ``save_state``/``load_state`` -> :meth:`state` / :meth:`resume`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..config import ConfigError, MCConfig
from ..context.positions import rope_base
from ..nets import model_device, model_dims, model_wte
from ..nets.output_head import head_on_last
from ..telemetry.alerts import alert_warmup_steps
from ..telemetry.lifecycle import ClosedAtExit
from .controller import MCBatch, MCController
from .guided import NllFn
from .monitor import TrainingMonitor
from .packing import align_right


def full_context_nll(model: nn.Module, idx_BT: torch.Tensor, horizon: int) -> NllFn:
    """The teacher's pass (``training.guided``): the patched GPT over the whole sequence ``idx[B, T]``,
    on given LOD0 embeddings, with its own rotary table and value embeddings; the NLL ``[B, horizon]``
    of the last ``horizon`` positions, the only ones whose loss the teacher reads (``nets.output_head``)."""

    def nll_fn(emb_BTD: torch.Tensor, y_BT: torch.Tensor) -> torch.Tensor:
        T = emb_BTD.size(1)
        y_BH = y_BT[:, -horizon:]
        with head_on_last(model, horizon):
            nll = model.forward_embeds(emb_BTD, idx_BT, y_BH.contiguous(), model.cos[:, :T], model.sin[:, :T])
        return nll.view_as(y_BH)

    return nll_fn


class TrainingRun:
    """The training state of one stage (see the module docstring); ``stage`` ``eval`` trains nothing."""

    def __init__(self, cfg: MCConfig, model: nn.Module, *, num_iterations: int, stage: str) -> None:
        dim, head_dim, sequence_len = model_dims(model)
        self.anneal = stage == "base"
        self.plain_steps = cfg.mc_plain_steps if self.anneal else 0
        """base_train's first steps, trained plainly (``--mc_plain_steps``); the curriculum counts from the end."""
        if self.plain_steps and self.plain_steps >= num_iterations:
            raise ConfigError(f"--mc_plain_steps {self.plain_steps} leaves no MegaContext step of base_train's "
                              f"{num_iterations} iterations")
        self.controller = MCController(cfg, dim=dim, head_dim=head_dim, sequence_len=sequence_len,
                                       total_steps=max(1, num_iterations - self.plain_steps),
                                       device=model_device(model), rope_base=rope_base(model))
        self.step = 0
        """The host's next optimizer step."""
        self.monitor: TrainingMonitor | None = None
        """Telemetry, MFU and alerts (None until ``start_monitor``: eval stages have none)."""
        self._monitor_exit: ClosedAtExit | None = None
        self._last: dict[str, torch.Tensor | float] = {}
        self._last_at = -1
        """``controller.steps_done`` when ``_last`` was computed (the optimizer step it belongs to)."""

    @property
    def budget_step(self) -> int:
        """The step the curriculum reads: base_train's own after its plain steps; later stages sit at
        the final budget."""
        return max(0, self.step - self.plain_steps) if self.anneal else self.controller.total_steps

    @property
    def plain(self) -> bool:
        """Whether this step trains plainly: one of base_train's first steps (``--mc_plain_steps``) or, after
        them and in every later stage from its first step, one of every ``--mc_plain_every`` (the last of each
        N): mid and SFT teach the reader new formats, and its full attention must learn them too (D56)."""
        every = self.controller.cfg.mc_plain_every
        return self.step < self.plain_steps or (every > 0 and (self.step - self.plain_steps) % every == every - 1)

    def start_monitor(self, model: nn.Module, stage: str) -> str | None:
        """Open the run's telemetry (``TelemetryConfigError`` for an OTLP mistake); returns the line
        saying where events go on the main rank, else None."""
        warmup = alert_warmup_steps(self.plain_steps, self.controller.total_steps)
        self.monitor, where = TrainingMonitor.for_run(self.controller, model, stage, alert_warmup=warmup)
        self._monitor_exit = ClosedAtExit(self.monitor)
        return where if self.monitor.main else None

    # ---- checkpoints ---------------------------------------------------------------------------
    def start_from(self, saved: dict[str, Any]) -> None:
        """Start from the aux nets of a previous stage's state (its optimizer and EMAs stay behind)."""
        state = saved["controller"]
        self.controller.nets.load_nets(state)
        self.controller.lens_prev.load_state_dict(state["lensnet"])

    def resume(self, saved: dict[str, Any]) -> None:
        """Continue exactly where a state of this stage left off."""
        self.controller.load_controller_state(saved["controller"])
        self.step = saved["step"]
        if self.monitor is not None and saved.get("telemetry"):  # the fair-comparison axes continue
            self.monitor.load_state_dict(saved["telemetry"])

    def state(self) -> dict[str, Any]:
        return {"controller": self.controller.controller_state(), "step": self.step,
                "config": self.controller.cfg.as_dict(),
                "telemetry": None if self.monitor is None else self.monitor.state_dict()}

    # ---- one step ------------------------------------------------------------------------------
    def forward_batch(self, model: nn.Module, idx_BT: torch.Tensor, targets_BT: torch.Tensor) -> MCBatch | None:
        """The packed variants of one micro-batch, or None: a plain step (``--mc_plain_steps``) or too short
        to compress, the plain forward trains it."""
        if self.plain:
            return None
        idx_BT, targets_BT = align_right(idx_BT, targets_BT)  # SFT's right padding: its tails become supervised
        wte = model_wte(model)
        batch = self.controller.process_batch(idx_BT, targets_BT, wte, self.budget_step,
                                              nll_fn=full_context_nll(model, idx_BT, self.controller.cfg.mc_horizon))
        if self.monitor is not None:  # counters every micro-batch; snapshots at the telemetry cadence
            self.monitor.on_batch(self.step, idx_BT, wte, batch, budget_step=self.budget_step)
        return batch

    def aux_losses(self, batch: MCBatch, per_entry_loss: torch.Tensor) -> dict[str, torch.Tensor]:
        """The weighted aux losses the host adds to its own token loss (``MCLosses.weighted``)."""
        losses = self.controller.compute_losses(batch, per_entry_loss.view_as(batch.targets_RW))
        if self.monitor is not None:  # mc_batch_stats and PrefDebug on telemetry cadence steps
            self.monitor.on_losses(self.step, batch, losses)
        self._last_at = self.controller.steps_done  # the optimizer step these metrics belong to
        self._last = dict(losses.metrics) | {
            "time_controller_ms": batch.timings_ms.get("controller_ms", 0.0) + batch.timings_ms.get("losses_ms", 0.0)
        }
        return dict(losses.weighted)

    def after_optimizer_step(self, step: int) -> None:
        self.controller.step_aux()
        self.step = step + 1
        if self.monitor is not None:
            self.monitor.after_step(step, self._last)

    def step_metrics(self) -> dict[str, float] | None:
        """``mc/*`` metrics of the step just taken, with one host sync; None before any MC batch."""
        if not self._last:
            return None
        # a step whose batches all trained plainly (too short to compress) reports no loss metrics
        # rather than an older step's
        fresh = self._last_at == self.controller.steps_done - 1
        values = {f"mc/{k}": float(v) for k, v in self._last.items()} if fresh else {}
        if self.monitor is not None:  # MFU, FLOPs, tokens, wall time, swap rate, residency, drops
            values.update(self.monitor.metrics(self.step - 1))
        return {k: v for k, v in values.items() if not math.isnan(v)}  # a level absent from the batch: no point

    def close(self) -> None:
        self.controller.close()
        if self._monitor_exit is not None:
            self._monitor_exit.close()
            self._monitor_exit = None
